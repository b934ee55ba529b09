/* Netlink sockets, each checked every tick (100 ms): appends `tick N ok`
 * or `FAIL tick N <what>` to ./progress.log, writes ./ready (the port ids
 * of fds 10 and 11, one a line) once set up.
 *
 * fd 10: NETLINK_ROUTE, port id chosen by the kernel, groups RTMGRP_LINK
 *   (group 1, in the address) and RTNLGRP_BRVLAN (group 33, past the
 *   address: NETLINK_ADD_MEMBERSHIP); each tick asks RTM_GETLINK for lo
 *   (sequence number = tick) and must get the answer addressed to its
 *   port.
 * fd 11: NETLINK_ROUTE bound to a port id of its own choosing, connected
 *   to the kernel; asks the same through send() (no address).
 * fd 12: NETLINK_KOBJECT_UEVENT bound to group 1 (as udev's listeners).
 * fd 13: NETLINK_GENERIC, never bound.
 * Each tick also checks every socket's port id and group memberships.
 * low (argv word): no group past 32 on fd 10 (upstream 4.2's restore
 * refuses those). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

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

static unsigned port(int fd, unsigned *groups)
{
	struct sockaddr_nl a;
	socklen_t l = sizeof(a);
	CHECK(getsockname(fd, (struct sockaddr *)&a, &l) == 0, "getsockname");
	if (groups)
		*groups = a.nl_groups;
	return a.nl_pid;
}

/* Membership words (NETLINK_LIST_MEMBERSHIPS). */
static int members(int fd, unsigned *w, int n)
{
	socklen_t l = n * sizeof(unsigned);
	memset(w, 0, l);
	CHECK(getsockopt(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, w, &l) == 0, "NETLINK_LIST_MEMBERSHIPS");
	return l / sizeof(unsigned);
}

/* Ask RTM_GETLINK of lo (seq), through sendto the kernel or send. */
static void ask(int fd, unsigned seq, int connected)
{
	struct { struct nlmsghdr h; struct ifinfomsg i; } r = {
		.h = { .nlmsg_len = sizeof(r), .nlmsg_type = RTM_GETLINK, .nlmsg_flags = NLM_F_REQUEST, .nlmsg_seq = seq },
		.i = { .ifi_family = AF_UNSPEC, .ifi_index = 1 },
	};
	struct sockaddr_nl k = { .nl_family = AF_NETLINK };
	ssize_t s = connected ? send(fd, &r, sizeof(r), 0) : sendto(fd, &r, sizeof(r), 0, (struct sockaddr *)&k, sizeof(k));
	CHECK(s == sizeof(r), "send RTM_GETLINK");
}

/* The answer to seq (notifications, seq 0, skipped), addressed to pid. */
static void answer(int fd, unsigned seq, unsigned pid, const char *what)
{
	char buf[16384];
	for (int i = 0; i < 100; i++) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 20) != 1)
			continue;
		ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		CHECK(n > 0, what);
		struct nlmsghdr *h = (struct nlmsghdr *)buf;
		if (h->nlmsg_seq != seq)
			continue;
		CHECK(h->nlmsg_type == RTM_NEWLINK, what);
		CHECK(h->nlmsg_pid == pid, what);
		return;
	}
	fail(what);
}

int main(int argc, char **argv)
{
	int low = argc > 1 && !strcmp(argv[1], "low");
	logfd = open("progress.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (logfd < 0)
		return 1;
	int a = place(socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE), 10);
	struct sockaddr_nl sa = { .nl_family = AF_NETLINK, .nl_groups = RTMGRP_LINK };
	CHECK(bind(a, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bind a");
	int g = 33;
	if (!low)
		CHECK(setsockopt(a, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, sizeof(g)) == 0, "NETLINK_ADD_MEMBERSHIP 33");
	int b = place(socket(AF_NETLINK, SOCK_DGRAM, NETLINK_ROUTE), 11);
	/* a port id of its own: from the work directory's inode (runs differ) */
	struct stat wd;
	CHECK(stat(".", &wd) == 0, "stat .");
	struct sockaddr_nl sb = { .nl_family = AF_NETLINK, .nl_pid = 0x7a000000u | ((unsigned)wd.st_ino * 2654435761u >> 8 & 0xffffff) };
	CHECK(bind(b, (struct sockaddr *)&sb, sizeof(sb)) == 0, "bind b");
	struct sockaddr_nl k = { .nl_family = AF_NETLINK };
	CHECK(connect(b, (struct sockaddr *)&k, sizeof(k)) == 0, "connect b");
	int u = place(socket(AF_NETLINK, SOCK_RAW, NETLINK_KOBJECT_UEVENT), 12);
	struct sockaddr_nl su = { .nl_family = AF_NETLINK, .nl_groups = 1 };
	CHECK(bind(u, (struct sockaddr *)&su, sizeof(su)) == 0, "bind uevent");
	int gen = place(socket(AF_NETLINK, SOCK_RAW, NETLINK_GENERIC), 13);
	fcntl(gen, F_SETFL, O_NONBLOCK);

	unsigned pa = port(a, NULL), pb = port(b, NULL), pu = port(u, NULL);
	FILE *r = fopen("ready.tmp", "w");
	fprintf(r, "%u\n%u\n", pa, pb);
	fclose(r);
	rename("ready.tmp", "ready");

	for (tick = 1;; tick++) {
		unsigned grp, w[4];
		CHECK(port(a, &grp) == pa && (grp & RTMGRP_LINK), "fd 10: port or groups");
		int n = members(a, w, 4);
		CHECK(n >= 1 && w[0] == RTMGRP_LINK && (low ? n < 2 || w[1] == 0 : n >= 2 && w[1] == 1), "fd 10: memberships (1 and 33)");
		CHECK(port(b, NULL) == pb, "fd 11: port");
		CHECK(port(u, &grp) == pu && grp == 1, "fd 12: port or group");
		CHECK(port(gen, NULL) == 0, "fd 13: bound");
		int ty;
		socklen_t tl = sizeof(ty);
		CHECK(getsockopt(u, SOL_SOCKET, SO_PROTOCOL, &ty, &tl) == 0 && ty == NETLINK_KOBJECT_UEVENT, "fd 12: protocol");
		ask(a, tick, 0);
		answer(a, tick, pa, "fd 10: the answer");
		ask(b, tick, 1);
		answer(b, tick, pb, "fd 11: the answer");
		say("tick %lu ok", tick);
		struct timespec ts = { 0, 100000000 };
		nanosleep(&ts, NULL);
	}
}
