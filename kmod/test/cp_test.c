// SPDX-License-Identifier: GPL-2.0
/*
 * Guest functional tests for /dev/vma_cherrypick. Run as root in the qemu
 * guest by kmod/test.sh; exits 0 when every check passes and prints
 * "N passed, M failed".
 *   cp_test --no-module   checks the device is absent (before insmod)
 */
#include "cp_util.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define BASE 0x200000000000ULL
#ifndef MADV_SOFT_OFFLINE
#define MADV_SOFT_OFFLINE 101
#endif
static int dev = -1;

static void *map_at(uint64_t addr, size_t len, int prot, int flags, int fd, off_t off)
{
	void *p = mmap((void *)addr, len, prot, flags | MAP_FIXED_NOREPLACE, fd, off);

	if (p != (void *)addr) {
		fprintf(stderr, "mmap at %#lx: %s\n", (unsigned long)addr, strerror(errno));
		_exit(90);
	}
	return p;
}

static void fill(uint64_t addr, size_t pages, uint32_t seed)
{
	for (size_t i = 0; i < pages; i++) {
		uint32_t *w = (uint32_t *)(addr + i * PAGE);

		for (size_t j = 0; j < PAGE / 4; j += 64)
			w[j] = seed * 1000003u + (uint32_t)(i * 131 + j);
	}
}

static int verify(uint64_t addr, size_t pages, uint32_t seed)
{
	for (size_t i = 0; i < pages; i++) {
		uint32_t *w = (uint32_t *)(addr + i * PAGE);

		for (size_t j = 0; j < PAGE / 4; j += 64)
			if (w[j] != seed * 1000003u + (uint32_t)(i * 131 + j))
				return 0;
	}
	return 1;
}

/* ------------------------------------------------------------------ sources */

struct anon_arg {
	uint64_t addr;
	size_t pages;
	uint32_t seed;
	int prot_after;	/* 0: leave RW */
	int madv;	/* madvise after fill, 0 = none */
	int madv_pre;	/* madvise before fill, 0 = none */
};

static void setup_anon(void *p)
{
	struct anon_arg *a = p;

	map_at(a->addr, a->pages * PAGE, PROT_READ | PROT_WRITE,
	       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (a->madv_pre)
		madvise((void *)a->addr, a->pages * PAGE, a->madv_pre);
	fill(a->addr, a->pages, a->seed);
	if (a->madv)
		madvise((void *)a->addr, a->pages * PAGE, a->madv);
	if (a->prot_after)
		mprotect((void *)a->addr, a->pages * PAGE, a->prot_after);
}

/* ------------------------------------------------------------------ tests */

static void test_cow_anon(void)
{
	const uint64_t A = BASE;
	const size_t N = 64;
	struct anon_arg arg = { A, N, 7, 0, 0, 0 };
	struct src s;
	struct vma_cherrypick_args out;
	int r, shared = 0, v;
	uint8_t b;

	printf("# copy-on-write, anonymous VMA, %zu pages\n", N);
	if (src_start(&s, setup_anon, &arg)) {
		CHECK(0, "start source");
		return;
	}
	long rss_before = meminfo_kb("MemFree");
	r = cp_pick(dev, s.pidfd, A, 0, -1, 0, &out);
	CHECK(r == 0 && out.out_len == N * PAGE, "pick anon VMA: r=%d len=%llu", r,
	      (unsigned long long)out.out_len);
	if (r) {
		src_kill(&s);
		return;
	}
	long rss_after = meminfo_kb("MemFree");
	CHECK(verify(A, N, 7), "caller sees the source's contents");
	for (size_t i = 0; i < N; i++) {
		uint64_t p1 = pfn_of(0, A + i * PAGE), p2 = pfn_of(s.pid, A + i * PAGE);

		shared += (p1 && p1 == p2);
	}
	CHECK(shared == (int)N, "all %zu pages share frames with the source (pagemap): %d", N, shared);
	long sh = smaps_field_kb(0, A, "Shared_Dirty:");
	CHECK(sh == (long)(N * PAGE / 1024), "smaps Shared_Dirty of the picked VMA = %ld kB", sh);
	CHECK(rss_before - rss_after < (long)(N * PAGE / 1024) / 2,
	      "no page copied: MemFree drop %ld kB", rss_before - rss_after);

	/* caller writes page 0: invisible to the source */
	*(volatile uint8_t *)A = 0xAA;
	r = peek(s.pid, A, &b, 1);
	CHECK(r == 0 && b != 0xAA, "caller write invisible to the source (src byte %#x)", b);
	CHECK(pfn_of(0, A) != pfn_of(s.pid, A), "caller's written page got its own frame");

	/* source writes page 1 (a real store by the source's thread) */
	v = *(volatile uint8_t *)(A + PAGE);
	r = src_write(&s, A + PAGE, 0x55);
	CHECK(r == 0 && *(volatile uint8_t *)(A + PAGE) == v,
	      "source write invisible to the caller (caller byte %#x, was %#x)",
	      *(volatile uint8_t *)(A + PAGE), v);
	r = peek(s.pid, A + PAGE, &b, 1);
	CHECK(r == 0 && b == 0x55, "source sees its own write (%#x)", b);

	shared = 0;
	for (size_t i = 2; i < N; i++) {
		uint64_t p1 = pfn_of(0, A + i * PAGE), p2 = pfn_of(s.pid, A + i * PAGE);

		shared += (p1 && p1 == p2);
	}
	CHECK(shared == (int)N - 2, "the %zu unwritten pages are still shared: %d", N - 2, shared);

	/* the picked VMA outlives the source */
	src_kill(&s);
	*(volatile uint8_t *)A = (uint8_t)(7 * 1000003u);	/* restore page 0's first byte */
	CHECK(verify(A, N, 7), "contents intact after the source died");
	munmap((void *)A, N * PAGE);
}

static void test_readonly_and_flags(void)
{
	const uint64_t A = BASE + 0x10000000;
	struct anon_arg arg = { A, 8, 9, PROT_READ, 0, 0 };
	struct src s;
	int r;

	printf("# read-only anonymous VMA keeps its protection\n");
	if (src_start(&s, setup_anon, &arg)) {
		CHECK(0, "start source");
		return;
	}
	r = cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL);
	CHECK(r == 0 && verify(A, 8, 9), "pick read-only VMA: r=%d", r);
	uint64_t e = 0, st = maps_find(getpid(), "", NULL);
	(void)st;
	char path[64], line[256];
	FILE *f;
	int ro = 0;

	snprintf(path, sizeof(path), "/proc/self/maps");
	f = fopen(path, "r");
	while (f && fgets(line, sizeof(line), f)) {
		uint64_t s0;
		char perms[8];

		if (sscanf(line, "%lx-%lx %7s", &s0, &e, perms) == 3 && s0 == A)
			ro = !strncmp(perms, "r--p", 4);
	}
	if (f)
		fclose(f);
	CHECK(ro, "picked VMA is r--p in /proc/self/maps");
	src_kill(&s);
	munmap((void *)A, 8 * PAGE);
}

