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
 * page (offsets 0-7 hold the token; the test writes at 64). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
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

int main(void)
{
	log_fd = open("progress.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (log_fd < 0)
		return 2;
	int p[2], sp[2];
	CHECK(pipe2(p, O_NONBLOCK) == 0, "pipe");
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sp) == 0, "socketpair");
	int ev = eventfd(0, EFD_NONBLOCK);
	CHECK(ev >= 0, "eventfd");
	volatile uint64_t *shm = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(shm != MAP_FAILED, "mmap shared anonymous");
	int mfd = memfd_create("tforkiso", 0);
	CHECK(mfd >= 0 && ftruncate(mfd, 4096) == 0, "memfd");
	volatile uint64_t *mf = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	CHECK(mf != MAP_FAILED, "mmap memfd");

	uint64_t last = token();
	CHECK(write(p[1], &last, 8) == 8, "first pipe write");
	CHECK(write(sp[0], &last, 8) == 8, "first socket write");
	CHECK(write(ev, &last, 8) == 8, "first eventfd write");
	shm[0] = last;
	mf[0] = last;

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
		CHECK(read(p[0], &v, 8) == 8 && v == last, "pipe holds another token");
		CHECK(read(p[0], &v, 8) < 0 && errno == EAGAIN, "pipe holds more than its token");
		v = 0;
		CHECK(read(sp[1], &v, 8) == 8 && v == last, "socketpair holds another token");
		CHECK(read(sp[1], &v, 8) < 0 && errno == EAGAIN, "socketpair holds more than its token");
		v = 0;
		CHECK(read(ev, &v, 8) == 8 && v == last, "eventfd holds another count");
		CHECK(shm[0] == last, "shared anonymous memory holds another token");
		CHECK(mf[0] == last, "memfd mapping holds another token");
		CHECK(pread(mfd, &v, 8, 0) == 8 && v == last, "memfd holds another token");
		last = token();
		CHECK(write(p[1], &last, 8) == 8, "pipe write");
		CHECK(write(sp[0], &last, 8) == 8, "socket write");
		CHECK(write(ev, &last, 8) == 8, "eventfd write");
		shm[0] = last;
		mf[0] = last;
		say("tick %lu ok", tick);
	}
}
