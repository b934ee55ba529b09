#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <time.h>
#include <sys/uio.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
int main(int argc,char**argv){
  int pid=atoi(argv[1]); unsigned long lo=strtoul(argv[2],0,16), hi=strtoul(argv[3],0,16); size_t chunk=8<<20;
  char*b=aligned_alloc(4096,chunk);memset(b,1,chunk);
  for(int mode=0;mode<2;mode++){
  char mp[64];snprintf(mp,sizeof mp,"/proc/%d/mem",pid);int fd=open(mp,O_RDONLY);
  double t=now();size_t tot=0;
  for(unsigned long a=lo;a<hi;a+=chunk){size_t n=hi-a<chunk?hi-a:chunk;struct iovec l={b,n},r={(void*)a,n};
    ssize_t got=mode?process_vm_readv(pid,&l,1,&r,1,0):pread(fd,b,n,a); if(got!=(ssize_t)n){perror("rd");return 1;} tot+=n;}
  double e=now()-t;printf("%s %zu bytes %.3f s %.2f GB/s\n",mode?"pvr":"mem",tot,e,tot/e/1e9);}
}
