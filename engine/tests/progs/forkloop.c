/* A process tree that never stops changing, for engine/tests/tree_dump.rs:
 * the root forks a child every few hundred microseconds; each child forks
 * a grandchild, both live a few milliseconds and exit 0 (the grandchild
 * with 7, which its parent checks), and the root reaps them. Up to 16
 * children are alive at a time, each with its grandchild, plus the ones
 * exiting. Any child that ends otherwise than expected (killed, another
 * status) is a failure: "FAIL ..." in ./progress.log; else "tick N ok"
 * every 100 children. ./ready once the first tick is written.
 * Build: gcc -O2 -static -o forkloop forkloop.c */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int logfd;

static void say(const char *s)
{
	if (write(logfd, s, strlen(s)) < 0)
		_exit(3);
}

static void nap_us(long us)
{
	struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

static void child(void)
{
	pid_t g = fork();
	if (g < 0)
		_exit(20);
	if (g == 0) {
		nap_us(3000);
		_exit(7);
	}
	nap_us(2000);
	int st;
	while (waitpid(g, &st, 0) < 0)
		if (errno != EINTR)
			_exit(21);
	_exit(WIFEXITED(st) && WEXITSTATUS(st) == 7 ? 0 : 22);
}

int main(void)
{
	logfd = open("progress.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (logfd < 0)
		return 2;
	unsigned long born = 0, reaped = 0, tick = 0;
	int live = 0;
	char buf[128];
	for (;;) {
		if (live < 16) {
			pid_t c = fork();
			if (c < 0) {
				snprintf(buf, sizeof(buf), "FAIL fork: %s\n", strerror(errno));
				say(buf);
				return 1;
			}
			if (c == 0)
				child();
			born++;
			live++;
		}
		int st;
		pid_t r;
		while ((r = waitpid(-1, &st, WNOHANG)) > 0) {
			live--;
			reaped++;
			if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
				snprintf(buf, sizeof(buf), "FAIL child %d ended with status %#x\n", r, st);
				say(buf);
			}
			if (reaped % 100 == 0) {
				snprintf(buf, sizeof(buf), "tick %lu ok\n", ++tick);
				say(buf);
				if (tick == 1)
					close(open("ready", O_WRONLY | O_CREAT, 0644));
			}
		}
		nap_us(300);
	}
}
