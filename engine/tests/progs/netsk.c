/* A process tree in a network namespace of its own, holding sockets in
 * it (engine/tests/net_ns.rs). Started as
 *   unshare --pid --net --fork setsid sh -c 'SETUP; exec netsk run MODE'
 * where SETUP set lo up or down, added 127.42.0.1/16 to it and wrote 33
 * to net.unix.max_dgram_qlen.
 *
 * MODE up: a TCP listener on 127.0.0.1:7000; a connection to it whose
 * client end a forked child holds (the in-tree connection: every tick the
 * parent sends a counter, the child checks it is the next one and answers
 * counter + 1000000, which the parent checks); a UDP socket bound to
 * 127.42.0.1:7001 that gets a datagram from another one every tick; each
 * tick also a new connection to the listener (connect, accept, a byte
 * each way). MODE down: lo stays down (no TCP, no UDP).
 * Both: a unix socketpair carrying a byte each tick, lo's IFF_UP as the
 * mode says, 127.42.0.1 on lo (getifaddrs), max_dgram_qlen 33.
 * MODE bare: the socketpair only, nothing of the namespace checked
 * (`--empty-ns net`: restored in an empty one).
 *
 * Every 100 ms: `tick N ok net:[INODE]` (its network namespace: a tfork
 * clone's ticks are told apart by it) or `FAIL tick N WHAT` in
 * ./progress.log;
 * ./ready once set up. Usage: netsk run up|down|bare */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int logfd;
static unsigned long tick;

