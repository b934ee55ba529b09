// SPDX-License-Identifier: GPL-2.0
/*
 * Guest benchmark: taking a populated anonymous VMA of 256 MiB and 1 GiB
 *   - with /dev/vma_cherrypick (one ioctl),
 *   - with fork() of a process owning it (the time fork() takes to return),
 *   - by copying it out of the stopped source with process_vm_readv into a
 *     fresh mapping at the same address (page faults + copy).
 * Median of REPS runs each (pick and fork interleaved; process_vm_readv 3x,
 * 1x at 1 GiB); prints BENCH lines with ratios. Exit 0 unless a
 * step fails.
 */
#include "cp_util.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define A 0x300000000000ULL
#define REPS 7

struct arg {
	size_t len;
	int thp; /* 1: MADV_HUGEPAGE, 0: MADV_NOHUGEPAGE (4 KiB ptes) */
};

static void populate(uint64_t addr, size_t len)
{
	for (size_t off = 0; off < len; off += PAGE)
		*(volatile uint64_t *)(addr + off) = off ^ 0x5a5a5a5a;
}

static void setup(void *p)
{
	struct arg *a = p;

	if (mmap((void *)A, a->len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) != (void *)A)
		_exit(91);
	madvise((void *)A, a->len, a->thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	populate(A, a->len);
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, n, sizeof(*v), cmp_d);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static int bench(int dev, size_t mib, int thp)
{
	size_t len = mib << 20;
	struct arg arg = { len, thp };
	int rreps = mib >= 1024 ? 1 : 3;
	double pick[REPS], unmap[REPS], frk[REPS], readv[REPS], cow = 0;
	struct src s;
	int r;

	if (src_start(&s, setup, &arg)) {
		printf("bench: cannot start a %zu MiB source\n", mib);
		return 1;
	}
	/* The fork() subject: this process owns an identical VMA elsewhere. */
	const uint64_t F = A + (4ULL << 30);
	if (mmap((void *)F, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) != (void *)F) {
		printf("bench: mmap: %s\n", strerror(errno));
		src_kill(&s);
		return 1;
	}
	madvise((void *)F, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	populate(F, len);

	/* pick and fork interleaved, so both see the same machine state */
	for (int i = 0; i < REPS; i++) {
		double t0 = now_us();

		r = cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL);
		double t1 = now_us();
		if (r) {
			printf("bench: pick failed: %d\n", r);
			src_kill(&s);
			return 1;
		}
		pick[i] = t1 - t0;
		double u0 = now_us();
		munmap((void *)A, len);
		unmap[i] = now_us() - u0;

		t0 = now_us();
		pid_t p = fork();
		if (p == 0)
			_exit(0);
		t1 = now_us();
		waitpid(p, NULL, 0);
		frk[i] = t1 - t0;
	}
	munmap((void *)F, len);

	/* after one more pick, write one word per page: every page takes its COW fault */
	if (cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL) == 0) {
		double c0 = now_us();

		for (size_t off = 0; off < len; off += PAGE)
			*(volatile uint64_t *)(A + off) = 1;
		cow = now_us() - c0;
		munmap((void *)A, len);
	}

	for (int i = 0; i < rreps; i++) {
		double t0 = now_us();
		void *p = mmap((void *)A, len, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
		if (p == (void *)A)
			madvise(p, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
		struct iovec l = { p, len }, rr = { (void *)A, len };
		ssize_t n = process_vm_readv(s.pid, &l, 1, &rr, 1, 0);
		double t1 = now_us();

		if (p != (void *)A || n != (ssize_t)len) {
			printf("bench: process_vm_readv: %zd %s\n", n, strerror(errno));
			src_kill(&s);
			return 1;
		}
		readv[i] = t1 - t0;
		munmap(p, len);
	}
	src_kill(&s);

	double P = median(pick, REPS), Fk = median(frk, REPS), R = median(readv, rreps);
	printf("BENCH size=%zuMiB pages=%s pick_ms=%.2f fork_ms=%.2f readv_ms=%.1f "
	       "fork/pick=%.2f readv/pick=%.0f munmap_after_pick_ms=%.2f cow_all_pages_ms=%.0f\n",
	       mib, thp ? "thp" : "4k", P / 1e3, Fk / 1e3, R / 1e3, Fk / P, R / P,
	       median(unmap, REPS) / 1e3, cow / 1e3);
	return 0;
}

int main(void)
{
	int dev = cp_open(), rc = 0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (dev < 0) {
		printf("bench: no %s\n", VMA_CP_DEVICE);
		return 1;
	}
	printf("# benchmark (median of %d; TCG: absolute times are slow, compare ratios)\n", REPS);
	rc |= bench(dev, 256, 0);
	rc |= bench(dev, 1024, 0);
	rc |= bench(dev, 256, 1);
	rc |= bench(dev, 1024, 1);
	return rc;
}
