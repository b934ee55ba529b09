/* A process holding many fds for the fd benchmark (tools/src/bin/fd-bench.rs):
 * `manyfds N` raises RLIMIT_NOFILE to its hard limit, opens data.bin N/2
 * times and dups those N/2 times (each open dup'ed once: N/2 shared open
 * file descriptions of one inode), writes ./ready, then ticks
 * ("tick N ok" in ./progress.log), checking the last fd is still open. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 1000;
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	int log = open("progress.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
	int first = open("data.bin", O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (log < 0 || first < 0 || write(first, "0123456789", 10) != 10)
		return 2;
	int last = first, half = n / 2;
	int opens[half > 0 ? half : 1];
	opens[0] = first;
	for (int i = 1; i < half; i++) {
		opens[i] = open("data.bin", O_RDWR);
		if (opens[i] < 0) {
			dprintf(log, "FAIL open %d\n", i);
			return 1;
		}
		lseek(opens[i], i % 10, SEEK_SET);
	}
	for (int i = 0; i < n - half; i++) {
		last = dup(opens[i % half]);
		if (last < 0) {
			dprintf(log, "FAIL dup %d\n", i);
			return 1;
		}
	}
	close(open("ready", O_WRONLY | O_CREAT | O_TRUNC, 0644));
	for (unsigned long t = 1;; t++) {
		if (fcntl(last, F_GETFD) < 0) {
			dprintf(log, "FAIL tick %lu fd %d\n", t, last);
			return 1;
		}
		dprintf(log, "tick %lu ok\n", t);
		struct timespec ts = { 0, 100000000 };
		nanosleep(&ts, NULL);
	}
}
