/* One fd of each kind the engine restores, with state that must survive:
 * offsets (shared through dup, separate through a second open), O_APPEND,
 * O_NONBLOCK, FD_CLOEXEC, /dev/null and /dev/zero, a directory, a pipe with
 * queued bytes and a non-default buffer size. Checks itself every tick. */
#include "fx.h"

#define RW_SIZE 10000
#define PIPE_BYTES 3000

int main(void)
{
	fx_open_log();
	uint8_t buf[RW_SIZE];
	int rw = open("rw.bin", O_RDWR | O_CREAT | O_TRUNC, 0640);
	FX_CHECK(rw >= 0, "open rw.bin");
	fx_fill(buf, RW_SIZE, 3);
	FX_CHECK(write(rw, buf, RW_SIZE) == RW_SIZE, "write rw.bin");
	FX_CHECK(lseek(rw, 4321, SEEK_SET) == 4321, "lseek rw");
	int ro = open("rw.bin", O_RDONLY);
	FX_CHECK(ro >= 0 && lseek(ro, 77, SEEK_SET) == 77, "open ro");
	int app = open("app.log", O_WRONLY | O_CREAT | O_APPEND, 0600);
	FX_CHECK(app >= 0 && write(app, "abc", 3) == 3, "open app.log");
	int dn = open("/dev/null", O_WRONLY | O_CLOEXEC);
	int dz = open("/dev/zero", O_RDONLY | O_NONBLOCK);
	int dir = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	FX_CHECK(dn >= 0 && dz >= 0 && dir >= 0, "open devs/dir");
	FX_CHECK(dup2(rw, 20) == 20, "dup2 rw 20");
	int p[2];
	FX_CHECK(pipe2(p, O_NONBLOCK) == 0, "pipe");
	FX_CHECK(fcntl(p[0], F_SETPIPE_SZ, 1 << 17) >= (1 << 17), "F_SETPIPE_SZ");
	fx_fill(buf, PIPE_BYTES, 5);
	FX_CHECK(write(p[1], buf, PIPE_BYTES) == PIPE_BYTES, "fill pipe");
	int rfd = open("ready", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	close(rfd);

	for (fx_tick = 1;; fx_tick++) {
		FX_CHECK(lseek(rw, 0, SEEK_CUR) == 4321, "rw offset");
		FX_CHECK(lseek(20, 0, SEEK_CUR) == 4321, "dup offset");
		FX_CHECK(lseek(rw, 4322, SEEK_SET) == 4322 && lseek(20, 0, SEEK_CUR) == 4322, "shared offset");
		FX_CHECK(lseek(20, 4321, SEEK_SET) == 4321, "shared offset back");
		FX_CHECK(lseek(ro, 0, SEEK_CUR) == 77, "ro offset");
		FX_CHECK((fcntl(ro, F_GETFL) & O_ACCMODE) == O_RDONLY, "ro mode");
		FX_CHECK((fcntl(app, F_GETFL) & O_APPEND) != 0, "append flag");
		FX_CHECK((fcntl(dn, F_GETFD) & FD_CLOEXEC) != 0, "cloexec dn");
		FX_CHECK((fcntl(dir, F_GETFD) & FD_CLOEXEC) != 0, "cloexec dir");
		FX_CHECK((fcntl(rw, F_GETFD) & FD_CLOEXEC) == 0, "no cloexec rw");
		FX_CHECK((fcntl(dz, F_GETFL) & O_NONBLOCK) != 0, "nonblock dz");
		uint8_t z[8] = { 1 };
		FX_CHECK(read(dz, z, 8) == 8 && z[0] == 0, "dev zero");
		FX_CHECK(write(dn, "x", 1) == 1, "dev null");
		struct stat st;
		FX_CHECK(fstat(dir, &st) == 0 && S_ISDIR(st.st_mode), "dir fd");
		FX_CHECK(fcntl(p[0], F_GETPIPE_SZ) == (1 << 17), "pipe size");
		FX_CHECK((fcntl(p[0], F_GETFL) & O_NONBLOCK) != 0, "pipe nonblock");
		FX_CHECK(read(p[0], buf, RW_SIZE) == PIPE_BYTES && fx_same(buf, PIPE_BYTES, 5), "pipe data");
		fx_fill(buf, PIPE_BYTES, 5);
		FX_CHECK(write(p[1], buf, PIPE_BYTES) == PIPE_BYTES, "refill pipe");
		fx_say("tick %lu ok", fx_tick);
		fx_sleep_ms(100);
	}
}
