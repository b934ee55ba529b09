/* Inet sockets held across dump and restore (engine/tests/inet_sockets.rs).
 *
 * Fixed fds: 10 a TCP IPv4 listener on 127.0.0.1 (SO_REUSEADDR, backlog 7,
 * TCP_NODELAY, SO_RCVBUF, SO_KEEPALIVE with TCP_KEEPIDLE 77, TCP_KEEPINTVL
 * 7, TCP_KEEPCNT 3), 11 a TCP IPv6 listener on ::1
 * (IPV6_V6ONLY, SO_REUSEPORT, backlog 5, O_NONBLOCK), 12 a UDP IPv4 socket
 * bound to 127.0.0.1, 13 a UDP IPv4 socket connected to 12, 14 a UDP IPv6
 * socket bound to ::1, 15 a UDP IPv6 socket connected to 14 (SO_SNDBUF),
 * 16 a TCP IPv4 socket never bound (closed state). Ports are the kernel's
 * choice (bound to port 0).
 *
 * Every 100 ms a tick: each socket still has its name, peer and options;
 * a new connection to each listener is accepted and carries a byte both
 * ways; a datagram from 13 reaches 12 (from 13's name) and one from 15
 * reaches 14. `tick N ok` or `FAIL why` in ./progress.log.
 *
 * Words: `established` also holds a connection to listener 10 (client fd
 * 17, accepted fd 18) and stops checking it once it is gone: after a
 * restore with --tcp-close both are closed sockets, and ./closed is created
 * (a read on both sees end of file and a write fails with EPIPE, as upstream
 * 4.2 leaves them). `queued` leaves a connection queued on
 * listener 11, not accepted (and connects only to 10); `udpqueued` leaves
 * a datagram queued on 12 while it sleeps (received after: what a dump
 * has to refuse); `fork` forks a child that holds every socket too and
 * only waits.
 * ./ready once set up. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static FILE *logf;
static char why[512];

static void fail(const char *fmt, ...)
{
	va_list ap;
	if (why[0])
		return;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
}

static void die(const char *what)
{
	fprintf(stderr, "%s: %s\n", what, strerror(errno));
	exit(1);
}

static void onfd(int s, int fd)
{
	if (s < 0)
		die("socket");
	if (s != fd) {
		if (dup2(s, fd) < 0)
			die("dup2");
		close(s);
	}
}

static void setint(int fd, int lvl, int opt, int v)
{
	if (setsockopt(fd, lvl, opt, &v, sizeof(v)))
		die("setsockopt");
}

static int getint(int fd, int lvl, int opt)
{
	int v = -1;
	socklen_t l = sizeof(v);
	if (getsockopt(fd, lvl, opt, &v, &l))
		fail("getsockopt fd %d %d/%d: %s", fd, lvl, opt, strerror(errno));
	return v;
}

struct name {
	struct sockaddr_storage a;
	socklen_t l;
};

static struct name names[20], peers[20];
static int opts[20][6];

static void name_of(int fd, struct name *n, int peer)
{
	n->l = sizeof(n->a);
	memset(&n->a, 0, sizeof(n->a));
	if ((peer ? getpeername : getsockname)(fd, (struct sockaddr *)&n->a, &n->l))
		n->l = 0;
}

static void read_opts(int fd, int *o)
{
	o[0] = getint(fd, SOL_SOCKET, SO_REUSEADDR);
	o[1] = getint(fd, SOL_SOCKET, SO_REUSEPORT);
	o[2] = getint(fd, SOL_SOCKET, SO_RCVBUF);
	o[3] = getint(fd, SOL_SOCKET, SO_SNDBUF);
	o[4] = getint(fd, SOL_SOCKET, SO_KEEPALIVE);
	o[5] = fcntl(fd, F_GETFL);
}

static void remember(int fd)
{
	name_of(fd, &names[fd], 0);
	name_of(fd, &peers[fd], 1);
	read_opts(fd, opts[fd]);
}

static void check(int fd)
{
	struct name n;
	int o[6];
	name_of(fd, &n, 0);
	if (n.l != names[fd].l || memcmp(&n.a, &names[fd].a, n.l))
		fail("fd %d: its name changed", fd);
	name_of(fd, &n, 1);
	if (n.l != peers[fd].l || memcmp(&n.a, &peers[fd].a, n.l))
		fail("fd %d: its peer changed", fd);
	read_opts(fd, o);
	if (fd == 10 && (getint(10, IPPROTO_TCP, TCP_NODELAY) != 1 || getint(10, IPPROTO_TCP, TCP_KEEPIDLE) != 77 || getint(10, IPPROTO_TCP, TCP_KEEPINTVL) != 7 || getint(10, IPPROTO_TCP, TCP_KEEPCNT) != 3))
		fail("fd 10: TCP_NODELAY or keepalive timings lost");
	for (int i = 0; i < 6; i++)
		if (o[i] != opts[fd][i])
			fail("fd %d: option %d is %d, was %d", fd, i, o[i], opts[fd][i]);
}

static int listener(int fam, int fd, int backlog)
{
	onfd(socket(fam, SOCK_STREAM, 0), fd);
	struct sockaddr_storage a = { 0 };
	socklen_t l;
	if (fam == AF_INET) {
		struct sockaddr_in *s = (void *)&a;
		s->sin_family = AF_INET;
		s->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		l = sizeof(*s);
	} else {
		struct sockaddr_in6 *s = (void *)&a;
		s->sin6_family = AF_INET6;
		s->sin6_addr = in6addr_loopback;
		l = sizeof(*s);
	}
	if (fam == AF_INET) {
		setint(fd, SOL_SOCKET, SO_REUSEADDR, 1);
		setint(fd, IPPROTO_TCP, TCP_NODELAY, 1);
		setint(fd, SOL_SOCKET, SO_RCVBUF, 65536);
		setint(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
		setint(fd, IPPROTO_TCP, TCP_KEEPIDLE, 77);
		setint(fd, IPPROTO_TCP, TCP_KEEPINTVL, 7);
		setint(fd, IPPROTO_TCP, TCP_KEEPCNT, 3);
	} else {
		setint(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1);
		setint(fd, SOL_SOCKET, SO_REUSEPORT, 1);
	}
	if (bind(fd, (struct sockaddr *)&a, l))
		die("bind");
	if (listen(fd, backlog))
		die("listen");
	return fd;
}

static void udp(int fam, int fd, int to)
{
	onfd(socket(fam, SOCK_DGRAM, 0), fd);
	struct sockaddr_storage a = { 0 };
	socklen_t l;
	if (fam == AF_INET) {
		struct sockaddr_in *s = (void *)&a;
		s->sin_family = AF_INET;
		s->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		l = sizeof(*s);
	} else {
		struct sockaddr_in6 *s = (void *)&a;
		s->sin6_family = AF_INET6;
		s->sin6_addr = in6addr_loopback;
		l = sizeof(*s);
	}
	if (to < 0) {
		if (bind(fd, (struct sockaddr *)&a, l))
			die("bind udp");
		return;
	}
	if (fam == AF_INET6)
		setint(fd, SOL_SOCKET, SO_SNDBUF, 50000);
	if (connect(fd, (struct sockaddr *)&names[to].a, names[to].l))
		die("connect udp");
}

/* A connection to listener `l`, accepted, a byte each way, both closed. */
static void connect_once(int l)
{
	int c = socket(names[l].a.ss_family, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&names[l].a, names[l].l)) {
		fail("connect to fd %d: %s", l, strerror(errno));
		if (c >= 0)
			close(c);
		return;
	}
	int flags = fcntl(l, F_GETFL);
	fcntl(l, F_SETFL, flags & ~O_NONBLOCK);
	int a = accept(l, NULL, NULL);
	fcntl(l, F_SETFL, flags);
	char b = 'x';
	if (a < 0)
		fail("accept on fd %d: %s", l, strerror(errno));
	else if (write(c, "a", 1) != 1 || read(a, &b, 1) != 1 || b != 'a' || write(a, "b", 1) != 1 || read(c, &b, 1) != 1 || b != 'b')
		fail("no byte through a connection to fd %d", l);
	if (a >= 0)
		close(a);
	close(c);
}

