/* Namespaces, --root and process-wide state a restore must keep
 * (engine/tests/namespaces.rs). Appends `tick N ok` or `FAIL ...` to
 * ./progress.log (fd kept open, O_APPEND) every 100 ms; creates ./ready
 * once set up.
 *
 *   nsstate plain              just ticks
 *   nsstate hold PATH          keeps PATH open read-only; its first bytes
 *                              must stay what they were at start
 *   nsstate unshare-time       unshare(CLONE_NEWTIME) without fork or exec:
 *                              its children would get a new time namespace
 *   nsstate monotonic          CLOCK_MONOTONIC and CLOCK_BOOTTIME never go
 *                              back and never jump by more than 5 s a tick
 *   nsstate membarrier         registers for MEMBARRIER private expedited
 *                              (plain and sync-core); every tick the
 *                              expedited barriers must work (EPERM when
 *                              the registration is lost)
 *   nsstate thp                PR_SET_THP_DISABLE; must stay set
 *   nsstate loginuid N         writes N to /proc/self/loginuid; must stay N
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif
#define MB_PRIVATE_EXPEDITED (1 << 3)
#define MB_REGISTER_PRIVATE_EXPEDITED (1 << 4)
#define MB_PRIVATE_EXPEDITED_SYNC_CORE (1 << 5)
#define MB_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE (1 << 6)

static int logfd = -1;

static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (write(logfd, buf, n) != n)
		_exit(3);
}

static double clock_s(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long membarrier(int cmd)
{
	return syscall(SYS_membarrier, cmd, 0, 0);
}

static unsigned read_loginuid(void)
{
	char b[32] = { 0 };
	int fd = open("/proc/self/loginuid", O_RDONLY);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, b, sizeof(b) - 1);
	close(fd);
	return n > 0 ? (unsigned)strtoul(b, NULL, 10) : 0;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "plain";
	logfd = open("progress.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (logfd < 0)
		return 2;
	int held = -1;
	char start[16] = { 0 };
	unsigned want_uid = 0;
	if (!strcmp(mode, "hold")) {
		held = open(argv[2], O_RDONLY);
		if (held < 0 || pread(held, start, sizeof(start) - 1, 0) < 0) {
			say("FAIL open %s: %s", argv[2], strerror(errno));
			return 1;
		}
	} else if (!strcmp(mode, "unshare-time")) {
		if (unshare(CLONE_NEWTIME)) {
			say("FAIL unshare(CLONE_NEWTIME): %s", strerror(errno));
			return 1;
		}
	} else if (!strcmp(mode, "membarrier")) {
		if (membarrier(MB_REGISTER_PRIVATE_EXPEDITED) || membarrier(MB_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE)) {
			say("FAIL membarrier register: %s", strerror(errno));
			return 1;
		}
	} else if (!strcmp(mode, "thp")) {
		if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)) {
			say("FAIL PR_SET_THP_DISABLE: %s", strerror(errno));
			return 1;
		}
	} else if (!strcmp(mode, "loginuid")) {
		want_uid = (unsigned)strtoul(argv[2], NULL, 10);
		int fd = open("/proc/self/loginuid", O_WRONLY);
		if (fd < 0 || write(fd, argv[2], strlen(argv[2])) < 0) {
			say("FAIL writing loginuid: %s", strerror(errno));
			return 1;
		}
		close(fd);
	}
	double mono = clock_s(CLOCK_MONOTONIC), boot = clock_s(CLOCK_BOOTTIME);
	close(open("ready", O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
	for (unsigned long tick = 1;; tick++) {
		const char *bad = NULL;
		char why[128] = "";
		if (held >= 0) {
			char now[16] = { 0 };
			if (pread(held, now, sizeof(now) - 1, 0) < 0 || memcmp(now, start, sizeof(now)))
				snprintf(why, sizeof(why), "held file reads '%s', was '%s'", now, start), bad = why;
		}
		if (!strcmp(mode, "monotonic")) {
			double m = clock_s(CLOCK_MONOTONIC), b = clock_s(CLOCK_BOOTTIME);
			if (m < mono || m > mono + 5 || b < boot || b > boot + 5)
				snprintf(why, sizeof(why), "clocks jumped: monotonic %.3f -> %.3f, boottime %.3f -> %.3f", mono, m, boot, b),
					bad = why;
			mono = m, boot = b;
		}
		if (!strcmp(mode, "membarrier") && (membarrier(MB_PRIVATE_EXPEDITED) || membarrier(MB_PRIVATE_EXPEDITED_SYNC_CORE)))
			snprintf(why, sizeof(why), "membarrier: %s", strerror(errno)), bad = why;
		if (!strcmp(mode, "thp") && prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) != 1)
			bad = "THP disable lost";
		if (!strcmp(mode, "loginuid") && read_loginuid() != want_uid)
			snprintf(why, sizeof(why), "loginuid is %u, not %u", read_loginuid(), want_uid), bad = why;
		if (bad)
			say("FAIL tick %lu: %s", tick, bad);
		else
			say("tick %lu ok", tick);
		usleep(100000);
	}
}
