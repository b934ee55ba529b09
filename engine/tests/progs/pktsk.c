/* Packet sockets, checked every tick (100 ms): appends `tick N ok` or
 * `FAIL tick N <what>` to ./progress.log, writes ./ready once set up.
 *
 * fd 10: SOCK_RAW for ethertype 0x88b5 (local experimental), bound to lo,
 *   PACKET_AUXDATA on, PACKET_TIMESTAMP, promiscuous membership on lo
 *   (added twice); each tick sends a frame of that type on lo whose
 *   payload names the tick and must see it come back (a packet socket
 *   sees its own frames on lo).
 * fd 11: SOCK_DGRAM for ETH_P_IP, unbound, PACKET_ORIGDEV and
 *   PACKET_RESERVE 64, version TPACKET_V2. (never read: packets queued on
 *   it are not checked)
 * fd 12: SOCK_RAW with protocol 0 (receives nothing).
 * Each tick checks the options through getsockopt.
 * single (argv word): the membership added once (upstream 4.2's dump
 * refuses one added twice). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <linux/net_tstamp.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PROTO 0x88b5

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

static int place(int fd, int at)
{
	CHECK(fd >= 0, "socket");
	CHECK(dup2(fd, at) == at, "dup2");
	close(fd);
	return at;
}

static int opt(int fd, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);
	CHECK(getsockopt(fd, SOL_PACKET, name, &v, &l) == 0, "getsockopt SOL_PACKET");
	return v;
}

int main(int argc, char **argv)
{
	int single = argc > 1 && !strcmp(argv[1], "single");
	logfd = open("progress.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (logfd < 0)
		return 1;
	int lo = if_nametoindex("lo");
	CHECK(lo > 0, "lo");
	int a = place(socket(AF_PACKET, SOCK_RAW, htons(PROTO)), 10);
	struct sockaddr_ll sa = { .sll_family = AF_PACKET, .sll_protocol = htons(PROTO), .sll_ifindex = lo };
	CHECK(bind(a, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bind a");
	int one = 1, ts = SOF_TIMESTAMPING_SOFTWARE;
	CHECK(setsockopt(a, SOL_PACKET, PACKET_AUXDATA, &one, sizeof(one)) == 0, "PACKET_AUXDATA");
	CHECK(setsockopt(a, SOL_PACKET, PACKET_TIMESTAMP, &ts, sizeof(ts)) == 0, "PACKET_TIMESTAMP");
	struct packet_mreq mr = { .mr_ifindex = lo, .mr_type = PACKET_MR_PROMISC };
	CHECK(setsockopt(a, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof(mr)) == 0, "PACKET_ADD_MEMBERSHIP");
	if (!single)
		CHECK(setsockopt(a, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof(mr)) == 0, "PACKET_ADD_MEMBERSHIP again");
	fcntl(a, F_SETFL, O_NONBLOCK);
	int b = place(socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP)), 11);
	int v2 = TPACKET_V2, res = 64;
	CHECK(setsockopt(b, SOL_PACKET, PACKET_VERSION, &v2, sizeof(v2)) == 0, "PACKET_VERSION");
	CHECK(setsockopt(b, SOL_PACKET, PACKET_RESERVE, &res, sizeof(res)) == 0, "PACKET_RESERVE");
	CHECK(setsockopt(b, SOL_PACKET, PACKET_ORIGDEV, &one, sizeof(one)) == 0, "PACKET_ORIGDEV");
	int c = place(socket(AF_PACKET, SOCK_RAW, 0), 12);
	(void)c;
	close(open("ready", O_WRONLY | O_CREAT | O_TRUNC, 0644));

	for (tick = 1;; tick++) {
		CHECK(opt(a, PACKET_AUXDATA) == 1, "fd 10: PACKET_AUXDATA");
		CHECK(opt(a, PACKET_TIMESTAMP) == ts, "fd 10: PACKET_TIMESTAMP");
		CHECK(opt(b, PACKET_VERSION) == TPACKET_V2, "fd 11: PACKET_VERSION");
		CHECK(opt(b, PACKET_RESERVE) == 64, "fd 11: PACKET_RESERVE");
		CHECK(opt(b, PACKET_ORIGDEV) == 1, "fd 11: PACKET_ORIGDEV");
		int ty;
		socklen_t tl = sizeof(ty);
		CHECK(getsockopt(b, SOL_SOCKET, SO_TYPE, &ty, &tl) == 0 && ty == SOCK_DGRAM, "fd 11: type");
		/* a frame on lo, seen back */
		unsigned char f[64] = { 0 };
		f[12] = PROTO >> 8, f[13] = PROTO & 0xff;
		int n = snprintf((char *)f + 14, 40, "tick %lu", tick);
		struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_protocol = htons(PROTO), .sll_ifindex = lo, .sll_halen = 6 };
		CHECK(sendto(a, f, 14 + n + 1, 0, (struct sockaddr *)&to, sizeof(to)) == 14 + n + 1, "sendto lo");
		int seen = 0;
		for (int i = 0; i < 100 && !seen; i++) {
			unsigned char r[128];
			ssize_t k = recv(a, r, sizeof(r), 0);
			if (k < 0) {
				CHECK(errno == EAGAIN, "recv");
				struct pollfd p = { .fd = a, .events = POLLIN };
				poll(&p, 1, 10);
				continue;
			}
			if (k >= 14 + n && !memcmp(r + 14, f + 14, n))
				seen = 1;
		}
		CHECK(seen, "fd 10: our frame did not come back");
		say("tick %lu ok", tick);
		struct timespec t = { 0, 100000000 };
		nanosleep(&t, NULL);
	}
}
