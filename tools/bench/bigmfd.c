/* Benchmark workload (docs/PERFORMANCE.md, "A 256 MiB memfd"): a memfd of
 * 256 MiB, every page written through a MAP_SHARED mapping, checked every
 * tick. Build: gcc -O2 -static -I ../shared/fixtures/progs bigmfd.c. */
#include "fx.h"
#include <sys/syscall.h>
#define SZ (256UL << 20)
int main(void)
{
	fx_open_log();
	int m = (int)syscall(SYS_memfd_create, "big", 0);
	FX_CHECK(m >= 0 && ftruncate(m, SZ) == 0, "memfd");
	uint8_t *p = mmap(NULL, SZ, PROT_READ | PROT_WRITE, MAP_SHARED, m, 0);
	FX_CHECK(p != MAP_FAILED, "mmap");
	for (size_t i = 0; i < SZ; i += 4096)
		p[i] = (uint8_t)(i >> 12), p[i + 100] = 7;
	fx_ready();
	for (fx_tick = 1;; fx_tick++) {
		FX_CHECK(p[SZ - 4096] == (uint8_t)((SZ - 4096) >> 12) && p[100] == 7, "content");
		fx_say("tick %lu ok", fx_tick);
		fx_sleep_ms(100);
	}
}