struct file_arg {
	uint64_t addr;
	const char *path;
	size_t pages;
	int shared;
};

static void setup_file(void *p)
{
	struct file_arg *a = p;
	int fd = open(a->path, O_RDWR);

	map_at(a->addr, a->pages * PAGE, PROT_READ | PROT_WRITE,
	       a->shared ? MAP_SHARED : MAP_PRIVATE, fd, PAGE);
	close(fd);
	/* dirty pages 1 and 3: private -> anonymous COW copies; shared -> file */
	*(volatile uint8_t *)(a->addr + 1 * PAGE) = 0x11;
	*(volatile uint8_t *)(a->addr + 3 * PAGE) = 0x33;
}

static int make_file(const char *path, size_t pages)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	uint8_t buf[PAGE];

	for (size_t i = 0; i < pages; i++) {
		memset(buf, (int)(0x80 + i), sizeof(buf));
		if (write(fd, buf, PAGE) != (ssize_t)PAGE)
			return -1;
	}
	return fd;
}

static uint8_t file_byte(int fd, off_t off)
{
	uint8_t b = 0;

	if (pread(fd, &b, 1, off) != 1)
		return 0;
	return b;
}

static void test_file_backed(void)
{
	const uint64_t A = BASE + 0x20000000, B = BASE + 0x21000000;
	const char *path = "/tmp/cp_file";
	int fd = make_file(path, 9);
	struct file_arg pa = { A, path, 8, 0 }, sa = { B, path, 8, 1 };
	struct src s, s2;
	char maps[64], line[512];
	int r, ok = 0;

	printf("# file-backed VMAs keep their file and offset\n");
	if (src_start(&s, setup_file, &pa) || src_start(&s2, setup_file, &sa)) {
		CHECK(0, "start sources");
		return;
	}
	r = cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL);
	CHECK(r == 0, "pick MAP_PRIVATE file VMA: r=%d", r);
	if (!r) {
		uint8_t *m = (uint8_t *)A;

		CHECK(m[0] == 0x81 && m[PAGE] == 0x11 && m[2 * PAGE] == 0x83 &&
		      m[3 * PAGE] == 0x33 && m[7 * PAGE] == 0x88,
		      "private file contents: file pages + the source's dirty pages");
		snprintf(maps, sizeof(maps), "/proc/self/maps");
		FILE *f = fopen(maps, "r");
		while (f && fgets(line, sizeof(line), f)) {
			uint64_t s0, e0, off;
			char perms[8];

			if (sscanf(line, "%lx-%lx %7s %lx", &s0, &e0, perms, &off) == 4 && s0 == A)
				ok = strstr(line, path) && off == PAGE && !strncmp(perms, "rw-p", 4);
		}
		if (f)
			fclose(f);
		CHECK(ok, "maps: same file, offset 0x1000, rw-p");
		m[2 * PAGE] = 0x22;
		CHECK(file_byte(fd, 3 * PAGE) == 0x83, "caller's write to a private file page does not reach the file");
		munmap((void *)A, 8 * PAGE);
	}
	r = cp_pick(dev, s2.pidfd, B, 0, -1, 0, NULL);
	CHECK(r == 0, "pick MAP_SHARED file VMA: r=%d", r);
	if (!r) {
		uint8_t *m = (uint8_t *)B;
		uint8_t b = 0;

		CHECK(m[PAGE] == 0x11 && m[3 * PAGE] == 0x33, "shared file contents");
		m[5 * PAGE] = 0x55;
		peek(s2.pid, B + 5 * PAGE, &b, 1);
		CHECK(b == 0x55 && file_byte(fd, 6 * PAGE) == 0x55,
		      "shared mapping stays shared (as after fork): source sees %#x", b);
		munmap((void *)B, 8 * PAGE);
	}
	src_kill(&s);
	src_kill(&s2);
	close(fd);
}