static void say(const char *fmt, ...)
{
	char b[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(b, sizeof(b), fmt, ap);
	va_end(ap);
	if (write(logfd, b, n) != n)
		exit(3);
}

#define FAIL(...)                                                      \
	do {                                                           \
		char m_[256];                                          \
		snprintf(m_, sizeof(m_), __VA_ARGS__);                 \
		say("FAIL tick %lu %s: %s\n", tick, m_, strerror(errno)); \
		return -1;                                             \
	} while (0)

static struct sockaddr_in sin_of(const char *ip, int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	inet_pton(AF_INET, ip, &a.sin_addr);
	return a;
}

static void timeouts(int s)
{
	struct timeval tv = { .tv_sec = 5 };
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static int full(int fd, void *b, size_t n, int rd)
{
	size_t done = 0;
	while (done < n) {
		ssize_t r = rd ? read(fd, (char *)b + done, n - done) : write(fd, (char *)b + done, n - done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			if (r == 0)
				errno = EPIPE;
			return -1;
		}
		done += r;
	}
	return 0;
}

static int check_ns(int up)
{
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	struct ifreq r = { 0 };
	strcpy(r.ifr_name, "lo");
	if (s < 0 || ioctl(s, SIOCGIFFLAGS, &r) < 0)
		FAIL("SIOCGIFFLAGS lo");
	close(s);
	if (!!(r.ifr_flags & IFF_UP) != up) {
		errno = 0;
		FAIL("lo is %s, want %s", (r.ifr_flags & IFF_UP) ? "up" : "down", up ? "up" : "down");
	}
	struct ifaddrs *ifa, *p;
	int found = 0;
	if (getifaddrs(&ifa) < 0)
		FAIL("getifaddrs");
	for (p = ifa; p; p = p->ifa_next) {
		if (p->ifa_addr && p->ifa_addr->sa_family == AF_INET && !strcmp(p->ifa_name, "lo")) {
			struct sockaddr_in *a = (struct sockaddr_in *)p->ifa_addr;
			if (a->sin_addr.s_addr == inet_addr("127.42.0.1"))
				found = 1;
		}
	}
	freeifaddrs(ifa);
	if (!found) {
		errno = 0;
		FAIL("127.42.0.1 is not on lo");
	}
	char b[32] = { 0 };
	int f = open("/proc/sys/net/unix/max_dgram_qlen", O_RDONLY);
	if (f < 0 || read(f, b, sizeof(b) - 1) <= 0)
		FAIL("reading net.unix.max_dgram_qlen");
	close(f);
	if (atoi(b) != 33) {
		errno = 0;
		FAIL("net.unix.max_dgram_qlen is %d, want 33", atoi(b));
	}
	return 0;
}

/* The child: the client end of the in-tree connection. */
static void peer(int c)
{
	uint64_t want = 1, got;
	for (;;) {
		if (full(c, &got, sizeof(got), 1) < 0) {
			say("FAIL child reading the in-tree connection (after %llu): %s\n", (unsigned long long)want - 1, strerror(errno));
			exit(1);
		}
		if (got != want) {
			say("FAIL child got %llu on the in-tree connection, want %llu\n", (unsigned long long)got, (unsigned long long)want);
			exit(1);
		}
		got += 1000000;
		if (full(c, &got, sizeof(got), 0) < 0) {
			say("FAIL child writing the in-tree connection: %s\n", strerror(errno));
			exit(1);
		}
		want++;
	}
}

int main(int argc, char **argv)
{
	if (argc < 3 || strcmp(argv[1], "run")) {
		fprintf(stderr, "usage: netsk run up|down\n");
		return 2;
	}
	int up = !strcmp(argv[2], "up"), bare = !strcmp(argv[2], "bare");
	logfd = open("progress.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (logfd < 0)
		return 3;
	int sp[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) < 0)
		return 4;
	int l = -1, a = -1, u = -1, us = -1;
	if (up) {
		struct sockaddr_in la = sin_of("127.0.0.1", 7000), ua = sin_of("127.42.0.1", 7001);
		int one = 1;
		l = socket(AF_INET, SOCK_STREAM, 0);
		setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(l, (void *)&la, sizeof(la)) < 0 || listen(l, 16) < 0) {
			perror("listener");
			return 5;
		}
		int c = socket(AF_INET, SOCK_STREAM, 0);
		if (connect(c, (void *)&la, sizeof(la)) < 0 || (a = accept(l, NULL, NULL)) < 0) {
			perror("in-tree connection");
			return 6;
		}
		timeouts(a);
		timeouts(c);
		pid_t k = fork();
		if (k == 0) {
			close(a);
			close(l);
			peer(c);
		}
		close(c);
		u = socket(AF_INET, SOCK_DGRAM, 0);
		us = socket(AF_INET, SOCK_DGRAM, 0);
		if (bind(u, (void *)&ua, sizeof(ua)) < 0) {
			perror("udp bind");
			return 7;
		}
		timeouts(u);
	}
	close(creat("ready", 0644));
	uint64_t n = 1;
	for (tick = 1;; tick++) {
		int bad = bare ? 0 : check_ns(up);
		char ch = (char)tick, got = 0;
		if (!bad && (write(sp[0], &ch, 1) != 1 || read(sp[1], &got, 1) != 1 || got != ch)) {
			say("FAIL tick %lu the unix socketpair: %s\n", tick, strerror(errno));
			bad = 1;
		}
		if (!bad && up) {
			uint64_t r;
			if (full(a, &n, sizeof(n), 0) < 0 || full(a, &r, sizeof(r), 1) < 0) {
				say("FAIL tick %lu the in-tree connection: %s\n", tick, strerror(errno));
				bad = 1;
			} else if (r != n + 1000000) {
				say("FAIL tick %lu the in-tree connection answered %llu to %llu\n", tick, (unsigned long long)r, (unsigned long long)n);
				bad = 1;
			}
			n++;
			struct sockaddr_in la = sin_of("127.0.0.1", 7000), ua = sin_of("127.42.0.1", 7001);
			int c = socket(AF_INET, SOCK_STREAM, 0), s = -1;
			timeouts(c);
			if (!bad && (connect(c, (void *)&la, sizeof(la)) < 0 || (s = accept(l, NULL, NULL)) < 0 || write(c, "x", 1) != 1 || read(s, &got, 1) != 1 || got != 'x')) {
				say("FAIL tick %lu a new connection to the listener: %s\n", tick, strerror(errno));
				bad = 1;
			}
			close(c);
			if (s >= 0)
				close(s);
			if (!bad && (sendto(us, &ch, 1, 0, (void *)&ua, sizeof(ua)) != 1 || recv(u, &got, 1, 0) != 1 || got != ch)) {
				say("FAIL tick %lu the UDP socket: %s\n", tick, strerror(errno));
				bad = 1;
			}
		}
		if (!bad) {
			char ns[64] = "?";
			ssize_t k = readlink("/proc/self/ns/net", ns, sizeof(ns) - 1);
			ns[k > 0 ? k : 1] = 0;
			say("tick %lu ok %s\n", tick, ns);
		}
		struct timespec ts = { 0, 100 * 1000 * 1000 };
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
	}
}
