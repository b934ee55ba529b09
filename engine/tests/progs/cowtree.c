/* A tree whose children inherit a large private region and write part
 * of it: `cowtree MIB N`.
 *
 * The root maps MIB MiB of private anonymous memory (MADV_NOHUGEPAGE)
 * and 4 MiB more (MADV_HUGEPAGE), writes every page but every 7th (those
 * stay never touched), and forks N children (N <= 8). Child k writes the
 * pages p with p % 10 == k (its own pattern, a page the root never
 * touched included), drops 32 pages of the root's with MADV_DONTNEED
 * (they read as zeros again) and leaves the rest as it inherited it.
 * Child 0 forks a grandchild that writes the pages p % 10 == 9 of what
 * it inherited from child 0.
 *
 * Every process keeps a checksum per page of what its memory must hold
 * and checks every page of both regions every 200 ms; on SIGUSR1 it
 * writes page 1 (which no process wrote since the root) with a pattern
 * of its own, updates its checksum and creates ./wrote-NSPID. A process
 * that finds a wrong page exits 1; a parent that finds a child gone
 * exits 1; the root appends `tick N ok` or `FAIL ...` to ./progress.log.
 * Writes ./ready once every process has written its memory. */
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

#define PG 4096UL

static unsigned char *big, *huge_;
static size_t nbig, nhuge; /* pages */
static uint64_t *sums;      /* nbig + nhuge */
static volatile sig_atomic_t poked;

static unsigned char *region(size_t pages, int advice)
{
	size_t len = pages * PG;
	/* huge-page aligned, so the MADV_HUGEPAGE one can take huge pages */
	unsigned char *p = mmap(NULL, len + (2 << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		exit(2);
	unsigned char *a = (unsigned char *)(((uintptr_t)p + (2 << 20) - 1) & ~((uintptr_t)(2 << 20) - 1));
	if (a > p)
		munmap(p, a - p);
	munmap(a + len, (p + len + (2 << 20)) - (a + len));
	madvise(a, len, advice);
	return a;
}

static unsigned char *page(size_t i)
{
	return i < nbig ? big + i * PG : huge_ + (i - nbig) * PG;
}

static uint64_t sum(const unsigned char *p)
{
	const uint64_t *w = (const uint64_t *)p;
	uint64_t s = 0x9e3779b97f4a7c15ULL;
	for (size_t i = 0; i < PG / 8; i++)
		s = (s ^ w[i]) * 0x100000001b3ULL + i;
	return s;
}

static void stamp(size_t i, unsigned seed)
{
	unsigned char *p = page(i);
	memset(p, (int)((i * 31 + seed) & 0xff), PG);
	memcpy(p, &i, sizeof i);
	memcpy(p + 64, &seed, sizeof seed);
}

static void sum_all(void)
{
	for (size_t i = 0; i < nbig + nhuge; i++)
		sums[i] = sum(page(i));
}

static int check_all(void)
{
	for (size_t i = 0; i < nbig + nhuge; i++)
		if (sum(page(i)) != sums[i])
			return 0;
	return 1;
}

static void on_usr1(int s)
{
	(void)s;
	poked = 1;
}

static void nap(void)
{
	struct timespec ts = { 0, 200 * 1000 * 1000 };
	while (nanosleep(&ts, &ts) != 0)
		;
}

static void poke_if_asked(void)
{
	if (!poked)
		return;
	poked = 0;
	stamp(1, 200 + (unsigned)getpid());
	sums[1] = sum(page(1));
	char name[64];
	snprintf(name, sizeof name, "wrote-%d", (int)getpid());
	close(open(name, O_CREAT | O_WRONLY, 0644));
}

/* a process below the root: check itself and its children forever */
static void serve(pid_t kid)
{
	for (;;) {
		poke_if_asked();
		if (!check_all())
			_exit(1);
		if (kid > 0) {
			int st;
			if (waitpid(kid, &st, WNOHANG) != 0)
				_exit(1);
		}
		nap();
	}
}

static void child_writes(int k, unsigned seed)
{
	for (size_t i = 0; i < nbig + nhuge; i++)
		if (i % 10 == (size_t)k && i != 1)
			stamp(i, seed);
	/* pages the root wrote, zeros again in this child */
	size_t from = 8 + (size_t)k * 40;
	madvise(page(from), 32 * PG, MADV_DONTNEED);
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 32;
	int n = argc > 2 ? atoi(argv[2]) : 3;
	if (n < 1 || n > 8 || mib < 2)
		exit(9);
	nbig = (mib << 20) / PG;
	nhuge = (4 << 20) / PG;
	big = region(nbig, MADV_NOHUGEPAGE);
	huge_ = region(nhuge, MADV_HUGEPAGE);
	sums = calloc(nbig + nhuge, sizeof *sums);
	signal(SIGUSR1, on_usr1);
	for (size_t i = 0; i < nbig + nhuge; i++)
		if (i % 7 != 0)
			stamp(i, 7);
	sum_all();
	int up[2];
	if (pipe(up) != 0)
		exit(3);
	pid_t *kids = calloc(n, sizeof(pid_t));
	for (int k = 0; k < n; k++) {
		pid_t c = fork();
		if (c < 0)
			exit(3);
		if (c == 0) {
			close(up[0]);
			child_writes(k, 100 + k);
			sum_all();
			pid_t g = 0;
			if (k == 0) {
				g = fork();
				if (g < 0)
					_exit(3);
				if (g == 0) {
					child_writes(9, 150);
					sum_all();
					if (write(up[1], "g", 1) != 1)
						_exit(1);
					close(up[1]);
					serve(0);
				}
			}
			if (write(up[1], "c", 1) != 1)
				_exit(1);
			close(up[1]);
			serve(g);
		}
		kids[k] = c;
	}
	close(up[1]);
	for (int k = 0; k < n + 1; k++) {
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
		poke_if_asked();
		for (int k = 0; k < n; k++) {
			pid_t w = waitpid(kids[k], &st, WNOHANG);
			if (w != 0) {
				fprintf(log, "FAIL tick %lu child %d ended (%d)\n", tick, kids[k], st);
				exit(5);
			}
		}
		if (!check_all()) {
			fprintf(log, "FAIL tick %lu root memory\n", tick);
			exit(6);
		}
		fprintf(log, "tick %lu ok\n", tick);
		nap();
	}
}
