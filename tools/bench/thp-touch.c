/* First touch of 1 GiB of anonymous memory with MADV_POPULATE_WRITE, in
 * transparent huge pages (MADV_HUGEPAGE, 2 MiB aligned) or, with NOHUGE=1
 * in the environment, in 4 KiB pages (MADV_NOHUGEPAGE): what the restore
 * of a THP region pays before its pages are read in.
 * usage: thp-touch NTHREADS   (the GiB split between them)
 * gcc -O2 -o thp-touch thp-touch.c -lpthread   (docs/PERFORMANCE.md) */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <pthread.h>
#include <time.h>
#include <stdlib.h>
#include <sys/mman.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
static char *p; static size_t len=1ul<<30; static int nt;
static void *w(void *a){ long i=(long)a; size_t part=len/nt; madvise(p+i*part,part,23); return 0;}
int main(int c,char**v){
  nt=atoi(v[1]);
  char *raw=mmap(0,len+(2<<20),3,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  p=(char*)(((uintptr_t)raw+(2<<20)-1)&~((2ul<<20)-1));
  if(getenv("NOHUGE")) madvise(p,len,MADV_NOHUGEPAGE); else madvise(p,len,MADV_HUGEPAGE);
  double t=now(); pthread_t th[8];
  for(long i=0;i<nt;i++) pthread_create(&th[i],0,w,(void*)i);
  for(int i=0;i<nt;i++) pthread_join(th[i],0);
  printf("%d threads: %.3f s\n",nt,now()-t);
}
