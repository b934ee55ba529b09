/* `manyev N`: N eventfds (eventfd i holds count i + 1, on fds 100..),
 * all watched by one epoll set (fd 99, data = i), and a timerfd an hour
 * away (fd 98; no periodic one: upstream's restore loses an expired one).
 * Every tick (100 ms) epoll must report all N and a sample of the counts
 * must hold; appends `tick K ok` or `FAIL ...` to ./progress.log, writes
 * ./ready when set up. A workload of tools/bench/events.sh. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static int logfd;

static void say(const char *s, unsigned long tick)
{
	char buf[128];
	int n = snprintf(buf, sizeof(buf), "%s%lu%s\n", s[0] == 'F' ? "FAIL tick " : "tick ", tick, s[0] == 'F' ? s + 4 : " ok");
	if (write(logfd, buf, n) != n)
		_exit(2);
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 1000;
	struct rlimit rl = { n + 200, n + 200 };
	setrlimit(RLIMIT_NOFILE, &rl);
	logfd = open("progress.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
	int ep = epoll_create1(0);
	if (ep < 0 || dup2(ep, 99) != 99)
		return 1;
	close(ep);
	for (int i = 0; i < n; i++) {
		int fd = eventfd(i + 1, EFD_NONBLOCK);
		if (fd < 0 || dup2(fd, 100 + i) != 100 + i)
			return 1;
		close(fd);
		struct epoll_event e = { .events = EPOLLIN, .data.u64 = i };
		if (epoll_ctl(99, EPOLL_CTL_ADD, 100 + i, &e))
			return 1;
	}
	int t = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	struct itimerspec its = { { 0, 0 }, { 3600, 0 } };
	if (t < 0 || dup2(t, 98) != 98 || timerfd_settime(98, 0, &its, NULL))
		return 1;
	close(t);
	close(open("ready", O_WRONLY | O_CREAT | O_TRUNC, 0644));
	struct epoll_event *got = calloc(n + 1, sizeof(*got));
	char *seen = calloc(n + 1, 1);
	for (unsigned long tick = 1;; tick++) {
		struct timespec ts = { 0, 100000000 };
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
		int k = 0, r;
		for (int i = 0; i <= n; i++)
			seen[i] = 0;
		while (k < n && (r = epoll_wait(99, got, n + 1, 1000)) > 0) {
			for (int i = 0; i < r; i++)
				if (got[i].data.u64 < (uint64_t)n && !seen[got[i].data.u64]) {
					seen[got[i].data.u64] = 1;
					k++;
				}
		}
		if (k != n) {
			say("FAIL epoll reported too few", tick);
			_exit(1);
		}
		for (int i = 0; i < n; i += 97) {
			uint64_t v;
			if (read(100 + i, &v, 8) != 8 || v != (uint64_t)i + 1 || write(100 + i, &v, 8) != 8) {
				say("FAIL eventfd count", tick);
				_exit(1);
			}
		}
		say("ok", tick);
	}
}