static void setup_shared_anon(void *p)
{
	uint64_t a = *(uint64_t *)p;

	map_at(a, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	fill(a, 4, 29);
}

static void test_shared_anon(void)
{
	uint64_t A = BASE + 0x22000000;
	struct src s;
	uint8_t b = 0;
	int r;

	printf("# MAP_SHARED|MAP_ANONYMOUS (shmem) stays shared\n");
	if (src_start(&s, setup_shared_anon, &A)) {
		CHECK(0, "start source");
		return;
	}
	r = cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL);
	CHECK(r == 0 && verify(A, 4, 29), "pick shared anonymous VMA: r=%d", r);
	if (!r) {
		*(volatile uint8_t *)(A + 2 * PAGE + 1) = 0x77;
		peek(s.pid, A + 2 * PAGE + 1, &b, 1);
		CHECK(b == 0x77, "caller's write visible to the source (shared, as after fork)");
		r = src_write(&s, A + 3 * PAGE + 1, 0x66);
		CHECK(r == 0 && *(volatile uint8_t *)(A + 3 * PAGE + 1) == 0x66,
		      "source's write visible to the caller");
		munmap((void *)A, 4 * PAGE);
	}
	src_kill(&s);
}

static void test_map_file_mode(void)
{
	const uint64_t A = BASE + 0x30000000;
	const char *path = "/tmp/cp_file2";
	int fd = make_file(path, 9);
	struct file_arg pa = { A, path, 8, 0 };
	struct vma_cherrypick_args out;
	struct src s;
	int r;

	printf("# VMA_CP_MAP_FILE: map the caller's file, copy only anonymous pages\n");
	if (src_start(&s, setup_file, &pa)) {
		CHECK(0, "start source");
		return;
	}
	/* the source reads page 5 so that a file page is present there too */
	uint8_t b;
	peek(s.pid, A + 5 * PAGE, &b, 1);
	int fd2 = open(path, O_RDONLY);
	r = cp_pick(dev, s.pidfd, A, VMA_CP_MAP_FILE, fd2, PAGE, &out);
	CHECK(r == 0 && out.out_pages == 2 && out.out_len == 8 * PAGE,
	      "map-file pick: r=%d, %llu anonymous pages copied (want 2)", r,
	      (unsigned long long)out.out_pages);
	if (!r) {
		uint8_t *m = (uint8_t *)A;

		CHECK(m[0] == 0x81 && m[PAGE] == 0x11 && m[2 * PAGE] == 0x83 &&
		      m[3 * PAGE] == 0x33 && m[5 * PAGE] == 0x86,
		      "contents: file pages from the file, dirty pages from the source");
		CHECK(pfn_of(0, A + PAGE) != pfn_of(s.pid, A + PAGE), "anonymous pages are copies");
		m[PAGE] = 0x99;
		peek(s.pid, A + PAGE, &b, 1);
		CHECK(b == 0x11 && file_byte(fd, 2 * PAGE) == 0x82, "caller's writes stay private");
		munmap((void *)A, 8 * PAGE);
	}
	r = cp_pick(dev, s.pidfd, A, VMA_CP_MAP_FILE, 12345, PAGE, NULL);
	CHECK(r == -EBADF, "map-file with a bad file fd -> EBADF (r=%d)", r);
	close(fd2);
	src_kill(&s);
	close(fd);
}

