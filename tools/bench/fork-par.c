/* Forks of one process's memory from one process against two at once
 * (docs/PERFORMANCE.md, "tfork on both CPUs"): `fork-par MIB N MODE [OWN]`.
 * MIB of touched private anonymous memory (4 KiB pages, MADV_NOHUGEPAGE);
 * MODE 1: this process forks N children one after the other; MODE 2: a
 * first child forks N/2 while this process forks the rest, at the same
 * time (OWN 1: the child writes every page first, so that the two fork
 * pages of their own). Children pause() until killed; prints the time of
 * the forks. Build: cc -O2 -o fork-par tools/bench/fork-par.c */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <signal.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e3+t.tv_nsec/1e6;}
int kids[1000]; 
/* forks n children (each pause()s) from this process, writes pids to fd */
static void forkn(int n,int fd){for(int i=0;i<n;i++){int c=fork();if(c==0){pause();_exit(0);} write(fd,&c,4);}}
int main(int argc,char**argv){
  size_t mib=atoi(argv[1]); int n=atoi(argv[2]); int mode=atoi(argv[3]); int own=argc>4?atoi(argv[4]):0;
  size_t len=mib<<20; char*m=mmap(0,len,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  madvise(m,len,MADV_NOHUGEPAGE); for(size_t i=0;i<len;i+=4096)m[i]=i>>12;
  int p[2]; pipe(p); int go[2]; pipe(go);
  double t0,t1;
  if(mode==1){ t0=now(); forkn(n,p[1]); t1=now(); }
  else { /* mode 2: a second forker: child of ours; with own=1 it rewrites its memory first (own pages) */
    int c=fork(); if(c==0){ if(own) for(size_t i=0;i<len;i+=4096)m[i]=1; char b; read(go[0],&b,1); forkn(n/2,p[1]); pause(); _exit(0);} 
    int c2=c; write(p[1],&c2,4); usleep(own?300000:50000);
    t0=now(); write(go[1],"g",1); forkn(n-n/2,p[1]);
    /* wait until all n+1 pids are written */
    t1=0; }
  int got=0,total=(mode==1?n:n+1); int pid;
  while(got<total && read(p[0],&pid,4)==4){kids[got++]=pid;}
  if(mode!=1) t1=now();
  printf("mode %d own %d: %d forks of %zu MiB: %.1f ms (%.2f ms/fork)\n",mode,own,n,mib,t1-t0,(t1-t0)/n);
  for(int i=0;i<got;i++)kill(kids[i],SIGKILL);
  while(wait(0)>0);
  return 0;}
