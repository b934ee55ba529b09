/* A process tree for the tree benchmark: `treehog N CHILD_MIB SHARED_MIB`.
 * The root writes SHARED_MIB of private anonymous memory, then forks N
 * children that inherit it copy-on-write and never write it; each child
 * writes CHILD_MIB of its own. Every 100 ms each process checks a sample
 * of its pages (and of the inherited ones); a child that finds a wrong
 * byte exits 1, and the root, which checks that no child died, appends
 * `tick N ok` or `FAIL ...` to ./progress.log. Writes ./ready once every
 * child has written its memory. */
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static unsigned char *fill(size_t mib, unsigned seed)
{
	size_t len = mib << 20;
	if (!len)
		return NULL;
	unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		exit(2);
	madvise(p, len, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < len; i += 4096)
		memset(p + i, (int)((i / 4096 + seed) & 0xff), 4096);
	return p;
}

static int check(const unsigned char *p, size_t mib, unsigned seed)
{
	size_t len = mib << 20;
	for (size_t i = 0; i < len; i += 4096 * 61)
		if (p[i] != (unsigned char)((i / 4096 + seed) & 0xff) || p[i + 4095] != p[i])
			return 0;
	return 1;
}

static void nap(void)
{
	struct timespec ts = { 0, 100 * 1000 * 1000 };
	while (nanosleep(&ts, &ts) != 0)
		;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 10;
	size_t cmib = argc > 2 ? strtoul(argv[2], NULL, 10) : 1;
	size_t smib = argc > 3 ? strtoul(argv[3], NULL, 10) : 0;
	unsigned char *shared = fill(smib, 7);
	pid_t *kids = calloc(n, sizeof(pid_t));
	int up[2];
	if (pipe(up) != 0)
		exit(3);
	for (int k = 0; k < n; k++) {
		pid_t c = fork();
		if (c < 0)
			exit(3);
		if (c == 0) {
			unsigned char *own = fill(cmib, 100 + k);
			close(up[0]);
			if (write(up[1], "x", 1) != 1)
				_exit(1);
			close(up[1]);
			for (;;) {
				if (!check(own, cmib, 100 + k) || (shared && !check(shared, smib, 7)))
					_exit(1);
				nap();
			}
		}
		kids[k] = c;
	}
	/* every child has written its memory: the tree is at its full size */
	close(up[1]);
	for (int k = 0; k < n; k++) {
		char c;
		if (read(up[0], &c, 1) != 1)
			exit(7);
	}
	close(up[0]);
	FILE *log = fopen("progress.log", "a");
	if (!log)
		exit(4);
	setvbuf(log, NULL, _IOLBF, 0);
	close(open("ready", O_CREAT | O_WRONLY, 0644));
	for (unsigned long tick = 1;; tick++) {
		int st;
		for (int k = 0; k < n; k++) {
			pid_t w = waitpid(kids[k], &st, WNOHANG);
			if (w != 0) {
				fprintf(log, "FAIL tick %lu child %d ended (%d)\n", tick, kids[k], st);
				exit(5);
			}
		}
		if (shared && !check(shared, smib, 7)) {
			fprintf(log, "FAIL tick %lu shared memory\n", tick);
			exit(6);
		}
		fprintf(log, "tick %lu ok\n", tick);
		nap();
	}
}
