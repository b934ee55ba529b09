/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The process `criu tfork` clones in the guest (kmod/test.sh): NPAGES pages
 * of private anonymous memory filled with a pattern, their address written
 * to the file given as argv[1] (once, by the first process), then asleep.
 * SIGUSR1 makes the process write 0x1111111111111111 into page 1 itself,
 * SIGUSR2 0x2222222222222222 into page 2: writes by the process's own
 * thread, for tf_check to look for in it and not in the others.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define NPAGES 64

static volatile uint64_t *region;

static void on_usr(int sig)
{
	if (sig == SIGUSR1)
		region[1 * PAGE / 8] = 0x1111111111111111ull;
	else
		region[2 * PAGE / 8] = 0x2222222222222222ull;
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	void *p = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return 1;
	madvise(p, NPAGES * PAGE, MADV_NOHUGEPAGE);
	region = p;
	for (unsigned long i = 0; i < NPAGES * PAGE / 8; i++)
		region[i] = 0xc0ffee0000000000ull + i;
	struct sigaction sa = { .sa_handler = on_usr };
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	char tmp[256];
	snprintf(tmp, sizeof(tmp), "%s.tmp", argv[1]);
	FILE *f = fopen(tmp, "w");
	if (!f)
		return 1;
	fprintf(f, "%lx %d\n", (unsigned long)p, NPAGES);
	fclose(f);
	rename(tmp, argv[1]);
	for (;;) {
		struct timespec ts = { 0, 20 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}
