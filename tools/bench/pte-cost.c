/* What a live snapshot of N MiB of touched private anonymous memory costs
 * the kernel, by the three ways a userspace engine can take one: fork()
 * (copy the page tables, write-protect the parent's), userfaultfd
 * write-protection (UFFDIO_WRITEPROTECT over the range) and, as the bare
 * page-table walk that changes every entry, mprotect(PROT_READ). Each is
 * timed three times, with 4 KiB pages and with MADV_HUGEPAGE.
 *
 *   cc -O2 -o pte-cost tools/bench/pte-cost.c && ./pte-cost 1024
 *
 * tfork's source pause is bounded below by the first (see
 * docs/PERFORMANCE.md, "tfork's pause floor"). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void run(size_t sz, int huge)
{
	char *p = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	madvise(p, sz, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	for (size_t i = 0; i < sz; i += 4096)
		p[i] = (char)i;
	for (int r = 0; r < 3; r++) {
		double t = now_ms();
		pid_t pid = fork();
		if (pid == 0)
			_exit(0);
		double fork_ms = now_ms() - t;
		waitpid(pid, NULL, 0);
		/* the child is gone: the pages are the parent's alone again */
		t = now_ms();
		mprotect(p, sz, PROT_READ);
		double mprot_ms = now_ms() - t;
		mprotect(p, sz, PROT_READ | PROT_WRITE);
		int u = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
		struct uffdio_api api = { .api = UFFD_API };
		struct uffdio_register reg = { .range = { (unsigned long)p, sz }, .mode = UFFDIO_REGISTER_MODE_WP };
		struct uffdio_writeprotect wp = { .range = { (unsigned long)p, sz }, .mode = UFFDIO_WRITEPROTECT_MODE_WP };
		if (u < 0 || ioctl(u, UFFDIO_API, &api) || ioctl(u, UFFDIO_REGISTER, &reg)) {
			perror("userfaultfd");
			exit(1);
		}
		t = now_ms();
		if (ioctl(u, UFFDIO_WRITEPROTECT, &wp)) {
			perror("UFFDIO_WRITEPROTECT");
			exit(1);
		}
		double wp_ms = now_ms() - t;
		close(u);
		printf("%zu MiB %s: fork %.1f ms, uffd write-protect %.1f ms, mprotect %.1f ms\n", sz >> 20,
		       huge ? "THP" : "4 KiB", fork_ms, wp_ms, mprot_ms);
	}
	munmap(p, sz);
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
	run(mib << 20, 0);
	run(mib << 20, 1);
	return 0;
}
