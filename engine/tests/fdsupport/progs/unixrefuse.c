/* Unix sockets a dump must refuse, by argument:
 * "scm PATH-unused": an fd in flight (SCM_RIGHTS sent, not received);
 * "ext PATH": a stream socket connected to PATH, a listener outside the
 * process;
 * "listen PATH": a stream socket listening on PATH (the test connects
 * from outside and does not accept);
 * "extdg PATH": a datagram socket connected to PATH, a datagram socket
 * outside the process (dumped with --ext-unix-sk), sending it a datagram
 * every tick. Ticks while nothing changes. */
#include "fx.h"
#include <sys/socket.h>
#include <sys/un.h>

int main(int argc, char **argv)
{
	fx_open_log();
	FX_CHECK(argc > 1, "usage");
	int keep = -1;
	if (strcmp(argv[1], "scm") == 0) {
		int sv[2];
		FX_CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) == 0, "socketpair");
		int passed = open("/dev/null", O_RDONLY);
		char c = 'x';
		struct iovec iov = { &c, 1 };
		union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(int))]; } u;
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof(u.b) };
		struct cmsghdr *h = CMSG_FIRSTHDR(&m);
		h->cmsg_level = SOL_SOCKET;
		h->cmsg_type = SCM_RIGHTS;
		h->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(h), &passed, sizeof(int));
		FX_CHECK(sendmsg(sv[0], &m, 0) == 1, "sendmsg SCM_RIGHTS");
		close(passed);
		keep = sv[1];
	} else if (strcmp(argv[1], "listen") == 0) {
		FX_CHECK(argc > 2, "usage listen");
		struct sockaddr_un a = { .sun_family = AF_UNIX };
		snprintf(a.sun_path, sizeof(a.sun_path), "%s", argv[2]);
		keep = socket(AF_UNIX, SOCK_STREAM, 0);
		FX_CHECK(keep >= 0 && bind(keep, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(keep, 4) == 0, "listen");
	} else {
		FX_CHECK(argc > 2, "usage ext");
		struct sockaddr_un a = { .sun_family = AF_UNIX };
		snprintf(a.sun_path, sizeof(a.sun_path), "%s", argv[2]);
		keep = socket(AF_UNIX, strcmp(argv[1], "extdg") == 0 ? SOCK_DGRAM : SOCK_STREAM, 0);
		FX_CHECK(keep >= 0 && connect(keep, (struct sockaddr *)&a, sizeof(a)) == 0, "connect outside");
	}
	fx_ready();
	for (fx_tick = 1;; fx_tick++) {
		fx_sleep_ms(100);
		FX_CHECK(fcntl(keep, F_GETFD) >= 0, "socket");
		if (strcmp(argv[1], "extdg") == 0)
			FX_CHECK(send(keep, "t", 1, MSG_DONTWAIT) == 1 || errno == EAGAIN, "send to the outside peer");
		fx_say("tick %lu ok", fx_tick);
	}
}
