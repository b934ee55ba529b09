/* Kernel objects of the process's own, for tfork's isolation test
 * (tests/tfork_isolation.rs): a pipe, a stream socketpair, an eventfd,
 * MAP_SHARED anonymous memory and a MAP_SHARED memfd mapping. Each holds
 * the token this process left in it at its last tick (a random 64-bit
 * value, drawn from the kernel per tick: a clone draws its own); every
 * tick checks that each object still holds exactly that token, then
 * leaves a new one. A process that shares one of them with another that
 * ticks (a fork-made clone sharing the source's) finds the other's token,
 * or nothing, within a tick: "FAIL ...". Appends "tick N ok PID" to
 * ./progress.log, PID its pid in /proc's namespace (the host's: a clone
 * restored into a pid namespace of its own has the source's pid inside).
 * ./addr.txt: the addresses of the shared anonymous page and of the memfd
 * page (offsets 0-7 hold the token; the test writes at 64).
 * With the argument "events": the pipe, the socketpair and the eventfd
 * only, and a signalfd and an epoll set watching the pipe and the eventfd
 * (the kinds a fork-made clone gets copies of), the pipe's watch carrying
 * the token as its data (EPOLL_CTL_MOD every tick): a clone sharing the
 * set changes the source's. A second argument "opts": SO_RCVBUF set on
 * the socketpair (which then takes the restore path). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int log_fd = -1;
static unsigned long tick;

static void say(const char *fmt, ...)
{
	char self[32] = "?", line[256];
	ssize_t n = readlink("/proc/self", self, sizeof(self) - 1);
	if (n > 0)
		self[n] = 0;
	va_list ap;
	va_start(ap, fmt);
	int k = vsnprintf(line, sizeof(line) - 40, fmt, ap);
	va_end(ap);
	k += snprintf(line + k, sizeof(line) - k, " %s\n", self);
	if (write(log_fd, line, k) != k)
		exit(3);
}

#define CHECK(c, what)                                                                     \
	do {                                                                               \
		if (!(c)) {                                                                \
			say("FAIL tick %lu %s (errno %d)", tick, what, errno);             \
			exit(1);                                                           \
		}                                                                          \
	} while (0)

static uint64_t token(void)
{
	uint64_t v = 0;
	while (getrandom(&v, sizeof(v), 0) != sizeof(v))
		;
	/* an eventfd count: nonzero, far below its maximum */
	return (v & 0xffffffffffULL) | 1;
}

int main(int argc, char **argv)
{
	int events = argc > 1 && strcmp(argv[1], "events") == 0;
	int opts = argc > 2 && strcmp(argv[2], "opts") == 0;
	log_fd = open("progress.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (log_fd < 0)
		return 2;
	int p[2], sp[2];
	CHECK(pipe2(p, O_NONBLOCK) == 0, "pipe");
	int ev = eventfd(0, EFD_NONBLOCK);
	CHECK(ev >= 0, "eventfd");
	static uint64_t priv[2];
	volatile uint64_t *shm = priv, *mf = priv + 1;
	int mfd = -1, ep = -1, sfd = -1;
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sp) == 0, "socketpair");
	if (opts) {
		int sz = 65536;
		CHECK(setsockopt(sp[1], SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz)) == 0, "SO_RCVBUF");
	}
	if (!events) {
		shm = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		CHECK(shm != MAP_FAILED, "mmap shared anonymous");
		mfd = memfd_create("tforkiso", 0);
		CHECK(mfd >= 0 && ftruncate(mfd, 4096) == 0, "memfd");
		mf = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
		CHECK(mf != MAP_FAILED, "mmap memfd");
	} else {
		sigset_t m;
		sigemptyset(&m);
		sigaddset(&m, SIGUSR1);
		sigprocmask(SIG_BLOCK, &m, NULL);
		sfd = signalfd(-1, &m, SFD_NONBLOCK);
		CHECK(sfd >= 0, "signalfd");
		ep = epoll_create1(0);
		CHECK(ep >= 0, "epoll");
	}

	uint64_t last = token();
	CHECK(write(p[1], &last, 8) == 8, "first pipe write");
	CHECK(write(sp[0], &last, 8) == 8, "first socket write");
	CHECK(write(ev, &last, 8) == 8, "first eventfd write");
	shm[0] = last;
	mf[0] = last;
	if (events) {
		struct epoll_event e = { .events = EPOLLIN, .data.u64 = last };
		CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &e) == 0, "epoll add pipe");
		e.data.u64 = 0xe7e7;
		CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e) == 0, "epoll add eventfd");
	}

	FILE *a = fopen("addr.txt", "w");
	CHECK(a != NULL, "addr.txt");
	fprintf(a, "%p %p\n", (void *)shm, (void *)mf);
	fclose(a);
	close(open("ready", O_WRONLY | O_CREAT, 0644));

	for (tick = 1;; tick++) {
		struct timespec ts = { 0, 50 * 1000 * 1000 };
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
		uint64_t v = 0;
		if (events) {
			struct epoll_event got[4];
			int n = epoll_wait(ep, got, 4, 0), saw_pipe = 0, saw_ev = 0;
			for (int i = 0; i < n; i++) {
				saw_pipe |= got[i].data.u64 == last;
				saw_ev |= got[i].data.u64 == 0xe7e7;
			}
			CHECK(n == 2 && saw_pipe && saw_ev, "epoll set reports other watches");
			kill(getpid(), SIGUSR1);
			struct signalfd_siginfo si;
			CHECK(read(sfd, &si, sizeof(si)) == sizeof(si) && si.ssi_signo == SIGUSR1, "signalfd");
		}
		CHECK(read(p[0], &v, 8) == 8 && v == last, "pipe holds another token");
		CHECK(read(p[0], &v, 8) < 0 && errno == EAGAIN, "pipe holds more than its token");
		v = 0;
		CHECK(read(sp[1], &v, 8) == 8 && v == last, "socketpair holds another token");
		CHECK(read(sp[1], &v, 8) < 0 && errno == EAGAIN, "socketpair holds more than its token");
		v = 0;
		CHECK(read(ev, &v, 8) == 8 && v == last, "eventfd holds another count");
		CHECK(shm[0] == last, "shared anonymous memory holds another token");
		CHECK(mf[0] == last, "memfd mapping holds another token");
		if (!events)
			CHECK(pread(mfd, &v, 8, 0) == 8 && v == last, "memfd holds another token");
		last = token();
		CHECK(write(p[1], &last, 8) == 8, "pipe write");
		CHECK(write(sp[0], &last, 8) == 8, "socket write");
		if (events) {
			struct epoll_event e = { .events = EPOLLIN, .data.u64 = last };
			CHECK(epoll_ctl(ep, EPOLL_CTL_MOD, p[0], &e) == 0, "epoll mod pipe");
		}
		CHECK(write(ev, &last, 8) == 8, "eventfd write");
		shm[0] = last;
		mf[0] = last;
		say("tick %lu ok", tick);
	}
}
