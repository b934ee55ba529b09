/* Large unix socket queues: 3 MiB queued on a stream pair (its send
 * buffer raised to 8 MiB) and, on a datagram pair, a 1 MiB datagram then a
 * 7-byte one; every tick reads them all back, checks them, queues them
 * again. */
#include "fx.h"
#include <sys/socket.h>
#define N (3 << 20)
static uint8_t buf[N];
int main(void)
{
	fx_open_log();
	int s[2], d[2];
	FX_CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0, "sp");
	FX_CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, d) == 0, "dp");
	int v = 8 << 20;
	FX_CHECK(setsockopt(s[0], SOL_SOCKET, SO_SNDBUFFORCE, &v, sizeof(v)) == 0, "sndbuf");
	FX_CHECK(setsockopt(d[0], SOL_SOCKET, SO_SNDBUFFORCE, &v, sizeof(v)) == 0, "sndbuf d");
	fcntl(s[1], F_SETFL, O_NONBLOCK); fcntl(d[1], F_SETFL, O_NONBLOCK);
	fx_fill(buf, N, 5);
	size_t off = 0;
	while (off < N) { ssize_t w = write(s[0], buf + off, N - off); FX_CHECK(w > 0, "write"); off += w; }
	/* one datagram of 1 MiB (dumped in several peeks), one of 7 bytes */
	FX_CHECK(send(d[0], buf, 1 << 20, 0) == (1 << 20), "big dgram");
	FX_CHECK(send(d[0], buf, 7, 0) == 7, "small dgram");
	fx_ready();
	for (fx_tick = 1;; fx_tick++) {
		fx_sleep_ms(200);
		size_t got = 0;
		static uint8_t rb[N];
		while (got < N) { ssize_t r = read(s[1], rb + got, N - got); FX_CHECK(r > 0, "read"); got += r; }
		FX_CHECK(fx_same(rb, N, 5), "stream bytes");
		FX_CHECK(recv(d[1], rb, N, 0) == (1 << 20) && fx_same(rb, 1 << 20, 5), "big dgram back");
		FX_CHECK(recv(d[1], rb, N, 0) == 7 && fx_same(rb, 7, 5), "small dgram back");
		FX_CHECK(recv(d[1], rb, 1, 0) < 0 && errno == EAGAIN, "no more");
		off = 0;
		while (off < N) { ssize_t w = write(s[0], buf + off, N - off); FX_CHECK(w > 0, "rewrite"); off += w; }
		FX_CHECK(send(d[0], buf, 1 << 20, 0) == (1 << 20), "big dgram again");
		FX_CHECK(send(d[0], buf, 7, 0) == 7, "small again");
		fx_say("tick %lu ok", fx_tick);
	}
}
