/* A TCP connection carrying a checked byte stream both ways, held across
 * dump and restore with --tcp-established (engine/tests/tcp_established.rs,
 * tools/soak/tcp.sh, tools/bench/tcp-bench).
 *
 * Each end sends the same endless stream: byte i is stream_byte(i), in
 * writes of varying sizes (up to 48 KiB) as fast as the socket takes them,
 * and checks every byte it receives against the same function at its
 * position: a byte lost, repeated or changed is `FAIL ...`; so is end of
 * file or an error on the connection. Every 100 ms each end writes
 * `tick N ok rx BYTES tx BYTES` to ./progress-ROLE.log. The client's
 * (and in `one`, end a's) socket has TCP_NODELAY, SO_KEEPALIVE with
 * TCP_KEEPIDLE 77 and TCP_KEEPCNT 5: checked every tick (FAIL if lost).
 * While ./pause-ROLE exists that end reads nothing (its receive queue and
 * the peer's send queue fill up).
 *
 * Usage: tcppair [-6] MODE PORT
 *   pair    listens on 127.0.0.1:PORT (::1 with -6), forks a client that
 *           connects; the parent accepts (roles "server" and "client")
 *   one     one process holds both ends (roles "a" and "b")
 *   server  listens, accepts one connection (role "server")
 *   client  connects to PORT (role "client")
 *   many N  (server side of a benchmark) listens, forks nothing, accepts N
 *           connections made by `manyc N`, then only sleeps
 *   manyc N connects N times to PORT, then only sleeps
 * ./ready once connected. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int v6;

static unsigned char stream_byte(uint64_t i)
{
	uint64_t x = i * 0x9E3779B97F4A7C15ull;
	return (unsigned char)((x >> 29) ^ (i >> 12) ^ i);
}

static void die(const char *what)
{
	fprintf(stderr, "%s: %s\n", what, strerror(errno));
	exit(1);
}

static socklen_t addr_of(int port, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (v6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons(port);
		a->sin6_addr = in6addr_loopback;
		return sizeof(*a);
	}
	struct sockaddr_in *a = (struct sockaddr_in *)ss;
	a->sin_family = AF_INET;
	a->sin_port = htons(port);
	a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return sizeof(*a);
}

static int listener(int port)
{
	struct sockaddr_storage ss;
	socklen_t l = addr_of(port, &ss);
	int s = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0), one = 1;
	if (s < 0)
		die("socket");
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(s, (struct sockaddr *)&ss, l) || listen(s, 1024))
		die("bind/listen");
	return s;
}

static int connect_to(int port)
{
	struct sockaddr_storage ss;
	socklen_t l = addr_of(port, &ss);
	int s = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
	if (s < 0)
		die("socket");
	if (connect(s, (struct sockaddr *)&ss, l))
		die("connect");
	return s;
}

struct end {
	int fd;
	const char *role;
	FILE *log;
	uint64_t rx, tx;
	int failed;
	int opts; /* the options below set and checked */
};

static int opt(int fd, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);
	getsockopt(fd, level, name, &v, &l);
	return v;
}

static void end_init(struct end *e, int fd, const char *role)
{
	char name[64];
	e->fd = fd;
	e->role = role;
	e->rx = e->tx = 0;
	e->failed = 0;
	e->opts = !strcmp(role, "client") || !strcmp(role, "a");
	if (e->opts) {
		int one = 1, idle = 77, cnt = 5;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
	}
	snprintf(name, sizeof(name), "progress-%s.log", role);
	e->log = fopen(name, "w");
	if (!e->log)
		die("log");
	setvbuf(e->log, NULL, _IOLBF, 0);
	fcntl(fd, F_SETFL, O_NONBLOCK);
}

static void fail(struct end *e, const char *fmt, unsigned long long a, unsigned long long b, unsigned long long c)
{
	if (e->failed)
		return;
	e->failed = 1;
	fprintf(e->log, "FAIL %s: ", e->role);
	fprintf(e->log, fmt, a, b, c);
	fprintf(e->log, "\n");
}

