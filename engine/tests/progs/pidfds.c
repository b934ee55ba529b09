/* pidfds: pid 1 of its own pid namespace holding pidfds of the processes
 * of its tree, each on a fixed fd, checked every tick (`tick N ok` or
 * `FAIL ...` in ./progress.log):
 *   fd 10  a pidfd of its child A (a sleeping loop)
 *   fd 12  a pidfd of A, PIDFD_NONBLOCK
 *   fd 13  ("thread" word) a pidfd of itself, PIDFD_THREAD (which
 *          upstream CRIU 4.2 refuses)
 *   fd 15  a pidfd of its child Z, which exited with status 7 and is left
 *          unreaped (a zombie)
 *   fd 16  ("dead" word) a pidfd of a child that exited and was reaped
 *   in child B: fd 11 a pidfd of its parent (pid 1), checked each tick.
 * Words that make what a dump must refuse (not checked per tick):
 *   "outside"      fd 17  a pidfd of its parent (outside a dumped tree)
 *   "shared"       fd 18  a pidfd of A that B inherits (one description)
 *   "otherthread"  fd 14  a PIDFD_THREAD pidfd of a second thread
 * Identity is checked with PIDFS_IOC_GET_INFO (Linux 6.13), which gives
 * the pid in the caller's namespace; liveness with pidfd_send_signal(0);
 * A also receives SIGUSR1 through fd 10 every tick and counts it in
 * shared memory. Writes ./ready once set up. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <pthread.h>
#include <unistd.h>

struct pidfd_info {
	uint64_t mask, cgroupid;
	uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid;
	int32_t exit_code;
};
#define GET_INFO _IOWR(0xFF, 11, struct pidfd_info)
#define PIDFD_THREAD O_EXCL
#define PIDFD_NONBLOCK O_NONBLOCK

static void fail(const char *fmt, ...) {
	char b[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(b, sizeof b, fmt, ap);
	va_end(ap);
	FILE *f = fopen("progress.log", "a");
	if (f) { fprintf(f, "FAIL %s\n", b); fclose(f); }
}

static int pidfd_open(pid_t p, unsigned fl) { return syscall(SYS_pidfd_open, p, fl); }
static int send0(int fd, int sig) { return syscall(SYS_pidfd_send_signal, fd, sig, NULL, 0); }
static void place(int fd, int at) {
	if (fd < 0 || dup2(fd, at) != at) { fail("placing fd %d: %s", at, strerror(errno)); exit(1); }
	close(fd);
}
static long pid_of(int fd) {
	struct pidfd_info i;
	memset(&i, 0, sizeof i);
	i.mask = 1;
	if (ioctl(fd, GET_INFO, &i) < 0) return -errno;
	return i.pid;
}
static int flags_of(int fd) { return fcntl(fd, F_GETFL); }

static volatile uint64_t *usr1;
static volatile pid_t second_tid;
static void *second(void *x) {
	(void)x;
	second_tid = syscall(SYS_gettid);
	for (;;) pause();
	return NULL;
}
static void on_usr1(int s) { (void)s; __atomic_add_fetch(usr1, 1, __ATOMIC_SEQ_CST); }

int main(int argc, char **argv) {
	int dead = 0, thread = 0, outside = 0, shared = 0, other = 0;
	for (int i = 1; i < argc; i++) {
		dead |= !strcmp(argv[i], "dead");
		thread |= !strcmp(argv[i], "thread");
		outside |= !strcmp(argv[i], "outside");
		shared |= !strcmp(argv[i], "shared");
		other |= !strcmp(argv[i], "otherthread");
	}
	if (outside) place(pidfd_open(getppid(), 0), 17);
	usr1 = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	sigset_t m;
	sigemptyset(&m);
	sigaddset(&m, SIGUSR1);
	sigprocmask(SIG_BLOCK, &m, NULL);
	pid_t a = fork();
	if (a == 0) {
		signal(SIGUSR1, on_usr1);
		sigprocmask(SIG_UNBLOCK, &m, NULL);
		for (;;) pause();
	}
	pid_t me = getpid();
	if (shared) place(pidfd_open(a, 0), 18);
	pid_t b = fork();
	if (b == 0) {
		place(pidfd_open(getppid(), 0), 11);
		for (;;) {
			sleep(1);
			if (pid_of(11) != me) fail("B: fd 11 names pid %ld, not its parent %d", pid_of(11), me);
			if (send0(11, 0) != 0) fail("B: pidfd_send_signal(fd 11, 0): %s", strerror(errno));
		}
	}
	pid_t z = fork();
	if (z == 0) _exit(7);
	place(pidfd_open(a, 0), 10);
	place(pidfd_open(a, PIDFD_NONBLOCK), 12);
	if (thread) place(pidfd_open(me, PIDFD_THREAD), 13);
	if (other) {
		pthread_t t;
		pthread_create(&t, NULL, second, NULL);
		while (!second_tid) usleep(1000);
		place(pidfd_open(second_tid, PIDFD_THREAD), 14);
	}
	siginfo_t si;
	memset(&si, 0, sizeof si);
	if (waitid(P_PID, z, &si, WEXITED | WNOWAIT) != 0) fail("waitid of Z: %s", strerror(errno));
	place(pidfd_open(z, 0), 15);
	if (dead) {
		pid_t d = fork();
		if (d == 0) _exit(0);
		int fd = pidfd_open(d, 0);
		waitpid(d, NULL, 0);
		place(fd, 16);
	}
	close(creat("ready", 0644));
	for (uint64_t n = 1;; n++) {
		uint64_t before = __atomic_load_n(usr1, __ATOMIC_SEQ_CST);
		if (send0(10, SIGUSR1) != 0) fail("pidfd_send_signal(fd 10, SIGUSR1): %s", strerror(errno));
		sleep(1);
		if (pid_of(10) != a) fail("fd 10 names pid %ld, not A %d", pid_of(10), a);
		if (pid_of(12) != a) fail("fd 12 names pid %ld, not A %d", pid_of(12), a);
		if (!(flags_of(12) & O_NONBLOCK)) fail("fd 12 lost PIDFD_NONBLOCK (flags %#o)", flags_of(12));
		if (flags_of(10) & O_NONBLOCK) fail("fd 10 gained O_NONBLOCK");
		if (thread && pid_of(13) != me) fail("fd 13 names pid %ld, not itself %d", pid_of(13), me);
		if (thread && !(flags_of(13) & PIDFD_THREAD)) fail("fd 13 lost PIDFD_THREAD (flags %#o)", flags_of(13));
		if (__atomic_load_n(usr1, __ATOMIC_SEQ_CST) <= before) fail("A got no SIGUSR1 through fd 10");
		memset(&si, 0, sizeof si);
		if (waitid(P_PIDFD, 12, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid != 0) fail("waitid(fd 12): A is not running (%s, si_pid %d)", strerror(errno), si.si_pid);
		memset(&si, 0, sizeof si);
		if (waitid(P_PIDFD, 15, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid != z || si.si_status != 7)
			fail("waitid(fd 15): not zombie Z %d with status 7 (%s, si_pid %d, status %d)", z, strerror(errno), si.si_pid, si.si_status);
		if (dead && (send0(16, 0) == 0 || errno != ESRCH)) fail("fd 16: the reaped child answers pidfd_send_signal (%s)", strerror(errno));
		FILE *f = fopen("progress.log", "a");
		if (f) { fprintf(f, "tick %llu ok\n", (unsigned long long)n); fclose(f); }
	}
}
