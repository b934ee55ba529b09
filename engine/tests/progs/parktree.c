/* Private memory of tfork's restored clones (engine/tests/tfork_park.rs):
 * `parktree MIB N`.
 *
 * The root maps MIB MiB of private anonymous memory (MADV_NOHUGEPAGE) and
 * 4 MiB more (MADV_HUGEPAGE, huge-page aligned), writes every page but
 * every 7th (those stay never touched), and forks N children (0 <= N <=
 * 4). Child k writes the pages p with p % 10 == k (p != 1, 2) and drops
 * 32 pages of the root's with MADV_DONTNEED (zeros again).
 *
 * Every process keeps a checksum per page of what its memory must hold
 * and checks every page every 100 ms; a process that finds a wrong page
 * exits 1, a parent that finds a child gone exits 1; the root appends
 * `tick N ok` or `FAIL ...` to ./progress.log. Writes ./ready once every
 * process has written its memory.
 *
 * On SIGUSR1 a process writes page 1 with a pattern of its own (its
 * checksum updated) and creates ./wrote-PID. On SIGUSR2 it drops page 2
 * with MADV_DONTNEED and checks that it reads as zeros, then forks a child
 * that checks all of its memory and exits 0 if it is as it must be; it
 * creates ./dontneed-PID-R-S (R: 0 when page 2 read zeros, S: the forked
 * child's exit status). PID is the process's pid in its namespace. */
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
static volatile sig_atomic_t poked, dropped;

static unsigned char *region(size_t pages, int advice)
{
	size_t len = pages * PG;
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

static void on_usr2(int s)
{
	(void)s;
	dropped = 1;
}

static void nap(void)
{
	struct timespec ts = { 0, 100 * 1000 * 1000 };
	while (nanosleep(&ts, &ts) != 0)
		;
}

static void touch(const char *name)
{
	close(open(name, O_CREAT | O_WRONLY, 0644));
}

static void on_request(void)
{
	char name[96];
	if (poked) {
		poked = 0;
		stamp(1, 200 + (unsigned)getpid());
		sums[1] = sum(page(1));
		snprintf(name, sizeof name, "wrote-%d", (int)getpid());
		touch(name);
	}
	if (dropped) {
		dropped = 0;
		madvise(page(2), PG, MADV_DONTNEED);
		int nonzero = 0;
		for (size_t i = 0; i < PG; i++)
			nonzero |= page(2)[i];
		sums[2] = sum(page(2));
		pid_t c = fork();
		if (c == 0)
			_exit(check_all() ? 0 : 1);
		int st = -1;
		if (c > 0)
			waitpid(c, &st, 0);
		snprintf(name, sizeof name, "dontneed-%d-%d-%d", (int)getpid(), nonzero != 0, c > 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1);
		touch(name);
	}
}

/* a process below the root: check itself forever */
static void serve(void)
{
	for (;;) {
		on_request();
		if (!check_all())
			_exit(1);
		nap();
	}
}

static void child_writes(int k, unsigned seed)
{
	for (size_t i = 0; i < nbig + nhuge; i++)
		if (i % 10 == (size_t)k && i != 1 && i != 2)
			stamp(i, seed);
	size_t from = 8 + (size_t)k * 40;
	madvise(page(from), 32 * PG, MADV_DONTNEED);
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 32;
	int n = argc > 2 ? atoi(argv[2]) : 2;
	if (n < 0 || n > 4 || mib < 2)
		exit(9);
	nbig = (mib << 20) / PG;
	nhuge = (4 << 20) / PG;
	big = region(nbig, MADV_NOHUGEPAGE);
	huge_ = region(nhuge, MADV_HUGEPAGE);
	sums = calloc(nbig + nhuge, sizeof *sums);
	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);
	for (size_t i = 0; i < nbig + nhuge; i++)
		if (i % 7 != 0)
			stamp(i, 7);
	sum_all();
	int up[2];
	if (pipe(up) != 0)
		exit(3);
	pid_t kids[4];
	for (int k = 0; k < n; k++) {
		pid_t c = fork();
		if (c < 0)
			exit(3);
		if (c == 0) {
			close(up[0]);
			child_writes(k, 100 + k);
			sum_all();
			if (write(up[1], "c", 1) != 1)
				_exit(1);
			close(up[1]);
			serve();
		}
		kids[k] = c;
	}
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
	touch("ready");
	for (unsigned long tick = 1;; tick++) {
		int st;
		on_request();
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
