/* Ticks on stdout (a pipe the test reads): "tick N\n" every 50 ms, written
 * whole with write(2). SIGPIPE ignored: a write to a pipe nobody reads
 * fails with EPIPE, counted in "epipe N" lines on stderr's place when it
 * is a file. Writes ./ready in its cwd first. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	int r = open("ready", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (r >= 0)
		close(r);
	unsigned long epipes = 0;
	for (unsigned long tick = 1;; tick++) {
		char buf[64];
		int n = snprintf(buf, sizeof(buf), "tick %lu\n", tick);
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
