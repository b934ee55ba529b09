/* Pipe state that must survive exactly: per-end status flags (a blocking
 * read end beside a non-blocking write end), a second open file
 * description of one read end (reopened through /proc/self/fd) with
 * other flags, and the buffer size of an empty pipe (1 MiB). */
#include "fx.h"

int main(void)
{
	fx_open_log();
	int a[2], b[2];
	FX_CHECK(pipe(a) == 0 && pipe(b) == 0, "pipe");
	FX_CHECK(fcntl(a[1], F_SETFL, O_NONBLOCK) == 0, "a writer nonblock");
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", a[0]);
	int a2 = open(path, O_RDONLY | O_NONBLOCK);
	FX_CHECK(a2 >= 0, "reopen a reader");
	FX_CHECK(fcntl(b[0], F_SETPIPE_SZ, 1 << 20) >= (1 << 20), "b size");
	int rfd = open("ready", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	close(rfd);

	for (fx_tick = 1;; fx_tick++) {
		char c;
		FX_CHECK((fcntl(a[0], F_GETFL) & O_NONBLOCK) == 0, "a reader blocking");
		FX_CHECK((fcntl(a[1], F_GETFL) & O_NONBLOCK) != 0, "a writer nonblock");
		FX_CHECK((fcntl(a2, F_GETFL) & O_NONBLOCK) != 0, "a second reader nonblock");
		FX_CHECK((fcntl(b[0], F_GETFL) & O_NONBLOCK) == 0 && (fcntl(b[1], F_GETFL) & O_NONBLOCK) == 0, "b blocking");
		FX_CHECK(fcntl(b[0], F_GETPIPE_SZ) == (1 << 20), "b pipe size");
		FX_CHECK(write(a[1], "z", 1) == 1, "a write");
		FX_CHECK(read(a2, &c, 1) == 1 && c == 'z', "a read through the second reader");
		FX_CHECK(read(a2, &c, 1) < 0 && errno == EAGAIN, "a empty");
		fx_say("tick %lu ok", fx_tick);
		fx_sleep_ms(100);
	}
}