static void datagram(int from, int to)
{
	char b[8];
	struct sockaddr_storage src;
	socklen_t sl = sizeof(src);
	if (send(from, "dgram", 5, 0) != 5) {
		fail("send on fd %d: %s", from, strerror(errno));
		return;
	}
	ssize_t n = recvfrom(to, b, sizeof(b), 0, (struct sockaddr *)&src, &sl);
	if (n != 5 || memcmp(b, "dgram", 5))
		fail("fd %d got %zd bytes", to, n);
	else if (sl != names[from].l || memcmp(&src, &names[from].a, sl))
		fail("datagram on fd %d not from fd %d's name", to, from);
}

int main(int argc, char **argv)
{
	int established = 0, queued = 0, udpqueued = 0, forked = 0;
	for (int i = 1; i < argc; i++) {
		forked |= !strcmp(argv[i], "fork");
		established |= !strcmp(argv[i], "established");
		queued |= !strcmp(argv[i], "queued");
		udpqueued |= !strcmp(argv[i], "udpqueued");
	}
	logf = fopen("progress.log", "a");
	if (!logf)
		die("progress.log");
	setvbuf(logf, NULL, _IOLBF, 0);

	listener(AF_INET, 10, 7);
	listener(AF_INET6, 11, 5);
	fcntl(11, F_SETFL, O_NONBLOCK);
	remember(10);
	remember(11);
	udp(AF_INET, 12, -1);
	remember(12);
	udp(AF_INET, 13, 12);
	udp(AF_INET6, 14, -1);
	remember(14);
	udp(AF_INET6, 15, 14);
	onfd(socket(AF_INET, SOCK_STREAM, 0), 16);
	for (int fd = 13; fd <= 16; fd++)
		remember(fd);
	if (established) {
		onfd(socket(AF_INET, SOCK_STREAM, 0), 17);
		if (connect(17, (struct sockaddr *)&names[10].a, names[10].l))
			die("connect");
		onfd(accept(10, NULL, NULL), 18);
	}
	if (queued) {
		int c = socket(AF_INET6, SOCK_STREAM, 0);
		if (c < 0 || connect(c, (struct sockaddr *)&names[11].a, names[11].l))
			die("queued connect");
		/* closed: its peer stays in 11's accept queue */
		close(c);
	}
	if (forked && fork() == 0) {
		/* holds every socket too (one description each with the parent) */
		for (;;)
			pause();
	}
	close(open("ready", O_CREAT | O_WRONLY, 0644));

	struct timespec ts = { 0, 100 * 1000 * 1000 };
	int closed = 0;
	for (unsigned long tick = 1;; tick++) {
		why[0] = 0;
		for (int fd = 10; fd <= 16; fd++)
			check(fd);
		connect_once(10);
		if (!queued) /* its accept would take the queued one */
			connect_once(11);
		datagram(13, 12);
		datagram(15, 14);
		if (established && !closed) {
			char b;
			if (recv(17, &b, 1, MSG_DONTWAIT) == 0 && recv(18, &b, 1, MSG_DONTWAIT) == 0 && send(17, "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE) {
				closed = 1;
				close(open("closed", O_CREAT | O_WRONLY, 0644));
			} else if (write(17, "e", 1) != 1 || read(18, &b, 1) != 1 || b != 'e') {
				fail("the held connection 17-18 is broken");
			}
		}
		if (why[0])
			fprintf(logf, "FAIL tick %lu: %s\n", tick, why);
		else
			fprintf(logf, "tick %lu ok\n", tick);
		/* a datagram waits on 12 while the program sleeps */
		if (udpqueued && send(13, "dgram", 5, 0) != 5)
			fprintf(logf, "FAIL tick %lu: send queued datagram\n", tick);
		nanosleep(&ts, NULL);
		if (udpqueued) {
			char b[8];
			if (recv(12, b, sizeof(b), 0) != 5)
				fprintf(logf, "FAIL tick %lu: no queued datagram\n", tick);
		}
	}
}
