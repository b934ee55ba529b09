/* SPDX-License-Identifier: GPL-2.0 */
/*
 * tf_check ADDR NPAGES SRC CLONE...: after `criu tfork` of tf_prog (the
 * source SRC), checks through /proc/PID/mem and /proc/PID/pagemap that
 * every clone has the source's memory and that it is copy-on-write in both
 * directions: the same page frames as the source until someone writes, a
 * write by the source (SIGUSR1: page 1) seen by no clone, a write by a
 * clone (SIGUSR2: page 2) seen neither by the source nor by the other
 * clones, each write unsharing that one page only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
static int checks, failures;
#define CHECK(cond, ...) do { checks++; \
	if (cond) { printf("ok   - "); } else { printf("FAIL - "); failures++; } \
	printf(__VA_ARGS__); printf("\n"); fflush(stdout); } while (0)

static uint64_t word(pid_t pid, uint64_t addr)
{
	char p[64];
	snprintf(p, sizeof(p), "/proc/%d/mem", pid);
	int fd = open(p, O_RDONLY);
	uint64_t v = 0;
	if (fd < 0 || pread(fd, &v, 8, addr) != 8)
		v = 0xdeadull;
	if (fd >= 0)
		close(fd);
	return v;
}

/* Page frame of the page at addr in pid; 0 if not present. */
static uint64_t pfn(pid_t pid, uint64_t addr)
{
	char p[64];
	snprintf(p, sizeof(p), "/proc/%d/pagemap", pid);
	int fd = open(p, O_RDONLY);
	uint64_t e = 0;
	if (fd < 0 || pread(fd, &e, 8, addr / PAGE * 8) != 8)
		e = 0;
	if (fd >= 0)
		close(fd);
	return (e >> 63) ? (e & ((1ull << 55) - 1)) : 0;
}

static int wait_word(pid_t pid, uint64_t addr, uint64_t want)
{
	for (int i = 0; i < 500; i++) {
		if (word(pid, addr) == want)
			return 1;
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	return 0;
}

static uint64_t pattern(uint64_t off) { return 0xc0ffee0000000000ull + off / 8; }

int main(int argc, char **argv)
{
	if (argc < 5) {
		fprintf(stderr, "usage: tf_check ADDR NPAGES SRC CLONE...\n");
		return 2;
	}
	uint64_t addr = strtoull(argv[1], NULL, 16);
	int npages = atoi(argv[2]);
	pid_t src = atoi(argv[3]);
	int nc = argc - 4;
	pid_t *cl = calloc(nc, sizeof(pid_t));
	for (int i = 0; i < nc; i++)
		cl[i] = atoi(argv[4 + i]);
	for (int i = 0; i < nc; i++) {
		int same = 0, shared = 0;
		for (int pg = 0; pg < npages; pg++) {
			uint64_t off = pg * PAGE + 8 * (pg % 7);
			same += word(cl[i], addr + off) == pattern(off);
			uint64_t a = pfn(src, addr + pg * PAGE), b = pfn(cl[i], addr + pg * PAGE);
			shared += a && a == b;
		}
		CHECK(same == npages, "tfork clone %d: the source's %d pages (%d equal)", cl[i], npages, same);
		CHECK(shared == npages, "tfork clone %d: all %d pages share the source's page frames (%d do): copy-on-write, nothing copied", cl[i], npages, shared);
	}
	/* a write by the source itself */
	uint64_t p1 = addr + PAGE;
	kill(src, SIGUSR1);
	CHECK(wait_word(src, p1, 0x1111111111111111ull), "tfork: the source wrote its page 1");
	for (int i = 0; i < nc; i++) {
		CHECK(word(cl[i], p1) == pattern(PAGE), "tfork clone %d: the source's write not seen (%#llx)", cl[i], (unsigned long long)word(cl[i], p1));
		CHECK(pfn(cl[i], p1) != pfn(src, p1), "tfork clone %d: page 1 unshared from the source by its write", cl[i]);
		CHECK(pfn(cl[i], addr + 3 * PAGE) == pfn(src, addr + 3 * PAGE), "tfork clone %d: page 3 still shared with the source", cl[i]);
	}
	/* a write by the first clone */
	uint64_t p2 = addr + 2 * PAGE;
	kill(cl[0], SIGUSR2);
	CHECK(wait_word(cl[0], p2, 0x2222222222222222ull), "tfork clone %d wrote its page 2", cl[0]);
	CHECK(word(src, p2) == pattern(2 * PAGE), "tfork: clone %d's write not seen by the source", cl[0]);
	for (int i = 1; i < nc; i++)
		CHECK(word(cl[i], p2) == pattern(2 * PAGE), "tfork clone %d: clone %d's write not seen", cl[i], cl[0]);
	CHECK(pfn(cl[0], p2) != pfn(src, p2), "tfork clone %d: page 2 unshared by its write", cl[0]);
	if (nc > 1)
		CHECK(pfn(cl[1], p2) == pfn(src, p2), "tfork: page 2 still shared by the source and clone %d", cl[1]);
	printf("tf_check: %d checks, %d failed\n", checks, failures);
	return failures ? 1 : 0;
}
