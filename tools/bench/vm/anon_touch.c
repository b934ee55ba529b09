#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
#include <pthread.h>
#include <sys/mman.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
#define SZ (1UL<<30)
static char*m; static int nth;
static void*w(void*a){long i=(long)a; size_t per=SZ/nth; for(size_t o=i*per;o<(i+1)*per;o+=4096)m[o]=1; return 0;}
static void run(const char*what,int n,int sl){
  if(sl)sleep(sl);
  m=mmap(0,SZ,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); madvise(m,SZ,MADV_NOHUGEPAGE);
  nth=n; double t=now(); pthread_t th[8];
  for(long i=0;i<n;i++)pthread_create(&th[i],0,w,(void*)i);
  for(int i=0;i<n;i++)pthread_join(th[i],0);
  double e=now()-t; printf("%-28s threads %d: %.3f s %.2f GB/s\n",what,n,e,SZ/e/1e9);
  munmap(m,SZ);
}
int main(){
  run("after sleep 6",1,6); run("right after free",1,0); run("after sleep 6",2,6); run("right after free",2,0);
  run("after sleep 6",1,6); run("after sleep 6",2,6);
}