#define MANY 300
static void setup_many(void *p)
{
	(void)p;
	for (int i = 0; i < MANY; i++) {
		uint64_t a = BASE + 0x40000000 + (uint64_t)i * 4 * PAGE;

		map_at(a, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		fill(a, 2, 1000 + i);
	}
}

static void test_many(void)
{
	struct src s;
	int okp = 0, okv = 0;

	printf("# many VMAs\n");
	if (src_start(&s, setup_many, NULL)) {
		CHECK(0, "start source");
		return;
	}
	for (int i = 0; i < MANY; i++) {
		uint64_t a = BASE + 0x40000000 + (uint64_t)i * 4 * PAGE;

		okp += cp_pick(dev, s.pidfd, a, 0, -1, 0, NULL) == 0;
	}
	src_kill(&s);
	for (int i = 0; i < MANY; i++) {
		uint64_t a = BASE + 0x40000000 + (uint64_t)i * 4 * PAGE;

		okv += verify(a, 2, 1000 + i);
		munmap((void *)a, 2 * PAGE);
	}
	CHECK(okp == MANY && okv == MANY, "%d VMAs picked (%d ok), contents ok for %d", MANY, okp, okv);
}

/* Child drops every capability (setuid to nobody), then tries a pick. */
static int pick_unprivileged(int pidfd, uint64_t addr)
{
	pid_t p = fork();
	int st;

	if (p == 0) {
		if (setgid(65534) || setuid(65534))
			_exit(98);
		int r = cp_pick(dev, pidfd, addr, 0, -1, 0, NULL);

		_exit(r == -EPERM ? 0 : 1);
	}
	waitpid(p, &st, 0);
	return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

/* Child keeps only CAP_CHECKPOINT_RESTORE as uid nobody: may not ptrace root's source. */
static int pick_cr_only_other_uid(int pidfd, uint64_t addr)
{
	pid_t p = fork();
	int st;

	if (p == 0) {
		struct { uint32_t version; int pid; } hdr = { 0x20080522, 0 };
		struct { uint32_t eff, perm, inh; } data[2] = { { 0, 0, 0 }, { 0, 0, 0 } };

		if (prctl(PR_SET_KEEPCAPS, 1) || setgid(65534) || setuid(65534))
			_exit(97);
		data[1].eff = data[1].perm = 1u << (40 - 32); /* CAP_CHECKPOINT_RESTORE */
		if (syscall(SYS_capset, &hdr, data))
			_exit(98);
		int r = cp_pick(dev, pidfd, addr, 0, -1, 0, NULL);

		_exit(r == -EPERM ? 0 : 1);
	}
	waitpid(p, &st, 0);
	return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static void setup_kinds(void *p)
{
	uint64_t a = BASE + 0x50000000;

	(void)p;
	setup_anon(&(struct anon_arg){ a, 4, 3, 0, 0, 0 });
	setup_anon(&(struct anon_arg){ a + 0x100000, 4, 4, 0, MADV_DONTFORK, 0 });
	setup_anon(&(struct anon_arg){ a + 0x200000, 4, 5, 0, MADV_WIPEONFORK, 0 });
	void *h = mmap((void *)(a + 0x40000000), 2 << 20, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_FIXED_NOREPLACE, -1, 0);
	if (h != MAP_FAILED)
		*(volatile char *)h = 1;
}

static void test_refusals(void)
{
	const uint64_t A = BASE + 0x50000000;
	struct vma_cherrypick_args a;
	struct src s;
	int r;

	printf("# refusals\n");
	if (src_start(&s, setup_kinds, NULL)) {
		CHECK(0, "start source");
		return;
	}
	CHECK(pick_unprivileged(s.pidfd, A), "no CAP_CHECKPOINT_RESTORE/CAP_SYS_ADMIN -> EPERM");
	CHECK(pick_cr_only_other_uid(s.pidfd, A),
	      "CAP_CHECKPOINT_RESTORE but no ptrace access to the source (other uid) -> EPERM");
	r = cp_pick(dev, s.pidfd, A + PAGE, 0, -1, 0, NULL);
	CHECK(r == -ENXIO, "address inside a VMA, not its start -> ENXIO (r=%d)", r);
	r = cp_pick(dev, s.pidfd, A + 0x10000000, 0, -1, 0, NULL);
	CHECK(r == -ENXIO, "address with no VMA -> ENXIO (r=%d)", r);

	map_at(A + 2 * PAGE, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	r = cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL);
	CHECK(r == -EEXIST, "destination range busy -> EEXIST (r=%d)", r);
	munmap((void *)(A + 2 * PAGE), PAGE);

	int self = pidfd_open_(getpid());
	map_at(A + 0x30000000, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	r = cp_pick(dev, self, A + 0x30000000, 0, -1, 0, NULL);
	CHECK(r == -ELOOP, "source is the caller's own mm -> ELOOP (r=%d)", r);
	munmap((void *)(A + 0x30000000), PAGE);
	close(self);

	r = src_cont(&s);
	r = r ? -999 : cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL);
	CHECK(r == -EBUSY, "source not stopped (sleeping in read) -> EBUSY (r=%d)", r);
	src_stop(&s);

	uint64_t vvar = maps_find(s.pid, "[vvar]", NULL);
	r = vvar ? cp_pick(dev, s.pidfd, vvar, 0, -1, 0, NULL) : -999;
	CHECK(r == -EOPNOTSUPP, "VM_IO|VM_PFNMAP VMA ([vvar] at %#lx) -> EOPNOTSUPP (r=%d)",
	      (unsigned long)vvar, r);
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/maps", s.pid);
	r = pfn_of(s.pid, A + 0x40000000) ? cp_pick(dev, s.pidfd, A + 0x40000000, 0, -1, 0, NULL) : -999;
	CHECK(r == -EOPNOTSUPP, "hugetlb VMA -> EOPNOTSUPP (r=%d)", r);

	r = cp_pick(dev, s.pidfd, A + 0x100000, 0, -1, 0, NULL);
	CHECK(r == -EACCES, "VM_DONTCOPY (MADV_DONTFORK) VMA -> EACCES (r=%d)", r);
	r = cp_pick(dev, s.pidfd, A + 0x100000, VMA_CP_ALLOW_DONTCOPY, -1, 0, NULL);
	CHECK(r == 0 && verify(A + 0x100000, 4, 4), "VM_DONTCOPY with VMA_CP_ALLOW_DONTCOPY -> ok (r=%d)", r);
	munmap((void *)(A + 0x100000), 4 * PAGE);
	r = cp_pick(dev, s.pidfd, A + 0x200000, 0, -1, 0, NULL);
	CHECK(r == 0 && *(volatile uint32_t *)(A + 0x200000) == 0,
	      "VM_WIPEONFORK VMA -> picked empty, as fork does (r=%d)", r);
	munmap((void *)(A + 0x200000), 4 * PAGE);

	/* EINVAL family */
	a = (struct vma_cherrypick_args){ .size = sizeof(a), .src_pidfd = s.pidfd, .file_fd = -1,
					  .src_addr = A, .dst_addr = A + PAGE };
	r = ioctl(dev, VMA_CP_IOC_PICK, &a) ? -errno : 0;
	CHECK(r == -EINVAL, "dst_addr != src_addr -> EINVAL (r=%d)", r);
	r = cp_pick(dev, s.pidfd, A, 0x80, -1, 0, NULL);
	CHECK(r == -EINVAL, "unknown flag -> EINVAL (r=%d)", r);
	r = cp_pick(dev, s.pidfd, A + 1, 0, -1, 0, NULL);
	CHECK(r == -EINVAL, "unaligned address -> EINVAL (r=%d)", r);
	a = (struct vma_cherrypick_args){ .size = 8, .src_pidfd = s.pidfd, .src_addr = A, .dst_addr = A };
	r = ioctl(dev, VMA_CP_IOC_PICK, &a) ? -errno : 0;
	CHECK(r == -EINVAL, "wrong struct size -> EINVAL (r=%d)", r);
	r = ioctl(dev, VMA_CP_IOC_PICK, (void *)8) ? -errno : 0;
	CHECK(r == -EFAULT, "bad argument pointer -> EFAULT (r=%d)", r);
	r = ioctl(dev, _IO(VMA_CP_IOC_MAGIC, 99)) ? -errno : 0;
	CHECK(r == -ENOTTY, "unknown ioctl -> ENOTTY (r=%d)", r);

	int nul = open("/dev/null", O_RDONLY);
	r = cp_pick(dev, nul, A, 0, -1, 0, NULL);
	CHECK(r == -EBADF, "not a pidfd -> EBADF (r=%d)", r);
	close(nul);

	/* zombie (not reaped): no mm; reaped: no task */
	pid_t z = s.pid;
	kill(z, SIGKILL);
	usleep(100000);
	r = cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL);
	CHECK(r == -ESRCH, "zombie source -> ESRCH (r=%d)", r);
	waitpid(z, NULL, 0);
	r = cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL);
	CHECK(r == -ESRCH, "reaped source -> ESRCH (r=%d)", r);
	s.pid = -1;
	src_kill(&s);
}

/* The source gets SIGKILLed while a pick runs: the kill is fired by a thread
 * released just before the ioctl, after a delay spread over 0..2x the time
 * one pick takes, so it lands before, during and after the ioctl. */
struct killer {
	pid_t pid;
	int delay_us;
	volatile int go, ready;
	double t_kill;
};

static void *killer_thread(void *p)
{
	struct killer *k = p;
	cpu_set_t cpus;

	/* run on the other vCPU than the picker, so the kill really overlaps */
	CPU_ZERO(&cpus);
	CPU_SET(1, &cpus);
	sched_setaffinity(0, sizeof(cpus), &cpus);
	k->ready = 1;
	while (!k->go)
		;
	if (k->delay_us) {
		double until = now_us() + k->delay_us;

		while (now_us() < until)
			;
	}
	kill(k->pid, SIGKILL);
	k->t_kill = now_us();
	return NULL;
}

static void test_source_exit_race(void)
{
	const uint64_t A = BASE + 0x60000000;
	const size_t N = 4096; /* 16 MiB of 4 KiB pages: a pick walks 4096 ptes */
	int n_ok = 0, n_srch = 0, n_busy = 0, n_other = 0, errs = 0, intact = 0, rounds = 36;
	int n_during = 0, n_pre = 0, n_pre_refused = 0;
	double pick_us = 1000;
	cpu_set_t cpus, old;

	printf("# the source exits while cherry-picks run\n");
	sched_getaffinity(0, sizeof(old), &old);
	CPU_ZERO(&cpus);
	CPU_SET(0, &cpus);
	sched_setaffinity(0, sizeof(cpus), &cpus);
	{
		struct anon_arg arg = { A, N, 11, 0, 0, MADV_NOHUGEPAGE };
		struct src s;

		if (!src_start(&s, setup_anon, &arg)) {
			double t0 = now_us();

			if (cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL) == 0) {
				pick_us = now_us() - t0;
				munmap((void *)A, N * PAGE);
			}
			src_kill(&s);
		}
		printf("#   one pick of %zu MiB takes %.0f us here; kills land within 0..2x that\n",
		       N * PAGE >> 20, pick_us);
	}
	for (int i = 0; i < rounds; i++) {
		struct anon_arg arg = { A, N, 11, 0, 0, MADV_NOHUGEPAGE };
		struct src s;
		pthread_t t;

		if (src_start(&s, setup_anon, &arg)) {
			errs++;
			continue;
		}
		struct killer k = { s.pid, (int)(pick_us * 2 * (i % 30) / 30), 0, 0, 0 };
		pthread_create(&t, NULL, killer_thread, &k);
		while (!k.ready)
			;
		int pre = i % 6 == 5;	/* every 6th round: SIGKILL already sent */
		if (pre) {
			kill(s.pid, SIGKILL);
			n_pre++;
		}
		k.go = 1;
		double t0 = now_us();
		int r = cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL);
		double t1 = now_us();
		pthread_join(t, NULL);
		n_during += k.t_kill > t0 && k.t_kill < t1;
		n_pre_refused += pre && (r == -EBUSY || r == -ESRCH);
		if (r == 0) {
			n_ok++;
			src_kill(&s); /* the source is gone: our copy must not be */
			intact += verify(A, N, 11);
			munmap((void *)A, N * PAGE);
			continue;
		}
		if (r == -ESRCH)
			n_srch++;
		else if (r == -EBUSY)
			n_busy++;
		else {
			n_other++;
			printf("#   round %d: unexpected r=%d\n", i, r);
		}
		src_kill(&s);
	}
	sched_setaffinity(0, sizeof(old), &old);
	CHECK(n_pre_refused == n_pre, "%d/%d picks from an already-SIGKILLed source refused (EBUSY/ESRCH)",
	      n_pre_refused, n_pre);
	CHECK(n_other == 0 && errs == 0 && intact == n_ok,
	      "%d rounds: %d picks succeeded (all intact after the source died: %d), "
	      "%d ESRCH, %d EBUSY, %d other; %d kills returned while the ioctl ran",
	      rounds, n_ok, intact, n_srch, n_busy, n_other, n_during);
}