/* Send what the socket takes and check what arrived. */
static void pump(struct end *e)
{
	static unsigned char buf[65536];
	if (e->failed)
		return;
	for (int k = 0; k < 4; k++) {
		size_t n = 1 + (size_t)(stream_byte(e->tx + 7) * 193u + k * 4099u) % 49152u;
		for (size_t i = 0; i < n; i++)
			buf[i] = stream_byte(e->tx + i);
		ssize_t w = send(e->fd, buf, n, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EAGAIN)
				break;
			fail(e, "send after %llu bytes: errno %llu%llu", e->tx, errno, 0);
			return;
		}
		e->tx += w;
	}
	char pause[64];
	snprintf(pause, sizeof(pause), "pause-%s", e->role);
	if (access(pause, F_OK) == 0)
		return; /* not reading: the queues fill up */
	for (;;) {
		ssize_t r = recv(e->fd, buf, sizeof(buf), 0);
		if (r == 0) {
			fail(e, "end of file after %llu bytes%llu%llu", e->rx, 0, 0);
			return;
		}
		if (r < 0) {
			if (errno != EAGAIN)
				fail(e, "recv after %llu bytes: errno %llu%llu", e->rx, errno, 0);
			return;
		}
		for (ssize_t i = 0; i < r; i++) {
			if (buf[i] != stream_byte(e->rx + i)) {
				fail(e, "byte %llu is %llu, want %llu", e->rx + i, buf[i], stream_byte(e->rx + i));
				return;
			}
		}
		e->rx += r;
	}
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void run(struct end *ends, int n)
{
	uint64_t tick = 0;
	double next = now() + 0.1;
	close(open("ready", O_CREAT | O_WRONLY, 0644));
	for (;;) {
		struct pollfd p[2];
		for (int i = 0; i < n; i++)
			p[i] = (struct pollfd){ .fd = ends[i].fd, .events = POLLIN | POLLOUT };
		poll(p, n, 20);
		for (int i = 0; i < n; i++)
			pump(&ends[i]);
		/* a little pause: the stream need not saturate the machine */
		usleep(2000);
		if (now() >= next) {
			tick++;
			next += 0.1;
			if (next < now())
				next = now() + 0.1;
			for (int i = 0; i < n; i++)
				if (ends[i].opts && (opt(ends[i].fd, IPPROTO_TCP, TCP_NODELAY) != 1 || opt(ends[i].fd, SOL_SOCKET, SO_KEEPALIVE) != 1 ||
						     opt(ends[i].fd, IPPROTO_TCP, TCP_KEEPIDLE) != 77 || opt(ends[i].fd, IPPROTO_TCP, TCP_KEEPCNT) != 5))
					fail(&ends[i], "options lost: nodelay %llu keepalive %llu keepidle %llu", opt(ends[i].fd, IPPROTO_TCP, TCP_NODELAY),
					     opt(ends[i].fd, SOL_SOCKET, SO_KEEPALIVE), opt(ends[i].fd, IPPROTO_TCP, TCP_KEEPIDLE));
			for (int i = 0; i < n; i++)
				if (!ends[i].failed)
					fprintf(ends[i].log, "tick %llu ok rx %llu tx %llu\n", (unsigned long long)tick,
						(unsigned long long)ends[i].rx, (unsigned long long)ends[i].tx);
		}
	}
}

int main(int argc, char **argv)
{
	int a = 1;
	if (a < argc && !strcmp(argv[a], "-6")) {
		v6 = 1;
		a++;
	}
	if (argc - a < 2) {
		fprintf(stderr, "usage: tcppair [-6] pair|one|server|client|many N|manyc N PORT\n");
		return 2;
	}
	const char *mode = argv[a];
	struct end e[2];
	if (!strcmp(mode, "many") || !strcmp(mode, "manyc")) {
		int n = atoi(argv[a + 1]), port = atoi(argv[a + 2]);
		int l = mode[4] ? -1 : listener(port);
		for (int i = 0; i < n; i++) {
			int s = l >= 0 ? accept(l, NULL, NULL) : connect_to(port);
			if (s < 0)
				die("accept/connect");
			if (l >= 0)
				(void)!write(s, "x", 1); /* a byte queued on each */
		}
		close(open(l >= 0 ? "ready" : "ready-c", O_CREAT | O_WRONLY, 0644));
		for (;;)
			pause();
	}
	int port = atoi(argv[a + 1]);
	if (!strcmp(mode, "pair")) {
		int l = listener(port);
		pid_t c = fork();
		if (c == 0) {
			close(l);
			int s = connect_to(port);
			end_init(&e[0], s, "client");
			run(e, 1);
		}
		int s = accept(l, NULL, NULL);
		if (s < 0)
			die("accept");
		end_init(&e[0], s, "server");
		run(e, 1);
	} else if (!strcmp(mode, "one")) {
		int l = listener(port);
		int c = connect_to(port);
		int s = accept(l, NULL, NULL);
		if (s < 0)
			die("accept");
		end_init(&e[0], c, "a");
		end_init(&e[1], s, "b");
		run(e, 2);
	} else if (!strcmp(mode, "server")) {
		int l = listener(port);
		int s = accept(l, NULL, NULL);
		if (s < 0)
			die("accept");
		end_init(&e[0], s, "server");
		run(e, 1);
	} else if (!strcmp(mode, "client")) {
		end_init(&e[0], connect_to(port), "client");
		run(e, 1);
	}
	fprintf(stderr, "unknown mode %s\n", mode);
	return 2;
}
