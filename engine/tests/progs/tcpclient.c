/* tcpclient PORT [LPORT [child]]: holds a TCP connection to
 * 127.0.0.1:PORT (an echo server outside its tree) and, with LPORT (not
 * "-"), a listener on 127.0.0.1:LPORT (0: a port the kernel picks, written
 * into lport.txt). With "child", it forks a child that sleeps (a tree).
 * PORT "self": the connection is to its own listener (both ends in the
 * process; it then only logs "self N").
 *
 * Every 50 ms it sends the line "N\n" (N counting from 0, MSG_NOSIGNAL)
 * and reads the echo, which must be that line: "ok N" in tick-PID.log (PID:
 * its host pid, /proc/self, so that every clone writes its own log). A
 * wrong echo is "FAIL". The first failed send or receive (the connection
 * closed) is logged once, with what the program sees then:
 *   closed send=RET/ERRNO recv=RET/ERRNO poll=REVENTS name=ADDR:PORT
 *          peer=RET/ERRNO soerr=N state=TCP_STATE flags=O_FLAGS
 * and from then on "closed N" every tick (it keeps running).
 * The listener is polled every tick: a connection accepted is answered
 * with "PID\n" and closed ("accepted" in the log).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void logf_(const char *fmt, ...)
{
	char self[64] = "";
	ssize_t n = readlink("/proc/self", self, sizeof(self) - 1);
	if (n <= 0)
		snprintf(self, sizeof(self), "%d", getpid());
	else
		self[n] = 0;
	char path[128];
	snprintf(path, sizeof(path), "tick-%s.log", self);
	FILE *f = fopen(path, "a");
	if (!f)
		return;
	va_list ap;
	va_start(ap, fmt);
	vfprintf(f, fmt, ap);
	va_end(ap);
	fclose(f);
}

static int sk = -1;

/* One exchange: 0 ok, -1 closed (probe logged by the caller). */
static int exchange(unsigned long long i, int *sret, int *serr, int *rret, int *rerr)
{
	char line[32], got[32];
	int len = snprintf(line, sizeof(line), "%llu\n", i);
	*sret = send(sk, line, len, MSG_NOSIGNAL);
	*serr = *sret < 0 ? errno : 0;
	*rret = 0;
	*rerr = 0;
	if (*sret != len) {
		/* what a read says now */
		*rret = recv(sk, got, sizeof(got), MSG_DONTWAIT);
		*rerr = *rret < 0 ? errno : 0;
		return -1;
	}
	int have = 0;
	while (have < len) {
		struct pollfd p = { .fd = sk, .events = POLLIN };
		int pr = poll(&p, 1, 5000);
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr == 0) {
			logf_("FAIL no echo of %llu in 5 s\n", i);
			exit(1);
		}
		int r = recv(sk, got + have, len - have, 0);
		if (r <= 0) {
			if (r < 0 && errno == EINTR)
				continue;
			*rret = r;
			*rerr = r < 0 ? errno : 0;
			return -1;
		}
		have += r;
	}
	if (memcmp(got, line, len) != 0) {
		logf_("FAIL echo of %llu was %.*s\n", i, have, got);
		exit(1);
	}
	return 0;
}

static void probe(int sret, int serr, int rret, int rerr)
{
	struct pollfd p = { .fd = sk, .events = POLLIN | POLLOUT | POLLRDHUP };
	poll(&p, 1, 0);
	struct sockaddr_storage a;
	socklen_t al = sizeof(a);
	char name[64] = "?";
	if (getsockname(sk, (struct sockaddr *)&a, &al) == 0 && a.ss_family == AF_INET) {
		struct sockaddr_in *s = (struct sockaddr_in *)&a;
		snprintf(name, sizeof(name), "%s:%d", inet_ntoa(s->sin_addr), ntohs(s->sin_port));
	}
	al = sizeof(a);
	int pr = getpeername(sk, (struct sockaddr *)&a, &al);
	int perr = pr < 0 ? errno : 0;
	int soerr = -1;
	socklen_t ol = sizeof(soerr);
	getsockopt(sk, SOL_SOCKET, SO_ERROR, &soerr, &ol);
	struct tcp_info ti;
	ol = sizeof(ti);
	memset(&ti, 0, sizeof(ti));
	getsockopt(sk, IPPROTO_TCP, TCP_INFO, &ti, &ol);
	logf_("closed send=%d/%d recv=%d/%d poll=%#x name=%s peer=%d/%d soerr=%d state=%d flags=%#x\n", sret, serr, rret, rerr,
	      p.revents, name, pr, perr, soerr, ti.tcpi_state, fcntl(sk, F_GETFL));
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	int self = strcmp(argv[1], "self") == 0;
	int ls = -1;
	struct sockaddr_in la = { .sin_family = AF_INET };
	if (argc > 2 && strcmp(argv[2], "-") != 0) {
		la.sin_port = htons(atoi(argv[2]));
		inet_pton(AF_INET, "127.0.0.1", &la.sin_addr);
		ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
		int one = 1;
		setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		socklen_t al = sizeof(la);
		if (ls < 0 || bind(ls, (struct sockaddr *)&la, sizeof(la)) < 0 || listen(ls, 16) < 0 ||
		    getsockname(ls, (struct sockaddr *)&la, &al) < 0) {
			logf_("FAIL listen: %s\n", strerror(errno));
			return 1;
		}
		FILE *f = fopen("lport.txt.tmp", "w");
		if (f) {
			fprintf(f, "%d\n", ntohs(la.sin_port));
			fclose(f);
			rename("lport.txt.tmp", "lport.txt");
		}
	}
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = self ? la.sin_port : htons(atoi(argv[1])) };
	inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
	sk = socket(AF_INET, SOCK_STREAM, 0);
	if (sk < 0 || connect(sk, (struct sockaddr *)&to, sizeof(to)) < 0) {
		logf_("FAIL connect: %s\n", strerror(errno));
		return 1;
	}
	if (self) {
		/* the other end, accepted, held */
		struct pollfd p = { .fd = ls, .events = POLLIN };
		poll(&p, 1, 5000);
		if (accept4(ls, NULL, NULL, 0) < 0) {
			logf_("FAIL accept of its own connection: %s\n", strerror(errno));
			return 1;
		}
		for (unsigned long long i = 0;; i++) {
			logf_("self %llu\n", i);
			usleep(50000);
		}
	}
	if (argc > 3 && strcmp(argv[3], "child") == 0 && fork() == 0) {
		for (;;)
			pause();
	}
	int closed = 0;
	for (unsigned long long i = 0;; i++) {
		if (!closed) {
			int sret, serr, rret, rerr;
			if (exchange(i, &sret, &serr, &rret, &rerr) == 0) {
				logf_("ok %llu\n", i);
			} else {
				probe(sret, serr, rret, rerr);
				closed = 1;
			}
		} else {
			logf_("closed %llu\n", i);
		}
		if (ls >= 0) {
			int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
			if (c >= 0) {
				char self[32] = "";
				ssize_t n = readlink("/proc/self", self, sizeof(self) - 2);
				if (n > 0) {
					self[n] = '\n';
					if (write(c, self, n + 1) < 0)
						logf_("FAIL answer: %s\n", strerror(errno));
				}
				close(c);
				logf_("accepted\n");
			}
		}
		usleep(50000);
	}
}
