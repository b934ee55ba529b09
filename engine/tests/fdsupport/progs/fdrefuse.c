/* Holds one fd of a kind the engine does not support, chosen by argv[1]:
 * memfd, socket, userfaultfd, misc (a misc character device), rawname
 * (a file whose name is not UTF-8), secretfd (a memfd_secret fd), secretmap
 * (a memfd_secret area mapped, its fd closed), detached (an O_PATH fd of a
 * detached copy of /tmp's mount, open_tree(OPEN_TREE_CLONE)), io_uring,
 * perf_event; and one supported: rdonly (plain.bin
 * opened read-only, for the test that replaces it with a FIFO). */
#include "fx.h"
#include <sys/syscall.h>
#include <sys/socket.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <sys/mman.h>

#include <linux/io_uring.h>
#include <linux/perf_event.h>

#ifndef SYS_memfd_secret
#define SYS_memfd_secret 447
#endif

int main(int argc, char **argv)
{
	fx_open_log();
	const char *k = argc > 1 ? argv[1] : "";
	int fd = -1;
	if (!strcmp(k, "memfd"))
		fd = memfd_create("x", 0);
	else if (!strcmp(k, "socket"))
	{
		/* a family no kind handles (unix, inet, netlink and packet sockets
		 * dump now): vsock, or AF_XDP where vsock is missing */
		fd = socket(40 /* AF_VSOCK */, SOCK_STREAM, 0);
		if (fd < 0)
			fd = socket(44 /* AF_XDP */, SOCK_RAW, 0);
	}
	else if (!strcmp(k, "userfaultfd"))
		fd = syscall(SYS_userfaultfd, 0);
	else if (!strcmp(k, "misc"))
		fd = open("/dev/loop-control", O_RDWR);
	else if (!strcmp(k, "secretfd") || !strcmp(k, "secretmap")) {
		fd = syscall(SYS_memfd_secret, 0);
		FX_CHECK(fd >= 0 && ftruncate(fd, 4096) == 0, "memfd_secret");
		if (!strcmp(k, "secretmap")) {
			char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
			FX_CHECK(p != MAP_FAILED, "mmap of memfd_secret");
			p[0] = 1;
			close(fd);
			fd = 0;
		}
	}
	else if (!strcmp(k, "detached"))
		fd = syscall(SYS_open_tree, AT_FDCWD, "/tmp", 1 /* OPEN_TREE_CLONE */);
	else if (!strcmp(k, "io_uring")) {
		struct io_uring_params p;
		memset(&p, 0, sizeof(p));
		fd = syscall(SYS_io_uring_setup, 8, &p);
	} else if (!strcmp(k, "perf_event")) {
		struct perf_event_attr a;
		memset(&a, 0, sizeof(a));
		a.type = PERF_TYPE_SOFTWARE;
		a.size = sizeof(a);
		a.config = PERF_COUNT_SW_TASK_CLOCK;
		fd = syscall(SYS_perf_event_open, &a, 0, -1, -1, 0);
	}
	else if (!strcmp(k, "rdonly"))
		fd = open("plain.bin", O_RDONLY | O_CREAT, 0600);
	else if (!strcmp(k, "rawname"))
		fd = open("raw\xff\xfe.bin", O_RDWR | O_CREAT, 0600);
	FX_CHECK(fd >= 0, k);
	int rfd = open("ready", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	close(rfd);
	for (fx_tick = 1;; fx_tick++) {
		fx_say("tick %lu ok", fx_tick);
		fx_sleep_ms(100);
	}
}
