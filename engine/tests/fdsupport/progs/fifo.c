/* Named pipes: a FIFO holding queued bytes (both ends open, the reader
 * O_NONBLOCK), and a second FIFO open read-only with no writer anywhere
 * (opened O_NONBLOCK, which is then cleared: a blocking reader). Checks
 * itself every tick. */
#include "fx.h"

#define QUEUED 3

int main(void)
{
	fx_open_log();
	unlink("q.fifo");
	unlink("lonely.fifo");
	FX_CHECK(mkfifo("q.fifo", 0640) == 0, "mkfifo q");
	FX_CHECK(mkfifo("lonely.fifo", 0600) == 0, "mkfifo lonely");
	int rd = open("q.fifo", O_RDONLY | O_NONBLOCK);
	FX_CHECK(rd >= 0, "open q reader");
	int wr = open("q.fifo", O_WRONLY | O_CLOEXEC);
	FX_CHECK(wr >= 0, "open q writer");
	FX_CHECK(fcntl(rd, F_SETPIPE_SZ, 1 << 16) >= (1 << 16), "q size");
	FX_CHECK(write(wr, "abc", QUEUED) == QUEUED, "fill q");
	int lonely = open("lonely.fifo", O_RDONLY | O_NONBLOCK);
	FX_CHECK(lonely >= 0, "open lonely");
	FX_CHECK(fcntl(lonely, F_SETFL, 0) == 0, "clear O_NONBLOCK");
	int rfd = open("ready", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	close(rfd);

	for (fx_tick = 1;; fx_tick++) {
		struct stat st;
		char buf[16];
		FX_CHECK(fstat(rd, &st) == 0 && S_ISFIFO(st.st_mode), "q is a fifo");
		FX_CHECK(fstat(lonely, &st) == 0 && S_ISFIFO(st.st_mode), "lonely is a fifo");
		FX_CHECK((fcntl(rd, F_GETFL) & (O_ACCMODE | O_NONBLOCK)) == (O_RDONLY | O_NONBLOCK), "q reader flags");
		FX_CHECK((fcntl(wr, F_GETFL) & (O_ACCMODE | O_NONBLOCK)) == O_WRONLY, "q writer flags");
		FX_CHECK((fcntl(wr, F_GETFD) & FD_CLOEXEC) != 0, "q writer cloexec");
		FX_CHECK((fcntl(lonely, F_GETFL) & (O_ACCMODE | O_NONBLOCK)) == O_RDONLY, "lonely flags");
		FX_CHECK(fcntl(rd, F_GETPIPE_SZ) == (1 << 16), "q pipe size");
		FX_CHECK(read(rd, buf, sizeof(buf)) == QUEUED && memcmp(buf, "abc", QUEUED) == 0, "q queued bytes");
		FX_CHECK(read(rd, buf, sizeof(buf)) < 0 && errno == EAGAIN, "q now empty");
		FX_CHECK(write(wr, "abc", QUEUED) == QUEUED, "refill q");
		fx_say("tick %lu ok", fx_tick);
		fx_sleep_ms(100);
	}
}
