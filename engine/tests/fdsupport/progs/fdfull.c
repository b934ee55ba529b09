/* A process with no free fd: RLIMIT_NOFILE lowered to 32 and every number
 * below it open (/dev/null), plus 4 MiB of patterned memory. Each tick it
 * checks the memory, that exactly 32 fds are open and that one more open
 * still fails with EMFILE. For the page pump's fallback: an injected pipe2
 * in this process fails, and the dump must go the two-copy way.
 * Build: gcc -O2 -static -I../../../shared/fixtures/progs fdfull.c */
#include "fx.h"
#include <dirent.h>
#include <sys/resource.h>

#define MEM (4u << 20)

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -1;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n - 1; /* the directory's own fd */
}

int main(void)
{
	fx_open_log();
	uint8_t *mem = mmap(NULL, MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	FX_CHECK(mem != MAP_FAILED, "mmap");
	fx_fill(mem, MEM, 77);
	struct rlimit rl = { 32, 32 };
	FX_CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0, "setrlimit");
	while (open("/dev/null", O_RDONLY) >= 0)
		;
	FX_CHECK(errno == EMFILE, "filling the fd table");
	/* ready: one fd must be free for creat(); take it back right after */
	close(31);
	int rfd = open("ready", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	FX_CHECK(rfd == 31, "ready fd");
	close(rfd);
	FX_CHECK(open("/dev/null", O_RDONLY) == 31, "refill fd 31");
	for (fx_tick = 1;; fx_tick++) {
		FX_CHECK(fx_same(mem, MEM, 77), "memory");
		/* opendir needs a free fd: free one, count, refill it */
		close(31);
		int n = count_fds();
		FX_CHECK(open("/dev/null", O_RDONLY) == 31, "refill fd 31");
		FX_CHECK(n == 31, "fd count");
		FX_CHECK(open("/dev/null", O_RDONLY) < 0 && errno == EMFILE, "fd table not full");
		fx_say("tick %lu ok", fx_tick);
		fx_sleep_ms(50);
	}
}
