/* A process that cannot stop: it vforks, and the child sleeps 60 s before
 * it exits, so the parent waits in the kernel for its vfork to finish (a
 * PTRACE_INTERRUPT only takes effect once it is back). The child creates
 * ./ready (raw syscalls only, as a vfork child must). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
	pid_t c = vfork();
	if (c == 0) {
		long fd = syscall(SYS_openat, AT_FDCWD, "ready", O_WRONLY | O_CREAT, 0644);
		if (fd >= 0)
			syscall(SYS_close, fd);
		struct timespec ts = { 60, 0 };
		syscall(SYS_nanosleep, &ts, NULL);
		syscall(SYS_exit, 0);
	}
	for (;;)
		pause();
}
