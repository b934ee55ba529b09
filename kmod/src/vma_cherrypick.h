/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * UAPI of /dev/vma_cherrypick: take one VMA of a stopped process into the
 * caller copy-on-write, the way fork() copies it.
 *
 * Mirrored in Rust by engine/src/sys/kmod.rs: keep the two in sync.
 */
#ifndef VMA_CHERRYPICK_H
#define VMA_CHERRYPICK_H

#ifdef __KERNEL__
#include <linux/types.h>
#include <linux/ioctl.h>
#else
#include <stdint.h>
#include <sys/ioctl.h>
#include <linux/types.h>
#endif

#define VMA_CP_DEVICE "/dev/vma_cherrypick"
#define VMA_CP_ABI_VERSION 1u

/*
 * flags
 *
 * VMA_CP_ALLOW_DONTCOPY: also take VMAs marked VM_DONTCOPY (MADV_DONTFORK),
 *     which fork() would skip; without it they are refused with EACCES.
 * VMA_CP_MAP_FILE: do not duplicate the VMA. Instead map file_fd privately
 *     at the address (offset file_offset, protection of the source VMA) and
 *     copy into it only the source's anonymous pages (private COW copies,
 *     swapped pages included). Other pages come from file_fd on fault.
 */
#define VMA_CP_ALLOW_DONTCOPY (1u << 0)
#define VMA_CP_MAP_FILE       (1u << 1)
#define VMA_CP_ALL_FLAGS      (VMA_CP_ALLOW_DONTCOPY | VMA_CP_MAP_FILE)

struct vma_cherrypick_args {
	__u32 size;        /* in: sizeof(struct vma_cherrypick_args) */
	__u32 flags;       /* in: VMA_CP_* */
	__s32 src_pidfd;   /* in: pidfd of the (stopped) source process */
	__s32 file_fd;     /* in: VMA_CP_MAP_FILE only: file to map, else -1 */
	__u64 src_addr;    /* in: start address of a VMA in the source */
	__u64 dst_addr;    /* in: must equal src_addr */
	__u64 file_offset; /* in: VMA_CP_MAP_FILE only: page-aligned file offset */
	__u64 out_len;     /* out: length of the VMA taken, bytes */
	__u64 out_pages;   /* out: VMA_CP_MAP_FILE: anonymous pages copied; else 0 */
};

#define VMA_CP_IOC_MAGIC   0xC7
#define VMA_CP_IOC_VERSION _IOR(VMA_CP_IOC_MAGIC, 0, __u32)
#define VMA_CP_IOC_PICK    _IOWR(VMA_CP_IOC_MAGIC, 1, struct vma_cherrypick_args)

#endif
