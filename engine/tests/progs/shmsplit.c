/* MAP_SHARED anonymous memory mapped differently by a parent and its child,
 * for engine/tests/tree_dump.rs: two pages shared over fork, then the parent
 * unmaps the second one, which the child keeps. Writes ./ready, then sleeps.
 * Build: gcc -O2 -static -o shmsplit shmsplit.c */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

int main(void)
{
	char *p = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return 1;
	p[0] = 1;
	p[4096] = 2;
	if (fork() == 0) {
		for (;;)
			pause();
	}
	if (munmap(p + 4096, 4096))
		return 1;
	int fd = open("progress.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (fd < 0 || write(fd, "tick 1 ok\n", 10) != 10)
		return 1;
	close(open("ready", O_WRONLY | O_CREAT, 0644));
	for (;;)
		pause();
}