static void test_leaks(void)
{
	const uint64_t A = BASE + 0x70000000;
	struct anon_arg arg = { A, 4, 13, 0, 0, 0 };
	const char *caches[] = { "vm_area_struct", "anon_vma", "anon_vma_chain", "filp" };
	long before[4], after[4];
	struct src s;
	int bad = 0;
	const int n = 10000;

	printf("# leaks over %d cherry-picks\n", n);
	if (src_start(&s, setup_anon, &arg)) {
		CHECK(0, "start source");
		return;
	}
	for (int i = 0; i < 500; i++) {	/* warm caches */
		bad += cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL) != 0;
		munmap((void *)A, 4 * PAGE);
	}
	sync();
	long free0 = meminfo_kb("MemFree"), slab0 = meminfo_kb("Slab"),
	     commit0 = meminfo_kb("Committed_AS");
	for (int c = 0; c < 4; c++)
		before[c] = slab_active(caches[c]);
	double t0 = now_us();
	for (int i = 0; i < n; i++) {
		bad += cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL) != 0;
		if (i % 97 == 0)
			*(volatile uint8_t *)A = 1; /* a COW break now and then */
		munmap((void *)A, 4 * PAGE);
	}
	double t1 = now_us();
	long free1 = meminfo_kb("MemFree"), slab1 = meminfo_kb("Slab"),
	     commit1 = meminfo_kb("Committed_AS");
	for (int c = 0; c < 4; c++)
		after[c] = slab_active(caches[c]);
	CHECK(bad == 0, "%d picks + munmaps, %d failed (%.1f us per pick+munmap)", n, bad, (t1 - t0) / n);
	CHECK(free0 - free1 < 2048, "MemFree stable: %ld -> %ld kB", free0, free1);
	CHECK(slab1 - slab0 < 1024, "Slab stable: %ld -> %ld kB", slab0, slab1);
	CHECK(labs(commit1 - commit0) < 256, "Committed_AS stable (VM_ACCOUNT balanced): %ld -> %ld kB",
	      commit0, commit1);
	for (int c = 0; c < 4; c++)
		CHECK(before[c] < 0 || after[c] - before[c] < 200, "slab %s active objects: %ld -> %ld",
		      caches[c], before[c], after[c]);
	src_kill(&s);
}

