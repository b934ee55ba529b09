/* Micro-benchmark of the restore fill's source (docs/PERFORMANCE.md,
 * "Tree restore: the fill read into a small buffer"): fill a fresh private
 * anonymous mapping (MADV_NOHUGEPAGE, as tools/bench/treehog.c's memory)
 * with the contents of FILE (a pages file in the page cache), ten times,
 * and print the best and mean times.
 * Usage: uffd-fill-src FILE MODE [BUF_KIB]
 *   MODE 0: UFFDIO_COPY from a MAP_SHARED mapping of FILE populated with
 *           MADV_POPULATE_READ, the mapping's page tables dropped after
 *           (MADV_DONTNEED) and unmapped (the engine's mapping path);
 *   MODE 1: the file opened, mincore of a mapping of it, then pread of
 *           BUF_KIB (default 256) at a time into one buffer and UFFDIO_COPY
 *           from it (the engine's pread path, `uffd::copy_from_cache`);
 *   MODE 2: MADV_POPULATE_WRITE of the destination, then one pread into
 *           it (zeroed pages, then a copy: what a restorer reading its own
 *           pages pays, without the page faults).
 * Needs userfaultfd (root). Build: gcc -O2 -o uffd-fill-src uffd-fill-src.c */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static int copy(int u, char *dst, const char *src, size_t len)
{
	struct uffdio_copy c = { .dst = (unsigned long)dst, .src = (unsigned long)src, .len = len };
	if (ioctl(u, UFFDIO_COPY, &c)) {
		perror("UFFDIO_COPY");
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s FILE MODE [BUF_KIB]\n", argv[0]);
		return 2;
	}
	const char *path = argv[1];
	int mode = atoi(argv[2]);
	size_t buf = (argc > 3 ? atoi(argv[3]) : 256) * 1024;
	int fd = open(path, O_RDONLY);
	if (fd < 0) {
		perror(path);
		return 1;
	}
	size_t len = lseek(fd, 0, SEEK_END) & ~4095UL;
	char *b = aligned_alloc(4096, buf);
	unsigned char *mc = malloc(len / 4096 + 1);
	memset(b, 0, buf);
	double best = 1e9, tot = 0;
	const int reps = 10;
	for (int r = 0; r < reps; r++) {
		char *dst = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		madvise(dst, len, MADV_NOHUGEPAGE);
		int u = syscall(SYS_userfaultfd, O_CLOEXEC);
		struct uffdio_api api = { .api = UFFD_API };
		ioctl(u, UFFDIO_API, &api);
		struct uffdio_register reg = { .range = { (unsigned long)dst, len }, .mode = UFFDIO_REGISTER_MODE_MISSING };
		if (mode != 2 && ioctl(u, UFFDIO_REGISTER, &reg)) {
			perror("UFFDIO_REGISTER");
			return 1;
		}
		double t0 = now();
		if (mode == 0) {
			char *src = mmap(0, len, PROT_READ, MAP_SHARED, fd, 0);
			madvise(src, len, MADV_POPULATE_READ);
			if (copy(u, dst, src, len))
				return 1;
			madvise(src, len, MADV_DONTNEED);
			munmap(src, len);
		} else if (mode == 1) {
			int f = open(path, O_RDONLY);
			char *m = mmap(0, len, PROT_READ, MAP_SHARED, fd, 0);
			mincore(m, len, mc);
			munmap(m, len);
			for (size_t o = 0; o < len; o += buf) {
				size_t n = len - o < buf ? len - o : buf;
				if (pread(f, b, n, o) != (ssize_t)n || copy(u, dst + o, b, n))
					return 1;
			}
			close(f);
		} else {
			madvise(dst, len, MADV_POPULATE_WRITE);
			if (pread(fd, dst, len, 0) != (ssize_t)len)
				return 1;
		}
		double t = now() - t0;
		best = t < best ? t : best;
		tot += t;
		close(u);
		munmap(dst, len);
	}
	printf("mode %d buf %zu KiB, %zu bytes: best %.2f ms (%.2f GB/s), mean %.2f ms\n", mode, buf / 1024, len, best * 1e3, len / best / 1e9, tot / reps * 1e3);
	return 0;
}
