/* Benchmark workload: N one-page private anonymous VMAs (each written, and
 * alternately readable and read-write so the kernel cannot merge them) and
 * T threads, all idle. Writes ./ready once set up, then sleeps; every 100 ms
 * the main thread checks every page and appends "tick N ok" or "FAIL ..." to
 * ./progress.log.
 *   manyvma NVMAS NTHREADS */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void *idle(void *a) { (void)a; for (;;) pause(); return NULL; }

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000, nt = argc > 2 ? atol(argv[2]) : 1;
	char *base = mmap(NULL, 2 * n * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED) return 2;
	for (long i = 0; i < n; i++) {
		char *p = mmap(base + 2 * i * 4096, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		if (p == MAP_FAILED) return 3;
		memset(p, (int)(i * 7 + 1), 4096);
		if (i & 1) mprotect(p, 4096, PROT_READ);
	}
	for (long t = 1; t < nt; t++) {
		pthread_t th;
		pthread_attr_t at;
		pthread_attr_init(&at);
		pthread_attr_setstacksize(&at, 64 * 1024);
		if (pthread_create(&th, &at, idle, NULL)) return 4;
	}
	int log = open("progress.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
	close(open("ready", O_WRONLY | O_CREAT, 0644));
	for (unsigned long tick = 1;; tick++) {
		char msg[128];
		int bad = -1;
		for (long i = 0; i < n && bad < 0; i++) {
			unsigned char *p = (unsigned char *)base + 2 * i * 4096;
			if (p[0] != (unsigned char)(i * 7 + 1) || p[4095] != (unsigned char)(i * 7 + 1)) bad = (int)i;
		}
		int len = bad < 0 ? snprintf(msg, sizeof msg, "tick %lu ok\n", tick) : snprintf(msg, sizeof msg, "FAIL tick %lu vma %d\n", tick, bad);
		if (write(log, msg, len) != len) return 5;
		struct timespec ts = { 0, 100000000 };
		nanosleep(&ts, NULL);
	}
}
