/* Processes sharing an fd table and an fs struct, for
 * engine/tests/shared_tables.rs. The root clones two children:
 *   F with clone(CLONE_FILES): one fd table with the root;
 *   S with clone(CLONE_FS): one cwd, root and umask with the root
 * (argv[1], or the first word of ./mode, "files" or "fs" makes only that
 * one). Every tick the root
 *   - opens /dev/null on a new fd and tells F its number over a pipe: F
 *     checks the fd is open in its table too, closes it, and answers; the
 *     root then checks the fd is gone from its own table;
 *   - chdirs into dir a or b and sets a umask, and tells S: S checks its
 *     cwd and umask are those, chdirs to dir c and sets umask 027, and
 *     answers; the root checks its cwd is c and its umask 027, and goes
 *     back to the work dir.
 * "tick N ok" / "FAIL ..." in ./progress.log, ./ready after the first tick.
 * Build: gcc -O2 -static -o sharedfs sharedfs.c */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int to_f[2], from_f[2], to_s[2], from_s[2];
static char work[4096];

static void nap_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int rd(int fd, int *v)
{
	ssize_t n;
	do
		n = read(fd, v, sizeof(*v));
	while (n < 0 && errno == EINTR);
	return n == sizeof(*v) ? 0 : -1;
}

static int wr(int fd, int v)
{
	return write(fd, &v, sizeof(v)) == sizeof(v) ? 0 : -1;
}

/* F: the fd it is told of must be open here, then closed by it. */
static int files_child(void *arg)
{
	(void)arg;
	for (;;) {
		int fd, ans = 1;
		if (rd(to_f[0], &fd))
			_exit(2);
		if (fcntl(fd, F_GETFD) < 0)
			ans = -1; /* not in our table: not shared */
		else if (close(fd))
			ans = -2;
		if (wr(from_f[1], ans))
			_exit(3);
	}
}

static const char *base(const char *p)
{
	const char *s = strrchr(p, '/');
	return s ? s + 1 : p;
}

/* S: the cwd and umask it is told of must be its own, then it moves both. */
static int fs_child(void *arg)
{
	(void)arg;
	for (;;) {
		int n, ans = 1;
		char cwd[4096];
		if (rd(to_s[0], &n))
			_exit(2);
		mode_t m = umask(0);
		umask(m);
		if (!getcwd(cwd, sizeof(cwd)) || strcmp(base(cwd), n % 2 ? "a" : "b"))
			ans = -1;
		else if (m != (mode_t)(n % 64))
			ans = -2;
		else if (chdir("../c"))
			ans = -3;
		umask(027);
		if (wr(from_s[1], ans))
			_exit(3);
	}
}

static pid_t start(int (*fn)(void *), int flags)
{
	size_t sz = 256 * 1024;
	char *stack = malloc(sz);
	if (!stack)
		exit(1);
	pid_t p = clone(fn, stack + sz, flags | SIGCHLD, NULL);
	if (p < 0) {
		perror("clone");
		exit(1);
	}
	return p;
}

int main(int argc, char **argv)
{
	char mode[16] = "";
	FILE *mf = fopen("mode", "r");
	if (argc > 1)
		snprintf(mode, sizeof(mode), "%s", argv[1]);
	else if (mf && fscanf(mf, "%15s", mode) != 1)
		mode[0] = 0;
	if (mf)
		fclose(mf);
	int want_f = !mode[0] || !strcmp(mode, "both") || !strcmp(mode, "files");
	int want_s = !mode[0] || !strcmp(mode, "both") || !strcmp(mode, "fs");
	if (!getcwd(work, sizeof(work)))
		return 1;
	mkdir("a", 0755);
	mkdir("b", 0755);
	mkdir("c", 0755);
	if (pipe(to_f) || pipe(from_f) || pipe(to_s) || pipe(from_s))
		return 1;
	FILE *log = fopen("progress.log", "a");
	if (!log)
		return 1;
	setvbuf(log, NULL, _IOLBF, 0);
	pid_t f = want_f ? start(files_child, CLONE_FILES) : 0;
	pid_t s = want_s ? start(fs_child, CLONE_FS) : 0;
	for (int tick = 1;; tick++) {
		char why[256] = "";
		int ans;
		if (want_f) {
			int fd = open("/dev/null", O_RDONLY);
			if (fd < 0 || wr(to_f[1], fd) || rd(from_f[0], &ans))
				snprintf(why, sizeof(why), "fd %d: no answer from F", fd);
			else if (ans != 1)
				snprintf(why, sizeof(why), "F: fd %d %s", fd, ans == -1 ? "not in its fd table" : "close failed");
			else if (fcntl(fd, F_GETFD) >= 0)
				snprintf(why, sizeof(why), "fd %d that F closed is still open here", fd);
		}
		if (!why[0] && want_s) {
			char cwd[4096];
			mode_t m;
			if (chdir(tick % 2 ? "a" : "b"))
				snprintf(why, sizeof(why), "chdir: %s", strerror(errno));
			umask(tick % 64);
			if (!why[0] && (wr(to_s[1], tick) || rd(from_s[0], &ans)))
				snprintf(why, sizeof(why), "no answer from S");
			else if (!why[0] && ans != 1)
				snprintf(why, sizeof(why), "S: %s", ans == -1 ? "another cwd" : ans == -2 ? "another umask" : "chdir failed");
			m = umask(022);
			if (!why[0] && (!getcwd(cwd, sizeof(cwd)) || strcmp(base(cwd), "c")))
				snprintf(why, sizeof(why), "cwd %s after S moved to c", cwd);
			else if (!why[0] && m != 027)
				snprintf(why, sizeof(why), "umask %o after S set 027", m);
			if (chdir(work))
				snprintf(why, sizeof(why), "chdir back: %s", strerror(errno));
		}
		int st;
		if (!why[0] && ((f && waitpid(f, &st, WNOHANG) != 0) || (s && waitpid(s, &st, WNOHANG) != 0)))
			snprintf(why, sizeof(why), "a child ended");
		if (why[0])
			fprintf(log, "FAIL tick %d %s\n", tick, why);
		else
			fprintf(log, "tick %d ok\n", tick);
		if (tick == 1)
			close(open("ready", O_CREAT | O_WRONLY, 0644));
		nap_ms(100);
	}
}
