/* Files in flight: each tick (100 ms) receives what the last tick passed
 * over its unix sockets (SCM_RIGHTS, not received in between: a dump
 * catches them in flight), checks it, and passes new ones. Appends
 * `tick N ok` or `FAIL tick N <what>` to ./progress.log, writes ./ready.
 *
 * Datagram pair (fds 10, 11): message "dN" with two fds, ./data opened
 *   read-only at offset N % 10 and ./out opened write-only O_APPEND, then
 *   a message "plain" with none.
 * Stream pair (fds 12, 13): "sN" with ./data opened read-write at offset
 *   (N + 3) % 10.
 * Checked: the payloads, the number of fds, each fd's file (inode),
 * access mode, O_APPEND and offset (a byte read there). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static unsigned long tick;
static int logfd;
static ino_t data_ino, out_ino;

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

static void sendfds(int s, const char *msg, int *fds, int n)
{
	struct iovec iov = { (void *)msg, strlen(msg) };
	union { struct cmsghdr h; char b[CMSG_SPACE(4 * sizeof(int))]; } u;
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (n) {
		m.msg_control = u.b;
		m.msg_controllen = CMSG_SPACE(n * sizeof(int));
		struct cmsghdr *h = CMSG_FIRSTHDR(&m);
		h->cmsg_level = SOL_SOCKET;
		h->cmsg_type = SCM_RIGHTS;
		h->cmsg_len = CMSG_LEN(n * sizeof(int));
		memcpy(CMSG_DATA(h), fds, n * sizeof(int));
	}
	CHECK(sendmsg(s, &m, MSG_DONTWAIT) == (ssize_t)strlen(msg), "sendmsg");
	for (int i = 0; i < n; i++)
		close(fds[i]);
}

/* Receive one message: its payload into buf (NUL-ended), its fds into
 * fds; returns the fd count. */
static int recvfds(int s, char *buf, size_t len, int *fds)
{
	struct iovec iov = { buf, len - 1 };
	union { struct cmsghdr h; char b[CMSG_SPACE(8 * sizeof(int))]; } u;
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof(u.b) };
	ssize_t r = recvmsg(s, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	CHECK(r >= 0, "recvmsg");
	buf[r] = 0;
	int n = 0;
	for (struct cmsghdr *h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h))
		if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS) {
			int k = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			memcpy(fds + n, CMSG_DATA(h), k * sizeof(int));
			n += k;
		}
	CHECK(!(m.msg_flags & MSG_CTRUNC), "MSG_CTRUNC");
	return n;
}

static void check_file(int fd, ino_t ino, int acc, int append, long off, const char *what)
{
	struct stat st;
	char m[128];
	snprintf(m, sizeof(m), "%s: not the file", what);
	CHECK(fstat(fd, &st) == 0 && st.st_ino == ino, m);
	int fl = fcntl(fd, F_GETFL);
	snprintf(m, sizeof(m), "%s: flags %o", what, fl);
	CHECK((fl & O_ACCMODE) == acc && !!(fl & O_APPEND) == append, m);
	if (off >= 0) {
		snprintf(m, sizeof(m), "%s: offset %ld, wanted %ld", what, (long)lseek(fd, 0, SEEK_CUR), off);
		CHECK(lseek(fd, 0, SEEK_CUR) == off, m);
		char c;
		CHECK(read(fd, &c, 1) == 1 && c == '0' + off, "the byte at the offset");
	}
}

static void pass(int d0, int s0, unsigned long n)
{
	char msg[32];
	int fds[2];
	fds[0] = open("data", O_RDONLY);
	lseek(fds[0], n % 10, SEEK_SET);
	fds[1] = open("out", O_WRONLY | O_APPEND);
	CHECK(fds[0] >= 0 && fds[1] >= 0, "open");
	snprintf(msg, sizeof(msg), "d%lu", n);
	sendfds(d0, msg, fds, 2);
	sendfds(d0, "plain", NULL, 0);
	fds[0] = open("data", O_RDWR);
	lseek(fds[0], (n + 3) % 10, SEEK_SET);
	snprintf(msg, sizeof(msg), "s%lu", n);
	sendfds(s0, msg, fds, 1);
}

int main(void)
{
	logfd = open("progress.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (logfd < 0)
		return 1;
	int fd = open("data", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0 && write(fd, "0123456789", 10) == 10, "data");
	close(fd);
	fd = open("out", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0, "out");
	close(fd);
	struct stat st;
	stat("data", &st);
	data_ino = st.st_ino;
	stat("out", &st);
	out_ino = st.st_ino;
	int dg[2], sk[2];
	CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) == 0, "socketpair dgram");
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sk) == 0, "socketpair stream");
	dup2(dg[0], 10), dup2(dg[1], 11), dup2(sk[0], 12), dup2(sk[1], 13);
	close(dg[0]), close(dg[1]), close(sk[0]), close(sk[1]);
	pass(10, 12, 0);
	close(open("ready", O_WRONLY | O_CREAT | O_TRUNC, 0644));
	for (tick = 1;; tick++) {
		char buf[64], want[32];
		int fds[8];
		unsigned long n = tick - 1;
		int k = recvfds(11, buf, sizeof(buf), fds);
		snprintf(want, sizeof(want), "d%lu", n);
		CHECK(!strcmp(buf, want), "datagram payload");
		CHECK(k == 2, "datagram: not two fds");
		check_file(fds[0], data_ino, O_RDONLY, 0, n % 10, "datagram fd 0");
		check_file(fds[1], out_ino, O_WRONLY, 1, -1, "datagram fd 1");
		CHECK(write(fds[1], "x", 1) == 1, "write out");
		close(fds[0]), close(fds[1]);
		k = recvfds(11, buf, sizeof(buf), fds);
		CHECK(!strcmp(buf, "plain") && k == 0, "the plain datagram");
		k = recvfds(13, buf, sizeof(buf), fds);
		snprintf(want, sizeof(want), "s%lu", n);
		CHECK(!strcmp(buf, want), "stream payload");
		CHECK(k == 1, "stream: not one fd");
		check_file(fds[0], data_ino, O_RDWR, 0, (n + 3) % 10, "stream fd");
		close(fds[0]);
		pass(10, 12, tick);
		say("tick %lu ok", tick);
		struct timespec ts = { 0, 100000000 };
		nanosleep(&ts, NULL);
	}
}
