/* Unix sockets of every type with data queued in both directions, checked
 * every tick with sequence numbers (nothing lost, nothing repeated):
 * - a stream socketpair (1000 bytes queued one way, 777 the other);
 * - a datagram socketpair and a seqpacket socketpair (3 messages queued
 *   each way, each its own length and contents);
 * - a datagram socket bound to an abstract name, not connected, with 2
 *   datagrams queued from an unnamed sender;
 * - a stream socketpair shut down for writing on one side after 300
 *   bytes: the reader sees the bytes, then end of file;
 * - a stream socket listening on a path (backlog 7) with one connection
 *   queued, not accepted: each tick accepts it, checks a byte goes
 *   through, and queues a new one;
 * - socket options (buffer sizes, timeouts, priority, keepalive) and
 *   O_NONBLOCK on every socket.
 * Argument "noqueued": no queued connection on the listener (for
 * upstream CRIU, which cannot dump one). */
#include "fx.h"
#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>

#define ST_AB 1000
#define ST_BA 777
#define SHUT_BYTES 300

static int nb(int fd)
{
	return fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* Stream position p of direction seed: one byte of a deterministic stream. */
static uint8_t spat(uint64_t seed, uint64_t p)
{
	return fx_pat(seed, p);
}

static void stream_put(int fd, uint64_t seed, uint64_t *wpos, size_t n, const char *what)
{
	uint8_t buf[2048];
	for (size_t i = 0; i < n; i++)
		buf[i] = spat(seed, *wpos + i);
	FX_CHECK(write(fd, buf, n) == (ssize_t)n, what);
	*wpos += n;
}

static void stream_take(int fd, uint64_t seed, uint64_t *rpos, size_t n, const char *what)
{
	uint8_t buf[2048];
	ssize_t got = read(fd, buf, sizeof(buf));
	FX_CHECK(got == (ssize_t)n, what);
	for (size_t i = 0; i < n; i++)
		FX_CHECK(buf[i] == spat(seed, *rpos + i), what);
	*rpos += n;
	FX_CHECK(read(fd, buf, 1) < 0 && errno == EAGAIN, what);
}

/* Message number k of channel seed: its length and bytes. */
static size_t msg_len(uint64_t k)
{
	return 40 + (k * 37) % 300;
}

static void msg_put(int fd, uint64_t seed, uint64_t *k, const struct sockaddr_un *to, socklen_t tolen, const char *what)
{
	uint8_t buf[512];
	size_t n = msg_len(*k);
	fx_fill(buf, n, seed * 1000003 + *k);
	ssize_t r = to ? sendto(fd, buf, n, 0, (const struct sockaddr *)to, tolen) : send(fd, buf, n, 0);
	FX_CHECK(r == (ssize_t)n, what);
	(*k)++;
}

static void msg_take(int fd, uint64_t seed, uint64_t *k, const char *what)
{
	uint8_t buf[512];
	ssize_t r = recv(fd, buf, sizeof(buf), 0);
	FX_CHECK(r == (ssize_t)msg_len(*k) && fx_same(buf, r, seed * 1000003 + *k), what);
	(*k)++;
}

static void empty(int fd, const char *what)
{
	uint8_t b;
	FX_CHECK(recv(fd, &b, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, what);
}

static int opt(int fd, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);
	FX_CHECK(getsockopt(fd, SOL_SOCKET, name, &v, &l) == 0, "getsockopt");
	return v;
}

int main(int argc, char **argv)
{
	int queued_conn = !(argc > 1 && strcmp(argv[1], "noqueued") == 0);
	signal(SIGPIPE, SIG_IGN);
	fx_open_log();
	int st[2], dg[2], sp[2], sh[2];
	FX_CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, st) == 0, "socketpair stream");
	FX_CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) == 0, "socketpair dgram");
	FX_CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp) == 0, "socketpair seqpacket");
	FX_CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sh) == 0, "socketpair shut");
	for (int i = 0; i < 2; i++) {
		nb(st[i]);
		nb(dg[i]);
		nb(sp[i]);
		nb(sh[i]);
	}
	int v = 50000;
	FX_CHECK(setsockopt(st[0], SOL_SOCKET, SO_SNDBUF, &v, sizeof(v)) == 0, "SO_SNDBUF");
	v = 1;
	FX_CHECK(setsockopt(st[1], SOL_SOCKET, SO_KEEPALIVE, &v, sizeof(v)) == 0, "SO_KEEPALIVE");
	v = 3;
	FX_CHECK(setsockopt(dg[0], SOL_SOCKET, SO_PRIORITY, &v, sizeof(v)) == 0, "SO_PRIORITY");
	struct timeval tv = { 3, 500000 };
	FX_CHECK(setsockopt(sp[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0, "SO_RCVTIMEO");
	int want_sndbuf = opt(st[0], SO_SNDBUF);
	int st0dup = dup(st[0]);
	FX_CHECK(st0dup >= 0, "dup");

	/* abstract-named datagram socket and an unnamed sender */
	struct sockaddr_un ab = { .sun_family = AF_UNIX };
	/* unique per working directory: abstract names are per network
	 * namespace, and every copy of this program is pid 1 of its own pid
	 * namespace (tests run in parallel) */
	struct stat cwd_st;
	FX_CHECK(stat(".", &cwd_st) == 0, "stat cwd");
	int ablen = snprintf(ab.sun_path + 1, sizeof(ab.sun_path) - 1, "criu-rs-unixsk-%d-%lu", getpid(), (unsigned long)cwd_st.st_ino) + 1;
	socklen_t abl = offsetof(struct sockaddr_un, sun_path) + ablen;
	int abs_rx = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	int abs_tx = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	FX_CHECK(abs_rx >= 0 && abs_tx >= 0 && bind(abs_rx, (struct sockaddr *)&ab, abl) == 0, "bind abstract");

	/* listener on a path */
	struct sockaddr_un lp = { .sun_family = AF_UNIX };
	char cwd[80];
	FX_CHECK(getcwd(cwd, sizeof(cwd)) != NULL, "getcwd");
	snprintf(lp.sun_path, sizeof(lp.sun_path), "%s/listen.sock", cwd);
	unlink(lp.sun_path);
	int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
	FX_CHECK(ls >= 0 && bind(ls, (struct sockaddr *)&lp, sizeof(lp)) == 0 && listen(ls, 7) == 0, "listen");
	/* bound to a path, then unlinked; its sender connected before that */
	struct sockaddr_un dp = { .sun_family = AF_UNIX };
	snprintf(dp.sun_path, sizeof(dp.sun_path), "%s/gone.sock", cwd);
	unlink(dp.sun_path);
	int del_rx = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	int del_tx = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	FX_CHECK(del_rx >= 0 && del_tx >= 0 && bind(del_rx, (struct sockaddr *)&dp, sizeof(dp)) == 0, "bind gone.sock");
	FX_CHECK(connect(del_tx, (struct sockaddr *)&dp, sizeof(dp)) == 0 && unlink(dp.sun_path) == 0, "connect and unlink gone.sock");
	int cl = -1;
	if (queued_conn) {
		cl = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
		FX_CHECK(cl >= 0 && connect(cl, (struct sockaddr *)&lp, sizeof(lp)) == 0, "connect client");
	}

	uint64_t ab_w = 0, ab_r = 0, ba_w = 0, ba_r = 0; /* stream positions */
	uint64_t d01w = 0, d01r = 0, d10w = 0, d10r = 0; /* dgram numbers */
	uint64_t s01w = 0, s01r = 0, s10w = 0, s10r = 0; /* seqpacket */
	uint64_t aw = 0, ar = 0;                         /* abstract */
	uint64_t gw = 0, gr = 0;                         /* gone.sock */
	stream_put(st[0], 1, &ab_w, ST_AB, "queue stream ab");
	stream_put(st[1], 2, &ba_w, ST_BA, "queue stream ba");
	for (int i = 0; i < 3; i++) {
		msg_put(dg[0], 3, &d01w, NULL, 0, "queue dgram 01");
		msg_put(dg[1], 4, &d10w, NULL, 0, "queue dgram 10");
		msg_put(sp[0], 5, &s01w, NULL, 0, "queue seqpacket 01");
		msg_put(sp[1], 6, &s10w, NULL, 0, "queue seqpacket 10");
	}
	for (int i = 0; i < 2; i++) {
		msg_put(abs_tx, 7, &aw, &ab, abl, "queue abstract");
		msg_put(del_tx, 9, &gw, NULL, 0, "queue gone");
	}
	uint64_t shw = 0;
	stream_put(sh[0], 8, &shw, SHUT_BYTES, "queue shut");
	FX_CHECK(shutdown(sh[0], SHUT_WR) == 0, "shutdown");
	fx_ready();

	for (fx_tick = 1;; fx_tick++) {
		fx_sleep_ms(100);
		stream_take(st[1], 1, &ab_r, ST_AB, "stream ab data");
		stream_put(st[0], 1, &ab_w, ST_AB, "requeue stream ab");
		stream_take(st[0], 2, &ba_r, ST_BA, "stream ba data");
		stream_put(st[1], 2, &ba_w, ST_BA, "requeue stream ba");
		for (int i = 0; i < 3; i++) {
			msg_take(dg[1], 3, &d01r, "dgram 01 data");
			msg_take(dg[0], 4, &d10r, "dgram 10 data");
			msg_take(sp[1], 5, &s01r, "seqpacket 01 data");
			msg_take(sp[0], 6, &s10r, "seqpacket 10 data");
		}
		empty(dg[1], "dgram 01 extra");
		empty(dg[0], "dgram 10 extra");
		empty(sp[1], "seqpacket 01 extra");
		empty(sp[0], "seqpacket 10 extra");
		for (int i = 0; i < 3; i++) {
			msg_put(dg[0], 3, &d01w, NULL, 0, "requeue dgram 01");
			msg_put(dg[1], 4, &d10w, NULL, 0, "requeue dgram 10");
			msg_put(sp[0], 5, &s01w, NULL, 0, "requeue seqpacket 01");
			msg_put(sp[1], 6, &s10w, NULL, 0, "requeue seqpacket 10");
		}
		for (int i = 0; i < 2; i++)
			msg_take(abs_rx, 7, &ar, "abstract data");
		empty(abs_rx, "abstract extra");
		for (int i = 0; i < 2; i++)
			msg_put(abs_tx, 7, &aw, &ab, abl, "requeue abstract");
		struct sockaddr_un got;
		socklen_t gl = sizeof(got);
		FX_CHECK(getsockname(abs_rx, (struct sockaddr *)&got, &gl) == 0 && gl == abl && memcmp(&got, &ab, abl) == 0, "abstract name");
		for (int i = 0; i < 2; i++)
			msg_take(del_rx, 9, &gr, "gone data");
		empty(del_rx, "gone extra");
		for (int i = 0; i < 2; i++)
			msg_put(del_tx, 9, &gw, NULL, 0, "requeue gone");
		gl = sizeof(got);
		FX_CHECK(getsockname(del_rx, (struct sockaddr *)&got, &gl) == 0 && strcmp(got.sun_path, dp.sun_path) == 0, "gone name");
		FX_CHECK(access(dp.sun_path, F_OK) < 0 && errno == ENOENT, "gone.sock stays unlinked");

		/* shut down: the 300 bytes, then EOF; the writer's side refuses */
		uint8_t buf[1024];
		FX_CHECK(recv(sh[1], buf, sizeof(buf), MSG_PEEK) == SHUT_BYTES, "shut data");
		uint64_t p0 = 0;
		for (int i = 0; i < SHUT_BYTES; i++)
			FX_CHECK(buf[i] == spat(8, p0 + i), "shut data bytes");
		struct pollfd pf = { .fd = sh[1], .events = POLLIN | POLLRDHUP };
		FX_CHECK(poll(&pf, 1, 0) == 1 && (pf.revents & POLLRDHUP), "shut rdhup");
		FX_CHECK(send(sh[0], "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "shut writer");

		/* listener with a queued connection */
		gl = sizeof(got);
		FX_CHECK(getsockname(ls, (struct sockaddr *)&got, &gl) == 0 && strcmp(got.sun_path, lp.sun_path) == 0, "listener name");
		FX_CHECK(opt(ls, SO_ACCEPTCONN) == 1, "listening");
		if (queued_conn) {
			int a = accept(ls, NULL, NULL);
			FX_CHECK(a >= 0, "accept queued connection");
			FX_CHECK(write(cl, "q", 1) == 1 && read(a, buf, 1) == 1 && buf[0] == 'q', "queued connection data");
			close(a);
			FX_CHECK(accept(ls, NULL, NULL) < 0 && errno == EAGAIN, "no other connection");
			close(cl);
			cl = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
			FX_CHECK(cl >= 0 && connect(cl, (struct sockaddr *)&lp, sizeof(lp)) == 0, "reconnect client");
		} else {
			FX_CHECK(accept(ls, NULL, NULL) < 0 && errno == EAGAIN, "no connection");
		}

		/* options and flags */
		FX_CHECK(opt(st[0], SO_SNDBUF) == want_sndbuf, "SO_SNDBUF");
		FX_CHECK(opt(st[1], SO_KEEPALIVE) == 1, "SO_KEEPALIVE");
		FX_CHECK(opt(dg[0], SO_PRIORITY) == 3, "SO_PRIORITY");
		struct timeval t2;
		socklen_t tl = sizeof(t2);
		FX_CHECK(getsockopt(sp[1], SOL_SOCKET, SO_RCVTIMEO, &t2, &tl) == 0 && t2.tv_sec == 3 && t2.tv_usec == 500000, "SO_RCVTIMEO");
		FX_CHECK(fcntl(st[0], F_GETFL) & O_NONBLOCK, "O_NONBLOCK");
		struct stat s1, s2;
		FX_CHECK(fstat(st[0], &s1) == 0 && fstat(st0dup, &s2) == 0 && s1.st_ino == s2.st_ino, "dup of a socket");
		FX_CHECK(fcntl(st0dup, F_SETFL, O_NONBLOCK) == 0 && (fcntl(st[0], F_GETFL) & O_NONBLOCK), "dup shares its file");
		FX_CHECK(opt(dg[1], SO_TYPE) == SOCK_DGRAM && opt(sp[0], SO_TYPE) == SOCK_SEQPACKET, "types");
		fx_say("tick %lu ok", fx_tick);
	}
}