static void test_thp(void)
{
	const uint64_t A = BASE + 0x80000000; /* 2 MiB aligned */
	const size_t N = 2048;                 /* 8 MiB */
	struct anon_arg arg = { A, N, 17, 0, 0, MADV_HUGEPAGE };
	struct src s;
	uint8_t b;
	int r;

	printf("# transparent huge pages (MADV_HUGEPAGE)\n");
	if (src_start(&s, setup_anon, &arg)) {
		CHECK(0, "start source");
		return;
	}
	long src_thp = smaps_field_kb(s.pid, A, "AnonHugePages:");
	r = cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL);
	CHECK(r == 0 && verify(A, N, 17), "pick THP-backed VMA (source AnonHugePages %ld kB): r=%d",
	      src_thp, r);
	if (r) {
		src_kill(&s);
		return;
	}
	long dst_thp = smaps_field_kb(0, A, "AnonHugePages:");
	CHECK(src_thp > 0 && dst_thp == src_thp, "huge pmds shared as huge pages: caller %ld kB",
	      dst_thp);
	CHECK(pfn_of(0, A + 5 * PAGE) == pfn_of(s.pid, A + 5 * PAGE), "same frames (pagemap)");
	*(volatile uint8_t *)(A + 3 * PAGE) = 0xAB;
	peek(s.pid, A + 3 * PAGE, &b, 1);
	CHECK(b != 0xAB, "caller write into a huge page invisible to the source");
	uint8_t before = *(volatile uint8_t *)(A + 600 * PAGE);
	r = src_write(&s, A + 600 * PAGE, (uint8_t)(before + 1));
	CHECK(r == 0 && *(volatile uint8_t *)(A + 600 * PAGE) == before,
	      "source write into a huge page invisible to the caller");
	src_kill(&s);
	*(volatile uint8_t *)(A + 3 * PAGE) = (uint8_t)(17 * 1000003u + 3 * 131);
	CHECK(verify(A, N, 17), "contents intact after the source died");
	munmap((void *)A, N * PAGE);
}

static void *sleeper(void *p)
{
	(void)p;
	for (;;)
		pause();
	return NULL;
}

static void setup_threads(void *p)
{
	pthread_t t;

	setup_anon(p);
	for (int i = 0; i < 3; i++)
		pthread_create(&t, NULL, sleeper, NULL);
}

static void test_stop_kinds(void)
{
	const uint64_t A = BASE + 0x90000000;
	struct anon_arg arg = { A, 16, 19, 0, 0, 0 };
	struct src s;
	int r, st;

	printf("# stopped, traced, cgroup-frozen and multi-threaded sources\n");
	if (src_start(&s, setup_threads, &arg)) {
		CHECK(0, "start source");
		return;
	}
	r = cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL);
	CHECK(r == 0 && verify(A, 16, 19), "4-thread source, group-stopped by SIGSTOP: r=%d", r);
	munmap((void *)A, 16 * PAGE);

	/* traced: running (sleeping in read), then PTRACE_SEIZE + INTERRUPT */
	r = src_cont(&s);
	int seized = !r && ptrace(PTRACE_SEIZE, s.pid, 0, 0) == 0;
	r = cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL);
	CHECK(r == -EBUSY, "running multi-threaded source -> EBUSY (r=%d)", r);
	if (seized && ptrace(PTRACE_INTERRUPT, s.pid, 0, 0) == 0 &&
	    waitpid(s.pid, &st, __WALL) == s.pid) {
		r = cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL);
		/* only the thread-group leader is traced: other threads still run */
		CHECK(r == -EBUSY, "only the leader ptrace-stopped -> EBUSY (r=%d)", r);
	} else {
		CHECK(0, "ptrace seize/interrupt");
	}
	ptrace(PTRACE_DETACH, s.pid, 0, 0);
	src_kill(&s);

	/* single-threaded, ptrace-stopped */
	arg.seed = 23;
	if (src_start(&s, setup_anon, &arg)) {
		CHECK(0, "start source");
		return;
	}
	src_cont(&s);
	r = -999;
	if (ptrace(PTRACE_SEIZE, s.pid, 0, 0) == 0 && ptrace(PTRACE_INTERRUPT, s.pid, 0, 0) == 0 &&
	    waitpid(s.pid, &st, __WALL) == s.pid)
		r = cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL);
	CHECK(r == 0 && verify(A, 16, 23), "ptrace-stopped source (PTRACE_INTERRUPT): r=%d", r);
	munmap((void *)A, 16 * PAGE);
	ptrace(PTRACE_DETACH, s.pid, 0, 0);

	/* cgroup v2 freezer */
	r = -999;
	char buf[64];
	int ok = mkdir("/sys/fs/cgroup/cp_frz", 0755) == 0 || errno == EEXIST;
	FILE *f = ok ? fopen("/sys/fs/cgroup/cp_frz/cgroup.procs", "w") : NULL;
	if (f) {
		fprintf(f, "%d\n", s.pid);
		fclose(f);
		f = fopen("/sys/fs/cgroup/cp_frz/cgroup.freeze", "w");
		if (f) {
			fputs("1\n", f);
			fclose(f);
		}
		for (int i = 0; i < 500; i++) {
			f = fopen("/sys/fs/cgroup/cp_frz/cgroup.events", "r");
			int frozen = 0;
			while (f && fgets(buf, sizeof(buf), f))
				if (!strcmp(buf, "frozen 1\n"))
					frozen = 1;
			if (f)
				fclose(f);
			if (frozen) {
				r = cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL);
				break;
			}
			usleep(2000);
		}
	}
	CHECK(r == 0 && verify(A, 16, 23), "cgroup-v2-frozen source: r=%d", r);
	munmap((void *)A, 16 * PAGE);
	f = fopen("/sys/fs/cgroup/cp_frz/cgroup.freeze", "w");
	if (f) {
		fputs("0\n", f);
		fclose(f);
	}
	src_kill(&s);
	rmdir("/sys/fs/cgroup/cp_frz");
}

