/* Memory shapes the engine must dump and restore, one per mode, each
 * checked every tick (appends "tick N ok" or "FAIL tick N what" to
 * ./progress.log; writes ./ready once set up):
 *   memcases frag MIB STRIDE  a MIB mapping with every STRIDE-th page written
 *                             (STRIDE 2: every other page, MIB*128 runs)
 *   memcases thp MIB          a MADV_HUGEPAGE mapping, 2 MiB aligned, filled
 *   memcases guard            a mapping with data and MADV_GUARD_INSTALL guard
 *                             pages in its middle (kernel 6.13+)
 *   memcases lock             an mlock()ed, a MAP_LOCKED and an
 *                             mlock2(MLOCK_ONFAULT) mapping with data
 * The address of the region under test goes to ./addr (hex). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PG 4096ul
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 1
#endif

static int logfd;
static unsigned long tick;

static void say(const char *fmt, ...)
{
	char b[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(b, sizeof(b) - 1, fmt, ap);
	va_end(ap);
	b[n++] = '\n';
	if (write(logfd, b, n) != n)
		_exit(9);
}

static uint64_t word(uint64_t page, unsigned seed)
{
	return page * 0x9e3779b97f4a7c15ull + seed;
}

/* page i of p gets its index-derived words at its start and end */
static void mark(volatile uint8_t *p, size_t i, unsigned seed)
{
	volatile uint64_t *w = (volatile uint64_t *)(p + i * PG);
	w[0] = word(i, seed);
	w[PG / 8 - 1] = ~word(i, seed);
}
static int marked(volatile uint8_t *p, size_t i, unsigned seed)
{
	volatile uint64_t *w = (volatile uint64_t *)(p + i * PG);
	return w[0] == word(i, seed) && w[PG / 8 - 1] == ~word(i, seed);
}
static int zero(volatile uint8_t *p, size_t i)
{
	volatile uint64_t *w = (volatile uint64_t *)(p + i * PG);
	return w[0] == 0 && w[PG / 8 - 1] == 0;
}

static void *map(size_t len, int prot, int flags)
{
	void *p = mmap(NULL, len, prot, flags, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(3);
	}
	return p;
}

static void put_addr(void *p)
{
	FILE *f = fopen("addr", "w");
	fprintf(f, "%lx\n", (unsigned long)p);
	fclose(f);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: memcases frag MIB STRIDE | thp MIB | guard | lock\n");
		return 2;
	}
	const char *mode = argv[1];
	logfd = open("progress.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
	uint8_t *p = NULL, *q = NULL, *r = NULL;
	size_t pages = 0, stride = 1;
	if (!strcmp(mode, "frag") || !strcmp(mode, "thp")) {
		size_t mib = argc > 2 ? strtoul(argv[2], NULL, 0) : 256;
		stride = !strcmp(mode, "frag") && argc > 3 ? strtoul(argv[3], NULL, 0) : 1;
		pages = mib << 8;
		size_t len = mib << 20;
		if (!strcmp(mode, "thp")) {
			/* 2 MiB aligned so that every part can be a huge page */
			uint8_t *raw = map(len + (2ul << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
			p = (uint8_t *)(((uintptr_t)raw + (2ul << 20) - 1) & ~((2ul << 20) - 1));
			if (madvise(p, len, MADV_HUGEPAGE)) {
				perror("madvise");
				return 3;
			}
		} else {
			/* keep the kernel from backing the gaps with huge pages */
			p = map(len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
			madvise(p, len, MADV_NOHUGEPAGE);
		}
		for (size_t i = 0; i < pages; i += stride)
			mark(p, i, 7);
	} else if (!strcmp(mode, "guard")) {
		pages = 16;
		p = map(pages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
		for (size_t i = 0; i < pages; i++)
			mark(p, i, 9);
		/* pages 5..9 become guard pages (their data is gone) */
		if (madvise(p + 5 * PG, 5 * PG, MADV_GUARD_INSTALL)) {
			say("NOGUARD %d", errno);
			return 4;
		}
	} else if (!strcmp(mode, "lock")) {
		pages = 8;
		p = map(pages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
		if (mlock(p, pages * PG)) {
			perror("mlock");
			return 3;
		}
		q = map(pages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED);
		r = map(pages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
		if (syscall(SYS_mlock2, r, pages * PG, MLOCK_ONFAULT)) {
			perror("mlock2");
			return 3;
		}
		for (size_t i = 0; i < pages; i++) {
			mark(p, i, 11);
			mark(q, i, 12);
		}
		for (size_t i = 0; i < pages; i += 2)
			mark(r, i, 13);
	} else {
		fprintf(stderr, "unknown mode %s\n", mode);
		return 2;
	}
	put_addr(p);
	close(open("ready", O_WRONLY | O_CREAT, 0644));
	for (tick = 1;; tick++) {
		int ok = 1;
		if (!strcmp(mode, "frag") || !strcmp(mode, "thp")) {
			for (size_t i = 0; i < pages && ok; i++) {
				if (i % stride == 0 ? !marked(p, i, 7) : !zero(p, i)) {
					say("FAIL tick %lu page %zu", tick, i);
					ok = 0;
				}
			}
		} else if (!strcmp(mode, "guard")) {
			for (size_t i = 0; i < pages && ok; i++) {
				if (i >= 5 && i < 10)
					continue;
				if (!marked(p, i, 9)) {
					say("FAIL tick %lu page %zu", tick, i);
					ok = 0;
				}
			}
		} else {
			for (size_t i = 0; i < pages && ok; i++) {
				if (!marked(p, i, 11) || !marked(q, i, 12) || (i % 2 == 0 ? !marked(r, i, 13) : !zero(r, i))) {
					say("FAIL tick %lu page %zu", tick, i);
					ok = 0;
				}
			}
		}
		if (ok)
			say("tick %lu ok", tick);
		struct timespec ts = {0, 100 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}
