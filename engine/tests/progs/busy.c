/* A program that only computes: `busy N` spins in N threads (the main
 * thread and N-1 others), each `for (;;) x++` on a counter of its own, with
 * no syscall in flight once they run. `busy N progress` adds one thread
 * that appends `tick K ok` to ./progress.log every 100 ms, and `FAIL ...`
 * if a spinning counter has not moved for 30 ticks in a row (checked from
 * the counters, so the spinners themselves never make a syscall; a whole
 * 3 s, since 16 spinners on a busy machine wait their turn; the tests
 * check each spinner's utime too).
 *
 * `busy N progress cont-handler` also counts SIGCONTs in a handler, and
 * `busy N progress cont-blocked` blocks SIGCONT in every thread; either
 * way a tick says FAIL once a SIGCONT was handled or is pending (a restore
 * must not send the program one it can see).
 *
 * Readiness: ./ready is created once every spinner has counted. Built by
 * engine/tests/busy.rs as static, static-pie, dynamic PIE and dynamic
 * non-PIE. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <signal.h>

#define MAX 64
static volatile unsigned long counters[MAX * 8]; /* one cache line each */
static volatile sig_atomic_t conts;

static void on_cont(int sig)
{
	(void)sig;
	conts++;
}

static void spin(int i)
{
	volatile unsigned long *c = &counters[i * 8];
	for (;;)
		(*c)++;
}

static void *spinner(void *arg)
{
	spin((int)(long)arg);
	return NULL;
}

static void *progress(void *arg)
{
	int n = (int)(long)arg;
	unsigned long last[MAX];
	int still[MAX] = { 0 };
	struct timespec ts = { 0, 100 * 1000 * 1000 };
	for (int i = 0; i < n; i++)
		last[i] = counters[i * 8];
	for (unsigned long tick = 1;; tick++) {
		nanosleep(&ts, NULL);
		char line[128];
		int stuck = -1;
		for (int i = 0; i < n; i++) {
			unsigned long v = counters[i * 8];
			still[i] = v == last[i] ? still[i] + 1 : 0;
			if (still[i] >= 30)
				stuck = i;
			last[i] = v;
		}
		sigset_t pend;
		sigemptyset(&pend);
		sigpending(&pend);
		int len;
		if (conts)
			len = snprintf(line, sizeof(line), "FAIL tick %lu: %d SIGCONT handled\n", tick, (int)conts);
		else if (sigismember(&pend, SIGCONT))
			len = snprintf(line, sizeof(line), "FAIL tick %lu: a SIGCONT is pending\n", tick);
		else if (stuck >= 0)
			len = snprintf(line, sizeof(line), "FAIL tick %lu: spinner %d did not move for 30 ticks\n", tick, stuck);
		else
			len = snprintf(line, sizeof(line), "tick %lu ok\n", tick);
		int fd = open("progress.log", O_WRONLY | O_APPEND | O_CREAT, 0644);
		if (fd >= 0) {
			if (write(fd, line, len) != len)
				_exit(3);
			close(fd);
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 1;
	int with_progress = argc > 2 && strcmp(argv[2], "progress") == 0;
	if (n < 1 || n > MAX)
		return 2;
	if (argc > 3 && strcmp(argv[3], "cont-handler") == 0) {
		struct sigaction sa;
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = on_cont;
		sa.sa_flags = SA_RESTART;
		sigaction(SIGCONT, &sa, NULL);
	} else if (argc > 3 && strcmp(argv[3], "cont-blocked") == 0) {
		sigset_t s;
		sigemptyset(&s);
		sigaddset(&s, SIGCONT);
		sigprocmask(SIG_BLOCK, &s, NULL); /* inherited by every thread */
	}
	pthread_t t;
	for (int i = 1; i < n; i++)
		if (pthread_create(&t, NULL, spinner, (void *)(long)i))
			return 1;
	/* every spinner counts before ready is announced */
	for (int i = 1; i < n; i++)
		while (counters[i * 8] == 0)
			;
	if (with_progress && pthread_create(&t, NULL, progress, (void *)(long)n))
		return 1;
	int fd = open("ready", O_WRONLY | O_CREAT, 0644);
	if (fd < 0)
		return 1;
	close(fd);
	spin(0);
	return 0;
}
