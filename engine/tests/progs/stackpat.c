/* A thread whose stack is memory the program mapped itself (as Go's
 * goroutine stacks are heap memory): everything of that mapping below the
 * thread's stack pointer, but for a 1 KiB gap right under it, holds a
 * known pattern, and the thread then spins without a syscall (its sp stays
 * put). The main thread checks the pattern every 50 ms and appends `tick N
 * ok` or `FAIL ...` to ./progress.log. A dump that writes anything below
 * the spinner's sp (a signal frame on its stack) breaks the pattern, in
 * the running source and in the image. ./ready once the pattern is set. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define STACK (256 * 1024)
static unsigned char *stack;
static unsigned char *volatile pattern_end; /* pattern in [stack, pattern_end) */
static volatile unsigned long spins;

static unsigned char pat(size_t i)
{
	return (unsigned char)(i * 131 + 7);
}

static void *spinner(void *arg)
{
	(void)arg;
	unsigned char *sp;
	__asm__ volatile("mov %%rsp, %0" : "=r"(sp));
	unsigned char *end = sp - 1024;
	for (unsigned char *p = stack; p < end; p++)
		*p = pat(p - stack);
	pattern_end = end;
	for (;;)
		spins++;
	return NULL;
}

static void put(const char *line)
{
	int fd = open("progress.log", O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (fd < 0)
		_exit(3);
	if (write(fd, line, strlen(line)) < 0)
		_exit(3);
	close(fd);
}

int main(void)
{
	stack = mmap(NULL, STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (stack == MAP_FAILED)
		return 1;
	pthread_attr_t a;
	pthread_attr_init(&a);
	pthread_attr_setstack(&a, stack, STACK);
	pthread_t t;
	if (pthread_create(&t, &a, spinner, NULL))
		return 1;
	while (!pattern_end)
		;
	int fd = open("ready", O_WRONLY | O_CREAT, 0644);
	if (fd < 0)
		return 1;
	close(fd);
	struct timespec ts = { 0, 50 * 1000 * 1000 };
	for (unsigned long tick = 1;; tick++) {
		nanosleep(&ts, NULL);
		char line[160];
		size_t n = (size_t)(pattern_end - stack), bad = n;
		for (size_t i = 0; i < n; i++)
			if (stack[i] != pat(i)) {
				bad = i;
				break;
			}
		if (bad < n)
			snprintf(line, sizeof(line), "FAIL tick %lu: pattern broken at %zu bytes below sp-1024 (%p)\n", tick,
				 n - bad, (void *)(stack + bad));
		else
			snprintf(line, sizeof(line), "tick %lu ok\n", tick);
		put(line);
	}
}
