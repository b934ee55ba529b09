/* Event objects behind fds, each checked every tick (100 ms): appends
 * `tick N ok` or `FAIL tick N <what>` to ./progress.log, writes ./ready
 * once set up. Which objects: the words of argv (any of them):
 *
 *   eventfd   counter 7 (non-blocking)
 *   bigcount  a blocking eventfd whose count does not fit 32 bits
 *   semaphore a semaphore eventfd (close-on-exec)
 *   periodic  a periodic CLOCK_MONOTONIC 50 ms timerfd read every tick
 *             (usually expired and unread at any moment: the tick sleeps
 *             100 ms), and a 20 ms one (fd 19) read only on ticks that are
 *             a multiple of 5 and readable on every tick: between those it
 *             has expired and is unread, and after a read it must fire again
 *             (a restore that disarms it fails the next tick)
 *   timerfd   a one-shot that fired and is never read (stays readable), an
 *             absolute CLOCK_REALTIME one an hour away, a CLOCK_BOOTTIME one
 *             with a 7 s interval, a disarmed one with an interval set
 *   signalfd  SIGUSR1|SIGRTMIN+2 (raised and read each tick), and SIGUSR2
 *             raised once while blocked: stays pending, its signalfd
 *             readable
 *   epoll     (implies eventfd, signalfd) an epoll set over the eventfd,
 *             the periodic timers (with periodic), a pipe
 *             (EPOLLET, a byte written each tick), a signalfd
 *             (EPOLLONESHOT, fired once at setup: never again)
 *   moved     (with epoll) a target watched through fd 30, then dup'ed to
 *             fd 40 and fd 30 closed and reused by another eventfd
 *   nested    (with epoll) a second epoll set watching the first
 *   fork      (last) a child that inherits every object and only sleeps,
 *             so that each description is shared by two processes
 *   inotify   an inotify instance (fd 28) watching ./watched (IN_CREATE,
 *             IN_DELETE: wd 1) and ./watched/f (IN_MODIFY: wd 3, a watch
 *             added and removed in between); each tick creates and removes
 *             watched/x and writes to watched/f, and exactly those three
 *             events must come, with those wds
 *   fanotify  a fanotify group (fd 29): an inode mark on ./watched/g
 *             (FAN_MODIFY), a mount mark on /dev/shm (FAN_CLOSE_WRITE) and
 *             an ignored mask on /dev/shm/evobjs-N-h there; each tick writes
 *             g, /dev/shm/evobjs-N-m and /dev/shm/evobjs-N-h: the first two
 *             must be reported, never the third (N: the inode of the
 *             working directory, so that runs do not share files)
 *
 * Fds are placed on fixed numbers (dup2) so the tests can look at them:
 * 10.. eventfds, 14.. timerfds, 20.. signalfds, 24 pipe, 25 epoll,
 * 26 nested epoll, 28 inotify, 29 fanotify, 40 the moved target. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/fanotify.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static unsigned long tick;
static int logfd;

static void say(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
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

static int has(int argc, char **argv, const char *w)
{
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], w))
			return 1;
	return 0;
}

/* Move fd `fd` to number `at`. */
static int place(int fd, int at)
{
	if (fd < 0)
		fail("create");
	if (fd != at) {
		if (dup3(fd, at, fcntl(fd, F_GETFD) & FD_CLOEXEC ? O_CLOEXEC : 0) != at)
			fail("dup3");
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

static int readable(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static double now(clockid_t c)
{
	struct timespec t;
	clock_gettime(c, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	logfd = open("progress.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (logfd < 0)
		return 1;
	int want_ep = has(argc, argv, "epoll");
	int want_ev = want_ep || has(argc, argv, "eventfd"), want_tfd = has(argc, argv, "timerfd");
	int want_big = has(argc, argv, "bigcount"), want_ino = has(argc, argv, "inotify");
	int want_fan = has(argc, argv, "fanotify");
	static char shm_m[64], shm_h[64];
	struct stat st;
	int want_sem = has(argc, argv, "semaphore"), want_per = has(argc, argv, "periodic");
	int want_sfd = want_ep || has(argc, argv, "signalfd");
	int want_moved = want_ep && has(argc, argv, "moved"), want_nested = want_ep && has(argc, argv, "nested");
	uint64_t v;
	const uint64_t big = 0x100000005ULL;
	if (want_sem)
		place(eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK | EFD_CLOEXEC), 11);
	if (want_ev)
		place(eventfd(7, EFD_NONBLOCK), 10);
	if (want_big) {
		place(eventfd(0, 0), 12);
		v = big;
		CHECK(write(12, &v, 8) == 8, "eventfd big count");
	}
	double rt_deadline = 0, rt_seen = 0;
	if (want_per) {
		struct itimerspec its = { { 0, 50000000 }, { 0, 50000000 } };
		place(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK), 14);
		CHECK(timerfd_settime(14, 0, &its, NULL) == 0, "timerfd periodic");
		struct itimerspec fast = { { 0, 20000000 }, { 0, 20000000 } };
		place(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK), 19);
		CHECK(timerfd_settime(19, 0, &fast, NULL) == 0, "timerfd periodic 20 ms");
	}
	if (want_tfd) {
		struct itimerspec once = { { 0, 0 }, { 0, 1000000 } };
		place(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK), 15);
		CHECK(timerfd_settime(15, 0, &once, NULL) == 0, "timerfd one-shot");
		struct timespec t;
		clock_gettime(CLOCK_REALTIME, &t);
		rt_deadline = rt_seen = t.tv_sec + 3600;
		struct itimerspec abs = { { 0, 0 }, { t.tv_sec + 3600, 0 } };
		place(timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC), 16);
		CHECK(timerfd_settime(16, TFD_TIMER_ABSTIME, &abs, NULL) == 0, "timerfd realtime abs");
		struct itimerspec boot = { { 7, 0 }, { 1000, 0 } };
		place(timerfd_create(CLOCK_BOOTTIME, 0), 17);
		CHECK(timerfd_settime(17, 0, &boot, NULL) == 0, "timerfd boottime");
		struct itimerspec off = { { 3, 0 }, { 0, 0 } };
		place(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK), 18);
		CHECK(timerfd_settime(18, 0, &off, NULL) == 0, "timerfd disarmed");
	}
	sigset_t m;
	if (want_sfd) {
		sigemptyset(&m);
		sigaddset(&m, SIGUSR1);
		sigaddset(&m, SIGRTMIN + 2);
		sigaddset(&m, SIGUSR2);
		sigprocmask(SIG_BLOCK, &m, NULL);
		sigdelset(&m, SIGUSR2);
		place(signalfd(-1, &m, SFD_NONBLOCK), 20);
		sigset_t m2;
		sigemptyset(&m2);
		sigaddset(&m2, SIGUSR2);
		place(signalfd(-1, &m2, SFD_NONBLOCK | SFD_CLOEXEC), 21);
		kill(getpid(), SIGUSR2);
		CHECK(readable(21), "signalfd SIGUSR2 at setup");
	}
	if (want_ep) {
		int p[2];
		CHECK(pipe2(p, O_NONBLOCK) == 0, "pipe");
		place(p[0], 24);
		place(p[1], 23);
		place(epoll_create1(0), 25);
		struct epoll_event e = { .events = EPOLLIN, .data.u64 = 0x1001 };
		CHECK(epoll_ctl(25, EPOLL_CTL_ADD, 10, &e) == 0, "epoll add eventfd");
		if (want_per) {
			e.data.u64 = 0x1002;
			CHECK(epoll_ctl(25, EPOLL_CTL_ADD, 14, &e) == 0, "epoll add timerfd");
			e.data.u64 = 0x1006;
			CHECK(epoll_ctl(25, EPOLL_CTL_ADD, 19, &e) == 0, "epoll add timerfd 20 ms");
		}
		e.events = EPOLLIN | EPOLLET;
		e.data.u64 = 0x1003;
		CHECK(epoll_ctl(25, EPOLL_CTL_ADD, 24, &e) == 0, "epoll add pipe");
		e.events = EPOLLIN | EPOLLONESHOT;
		e.data.u64 = 0x1004;
		CHECK(epoll_ctl(25, EPOLL_CTL_ADD, 20, &e) == 0, "epoll add signalfd");
		kill(getpid(), SIGUSR1);
		struct epoll_event got[16];
		int n = epoll_wait(25, got, 16, 1000), seen = 0;
		for (int i = 0; i < n; i++)
			seen |= got[i].data.u64 == 0x1004;
		CHECK(seen, "oneshot fired at setup");
		struct signalfd_siginfo si;
		CHECK(read(20, &si, sizeof(si)) == sizeof(si), "signalfd read at setup");
		if (want_moved) {
			place(eventfd(1, EFD_NONBLOCK), 30);
			e.events = EPOLLIN;
			e.data.u64 = 0x1005;
			CHECK(epoll_ctl(25, EPOLL_CTL_ADD, 30, &e) == 0, "epoll add moved");
			CHECK(dup2(30, 40) == 40, "dup2 moved");
			close(30);
			place(eventfd(0, EFD_NONBLOCK), 30);
		}
		if (want_nested) {
			place(epoll_create1(EPOLL_CLOEXEC), 26);
			e.events = EPOLLIN;
			e.data.u64 = 0x2001;
			CHECK(epoll_ctl(26, EPOLL_CTL_ADD, 25, &e) == 0, "epoll add nested");
		}
	}
	if (want_ino) {
		mkdir("watched", 0755);
		close(open("watched/f", O_WRONLY | O_CREAT | O_TRUNC, 0644));
		close(open("watched/g", O_WRONLY | O_CREAT | O_TRUNC, 0644)); /* fanotify's, made before the watch */
		place(inotify_init1(IN_NONBLOCK), 28);
		CHECK(inotify_add_watch(28, "watched", IN_CREATE | IN_DELETE) == 1, "inotify watch dir");
		int gap = inotify_add_watch(28, ".", IN_ATTRIB);
		CHECK(gap == 2 && inotify_rm_watch(28, gap) == 0, "inotify watch gap");
		CHECK(inotify_add_watch(28, "watched/f", IN_MODIFY) == 3, "inotify watch file");
		char ibuf[4096];
		while (read(28, ibuf, sizeof(ibuf)) > 0)
			;
	}
	if (want_fan) {
		mkdir("watched", 0755);
		close(open("watched/g", O_WRONLY | O_CREAT | O_TRUNC, 0644));
		CHECK(stat(".", &st) == 0, "stat .");
		snprintf(shm_m, sizeof(shm_m), "/dev/shm/evobjs-%lx-m", (unsigned long)st.st_ino);
		snprintf(shm_h, sizeof(shm_h), "/dev/shm/evobjs-%lx-h", (unsigned long)st.st_ino);
		close(open(shm_m, O_WRONLY | O_CREAT | O_TRUNC, 0644));
		close(open(shm_h, O_WRONLY | O_CREAT | O_TRUNC, 0644));
		place(fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK, O_RDONLY | O_LARGEFILE), 29);
		CHECK(fanotify_mark(29, FAN_MARK_ADD, FAN_MODIFY, AT_FDCWD, "watched/g") == 0, "fanotify inode mark");
		CHECK(fanotify_mark(29, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_CLOSE_WRITE, AT_FDCWD, "/dev/shm") == 0, "fanotify mount mark");
		CHECK(fanotify_mark(29, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY, FAN_CLOSE_WRITE, AT_FDCWD, shm_h) == 0,
		      "fanotify ignored mask");
	}
	if (has(argc, argv, "fork")) {
		/* a child that holds every object too (inherited), and checks
		 * nothing: the objects' descriptions are shared across the tree */
		pid_t c = fork();
		CHECK(c >= 0, "fork");
		if (c == 0)
			for (;;)
				pause();
	}
	close(open("ready", O_WRONLY | O_CREAT | O_TRUNC, 0644));

	for (tick = 1;; tick++) {
		sleep_ms(100);
		if (want_sem) {
			CHECK(read(11, &v, 8) == 8 && v == 1, "eventfd semaphore read");
			v = 1;
			CHECK(write(11, &v, 8) == 8, "eventfd semaphore write");
			CHECK((fcntl(11, F_GETFD) & FD_CLOEXEC), "eventfd cloexec");
		}
		if (want_ev) {
			CHECK(read(10, &v, 8) == 8 && v == 7, "eventfd count");
			v = 7;
			CHECK(write(10, &v, 8) == 8, "eventfd write");
			CHECK((fcntl(10, F_GETFL) & O_NONBLOCK) && !(fcntl(10, F_GETFD) & FD_CLOEXEC), "eventfd flags");
		}
		if (want_big) {
			CHECK(!(fcntl(12, F_GETFL) & O_NONBLOCK), "eventfd blocking");
			CHECK(read(12, &v, 8) == 8 && v == big, "eventfd big count");
			CHECK(write(12, &v, 8) == 8, "eventfd big write");
		}
		if (want_ep) {
			char c = 'x';
			CHECK(write(23, &c, 1) == 1, "pipe write");
			struct epoll_event got[16];
			int n;
			while ((n = epoll_wait(25, got, 16, 1000)) < 0 && errno == EINTR)
				;
			int seen = 0;
			for (int i = 0; i < n; i++) {
				uint64_t d = got[i].data.u64;
				if (d >= 0x1001 && d <= 0x1006)
					seen |= 1 << (d - 0x1001);
				else
					fail("epoll unknown data");
			}
			CHECK(seen & 1, "epoll eventfd");
			CHECK(!want_per || (seen & 2), "epoll timerfd");
			CHECK(seen & 4, "epoll pipe edge");
			CHECK(!(seen & 8), "epoll oneshot fired again");
			CHECK(!want_moved || (seen & 16), "epoll moved target");
			CHECK(!want_per || (seen & 32), "epoll expired unread timerfd");
			if (want_nested) {
				while ((n = epoll_wait(26, got, 16, 0)) < 0 && errno == EINTR)
					;
				CHECK(n == 1 && got[0].data.u64 == 0x2001, "nested epoll");
			}
		}
		if (want_per) {
			CHECK(read(14, &v, 8) == 8 && v >= 1, "timerfd expirations");
			CHECK(readable(19), "expired unread timerfd readable");
			if (tick % 5 == 0)
				CHECK(read(19, &v, 8) == 8 && v >= 1, "timerfd 20 ms expirations");
		}
		if (want_tfd) {
			CHECK(readable(15), "fired one-shot timer readable");
			struct itimerspec cur;
			CHECK(timerfd_gettime(16, &cur) == 0, "gettime realtime");
			/* the deadline as the kernel holds it now: a restore moves it later by
			 * the time the process was not running (dump to restore), as
			 * upstream's does, never earlier, and by a few seconds at most */
			double deadline = now(CLOCK_REALTIME) + cur.it_value.tv_sec + cur.it_value.tv_nsec / 1e9;
			if (!(cur.it_interval.tv_sec == 0 && deadline > rt_deadline - 1 && deadline < rt_seen + 10)) {
				say("FAIL tick %lu realtime timer deadline: %.3f, set for %.3f, last seen %.3f", tick, deadline, rt_deadline, rt_seen);
				_exit(1);
			}
			rt_seen = deadline;
			CHECK(fcntl(16, F_GETFD) & FD_CLOEXEC, "timerfd cloexec");
			CHECK(timerfd_gettime(17, &cur) == 0, "gettime boottime");
			CHECK(cur.it_interval.tv_sec == 7 && cur.it_interval.tv_nsec == 0 && cur.it_value.tv_sec < 1000 && cur.it_value.tv_sec > 900, "boottime timer");
			CHECK(!(fcntl(17, F_GETFL) & O_NONBLOCK), "timerfd blocking");
			CHECK(timerfd_gettime(18, &cur) == 0 && cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec == 0 && !readable(18), "disarmed timer");
		}
		if (want_sfd) {
			kill(getpid(), SIGUSR1);
			struct signalfd_siginfo si;
			CHECK(read(20, &si, sizeof(si)) == sizeof(si) && si.ssi_signo == SIGUSR1, "signalfd SIGUSR1");
			union sigval sv = { .sival_int = (int)tick };
			sigqueue(getpid(), SIGRTMIN + 2, sv);
			CHECK(read(20, &si, sizeof(si)) == sizeof(si) && si.ssi_signo == (uint32_t)SIGRTMIN + 2 && si.ssi_int == (int)tick, "signalfd rt");
			CHECK(read(20, &si, sizeof(si)) < 0 && errno == EAGAIN, "signalfd empty");
			sigset_t pend;
			sigpending(&pend);
			CHECK(sigismember(&pend, SIGUSR2) && readable(21), "SIGUSR2 still pending");
			CHECK(fcntl(21, F_GETFD) & FD_CLOEXEC, "signalfd cloexec");
		}
		if (want_ino) {
			close(open("watched/x", O_WRONLY | O_CREAT, 0644));
			CHECK(unlink("watched/x") == 0, "unlink watched/x");
			int f = open("watched/f", O_WRONLY | O_APPEND);
			CHECK(f >= 0 && write(f, "y", 1) == 1, "write watched/f");
			close(f);
			char ibuf[4096] __attribute__((aligned(8)));
			int got = 0;
			ssize_t n;
			while ((n = read(28, ibuf, sizeof(ibuf))) > 0) {
				for (char *p = ibuf; p < ibuf + n;) {
					struct inotify_event *ie = (struct inotify_event *)p;
					if (ie->wd == 1 && ie->mask == IN_CREATE && !strcmp(ie->name, "x"))
						got |= 1;
					else if (ie->wd == 1 && ie->mask == IN_DELETE && !strcmp(ie->name, "x"))
						got |= 2;
					else if (ie->wd == 3 && ie->mask == IN_MODIFY)
						got |= 4;
					else
						fail("inotify unexpected event");
					p += sizeof(*ie) + ie->len;
				}
			}
			CHECK(got == 7, "inotify events");
		}
		if (want_fan) {
			struct stat sg, sm, sh;
			const char *paths[3] = { "watched/g", shm_m, shm_h };
			for (int i = 0; i < 3; i++) {
				int f = open(paths[i], O_WRONLY | O_APPEND);
				CHECK(f >= 0 && write(f, "z", 1) == 1, "write a fanotify-marked file");
				close(f);
			}
			CHECK(stat("watched/g", &sg) == 0 && stat(shm_m, &sm) == 0 && stat(shm_h, &sh) == 0, "stat marked files");
			char fbuf[8192] __attribute__((aligned(8)));
			int got = 0;
			ssize_t n;
			while ((n = read(29, fbuf, sizeof(fbuf))) > 0) {
				struct fanotify_event_metadata *md = (struct fanotify_event_metadata *)fbuf;
				for (; FAN_EVENT_OK(md, n); md = FAN_EVENT_NEXT(md, n)) {
					struct stat es;
					if (md->fd < 0)
						continue;
					if (fstat(md->fd, &es) == 0 && es.st_dev == sg.st_dev && es.st_ino == sg.st_ino && (md->mask & FAN_MODIFY))
						got |= 1;
					if (fstat(md->fd, &es) == 0 && es.st_dev == sm.st_dev && es.st_ino == sm.st_ino && (md->mask & FAN_CLOSE_WRITE))
						got |= 2;
					if (fstat(md->fd, &es) == 0 && es.st_dev == sh.st_dev && es.st_ino == sh.st_ino)
						fail("fanotify event on an ignored file");
					close(md->fd);
				}
			}
			CHECK(got == 3, "fanotify events");
		}
		say("tick %lu ok", tick);
	}
}
