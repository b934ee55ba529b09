/* A tree with threads in every process, for engine/tests/tree_dump.rs: the
 * root runs 2 extra threads and forks a child that runs 3; each thread
 * counts in memory the process shares with its parent (MAP_SHARED
 * anonymous, one slot per thread), and the root checks every tick that
 * all 6 slots moved. "tick N ok" / "FAIL ..." in ./progress.log, ./ready
 * after the first tick.
 * Build: gcc -O2 -static -o treethreads treethreads.c -lpthread */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long *slots;

/* The whole nap, as the shared fixtures sleep: a sleep interrupted by a
 * dump (which ends it with EINTR, as upstream's does) goes on for what is
 * left, so the root's check always sees a full tick of the threads' time. */
static void nap_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static void *counter(void *arg)
{
	long i = (long)arg;
	for (;;) {
		slots[i]++;
		nap_ms(5);
	}
	return NULL;
}

static void start(long first, int n)
{
	for (int i = 0; i < n; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, counter, (void *)(first + i)))
			_exit(2);
	}
}

int main(void)
{
	int log = open("progress.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
	slots = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (log < 0 || slots == MAP_FAILED)
		return 1;
	if (fork() == 0) {
		start(3, 3);
		for (;;)
			pause();
	}
	start(1, 2);
	unsigned long last[6] = { 0 };
	char buf[128];
	for (unsigned long tick = 1;; tick++) {
		nap_ms(100);
		slots[0]++;
		for (int i = 0; i < 6; i++) {
			if (slots[i] <= last[i]) {
				snprintf(buf, sizeof(buf), "FAIL tick %lu: thread slot %d stopped at %lu\n", tick, i, slots[i]);
				if (write(log, buf, strlen(buf)) < 0)
					_exit(3);
			}
			last[i] = slots[i];
		}
		snprintf(buf, sizeof(buf), "tick %lu ok\n", tick);
		if (write(log, buf, strlen(buf)) < 0)
			_exit(3);
		if (tick == 1)
			close(open("ready", O_WRONLY | O_CREAT, 0644));
	}
}
