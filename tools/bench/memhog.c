/* Benchmark workload: MiB of patterned private anonymous memory and
 * THREADS-1 extra threads. Every tick it checks a sample of pages and
 * appends "tick N ok" or "FAIL ..." to ./progress.log; ./ready when set up.
 * Usage: memhog MIB THREADS [THP] (THP 1: madvise(MADV_HUGEPAGE) the area) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint8_t *mem;
static size_t pages;

static uint64_t word(size_t pg, size_t i) { return (pg * 0x9e3779b97f4a7c15ull) ^ (i * 0x100000001b3ull) ^ 0x5a5a; }

static int check_page(size_t pg)
{
	uint64_t *p = (uint64_t *)(mem + pg * 4096);
	for (size_t i = 0; i < 512; i++)
		if (p[i] != word(pg, i))
			return 0;
	return 1;
}

static void *idle(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	size_t mib = strtoul(argv[1], NULL, 0);
	int threads = atoi(argv[2]);
	pages = mib * 256;
	mem = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return 3;
	/* optional third argument 1: ask for transparent huge pages */
	if (argc > 3 && atoi(argv[3]) == 1)
		madvise(mem, pages * 4096, MADV_HUGEPAGE);
	for (size_t pg = 0; pg < pages; pg++) {
		uint64_t *p = (uint64_t *)(mem + pg * 4096);
		for (size_t i = 0; i < 512; i++)
			p[i] = word(pg, i);
	}
	for (int t = 1; t < threads; t++) {
		pthread_t th;
		if (pthread_create(&th, NULL, idle, NULL))
			return 4;
	}
	int log = open("progress.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
	close(open("ready", O_WRONLY | O_CREAT, 0644));
	uint64_t seed = 1;
	for (unsigned long tick = 1;; tick++) {
		char buf[64];
		int ok = 1;
		for (int k = 0; k < 256; k++) {
			seed = seed * 6364136223846793005ull + 1442695040888963407ull;
			if (!check_page((seed >> 17) % pages))
				ok = 0;
		}
		int n = snprintf(buf, sizeof(buf), ok ? "tick %lu ok\n" : "FAIL tick %lu page\n", tick);
		if (write(log, buf, n) != n)
			return 5;
		struct timespec ts = { 0, 50 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}
