/* A bare fork() of MIB of touched private anonymous 4 KiB pages (MADV_NOHUGEPAGE),
 * N times, the child killed and reaped between: wall and CPU time of each
 * (CLOCK_THREAD_CPUTIME_ID of the forking thread), to set beside tfork's
 * injected fork of the same memory (the source's schedstat around `criu
 * tfork`; docs/PERFORMANCE.md, "tfork's pause of 1 GiB").
 *
 *   cc -O2 -o fork-cpu tools/bench/fork-cpu.c && ./fork-cpu 1024 5 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double ms(clockid_t c)
{
	struct timespec t;
	clock_gettime(c, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	size_t len = (size_t)atoi(argv[1]) << 20;
	int n = atoi(argv[2]);
	char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return 3;
	madvise(m, len, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < len; i += 4096)
		memset(m + i, 1, 4096);
	for (int r = 0; r < n; r++) {
		double c0 = ms(CLOCK_THREAD_CPUTIME_ID), t0 = ms(CLOCK_MONOTONIC);
		pid_t c = fork();
		if (c == 0) {
			pause();
			_exit(0);
		}
		double t = ms(CLOCK_MONOTONIC) - t0, cc = ms(CLOCK_THREAD_CPUTIME_ID) - c0;
		printf("%.1f/%.1f ", t, cc);
		fflush(stdout);
		kill(c, SIGKILL);
		waitpid(c, NULL, 0);
		usleep(300000);
	}
	printf(" (wall/cpu ms per fork)\n");
	return 0;
}
