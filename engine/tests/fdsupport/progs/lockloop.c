/* File locks held, checked every tick through other open file
 * descriptions (F_OFD_GETLK sees POSIX and OFD locks of other owners;
 * flock(LOCK_NB) on a new description sees flock locks):
 * - posix.bin (fd 3..): POSIX write lock on bytes 10..30, read lock on
 *   100..EOF (fcntl F_SETLK);
 * - flock-ex.bin: flock LOCK_EX; flock-sh.bin: flock LOCK_SH;
 * - ofd.bin: OFD write lock on 0..5, read lock on 50..60 (F_OFD_SETLK).
 * Bytes outside the ranges must be free. */
#include "fx.h"
#include <sys/file.h>

static int open_new(const char *p)
{
	int fd = open(p, O_RDWR | O_CREAT, 0644);
	FX_CHECK(fd >= 0, p);
	return fd;
}

static void set(int fd, int cmd, short type, off_t start, off_t len, const char *what)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
	FX_CHECK(fcntl(fd, cmd, &fl) == 0, what);
}

/* What F_OFD_GETLK on another description (`fd`, opened once: closing
 * any fd of a file drops the process's POSIX locks on it) says about a
 * write lock on start..start+len: the conflicting lock's type (F_UNLCK if
 * none) and pid. */
static short probe(int fd, off_t start, off_t len, pid_t *pid)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
	FX_CHECK(fcntl(fd, F_OFD_GETLK, &fl) == 0, "F_OFD_GETLK");
	if (pid)
		*pid = fl.l_pid;
	return fl.l_type;
}

/* Whether flock `op` succeeds on another description `fd` (undone). */
static int flock_probe(int fd, int op)
{
	if (flock(fd, op | LOCK_NB) != 0)
		return 0;
	FX_CHECK(flock(fd, LOCK_UN) == 0, "flock unlock probe");
	return 1;
}

int main(void)
{
	fx_open_log();
	int p = open_new("posix.bin");
	FX_CHECK(ftruncate(p, 200) == 0, "size posix");
	set(p, F_SETLK, F_WRLCK, 10, 20, "posix write lock");
	set(p, F_SETLK, F_RDLCK, 100, 0, "posix read lock");
	int fe = open_new("flock-ex.bin");
	FX_CHECK(flock(fe, LOCK_EX) == 0, "flock ex");
	int fs = open_new("flock-sh.bin");
	FX_CHECK(flock(fs, LOCK_SH) == 0, "flock sh");
	int o = open_new("ofd.bin");
	FX_CHECK(ftruncate(o, 100) == 0, "size ofd");
	set(o, F_OFD_SETLK, F_WRLCK, 0, 5, "ofd write lock");
	set(o, F_OFD_SETLK, F_RDLCK, 50, 10, "ofd read lock");
	int pp = open_new("posix.bin"), po = open_new("ofd.bin");
	int pe = open_new("flock-ex.bin"), ps = open_new("flock-sh.bin");
	fx_ready();
	for (fx_tick = 1;; fx_tick++) {
		pid_t who = 0;
		FX_CHECK(probe(pp, 10, 20, &who) == F_WRLCK && who == getpid(), "posix write lock held");
		FX_CHECK(probe(pp, 150, 1, &who) == F_RDLCK && who == getpid(), "posix read lock held");
		FX_CHECK(probe(pp, 0, 10, NULL) == F_UNLCK && probe(pp, 30, 70, NULL) == F_UNLCK, "posix free bytes");
		FX_CHECK(probe(po, 0, 5, &who) == F_WRLCK && who == -1, "ofd write lock held");
		FX_CHECK(probe(po, 55, 1, &who) == F_RDLCK, "ofd read lock held");
		FX_CHECK(probe(po, 5, 45, NULL) == F_UNLCK && probe(po, 60, 40, NULL) == F_UNLCK, "ofd free bytes");
		FX_CHECK(!flock_probe(pe, LOCK_SH), "flock ex held");
		FX_CHECK(!flock_probe(ps, LOCK_EX) && flock_probe(ps, LOCK_SH), "flock sh held");
		fx_say("tick %lu ok", fx_tick);
		fx_sleep_ms(100);
	}
}
