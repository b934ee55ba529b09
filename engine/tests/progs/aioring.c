/* An AIO context (io_setup) with completed requests left unreaped, for
 * engine/tests/aio_rings.rs. The program makes ./data (4096 bytes of a
 * pattern) and an AIO context of 16 requests; every tick it submits two
 * reads of 512 bytes of ./data (aio_data = tick * 2 + k, each into its own
 * buffer), which complete at once, and leaves them unreaped until the next
 * tick; then the next tick reaps both with io_getevents (through the
 * context it holds: the ring's address), checking their aio_data, obj,
 * result and the bytes read, before it submits the next two. Ring head and
 * tail wrap around many times. "tick N ok" / "FAIL ..." in ./progress.log,
 * ./ready after the first tick.
 * Build: gcc -O2 -static -o aioring aioring.c */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void nap_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static unsigned char pat(long off)
{
	return (unsigned char)(off * 7 + 3);
}

static struct iocb cbs[2];
static char bufs[2][512];

static int submit(aio_context_t ctx, int fd, long tick)
{
	struct iocb *p[2];
	for (int k = 0; k < 2; k++) {
		memset(&cbs[k], 0, sizeof(cbs[k]));
		memset(bufs[k], 0, sizeof(bufs[k]));
		cbs[k].aio_data = tick * 2 + k;
		cbs[k].aio_lio_opcode = IOCB_CMD_PREAD;
		cbs[k].aio_fildes = fd;
		cbs[k].aio_buf = (uintptr_t)bufs[k];
		cbs[k].aio_nbytes = 512;
		cbs[k].aio_offset = ((tick + k) % 8) * 512;
		p[k] = &cbs[k];
	}
	return syscall(SYS_io_submit, ctx, 2, p) == 2 ? 0 : -1;
}

int main(void)
{
	unsigned char data[4096];
	for (int i = 0; i < 4096; i++)
		data[i] = pat(i);
	int fd = open("data", O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, data, sizeof(data)) != sizeof(data))
		return 1;
	aio_context_t ctx = 0;
	if (syscall(SYS_io_setup, 16, &ctx) != 0)
		return 1;
	aio_context_t first = ctx;
	FILE *log = fopen("progress.log", "a");
	if (!log)
		return 1;
	setvbuf(log, NULL, _IOLBF, 0);
	if (submit(ctx, fd, 0))
		return 1;
	for (long tick = 1;; tick++) {
		char why[256] = "";
		struct io_event ev[2];
		struct timespec to = { 1, 0 };
		long n = syscall(SYS_io_getevents, ctx, 2, 2, ev, &to);
		if (ctx != first)
			snprintf(why, sizeof(why), "context changed");
		else if (n != 2)
			snprintf(why, sizeof(why), "io_getevents: %ld (%s)", n, n < 0 ? strerror(errno) : "events");
		for (int e = 0; e < 2 && !why[0]; e++) {
			int k = (int)(ev[e].data & 1);
			long t = (long)(ev[e].data / 2);
			if (t != tick - 1)
				snprintf(why, sizeof(why), "event %d: data %llu from tick %ld", e, (unsigned long long)ev[e].data, t);
			else if (ev[e].obj != (uintptr_t)&cbs[k])
				snprintf(why, sizeof(why), "event %d: obj %#llx", e, (unsigned long long)ev[e].obj);
			else if (ev[e].res != 512)
				snprintf(why, sizeof(why), "event %d: res %lld", e, (long long)ev[e].res);
			else
				for (int i = 0; i < 512; i++)
					if ((unsigned char)bufs[k][i] != pat(((t + k) % 8) * 512 + i)) {
						snprintf(why, sizeof(why), "event %d: byte %d", e, i);
						break;
					}
		}
		if (!why[0] && submit(ctx, fd, tick))
			snprintf(why, sizeof(why), "io_submit: %s", strerror(errno));
		if (why[0])
			fprintf(log, "FAIL tick %ld %s\n", tick, why);
		else
			fprintf(log, "tick %ld ok\n", tick);
		if (tick == 1)
			close(open("ready", O_CREAT | O_WRONLY, 0644));
		nap_ms(100);
	}
}
