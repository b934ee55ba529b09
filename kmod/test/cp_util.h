/* SPDX-License-Identifier: GPL-2.0 */
/* Helpers shared by the guest programs cp_test and cp_bench. */
#ifndef CP_UTIL_H
#define CP_UTIL_H

#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "vma_cherrypick.h"

#define PAGE 4096UL

extern int cp_checks, cp_failures;
#define CHECK(cond, ...) do { cp_checks++; \
	if (cond) { printf("ok   - "); } else { printf("FAIL - "); cp_failures++; } \
	printf(__VA_ARGS__); printf("\n"); fflush(stdout); } while (0)

int pidfd_open_(pid_t pid);
double now_us(void);

/* The device; -1 if absent. */
int cp_open(void);
/* One cherry-pick: returns 0 or -errno. */
int cp_pick(int dev, int pidfd, uint64_t addr, uint32_t flags, int file_fd,
	    uint64_t file_offset, struct vma_cherrypick_args *out);

/*
 * A source process: forked, runs setup(arg) in the child, then stops itself
 * (SIGSTOP). The parent waits until it is stopped. The child then serves
 * commands sent with src_cmd(): while continued it executes one and stops.
 */
struct src {
	pid_t pid;
	int pidfd;
	int cmd_w; /* parent -> child */
};
int src_start(struct src *s, void (*setup)(void *), void *arg);
/* Ask the (stopped) source to write byte v at addr, and wait until it stops again. */
int src_write(struct src *s, uint64_t addr, uint8_t v);
/* Continue the source without a command: it blocks in read() (not stopped). */
int src_cont(struct src *s);
/* Stop it again after src_cont(). */
int src_stop(struct src *s);
void src_kill(struct src *s);

/* Physical frame of a page of pid (0 = self), 0 if not present. Needs root. */
uint64_t pfn_of(pid_t pid, uint64_t addr);
/* Read len bytes from pid at addr with process_vm_readv: 0 or -errno. */
int peek(pid_t pid, uint64_t addr, void *buf, size_t len);
/* First line of /proc/PID/maps naming `name` (e.g. "[vvar]"): start, or 0. */
uint64_t maps_find(pid_t pid, const char *name, uint64_t *end);
/* Sum of a field (e.g. "Shared_Dirty:") in kB over the smaps entry starting at addr. */
long smaps_field_kb(pid_t pid, uint64_t addr, const char *field);
/* A field of /proc/meminfo in kB. */
long meminfo_kb(const char *field);
/* Active objects of a /proc/slabinfo cache, -1 if absent. */
long slab_active(const char *cache);

#endif
