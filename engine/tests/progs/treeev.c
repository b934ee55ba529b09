/* A tree sharing event objects, for engine/tests/tree_restore.rs: the root
 * makes an eventfd and an epoll set watching it, then forks a child that
 * adds 1 to the eventfd every 20 ms (the child holds the eventfd it
 * inherited, and the epoll set too, unused). Every tick the root waits on
 * its epoll set (1 s at most), reads the count, and checks that the child
 * still runs: "tick N ok" / "FAIL ..." in ./progress.log, ./ready after the
 * first tick.
 * Build: gcc -O2 -static -o treeev treeev.c */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void nap_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

int main(void)
{
	int efd = eventfd(0, EFD_CLOEXEC);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0xfeed };
	if (efd < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev) != 0)
		return 1;
	pid_t c = fork();
	if (c == 0) {
		for (;;) {
			uint64_t one = 1;
			if (write(efd, &one, 8) != 8)
				_exit(2);
			nap_ms(20);
		}
	}
	FILE *log = fopen("progress.log", "a");
	if (!log)
		return 1;
	setvbuf(log, NULL, _IOLBF, 0);
	for (unsigned long tick = 1;; tick++) {
		struct epoll_event got;
		int n;
		do
			n = epoll_wait(ep, &got, 1, 1000);
		while (n < 0 && errno == EINTR);
		uint64_t v = 0;
		int st;
		if (n != 1 || got.data.u64 != 0xfeed)
			fprintf(log, "FAIL tick %lu epoll_wait %d\n", tick, n);
		else if (read(efd, &v, 8) != 8 || v == 0)
			fprintf(log, "FAIL tick %lu eventfd read %lu\n", tick, (unsigned long)v);
		else if (waitpid(c, &st, WNOHANG) != 0)
			fprintf(log, "FAIL tick %lu child ended\n", tick);
		else
			fprintf(log, "tick %lu ok\n", tick);
		if (tick == 1)
			close(open("ready", O_CREAT | O_WRONLY, 0644));
		nap_ms(100);
	}
}
