/* Pseudo-terminals held by the tree itself, each checked every tick
 * (100 ms): appends `tick N ok` or `FAIL tick N <what>` to ./progress.log,
 * writes ./ready (the pts indices, one a line) once set up. Started as a
 * session leader with no controlling terminal (`setsid`).
 *
 * pty A: master fd 10, slave fd 11, the controlling terminal of this
 *   process's session (opened without O_NOCTTY), foreground group ours;
 *   canonical, ECHO off, VINTR = ^B, winsize 33x99. Each tick reads what
 *   the last tick left queued in both directions, then queues more: the
 *   master writes "in N\npar" (a line and a partial one) and the slave
 *   "out N\n" (the master reads "out N\r\n": ONLCR), and the next tick
 *   completes the partial line ("t\n") and must read exactly those.
 * pty D: master fd 13 only, slave never opened, locked, packet mode on:
 *   its index, lock and packet mode are checked every tick.
 * tree (argv word): pty B: master fd 12 here; a child C makes its own
 *   session with B's slave as controlling terminal on fds 0..2 and a
 *   grandchild G in a group of its own that C makes the foreground one; G
 *   answers each line it reads with "echo: LINE fg tty" (fg: its group is
 *   the foreground one, tty: /dev/tty opens). Each tick sends "b N" on
 *   the master and reads the echo and the answer.
 * noout (argv word): the slave's output is read in the tick that writes
 *   it, never left queued (upstream 4.2's restore writes it back through
 *   the slave, where ONLCR turns "\r\n" into "\r\r\n").
 * lines (argv word): only whole lines are left queued for the slave
 *   (upstream 4.2's dump reads a canonical slave's queue line by line and
 *   loses a partial line).
 * The indices must stay the same (TIOCGPTN), the termios, winsize,
 * session and foreground group too. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static unsigned long tick;
static int logfd;

static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (write(logfd, buf, n) != n)
		_exit(2);
}

static void fail(const char *what)
{
	say("FAIL tick %lu %s (errno %d)", tick, what, errno);
	_exit(1);
}

#define CHECK(cond, what) do { if (!(cond)) fail(what); } while (0)

static int place(int fd, int at)
{
	if (fd < 0)
		fail("create");
	if (fd != at) {
		if (dup2(fd, at) != at)
			fail("dup2");
		close(fd);
	}
	return at;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int ptn(int m)
{
	int n = -1;
	if (ioctl(m, TIOCGPTN, &n) < 0)
		return -1;
	return n;
}

static int new_master(void)
{
	int m = posix_openpt(O_RDWR | O_NOCTTY);
	if (m < 0)
		fail("posix_openpt");
	if (unlockpt(m) < 0)
		fail("unlockpt");
	return m;
}

static int open_slave(int m, int flags)
{
	char p[64];
	snprintf(p, sizeof(p), "/dev/pts/%d", ptn(m));
	return open(p, O_RDWR | flags);
}

/* Read exactly `want` from `fd` (non-blocking fd), waiting up to 2 s. */
static void expect(int fd, const char *want, const char *what)
{
	size_t len = strlen(want), got = 0;
	char buf[256];
	for (int i = 0; i < 200 && got < len; i++) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 10) == 1) {
			ssize_t r = read(fd, buf + got, len - got);
			if (r > 0)
				got += r;
			else if (r < 0 && errno != EAGAIN)
				break;
		}
	}
	buf[got] = 0;
	if (got != len || memcmp(buf, want, len)) {
		char m[400];
		snprintf(m, sizeof(m), "%s: read %zu bytes \"%s\", wanted \"%s\"", what, got, buf, want);
		for (char *c = m; *c; c++)
			if (*c == '\n' || *c == '\r')
				*c = '|';
		fail(m);
	}
}

static void nothing_more(int fd, const char *what)
{
	char c;
	errno = 0;
	CHECK(read(fd, &c, 1) < 0 && errno == EAGAIN, what);
}

static void put(int fd, const char *s)
{
	CHECK(write(fd, s, strlen(s)) == (ssize_t)strlen(s), "write");
}

/* G: answers each line of stdin. */
static void answerer(void)
{
	char line[128];
	for (;;) {
		ssize_t r = read(0, line, sizeof(line) - 1);
		if (r <= 0) {
			if (r < 0 && errno == EINTR)
				continue;
			_exit(3);
		}
		line[r] = 0;
		if (r && line[r - 1] == '\n')
			line[r - 1] = 0;
		int fg = tcgetpgrp(0) == getpgrp();
		int t = open("/dev/tty", O_RDWR | O_NOCTTY);
		char out[200];
		snprintf(out, sizeof(out), "echo: %s %s %s\n", line, fg ? "fg" : "bg", t >= 0 ? "tty" : "notty");
		if (t >= 0)
			close(t);
		if (write(1, out, strlen(out)) < 0)
			_exit(4);
	}
}

