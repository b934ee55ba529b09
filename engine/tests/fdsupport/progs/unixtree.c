/* A stream and a datagram socketpair split across a parent and its child
 * (each holds one end, as after socketpair + fork + close): data flows
 * both ways every tick, about 1000 bytes and a few datagrams stay queued
 * each way; every byte is checked by its stream position and every
 * datagram by its number (nothing lost, nothing repeated). The parent logs
 * `tick N ok`; either process logs FAIL. */
#include "fx.h"
#include <sys/ioctl.h>
#include <sys/socket.h>

#define KEEP 1000

struct side {
	int st, dg;
	uint64_t wseed, rseed;
	uint64_t wpos, rpos, wnum, rnum;
	unsigned long idle;
};

static void step(struct side *s)
{
	uint8_t buf[4096];
	/* stream: read what is past KEEP bytes, check it; write 300 more */
	int avail = 0;
	FX_CHECK(ioctl(s->st, FIONREAD, &avail) == 0, "FIONREAD");
	int progress = 0;
	if (avail > KEEP) {
		int n = avail - KEEP;
		if (n > (int)sizeof(buf))
			n = sizeof(buf);
		FX_CHECK(read(s->st, buf, n) == n, "stream read");
		for (int i = 0; i < n; i++)
			FX_CHECK(buf[i] == fx_pat(s->rseed, s->rpos + i), "stream bytes");
		s->rpos += n;
		progress = 1;
	}
	int out = 0;
	FX_CHECK(ioctl(s->st, TIOCOUTQ, &out) == 0, "TIOCOUTQ");
	if (out < 4 * KEEP) {
		for (int i = 0; i < 300; i++)
			buf[i] = fx_pat(s->wseed, s->wpos + i);
		ssize_t w = write(s->st, buf, 300);
		FX_CHECK(w > 0 || errno == EAGAIN, "stream write");
		if (w > 0)
			s->wpos += w;
	}
	/* datagrams: one in, checked by number; one out */
	uint64_t k;
	ssize_t r = recv(s->dg, &k, sizeof(k), MSG_DONTWAIT);
	if (r >= 0) {
		FX_CHECK(r == sizeof(k) && k == s->rnum, "datagram number");
		s->rnum++;
		progress = 1;
	} else {
		FX_CHECK(errno == EAGAIN, "datagram recv");
	}
	k = s->wnum;
	if (send(s->dg, &k, sizeof(k), MSG_DONTWAIT) == sizeof(k))
		s->wnum++;
	else
		FX_CHECK(errno == EAGAIN, "datagram send");
	s->idle = progress ? 0 : s->idle + 1;
	FX_CHECK(s->idle < 50, "no data for 50 ticks");
}

int main(void)
{
	fx_open_log();
	int st[2], dg[2];
	FX_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, st) == 0, "socketpair stream");
	FX_CHECK(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0, dg) == 0, "socketpair dgram");
	struct side s = { 0 };
	pid_t parent = getpid();
	pid_t c = fork();
	FX_CHECK(c >= 0, "fork");
	if (c == 0) {
		close(st[0]);
		close(dg[0]);
		s.st = st[1];
		s.dg = dg[1];
		s.wseed = 2;
		s.rseed = 1;
		for (fx_tick = 1;; fx_tick++) {
			fx_sleep_ms(100);
			FX_CHECK(getppid() == parent, "orphaned");
			step(&s);
		}
	}
	close(st[1]);
	close(dg[1]);
	s.st = st[0];
	s.dg = dg[0];
	s.wseed = 1;
	s.rseed = 2;
	fx_sleep_ms(500); /* both sides have queued some */
	fx_ready();
	for (fx_tick = 1;; fx_tick++) {
		fx_sleep_ms(100);
		step(&s);
		int status;
		FX_CHECK(waitpid(c, &status, WNOHANG) == 0, "child alive");
		fx_say("tick %lu ok", fx_tick);
	}
}
