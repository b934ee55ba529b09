#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <time.h>
#include <sys/mman.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
#define GIB (1UL<<30)
int main(int argc,char**argv){
  const char*dir=argv[1]; int mode=atoi(argv[2]); size_t chunk=atol(argv[3])<<10; int reps=atoi(argv[4]);
  char*hot=aligned_alloc(2<<20,chunk);memset(hot,7,chunk);
  for(int r=0;r<reps;r++){
    char path[256];snprintf(path,sizeof path,"%s/mbtest%d",dir,r);
    sync();
    double t0=now();
    int fd=open(path,O_CREAT|O_TRUNC|O_WRONLY,0600);
    if(mode&1) fallocate(fd,0,0,GIB);
    double t=now();
    for(size_t off=0;off<GIB;off+=chunk) if(pwrite(fd,hot,chunk,off)!=(ssize_t)chunk){perror("w");return 1;}
    double e=now()-t;close(fd);
    double s0=now(); if(mode&4) sync(); double se=now()-s0;
    if(mode&2) unlink(path);
    printf("rep %d mode %d chunk %zuK: open+falloc %.3f write %.3f s %.2f GB/s sync %.3f\n",r,mode,chunk>>10,t-t0,e,GIB/e/1e9,se);
  }
  return 0;
}
