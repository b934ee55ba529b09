// SPDX-License-Identifier: GPL-2.0
#include "cp_util.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int cp_checks, cp_failures;

int pidfd_open_(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int cp_open(void)
{
	return open(VMA_CP_DEVICE, O_RDWR | O_CLOEXEC);
}

int cp_pick(int dev, int pidfd, uint64_t addr, uint32_t flags, int file_fd,
	    uint64_t file_offset, struct vma_cherrypick_args *out)
{
	struct vma_cherrypick_args a = {
		.size = sizeof(a), .flags = flags, .src_pidfd = pidfd,
		.file_fd = file_fd, .src_addr = addr, .dst_addr = addr,
		.file_offset = file_offset,
	};

	if (ioctl(dev, VMA_CP_IOC_PICK, &a) < 0)
		return -errno;
	if (out)
		*out = a;
	return 0;
}

static int wait_stopped(pid_t pid)
{
	int st;

	if (waitpid(pid, &st, WUNTRACED) != pid)
		return -1;
	return WIFSTOPPED(st) ? 0 : -1;
}

int src_start(struct src *s, void (*setup)(void *), void *arg)
{
	int p[2];

	if (pipe(p))
		return -1;
	s->pid = fork();
	if (s->pid < 0)
		return -1;
	if (s->pid == 0) {
		unsigned char cmd[9];

		close(p[1]);
		if (setup)
			setup(arg);
		raise(SIGSTOP);
		for (;;) {
			ssize_t n = 0, r;

			while (n < 9 && (r = read(p[0], cmd + n, 9 - n)) > 0)
				n += r;
			if (n < 9)
				_exit(0);
			uint64_t addr;

			memcpy(&addr, cmd, 8);
			*(volatile unsigned char *)addr = cmd[8];
			raise(SIGSTOP);
		}
	}
	close(p[0]);
	s->cmd_w = p[1];
	if (wait_stopped(s->pid))
		return -1;
	s->pidfd = pidfd_open_(s->pid);
	return s->pidfd < 0 ? -1 : 0;
}

int src_write(struct src *s, uint64_t addr, uint8_t v)
{
	unsigned char cmd[9];

	memcpy(cmd, &addr, 8);
	cmd[8] = v;
	if (write(s->cmd_w, cmd, 9) != 9)
		return -1;
	kill(s->pid, SIGCONT);
	return wait_stopped(s->pid);
}

int src_cont(struct src *s)
{
	int st;

	kill(s->pid, SIGCONT);
	waitpid(s->pid, &st, WCONTINUED);
	/* let it reach read() */
	for (int i = 0; i < 200; i++) {
		char path[64], buf[256];
		snprintf(path, sizeof(path), "/proc/%d/stat", s->pid);
		FILE *f = fopen(path, "r");
		if (!f)
			return -1;
		size_t n = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		buf[n] = 0;
		char *p = strrchr(buf, ')');
		if (p && p[2] == 'S')
			return 0;
		usleep(1000);
	}
	return -1;
}

int src_stop(struct src *s)
{
	kill(s->pid, SIGSTOP);
	return wait_stopped(s->pid);
}

void src_kill(struct src *s)
{
	if (s->pid > 0) {
		kill(s->pid, SIGKILL);
		waitpid(s->pid, NULL, 0);
	}
	if (s->pidfd >= 0)
		close(s->pidfd);
	close(s->cmd_w);
	s->pid = -1;
	s->pidfd = -1;
}

uint64_t pfn_of(pid_t pid, uint64_t addr)
{
	char path[64];
	uint64_t e = 0;
	int fd;

	if (pid)
		snprintf(path, sizeof(path), "/proc/%d/pagemap", pid);
	else
		snprintf(path, sizeof(path), "/proc/self/pagemap");
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return 0;
	if (pread(fd, &e, 8, (addr / PAGE) * 8) != 8)
		e = 0;
	close(fd);
	if (!(e & (1ULL << 63)))
		return 0;
	return e & ((1ULL << 55) - 1);
}

int peek(pid_t pid, uint64_t addr, void *buf, size_t len)
{
	struct iovec l = { buf, len }, r = { (void *)addr, len };

	return process_vm_readv(pid, &l, 1, &r, 1, 0) == (ssize_t)len ? 0 : -errno;
}

uint64_t maps_find(pid_t pid, const char *name, uint64_t *end)
{
	char path[64], line[512];
	uint64_t s = 0, e = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/maps", pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		if (strstr(line, name)) {
			sscanf(line, "%lx-%lx", &s, &e);
			break;
		}
	}
	fclose(f);
	if (end)
		*end = e;
	return s;
}

long smaps_field_kb(pid_t pid, uint64_t addr, const char *field)
{
	char path[64], line[512];
	int in = 0;
	long v = -1;
	FILE *f;

	if (pid)
		snprintf(path, sizeof(path), "/proc/%d/smaps", pid);
	else
		snprintf(path, sizeof(path), "/proc/self/smaps");
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		uint64_t s, e;

		if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = (s == addr);
			continue;
		}
		if (in && !strncmp(line, field, strlen(field))) {
			v = atol(line + strlen(field));
			break;
		}
	}
	fclose(f);
	return v;
}

long meminfo_kb(const char *field)
{
	char line[256];
	long v = -1;
	FILE *f = fopen("/proc/meminfo", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, field, strlen(field)) && line[strlen(field)] == ':') {
			v = atol(line + strlen(field) + 1);
			break;
		}
	fclose(f);
	return v;
}

long slab_active(const char *cache)
{
	char line[512], name[128];
	long v = -1, act;
	FILE *f = fopen("/proc/slabinfo", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%127s %ld", name, &act) == 2 && !strcmp(name, cache)) {
			v = act;
			break;
		}
	fclose(f);
	return v;
}
