/* A parent and its child sharing one memfd (an inherited fd and a
 * MAP_SHARED mapping made before the fork) and one open file description
 * holding a flock lock (taken before the fork). Each writes its own
 * counter into the shared mapping every tick and checks that the other's
 * moves on; the parent also checks, through another description, that
 * the flock lock is still held and that the memfd's name is kept. Only
 * the parent writes ticks; the child writes FAIL lines. With "anon", shared
 * anonymous memory instead of the memfd. */
#include "fx.h"
#include <sys/file.h>
#include <sys/syscall.h>

int main(int argc, char **argv)
{
	fx_open_log();
	/* "anon": shared anonymous memory instead of the memfd */
	int anon = argc > 1 && !strcmp(argv[1], "anon");
	int m = anon ? -1 : (int)syscall(SYS_memfd_create, "shared", 0);
	FX_CHECK(anon || (m >= 0 && ftruncate(m, 4096) == 0), "memfd");
	volatile unsigned long *c = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | (anon ? MAP_ANONYMOUS : 0), m, 0);
	FX_CHECK(c != MAP_FAILED, "mmap");
	int l = open("lock.bin", O_RDWR | O_CREAT, 0644);
	FX_CHECK(l >= 0 && flock(l, LOCK_EX) == 0, "flock");
	pid_t child = fork();
	FX_CHECK(child >= 0, "fork");
	int me = child == 0;
	int probe = open("lock.bin", O_RDONLY);
	FX_CHECK(probe >= 0, "probe");
	if (!me)
		fx_ready();
	unsigned long seen = 0;
	for (fx_tick = 1;; fx_tick++) {
		c[me] = fx_tick;
		if (fx_tick % 10 == 0) {
			FX_CHECK(c[!me] > seen, me ? "the parent's counter moves" : "the child's counter moves");
			seen = c[!me];
		}
		if (!me && !anon) {
			char got[64], fdp[32];
			snprintf(fdp, sizeof(fdp), "/proc/self/fd/%d", m);
			ssize_t n = readlink(fdp, got, sizeof(got) - 1);
			FX_CHECK(n > 0, "readlink memfd");
			got[n] = 0;
			FX_CHECK(!strcmp(got, "/memfd:shared (deleted)"), "memfd name");
		}
		if (!me) {
			FX_CHECK(flock(probe, LOCK_SH | LOCK_NB) != 0, "flock held");
			fx_say("tick %lu ok", fx_tick);
		}
		fx_sleep_ms(50);
	}
}