/* rmap: the shared pages must be reachable from both mms' anon_vma chains. */
static void test_rmap_migration(void)
{
	const uint64_t A = BASE + 0xa0000000;
	const size_t N = 256;
	struct anon_arg arg = { A, N, 31, 0, 0, MADV_NOHUGEPAGE };
	struct src s;
	int r, same = 0;

	printf("# rmap: migrating shared pages updates both mappings\n");
	if (src_start(&s, setup_anon, &arg)) {
		CHECK(0, "start source");
		return;
	}
	r = cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL);
	CHECK(r == 0, "pick: r=%d", r);
	if (r) {
		src_kill(&s);
		return;
	}
	uint64_t old0 = pfn_of(0, A), old1 = pfn_of(0, A + 7 * PAGE);
	/* soft-offline migrates the page to a new frame via rmap (try_to_migrate) */
	int r0 = madvise((void *)A, PAGE, MADV_SOFT_OFFLINE);
	int r1 = madvise((void *)(A + 7 * PAGE), PAGE, MADV_SOFT_OFFLINE);
	uint64_t n0 = pfn_of(0, A), n1 = pfn_of(0, A + 7 * PAGE);
	CHECK(r0 == 0 && r1 == 0 && n0 != old0 && n1 != old1,
	      "MADV_SOFT_OFFLINE moved two shared pages (%#lx -> %#lx) (r=%d/%d)",
	      (unsigned long)old0, (unsigned long)n0, r0, r1);
	CHECK(pfn_of(s.pid, A) == n0 && pfn_of(s.pid, A + 7 * PAGE) == n1,
	      "the source's ptes follow the migration (still shared)");
	FILE *f = fopen("/proc/sys/vm/compact_memory", "w");
	if (f) {
		fputs("1\n", f);
		fclose(f);
	}
	for (size_t i = 0; i < N; i++) {
		uint64_t a = pfn_of(0, A + i * PAGE), b = pfn_of(s.pid, A + i * PAGE);

		same += a && a == b;
	}
	CHECK(same == (int)N, "after compaction all %zu pages still shared: %d", N, same);
	CHECK(verify(A, N, 31), "caller's contents intact after migration");
	uint32_t w;
	CHECK(peek(s.pid, A + 7 * PAGE, &w, 4) == 0 && w == 31 * 1000003u + 7 * 131,
	      "source's contents intact after migration");
	munmap((void *)A, N * PAGE);
	src_kill(&s);
}

/* The caller forks after a pick; then everyone writes. */
static void test_fork_after_pick(void)
{
	const uint64_t A = BASE + 0xb0000000;
	const size_t N = 32;
	struct anon_arg arg = { A, N, 37, 0, 0, 0 };
	struct src s;
	int r, st;

	printf("# fork after a pick, mremap'ed and mlocked sources\n");
	if (src_start(&s, setup_anon, &arg)) {
		CHECK(0, "start source");
		return;
	}
	r = cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL);
	pid_t c = r ? -1 : fork();
	if (c == 0) {
		for (size_t i = 0; i < N; i += 2)
			*(volatile uint8_t *)(A + i * PAGE + 8) = 0xC1;
		usleep(20000); /* let the parent write its (odd) pages meanwhile */
		for (size_t i = 1; i < N; i += 2)
			if (*(volatile uint8_t *)(A + i * PAGE + 8) == 0xB1)
				_exit(2); /* the parent's write leaked into the child */
		_exit(verify(A, N, 37) ? 0 : 1);
	}
	for (size_t i = 1; i < N; i += 2)
		*(volatile uint8_t *)(A + i * PAGE + 8) = 0xB1;
	waitpid(c, &st, 0);
	int bad_src = 0, bad_self = 0;
	for (size_t i = 0; i < N; i++) {
		uint8_t b = 0;

		if (peek(s.pid, A + i * PAGE + 8, &b, 1) || b == 0xC1 || b == 0xB1)
			bad_src++;
		if (i % 2 == 0 && *(volatile uint8_t *)(A + i * PAGE + 8) == 0xC1)
			bad_self++;
	}
	CHECK(r == 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0 && !bad_src && !bad_self,
	      "caller, its fork child and the source stay isolated (r=%d, child status %#x, "
	      "source pages changed %d, caller pages changed by the child %d)",
	      r, st, bad_src, bad_self);
	munmap((void *)A, N * PAGE);
	src_kill(&s);
}

