#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/uio.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
static size_t GIB;
int main(int argc,char**argv){
  GIB=atol(argv[4])<<30; int direct=atoi(argv[2]); size_t chunk=atol(argv[3])<<10;
  char*m=mmap(0,GIB,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); madvise(m,GIB,MADV_NOHUGEPAGE);
  for(size_t i=0;i<GIB;i+=4096)m[i]=i>>12;
  int p[2]; pipe(p); fcntl(p[1],F_SETPIPE_SZ,1<<20);
  int fd=open(argv[1],O_CREAT|O_TRUNC|O_WRONLY|(direct==1?O_DIRECT:0),0600);
  double t=now(), vs=0, sp=0;
  for(size_t off=0;off<GIB;off+=chunk){
    double a=now(); if(direct==2){ if(pwrite(fd,m+off,chunk,off)!=(ssize_t)chunk){perror("pw");return 1;} vs+=now()-a; continue;} struct iovec iov={m+off,chunk}; ssize_t r=vmsplice(p[1],&iov,1,0); if(r!=(ssize_t)chunk){perror("vmsplice");return 1;}
    double b=now(); loff_t o=off; size_t left=chunk; while(left){ssize_t s=splice(p[0],0,fd,&o,left,SPLICE_F_MOVE); if(s<=0){perror("splice");return 1;} left-=s;}
    sp+=now()-b; vs+=b-a;
  }
  double e=now()-t; printf("%s chunk %zuK: %.3f s %.2f GB/s (vmsplice %.3f splice %.3f)\n",direct?"O_DIRECT":"buffered",chunk>>10,e,GIB/e/1e9,vs,sp);
  close(fd); unlink(argv[1]);
}
