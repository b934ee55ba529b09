/* Ticks on stdout (a pipe the test reads): "tick N\n" every 50 ms, written
 * whole with write(2); with the argument "fork", a child forked first
 * writes "ctick N\n" lines on the same stdout (one open file description
 * for both). SIGPIPE ignored: a write to a pipe nobody reads
 * fails with EPIPE, counted in "epipe N" lines on stderr's place when it
 * is a file. Writes ./ready in its cwd first. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/types.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	const char *what = "tick";
	signal(SIGPIPE, SIG_IGN);
	if (argc > 1 && strcmp(argv[1], "fork") == 0) {
		pid_t c = fork();
		if (c < 0)
			return 1;
		if (c == 0)
			what = "ctick";
	}
	if (strcmp(what, "tick") == 0) {
		int r = open("ready", O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (r >= 0)
			close(r);
	}
	unsigned long epipes = 0;
	for (unsigned long tick = 1;; tick++) {
		char buf[64];
		int n = snprintf(buf, sizeof(buf), "%s %lu\n", what, tick);
		if (write(1, buf, n) != n && errno == EPIPE) {
			epipes++;
			n = snprintf(buf, sizeof(buf), "epipe %lu\n", epipes);
			if (write(2, buf, n) < 0) {
				/* nothing to report it on */
			}
		}
		struct timespec ts = { 0, 50 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}
