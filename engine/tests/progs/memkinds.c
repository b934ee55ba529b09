/* Every kind of VMA a normal (dynamically linked) process has, each with
 * a pattern checked every tick: private anonymous, shared anonymous (one
 * object split into two VMAs by mprotect, so the second has an offset),
 * private file mapping with dirty pages, shared file mapping, read-only
 * and PROT_NONE regions, a PROT_NONE region holding data (checked by the
 * test through /proc/PID/mem: the program leaves its layout alone), a 1 GiB sparse
 * mapping with 8 pages and an MADV_DONTNEED hole, a MAP_GROWSDOWN region,
 * madvised regions (DONTFORK, DONTDUMP, HUGEPAGE, NOHUGEPAGE, WIPEONFORK,
 * RANDOM, SEQUENTIAL), a grown brk heap, the stack. Writes ./ready once
 * set up and "tick N ok" / "FAIL tick N what" to ./progress.log.
 * Usage: memkinds [DENSE_MIB]  (extra patterned private anon memory) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PG 4096ul
#define SPARSE (1ul << 30)
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

#define CHECK(c, what)                                     \
	do {                                               \
		if (!(c)) {                                \
			say("FAIL tick %lu %s", tick, what); \
			ok = 0;                            \
		}                                          \
	} while (0)

static void fill(volatile uint8_t *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(seed * 31 + i * 7 + (i >> 12));
}
static int same(volatile uint8_t *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != (uint8_t)(seed * 31 + i * 7 + (i >> 12)))
			return 0;
	return 1;
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

int main(int argc, char **argv)
{
	size_t dense = argc > 1 ? strtoul(argv[1], NULL, 0) << 20 : 0;
	logfd = open("progress.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
	uint8_t *priv = map(16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	fill(priv, 16 * PG, 1);
	/* shared anonymous: 8 pages, the last 3 made read-only (second VMA, pgoff 5) */
	uint8_t *shm = map(8 * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS);
	fill(shm, 8 * PG, 2);
	mprotect(shm + 5 * PG, 3 * PG, PROT_READ);
	/* files */
	int fd = open("backing.bin", O_RDWR | O_CREAT | O_TRUNC, 0600);
	uint8_t page[PG];
	for (int i = 0; i < 16; i++) {
		fill(page, PG, 100 + i);
		if (write(fd, page, PG) != PG)
			return 4;
	}
	uint8_t *fpriv = mmap(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	uint8_t *fshared = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 8 * PG);
	uint8_t *fro = mmap(NULL, 2 * PG, PROT_READ, MAP_PRIVATE, fd, 2 * PG);
	if (fpriv == MAP_FAILED || fshared == MAP_FAILED || fro == MAP_FAILED)
		return 5;
	close(fd);
	for (int i = 0; i < 16; i += 3)
		fill(fpriv + i * PG, PG, 200 + i);
	uint8_t *ro = map(3 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	fill(ro, 3 * PG, 3);
	mprotect(ro, 3 * PG, PROT_READ);
	uint8_t *none_data = map(2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	fill(none_data, 2 * PG, 4);
	mprotect(none_data, 2 * PG, PROT_NONE);
	map(PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS);
	uint8_t *sparse = map(SPARSE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
	for (int i = 0; i < 8; i++)
		fill(sparse + i * (SPARSE / 8), PG, 10 + i);
	uint8_t *dn = map(8 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	fill(dn, 8 * PG, 5);
	madvise(dn + 2 * PG, 4 * PG, MADV_DONTNEED);
	uint8_t *gd = map(4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN);
	fill(gd + 2 * PG, 2 * PG, 6);
	/* madvise kinds, one region each (separate VMAs: different flags) */
	static const int advs[] = { MADV_DONTFORK, MADV_DONTDUMP, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_WIPEONFORK, MADV_RANDOM, MADV_SEQUENTIAL };
	enum { NADV = sizeof(advs) / sizeof(advs[0]) };
	uint8_t *adv[NADV];
	for (int i = 0; i < NADV; i++) {
		adv[i] = map(4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
		if (madvise(adv[i], 4 * PG, advs[i]))
			perror("madvise");
		fill(adv[i], 4 * PG, 20 + i);
	}
	uint8_t *big = dense ? map(dense, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS) : NULL;
	if (big)
		fill(big, dense, 7);
	uint8_t *brk0 = sbrk(0);
	if (sbrk(1 << 20) == (void *)-1)
		return 6;
	fill(brk0, 1 << 20, 8);
	volatile uint8_t stackbuf[3 * PG];
	fill(stackbuf, sizeof(stackbuf), 9);
	close(open("ready", O_WRONLY | O_CREAT, 0644));

	for (tick = 1;; tick++) {
		int ok = 1;
		struct timespec ts = { 0, 50 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		CHECK(same(priv, 16 * PG, 1), "private anon");
		CHECK(same(shm, 8 * PG, 2), "shared anon");
		shm[0] ^= 0xff; /* still writable and shared with itself */
		shm[0] ^= 0xff;
		for (int i = 0; i < 16; i++)
			CHECK(same(fpriv + i * PG, PG, i % 3 == 0 ? 200 + i : 100 + i), "private file page");
		for (int i = 0; i < 4; i++)
			CHECK(same(fshared + i * PG, PG, 108 + i), "shared file page");
		for (int i = 0; i < 2; i++)
			CHECK(same(fro + i * PG, PG, 102 + i), "read-only file page");
		CHECK(same(ro, 3 * PG, 3), "read-only anon");
		for (int i = 0; i < 8; i++)
			CHECK(same(sparse + i * (SPARSE / 8), PG, 10 + i), "sparse page");
		CHECK(sparse[PG * 3] == 0 && sparse[SPARSE - 1] == 0, "sparse hole");
		CHECK(same(dn, 2 * PG, 5), "dontneed head");
		for (size_t i = 2 * PG; i < 6 * PG; i++)
			if (dn[i]) {
				CHECK(0, "dontneed zero");
				break;
			}
		CHECK(same(gd + 2 * PG, 2 * PG, 6), "growsdown");
		for (int i = 0; i < NADV; i++)
			CHECK(same(adv[i], 4 * PG, 20 + i), "madvised region");
		if (big)
			for (size_t o = (tick * 7919 * PG) % dense, k = 0; k < 64; k++, o = (o + 104729 * PG) % dense)
				for (size_t j = o; j < o + PG; j++)
					if (big[j] != (uint8_t)(7 * 31 + j * 7 + (j >> 12))) {
						CHECK(0, "dense");
						break;
					}
		CHECK(sbrk(0) == brk0 + (1 << 20) && same(brk0, 1 << 20, 8), "brk");
		CHECK(same(stackbuf, sizeof(stackbuf), 9), "stack");
		if (ok)
			say("tick %lu ok", tick);
	}
}