int main(int argc, char **argv)
{
	logfd = open("progress.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (logfd < 0)
		return 1;
	logfd = place(logfd, 50);
	int tree = 0, noout = 0, lines = 0;
	for (int i = 1; i < argc; i++) {
		tree |= !strcmp(argv[i], "tree");
		noout |= !strcmp(argv[i], "noout");
		lines |= !strcmp(argv[i], "lines");
	}
	signal(SIGHUP, SIG_IGN);

	/* A: our controlling terminal */
	int a = place(new_master(), 10);
	int as = place(open_slave(a, 0), 11);
	CHECK(tcgetsid(as) == getsid(0), "A is not our controlling terminal");
	struct termios t;
	CHECK(tcgetattr(as, &t) == 0, "tcgetattr A");
	t.c_lflag &= ~(ECHO | ECHOE | ECHOK);
	t.c_cc[VINTR] = 2;
	CHECK(tcsetattr(as, TCSANOW, &t) == 0, "tcsetattr A");
	struct winsize ws = { .ws_row = 33, .ws_col = 99, .ws_xpixel = 7, .ws_ypixel = 9 };
	CHECK(ioctl(a, TIOCSWINSZ, &ws) == 0, "TIOCSWINSZ A");
	fcntl(a, F_SETFL, O_NONBLOCK);
	fcntl(as, F_SETFL, O_NONBLOCK);

	/* D: a locked master in packet mode, its slave never opened */
	int d = place(new_master(), 13);
	int one = 1;
	CHECK(ioctl(d, TIOCSPTLCK, &one) == 0, "TIOCSPTLCK D");
	CHECK(ioctl(d, TIOCPKT, &one) == 0, "TIOCPKT D");

	int b = -1;
	if (tree) {
		b = place(new_master(), 12);
		int sync[2];
		CHECK(pipe(sync) == 0, "pipe");
		pid_t c = fork();
		CHECK(c >= 0, "fork");
		if (c == 0) {
			close(sync[0]);
			setsid();
			int s = open_slave(b, 0);
			if (s < 0)
				_exit(5);
			dup2(s, 0), dup2(s, 1), dup2(s, 2);
			if (s > 2)
				close(s);
			for (int fd = 3; fd < 64; fd++)
				if (fd != sync[1])
					close(fd);
			pid_t g = fork();
			if (g == 0) {
				close(sync[1]);
				setpgid(0, 0);
				answerer();
			}
			setpgid(g, g);
			signal(SIGTTOU, SIG_IGN);
			if (tcsetpgrp(0, g) < 0)
				_exit(6);
			close(sync[1]);
			for (;;)
				pause();
		}
		close(sync[1]);
		char x;
		CHECK(read(sync[0], &x, 1) == 0, "child setup");
		close(sync[0]);
		fcntl(b, F_SETFL, O_NONBLOCK);
	}

	int ia = ptn(a), ib = b >= 0 ? ptn(b) : -1, id = ptn(d);
	FILE *r = fopen("ready.tmp", "w");
	fprintf(r, "%d\n%d\n%d\n", ia, id, ib);
	fclose(r);
	rename("ready.tmp", "ready");

	int primed = 0;
	char buf[128];
	for (tick = 1;; tick++) {
		CHECK(ptn(a) == ia, "A's index changed");
		CHECK(ptn(d) == id, "D's index changed");
		CHECK(tcgetsid(as) == getsid(0), "A is not our session's terminal");
		CHECK(tcgetpgrp(as) == getpgrp(), "A's foreground group is not ours");
		CHECK(tcgetattr(as, &t) == 0 && !(t.c_lflag & ECHO) && (t.c_lflag & ICANON) && t.c_cc[VINTR] == 2, "A's termios");
		struct winsize w;
		CHECK(ioctl(as, TIOCGWINSZ, &w) == 0 && w.ws_row == 33 && w.ws_col == 99 && w.ws_xpixel == 7 && w.ws_ypixel == 9, "A's winsize");
		int v = 0;
		CHECK(ioctl(d, TIOCGPTLCK, &v) == 0 && v == 1, "D is not locked");
		CHECK(ioctl(d, TIOCGPKT, &v) == 0 && v == 1, "D is not in packet mode");
		int t2 = open("/dev/tty", O_RDWR | O_NOCTTY);
		CHECK(t2 >= 0, "no /dev/tty");
		close(t2);
		if (primed) {
			if (!lines)
				put(a, "t\n");
			snprintf(buf, sizeof(buf), "in %lu\n", tick - 1);
			expect(as, buf, "A's slave, last tick's line");
			if (!lines)
				expect(as, "part\n", "A's slave, the partial line completed");
			nothing_more(as, "A's slave has more");
			if (!noout) {
				snprintf(buf, sizeof(buf), "out %lu\r\n", tick - 1);
				expect(a, buf, "A's master, last tick's output");
			}
			nothing_more(a, "A's master has more");
		}
		if (b >= 0) {
			snprintf(buf, sizeof(buf), "b %lu\n", tick);
			put(b, buf);
			snprintf(buf, sizeof(buf), "b %lu\r\necho: b %lu fg tty\r\n", tick, tick);
			expect(b, buf, "B's echo and answer");
		}
		snprintf(buf, sizeof(buf), lines ? "in %lu\n" : "in %lu\npar", tick);
		put(a, buf);
		snprintf(buf, sizeof(buf), "out %lu\n", tick);
		put(as, buf);
		if (noout) {
			snprintf(buf, sizeof(buf), "out %lu\r\n", tick);
			expect(a, buf, "A's master, this tick's output");
		}
		primed = 1;
		say("tick %lu ok", tick);
		sleep_ms(100);
	}
}