static void setup_mremap_mlock(void *p)
{
	uint64_t a = *(uint64_t *)p;
	void *tmp = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	fill((uint64_t)tmp, 8, 41);
	/* moved: vm_pgoff no longer matches the address */
	if (mremap(tmp, 8 * PAGE, 8 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)a) != (void *)a)
		_exit(92);
	map_at(a + 0x100000, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fill(a + 0x100000, 8, 43);
	mlock((void *)(a + 0x100000), 8 * PAGE);
}

static void test_mremap_mlock(void)
{
	uint64_t A = BASE + 0xc0000000;
	struct src s;
	int r;

	if (src_start(&s, setup_mremap_mlock, &A)) {
		CHECK(0, "start source");
		return;
	}
	r = cp_pick(dev, s.pidfd, A, 0, -1, 0, NULL);
	if (!r)
		*(volatile uint8_t *)(A + 2 * PAGE) ^= 0xFF;
	uint8_t b = 0;
	peek(s.pid, A + 2 * PAGE, &b, 1);
	CHECK(r == 0 && b == (uint8_t)(41 * 1000003u + 2 * 131) && pfn_of(0, A + 3 * PAGE) == pfn_of(s.pid, A + 3 * PAGE),
	      "mremap'ed VMA: picked, shared, COW works (r=%d)", r);
	munmap((void *)A, 8 * PAGE);
	r = cp_pick(dev, s.pidfd, A + 0x100000, 0, -1, 0, NULL);
	long locked = smaps_field_kb(0, A + 0x100000, "Locked:");
	long src_locked = smaps_field_kb(s.pid, A + 0x100000, "Locked:");
	CHECK(r == 0 && verify(A + 0x100000, 8, 43) && locked == 0 && src_locked > 0,
	      "mlocked VMA: picked unlocked in the caller (Locked %ld kB, source %ld kB) (r=%d)",
	      locked, src_locked, r);
	munmap((void *)(A + 0x100000), 8 * PAGE);
	src_kill(&s);
}

/* Two running processes pick from each other: both take both mmap locks. */
static void test_no_abba(void)
{
	const uint64_t A = BASE + 0xd0000000;
	int p2c[2], c2p[2], st;
	int busy = 0, other = 0;

	printf("# two processes picking from each other: no ABBA deadlock\n");
	if (pipe(p2c) || pipe(c2p)) {
		CHECK(0, "pipe");
		return;
	}
	map_at(A, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	*(volatile int *)A = 1;
	int self = pidfd_open_(getpid());
	pid_t c = fork();
	if (c == 0) {
		int pfd, n = 0;

		if (read(p2c[0], &pfd, sizeof(pfd)) != sizeof(pfd))
			_exit(2);
		int parent = pidfd_open_(getppid());
		for (int i = 0; i < 3000; i++)
			n += cp_pick(dev, parent, A + PAGE, 0, -1, 0, NULL) == -ENXIO;
		char done;
		if (read(p2c[0], &done, 1) != 1) /* stay alive until the parent is done */
			_exit(3);
		_exit(n == 3000 ? 0 : 1);
	}
	int child = pidfd_open_(c);
	/* the child has A mapped too (inherited): pick something it does not have */
	if (write(p2c[1], &self, sizeof(self)) != sizeof(self))
		return;
	for (int i = 0; i < 3000; i++) {
		int r = cp_pick(dev, child, A + PAGE, 0, -1, 0, NULL);

		if (r == -ENXIO)
			busy++;
		else if (other++ < 3)
			printf("#   crossed pick: r=%d\n", r);
	}
	if (write(p2c[1], "x", 1) != 1)
		other++;
	waitpid(c, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0 && other == 0,
	      "2 x 3000 crossed picks finished (ENXIO each: %d, other %d, child status %#x)",
	      busy, other, st);
	close(self);
	close(child);
	munmap((void *)A, PAGE);
}

#define TIMED(fn) do { double t_ = now_us(); fn(); \
	printf("#   %s: %.2f s\n", #fn, (now_us() - t_) / 1e6); } while (0)

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc > 1 && !strcmp(argv[1], "--no-module")) {
		int fd = cp_open();

		CHECK(fd < 0 && errno == ENOENT, "without the module, %s is absent (errno %d)",
		      VMA_CP_DEVICE, errno);
		printf("no-module: %d checks, %d failed\n", cp_checks, cp_failures);
		return cp_failures ? 1 : 0;
	}
	dev = cp_open();
	if (dev < 0) {
		printf("FAIL - open %s: %s\n0 passed, 1 failed\n", VMA_CP_DEVICE, strerror(errno));
		return 1;
	}
	__u32 ver = 0;
	CHECK(ioctl(dev, VMA_CP_IOC_VERSION, &ver) == 0 && ver == VMA_CP_ABI_VERSION,
	      "ABI version %u", ver);
	TIMED(test_cow_anon);
	TIMED(test_readonly_and_flags);
	TIMED(test_file_backed);
	TIMED(test_shared_anon);
	TIMED(test_map_file_mode);
	TIMED(test_many);
	TIMED(test_thp);
	TIMED(test_stop_kinds);
	TIMED(test_refusals);
	TIMED(test_rmap_migration);
	TIMED(test_fork_after_pick);
	TIMED(test_mremap_mlock);
	TIMED(test_no_abba);
	TIMED(test_source_exit_race);
	TIMED(test_leaks);
	printf("cp_test: %d passed, %d failed\n", cp_checks - cp_failures, cp_failures);
	return cp_failures ? 1 : 0;
}
