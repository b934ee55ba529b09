/* An fd of a special file on fd 10, for engine/tests/special_files.rs;
 * the first word of ./mode says which: "fifo" a FIFO opened O_RDWR (fd 10)
 * and O_RDONLY|O_NONBLOCK (fd 11) and unlinked, with bytes queued in it
 * (every tick it checks exactly those are queued, reads them through fd 11
 * and writes them back through fd 10; a child that only waits holds both
 * fds too), "dir" a directory opened and removed, "cdev" a character
 * device node (1:3) opened and unlinked, "symdel" a symlink opened
 * O_PATH|O_NOFOLLOW and unlinked, "sym" such a symlink left in place.
 * Every tick it checks fd 10 is still that file (its type; for a symlink
 * its target through readlinkat(fd, "")): "tick N ok" / "FAIL ..." in
 * ./progress.log, ./ready after the first tick.
 * Build: gcc -O2 -static -o specialfd specialfd.c */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#define QUEUED "queued in the fifo\n"

/* The FIFO holds exactly QUEUED: read it through fd 11, write it back
 * through fd 10. 0 if so, else what went wrong in `why`. */
static int fifo_check(char *why, size_t len)
{
	char buf[64];
	int q = -1;
	ssize_t n;
	if (ioctl(10, FIONREAD, &q) != 0 || q != (int)sizeof(QUEUED) - 1)
		return snprintf(why, len, "%d bytes queued", q), -1;
	if ((n = read(11, buf, sizeof(buf))) != (ssize_t)sizeof(QUEUED) - 1 || memcmp(buf, QUEUED, n))
		return snprintf(why, len, "read %zd bytes through fd 11", n), -1;
	if (write(10, QUEUED, sizeof(QUEUED) - 1) != sizeof(QUEUED) - 1)
		return snprintf(why, len, "write through fd 10: %s", strerror(errno)), -1;
	return 0;
}

static void nap_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

int main(void)
{
	char mode[16] = "";
	FILE *mf = fopen("mode", "r");
	if (!mf || fscanf(mf, "%15s", mode) != 1)
		return 1;
	fclose(mf);
	int fd = -1;
	mode_t type = 0;
	if (!strcmp(mode, "fifo")) {
		mkfifo("fifo", 0640);
		fd = open("fifo", O_RDWR);
		if (open("fifo", O_RDONLY | O_NONBLOCK) != fd + 1 || dup2(fd + 1, 11) != 11 || write(fd, QUEUED, sizeof(QUEUED) - 1) != sizeof(QUEUED) - 1)
			return 1;
		close(fd + 1);
		unlink("fifo");
		type = S_IFIFO;
	} else if (!strcmp(mode, "dir")) {
		mkdir("dir", 0750);
		fd = open("dir", O_RDONLY | O_DIRECTORY);
		rmdir("dir");
		type = S_IFDIR;
	} else if (!strcmp(mode, "cdev")) {
		mknod("cdev", S_IFCHR | 0640, makedev(1, 3));
		fd = open("cdev", O_RDWR);
		unlink("cdev");
		type = S_IFCHR;
	} else if (!strcmp(mode, "symdel") || !strcmp(mode, "sym")) {
		symlink("no-such-target", "sym");
		fd = open("sym", O_PATH | O_NOFOLLOW);
		if (!strcmp(mode, "symdel"))
			unlink("sym");
		type = S_IFLNK;
	}
	if (fd < 0 || dup2(fd, 10) != 10)
		return 1;
	close(fd);
	if (type == S_IFIFO && fork() == 0) {
		for (;;)
			pause();
	}
	FILE *log = fopen("progress.log", "a");
	if (!log)
		return 1;
	setvbuf(log, NULL, _IOLBF, 0);
	for (unsigned long tick = 1;; tick++) {
		struct stat st;
		char t[64] = "";
		ssize_t n;
		if (fstatat(10, "", &st, AT_EMPTY_PATH) != 0)
			fprintf(log, "FAIL tick %lu fstat: %s\n", tick, strerror(errno));
		else if ((st.st_mode & S_IFMT) != type)
			fprintf(log, "FAIL tick %lu type %o\n", tick, st.st_mode & S_IFMT);
		else if (type == S_IFLNK && ((n = readlinkat(10, "", t, sizeof(t) - 1)) < 0 || (t[n] = 0, strcmp(t, "no-such-target"))))
			fprintf(log, "FAIL tick %lu symlink target %s\n", tick, t);
		else if (type == S_IFCHR && st.st_rdev != makedev(1, 3))
			fprintf(log, "FAIL tick %lu rdev\n", tick);
		else if (type == S_IFIFO && fifo_check(t, sizeof(t)))
			fprintf(log, "FAIL tick %lu fifo: %s\n", tick, t);
		else
			fprintf(log, "tick %lu ok\n", tick);
		if (tick == 1)
			close(open("ready", O_CREAT | O_WRONLY, 0644));
		nap_ms(100);
	}
}
