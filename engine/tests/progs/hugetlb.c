/* hugetlb memory, for engine/tests/hugetlb.rs: a private MAP_HUGETLB
 * anonymous mapping of two 2 MiB pages, a shared one of one page, and a
 * memfd_create(MFD_HUGETLB) of one page mapped shared, its fd kept (the
 * word "memfd" in ./mode leaves the memfd out; "anon" leaves the anonymous
 * ones out). Each is filled with its own pattern; every tick the program
 * checks every pattern and a per-mapping counter it bumps, that each is
 * still backed by 2 MiB pages (KernelPageSize in /proc/self/smaps) and
 * still private or shared as made, and reads the memfd through its fd
 * too. "tick N ok" / "FAIL ..." in ./progress.log, ./ready after the
 * first tick.
 * Build: gcc -O2 -static -o hugetlb hugetlb.c */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define HP (2UL << 20)

static void nap_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

struct area {
	const char *name;
	unsigned char *p;
	size_t len;
	int shared;
	unsigned seed;
	unsigned long count;
};

static unsigned char pat(unsigned seed, size_t i)
{
	return (unsigned char)((i * 31 + seed) ^ (i >> 12));
}

static void fill(struct area *a)
{
	for (size_t i = 0; i < a->len; i++)
		a->p[i] = pat(a->seed, i);
}

/* KernelPageSize and sharing of the mapping at p, from smaps */
static int smaps_of(void *p, unsigned long *kps, int *shared)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	int in = 0;
	*kps = 0;
	*shared = -1;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		char perms[8];
		if (sscanf(line, "%lx-%lx %7s", &s, &e, perms) == 3) {
			in = (uintptr_t)p == s;
			if (in)
				*shared = perms[3] == 's';
			continue;
		}
		if (in && sscanf(line, "KernelPageSize: %lu kB", kps) == 1)
			break;
	}
	fclose(f);
	return 0;
}

static int check(struct area *a, char *why, size_t n)
{
	unsigned long kps;
	int shared;
	/* the counter lives in the last 8 bytes */
	unsigned long c;
	memcpy(&c, a->p + a->len - 8, 8);
	if (c != a->count) {
		snprintf(why, n, "%s: counter %lu, want %lu", a->name, c, a->count);
		return -1;
	}
	for (size_t i = 0; i < a->len - 8; i += 4093)
		if (a->p[i] != pat(a->seed, i)) {
			snprintf(why, n, "%s: byte %zu", a->name, i);
			return -1;
		}
	if (smaps_of(a->p, &kps, &shared) || kps != 2048 || shared != a->shared) {
		snprintf(why, n, "%s: KernelPageSize %lu kB, shared %d (want 2048, %d)", a->name, kps, shared, a->shared);
		return -1;
	}
	a->count++;
	memcpy(a->p + a->len - 8, &a->count, 8);
	return 0;
}

int main(void)
{
	char mode[32] = "";
	FILE *mf = fopen("mode", "r");
	if (mf) {
		if (!fgets(mode, sizeof(mode), mf))
			mode[0] = 0;
		fclose(mf);
	}
	int with_anon = !strstr(mode, "memfd");
	int with_memfd = !strstr(mode, "anon");
	struct area areas[3];
	int n = 0, mfd = -1;
	FILE *log = fopen("progress.log", "a");
	if (!log)
		return 1;
	setvbuf(log, NULL, _IOLBF, 0);
	if (with_anon) {
		void *p = mmap(NULL, 2 * HP, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
		void *q = mmap(NULL, HP, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
		if (p == MAP_FAILED || q == MAP_FAILED) {
			fprintf(log, "FAIL setup: MAP_HUGETLB: %s\n", strerror(errno));
			return 1;
		}
		areas[n++] = (struct area){ "private", p, 2 * HP, 0, 1, 0 };
		areas[n++] = (struct area){ "shared", q, HP, 1, 2, 0 };
	}
	if (with_memfd) {
		mfd = memfd_create("huge", MFD_HUGETLB);
		void *r = MAP_FAILED;
		if (mfd >= 0 && ftruncate(mfd, HP) == 0)
			r = mmap(NULL, HP, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
		if (r == MAP_FAILED) {
			fprintf(log, "FAIL setup: memfd MFD_HUGETLB: %s\n", strerror(errno));
			return 1;
		}
		areas[n++] = (struct area){ "memfd", r, HP, 1, 3, 0 };
	}
	for (int i = 0; i < n; i++) {
		fill(&areas[i]);
		memset(areas[i].p + areas[i].len - 8, 0, 8);
	}
	for (unsigned long tick = 1;; tick++) {
		char why[256] = "";
		for (int i = 0; i < n && !why[0]; i++)
			check(&areas[i], why, sizeof(why));
		if (!why[0] && mfd >= 0) {
			unsigned char b[64];
			if (pread(mfd, b, sizeof(b), 4096) != sizeof(b))
				snprintf(why, sizeof(why), "memfd pread: %s", strerror(errno));
			else
				for (int i = 0; i < 64; i++)
					if (b[i] != pat(3, 4096 + i)) {
						snprintf(why, sizeof(why), "memfd pread byte %d", i);
						break;
					}
		}
		if (why[0])
			fprintf(log, "FAIL tick %lu %s\n", tick, why);
		else
			fprintf(log, "tick %lu ok\n", tick);
		if (tick == 1)
			close(open("ready", O_CREAT | O_WRONLY, 0644));
		nap_ms(100);
	}
}
