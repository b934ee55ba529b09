// SPDX-License-Identifier: GPL-2.0
/*
 * vma_cherrypick.ko: /dev/vma_cherrypick, one ioctl that gives the caller a
 * VMA of another, stopped process copy-on-write, the way fork() would copy
 * it (anonymous pages shared read-only until either side writes; file-backed
 * VMAs keep their file and offset). A second mode maps a caller-given file at
 * the address and copies only the source's anonymous pages into it.
 *
 * Target: Linux 6.1 (Debian bookworm). The core mm helpers used by fork's
 * dup_mmap() are not exported to modules; they are resolved once, at load,
 * in resolve_symbols() below (kprobe on kallsyms_lookup_name). See
 * docs/KMOD.md for the trade-off.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/miscdevice.h>
#include <linux/fs.h>
#include <linux/file.h>
#include <linux/uaccess.h>
#include <linux/kprobes.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/mmap_lock.h>
#include <linux/hugetlb_inline.h>
#include <linux/highmem.h>
#include <linux/pgtable.h>
#include <linux/userfaultfd_k.h>
#include <linux/capability.h>
#include <linux/pid.h>
#include <linux/ptrace.h>
#include <linux/cgroup.h>
#include <asm/tlbflush.h>
#include "vma_cherrypick.h"

/* ------------------------------------------------------------------ symbols */

/*
 * Every non-exported kernel function this module calls, with the 6.1
 * prototype it is called with. All of them are resolved in one place,
 * resolve_symbols(), and nowhere else.
 */
static struct {
	unsigned long (*kallsyms_lookup_name)(const char *name);
	struct vm_area_struct *(*vm_area_dup)(struct vm_area_struct *orig);
	void (*vm_area_free)(struct vm_area_struct *vma);
	int (*anon_vma_fork)(struct vm_area_struct *vma, struct vm_area_struct *pvma);
	int (*vma_link)(struct mm_struct *mm, struct vm_area_struct *vma);
	int (*copy_page_range)(struct vm_area_struct *dst_vma, struct vm_area_struct *src_vma);
	void (*vm_stat_account)(struct mm_struct *mm, vm_flags_t flags, long npages);
	int (*security_vm_enough_memory_mm)(struct mm_struct *mm, long pages);
	int (*vma_dup_policy)(struct vm_area_struct *src, struct vm_area_struct *dst);
	void (*flush_tlb_mm_range)(struct mm_struct *mm, unsigned long start,
				   unsigned long end, unsigned int stride_shift,
				   bool freed_tables);
	struct task_struct *(*pidfd_get_task)(int pidfd, unsigned int *flags);
	struct mm_struct *(*mm_access)(struct task_struct *task, unsigned int mode);
	int *sysctl_max_map_count;	/* a variable, not a function */
} ks;

static int resolve_symbols(void)
{
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };
	int ret;

	/*
	 * kallsyms_lookup_name is not exported since 5.7; registering a kprobe
	 * on it makes the kprobe core resolve its address for us.
	 */
	ret = register_kprobe(&kp);
	if (ret < 0) {
		pr_err("kprobe on kallsyms_lookup_name failed: %d\n", ret);
		return ret;
	}
	ks.kallsyms_lookup_name = (void *)kp.addr;
	unregister_kprobe(&kp);
	if (!ks.kallsyms_lookup_name)
		return -ENOENT;

#define RESOLVE(name) do {						\
		ks.name = (void *)ks.kallsyms_lookup_name(#name);	\
		if (!ks.name) {						\
			pr_err("cannot resolve %s\n", #name);		\
			return -ENOENT;					\
		}							\
	} while (0)
	RESOLVE(vm_area_dup);
	RESOLVE(vm_area_free);
	RESOLVE(anon_vma_fork);
	RESOLVE(vma_link);
	RESOLVE(copy_page_range);
	RESOLVE(vm_stat_account);
	RESOLVE(security_vm_enough_memory_mm);
	RESOLVE(vma_dup_policy);
	RESOLVE(flush_tlb_mm_range);
	RESOLVE(pidfd_get_task);
	RESOLVE(mm_access);
	RESOLVE(sysctl_max_map_count);
#undef RESOLVE
	return 0;
}

static inline void cp_flush_tlb_mm(struct mm_struct *mm)
{
	/* flush_tlb_mm() on x86, which is a macro over flush_tlb_mm_range. */
	ks.flush_tlb_mm_range(mm, 0UL, TLB_FLUSH_ALL, 0U, true);
}

/* ------------------------------------------------------------------ checks */

/*
 * Every live thread of the source must be stopped (SIGSTOP), traced
 * (ptrace-stop), frozen by the system freezer (TASK_FROZEN) or by the cgroup
 * v2 freezer (task->frozen).
 */
static bool source_is_stopped(struct task_struct *task)
{
	struct task_struct *t;
	bool ok = true;

	rcu_read_lock();
	for_each_thread(task, t) {
		unsigned int state = READ_ONCE(t->__state);

		if (t->exit_state)
			continue;
		if (t->flags & PF_EXITING) {
			ok = false;
			break;
		}
		if (state & (__TASK_STOPPED | __TASK_TRACED | TASK_FROZEN))
			continue;
		if (task_is_stopped_or_traced(t))
			continue;
		/*
		 * cgroup v2 freezer. t->frozen alone is not enough: a SIGSTOPped
		 * task sets it too and keeps it until it runs again, even after
		 * a SIGKILL/SIGCONT woke it; CGRP_FROZEN is cleared before the
		 * tasks of a thawed cgroup are woken.
		 */
		if (data_race(t->frozen) &&
		    test_bit(CGRP_FROZEN, &task_dfl_cgroup(t)->flags))
			continue;
		ok = false;
		break;
	}
	rcu_read_unlock();
	return ok;
}

/* The VMA kinds fork() does not copy, or that this module refuses. */
static int check_vma_kind(struct vm_area_struct *vma, u32 flags)
{
	if (vma->vm_flags & (VM_IO | VM_PFNMAP))
		return -EOPNOTSUPP;
	if (is_vm_hugetlb_page(vma))
		return -EOPNOTSUPP;
	if ((vma->vm_flags & VM_DONTCOPY) && !(flags & VMA_CP_ALLOW_DONTCOPY))
		return -EACCES;
	return 0;
}

/* Lock two distinct mms for write, in address order (no ABBA between callers). */
static int lock_two_mms(struct mm_struct *a, struct mm_struct *b)
{
	struct mm_struct *first = a < b ? a : b, *second = a < b ? b : a;

	if (mmap_write_lock_killable(first))
		return -EINTR;
	mmap_write_lock_nested(second, SINGLE_DEPTH_NESTING);
	return 0;
}

static void unlock_two_mms(struct mm_struct *a, struct mm_struct *b)
{
	mmap_write_unlock(a);
	mmap_write_unlock(b);
}

/* ------------------------------------------------------------------ default mode */

/*
 * Duplicate src_vma (of src_mm) into the caller's mm as dup_mmap() does for
 * one VMA. Both mmap_locks are held for write. On failure after the new VMA
 * was linked, *linked is set: the caller unmaps the range once the locks are
 * dropped (munmap undoes everything: anon_vma chain, file ref, accounting).
 */
static int dup_one_vma(struct mm_struct *dst_mm, struct mm_struct *src_mm,
		       struct vm_area_struct *src_vma, bool *linked)
{
	struct vm_area_struct *tmp;
	unsigned long len = src_vma->vm_end - src_vma->vm_start;
	bool want_account = src_vma->vm_flags & VM_ACCOUNT;
	int ret;

	*linked = false;
	tmp = ks.vm_area_dup(src_vma);	/* bitwise copy + anon_vma_name ref */
	if (!tmp)
		return -ENOMEM;
	/*
	 * Start from a VMA that owns nothing the unmap path would release
	 * beyond what vm_area_dup() took: no anon_vma, no mempolicy, no
	 * userfaultfd context, no VM_ACCOUNT charge yet. Each is added below,
	 * after linking, so any failure can be cleaned up by munmap.
	 */
	tmp->vm_mm = dst_mm;
	tmp->anon_vma = NULL;
	tmp->vm_policy = NULL;
	tmp->vm_userfaultfd_ctx = NULL_VM_UFFD_CTX;
	tmp->vm_flags &= ~(__VM_UFFD_FLAGS | VM_LOCKED | VM_LOCKONFAULT |
			   VM_ACCOUNT | VM_MERGEABLE);
	if (tmp->vm_file)
		get_file(tmp->vm_file);

	/* Maple tree store + file interval tree (i_mmap) + map_count++. */
	ret = ks.vma_link(dst_mm, tmp);
	if (ret) {
		if (tmp->vm_file)
			fput(tmp->vm_file);
		ks.vm_area_free(tmp);
		return ret;
	}
	*linked = true;
	ks.vm_stat_account(dst_mm, tmp->vm_flags, vma_pages(tmp));
	if (tmp->vm_ops && tmp->vm_ops->open)
		tmp->vm_ops->open(tmp);

	if (want_account) {
		if (ks.security_vm_enough_memory_mm(dst_mm, len >> PAGE_SHIFT))
			return -ENOMEM;
		tmp->vm_flags |= VM_ACCOUNT;
	}
	ret = ks.vma_dup_policy(src_vma, tmp);
	if (ret)
		return ret;
	if (tmp->vm_flags & VM_WIPEONFORK)
		return 0;	/* fork gives an empty VMA: so do we */
	/* Join the source's anon_vma tree (reusing or allocating one). */
	ret = ks.anon_vma_fork(tmp, src_vma);
	if (ret)
		return ret;
	/*
	 * Copy the page tables: private anonymous pages are shared and both
	 * sides are write-protected (COW); pinned pages are copied; file pages
	 * of VMAs without an anon_vma are left to fault in, as fork does.
	 */
	ret = ks.copy_page_range(tmp, src_vma);
	return ret;
}

/* ------------------------------------------------------------------ file mode */

#define CP_BATCH 64

struct cp_batch {
	unsigned long addr[CP_BATCH];
	struct page *page[CP_BATCH];	/* NULL: needs GUP (swapped out) */
	int n;
};

/*
 * Collect up to CP_BATCH anonymous pages of vma from *pos on, taking a page
 * reference on each. Non-present, non-none ptes of a private mapping
 * (swap/migration entries) are anonymous: recorded with page == NULL for the
 * caller to fault in with GUP. Caller holds mmap_lock of vma->vm_mm.
 */
static void collect_anon(struct vm_area_struct *vma, unsigned long *pos,
			 struct cp_batch *b)
{
	struct mm_struct *mm = vma->vm_mm;
	unsigned long addr = *pos;

	b->n = 0;
	while (addr < vma->vm_end && b->n < CP_BATCH) {
		unsigned long next_pmd = min(pmd_addr_end(addr, vma->vm_end), vma->vm_end);
		pgd_t *pgd = pgd_offset(mm, addr);
		p4d_t *p4d;
		pud_t *pud;
		pmd_t *pmd, pmdval;
		pte_t *start_pte, *pte;
		spinlock_t *ptl;

		if (pgd_none(*pgd) || pgd_bad(*pgd)) {
			addr = next_pmd;
			continue;
		}
		p4d = p4d_offset(pgd, addr);
		if (p4d_none(*p4d) || p4d_bad(*p4d)) {
			addr = next_pmd;
			continue;
		}
		pud = pud_offset(p4d, addr);
		if (pud_none(*pud) || pud_bad(*pud)) {
			addr = next_pmd;
			continue;
		}
		pmd = pmd_offset(pud, addr);
		pmdval = READ_ONCE(*pmd);
		if (pmd_none(pmdval)) {
			addr = next_pmd;
			continue;
		}
		if (pmd_trans_huge(pmdval) || pmd_devmap(pmdval) || !pmd_present(pmdval)) {
			/* THP (or a migrating one): take it page by page via GUP. */
			while (addr < next_pmd && b->n < CP_BATCH) {
				b->addr[b->n] = addr;
				b->page[b->n++] = NULL;
				addr += PAGE_SIZE;
			}
			continue;
		}
		start_pte = pte = pte_offset_map_lock(mm, pmd, addr, &ptl);
		for (; addr < next_pmd && b->n < CP_BATCH; addr += PAGE_SIZE, pte++) {
			pte_t pteval = ptep_get(pte);
			struct page *page;

			if (pte_none(pteval))
				continue;
			if (!pte_present(pteval)) {
				b->addr[b->n] = addr;
				b->page[b->n++] = NULL;
				continue;
			}
			if (pte_special(pteval) || is_zero_pfn(pte_pfn(pteval)) ||
			    !pfn_valid(pte_pfn(pteval)))
				continue;
			page = pte_page(pteval);
			if (!PageAnon(page))
				continue;
			get_page(page);
			b->addr[b->n] = addr;
			b->page[b->n++] = page;
		}
		pte_unmap_unlock(start_pte, ptl);
	}
	*pos = addr;
}

static long pick_file_mode(struct mm_struct *src_mm, struct task_struct *src_task,
			   struct vma_cherrypick_args *a)
{
	struct vm_area_struct *vma;
	struct file *file;
	struct cp_batch *b;
	unsigned long len, pos, prot = 0, ret_addr, copied = 0;
	vm_flags_t vmf;
	long ret = 0;
	int i;

	file = fget(a->file_fd);
	if (!file)
		return -EBADF;
	b = kmalloc(sizeof(*b), GFP_KERNEL);
	if (!b) {
		fput(file);
		return -ENOMEM;
	}

	if (mmap_read_lock_killable(src_mm)) {
		ret = -EINTR;
		goto out;
	}
	vma = find_vma(src_mm, a->src_addr);
	if (!vma || vma->vm_start != a->src_addr)
		ret = -ENXIO;
	else if (!source_is_stopped(src_task))
		ret = -EBUSY;
	else
		ret = check_vma_kind(vma, a->flags);
	if (!ret) {
		len = vma->vm_end - vma->vm_start;
		vmf = vma->vm_flags;
	}
	mmap_read_unlock(src_mm);
	if (ret)
		goto out;

	if (vmf & VM_READ)
		prot |= PROT_READ;
	if (vmf & VM_WRITE)
		prot |= PROT_WRITE;
	if (vmf & VM_EXEC)
		prot |= PROT_EXEC;
	ret_addr = vm_mmap(file, a->src_addr, len, prot,
			   MAP_PRIVATE | MAP_FIXED_NOREPLACE, a->file_offset);
	if (IS_ERR_VALUE(ret_addr)) {
		ret = (long)ret_addr;
		goto out;
	}
	if (ret_addr != a->src_addr) {	/* old kernels ignore NOREPLACE */
		vm_munmap(ret_addr, len);
		ret = -EEXIST;
		goto out;
	}

	pos = a->src_addr;
	while (!ret) {
		if (fatal_signal_pending(current)) {
			ret = -EINTR;
			break;
		}
		if (mmap_read_lock_killable(src_mm)) {
			ret = -EINTR;
			break;
		}
		vma = find_vma(src_mm, pos);
		if (!vma || vma->vm_start > pos || vma->vm_end > a->src_addr + len) {
			mmap_read_unlock(src_mm);
			if (pos < a->src_addr + len)
				ret = -ESRCH;	/* source VMA changed under us */
			break;
		}
		collect_anon(vma, &pos, b);
		/* Swapped/migrating entries: fault them in (still under the lock). */
		for (i = 0; i < b->n; i++) {
			struct page *p = NULL;

			if (b->page[i])
				continue;
			if (get_user_pages_remote(src_mm, b->addr[i], 1, FOLL_FORCE,
						  &p, NULL, NULL) == 1 && p && !PageAnon(p)) {
				put_page(p);
				p = NULL;
			}
			b->page[i] = p;
		}
		mmap_read_unlock(src_mm);

		for (i = 0; i < b->n; i++) {
			void *kaddr;
			int n;

			if (!b->page[i])
				continue;
			if (!ret) {
				kaddr = kmap_local_page(b->page[i]);
				/* FOLL_FORCE: write even into a read-only private VMA (COW). */
				n = access_process_vm(current, b->addr[i], kaddr, PAGE_SIZE,
						      FOLL_FORCE | FOLL_WRITE);
				kunmap_local(kaddr);
				if (n != PAGE_SIZE)
					ret = -EFAULT;
				else
					copied++;
			}
			put_page(b->page[i]);
		}
		if (pos >= vma->vm_end && b->n < CP_BATCH)
			break;
		cond_resched();
	}
	if (ret)
		vm_munmap(a->src_addr, len);
	else {
		a->out_len = len;
		a->out_pages = copied;
	}
out:
	kfree(b);
	fput(file);
	return ret;
}

/* ------------------------------------------------------------------ ioctl */

static long do_pick(struct vma_cherrypick_args *a)
{
	struct mm_struct *dst_mm = current->mm, *src_mm;
	struct task_struct *task;
	struct vm_area_struct *src_vma;
	unsigned int pidfd_flags;
	unsigned long len = 0;
	bool linked = false;
	long ret;

	if (!capable(CAP_CHECKPOINT_RESTORE) && !capable(CAP_SYS_ADMIN))
		return -EPERM;
	if (a->size != sizeof(*a) || (a->flags & ~VMA_CP_ALL_FLAGS) ||
	    a->dst_addr != a->src_addr || !PAGE_ALIGNED(a->src_addr) ||
	    !PAGE_ALIGNED(a->file_offset) || !dst_mm)
		return -EINVAL;
	if (!(a->flags & VMA_CP_MAP_FILE) && a->file_offset)
		return -EINVAL;

	task = ks.pidfd_get_task(a->src_pidfd, &pidfd_flags);
	if (IS_ERR(task))
		return PTR_ERR(task);	/* -EBADF: not a pidfd; -ESRCH: gone */
	/*
	 * The permission check of process_vm_readv()/ptrace attach, under the
	 * source's exec_update_lock; holds mm_users, so the mm survives the
	 * source's exit for as long as we use it.
	 */
	src_mm = ks.mm_access(task, PTRACE_MODE_ATTACH_REALCREDS);
	if (IS_ERR_OR_NULL(src_mm)) {
		put_task_struct(task);
		if (!src_mm)
			return -ESRCH;
		return PTR_ERR(src_mm) == -EACCES ? -EPERM : PTR_ERR(src_mm);
	}
	if (src_mm == dst_mm) {
		ret = -ELOOP;
		goto out;
	}

	if (a->flags & VMA_CP_MAP_FILE) {
		ret = pick_file_mode(src_mm, task, a);
		goto out;
	}

	/*
	 * Source for write like dup_mmap(): copy_page_range() write-protects
	 * the source's ptes and bumps src_mm->write_protect_seq (GUP-fast).
	 */
	ret = lock_two_mms(src_mm, dst_mm);
	if (ret)
		goto out;
	src_vma = find_vma(src_mm, a->src_addr);
	if (!src_vma || src_vma->vm_start != a->src_addr) {
		ret = -ENXIO;
		goto unlock;
	}
	if (!source_is_stopped(task)) {
		ret = -EBUSY;
		goto unlock;
	}
	ret = check_vma_kind(src_vma, a->flags);
	if (ret)
		goto unlock;
	len = src_vma->vm_end - src_vma->vm_start;
	if (find_vma_intersection(dst_mm, src_vma->vm_start, src_vma->vm_end)) {
		ret = -EEXIST;
		goto unlock;
	}
	if (dst_mm->map_count >= READ_ONCE(*ks.sysctl_max_map_count)) {
		ret = -ENOMEM;
		goto unlock;
	}
	ret = dup_one_vma(dst_mm, src_mm, src_vma, &linked);
	/* Source ptes may have lost their write bit: flush its TLBs (as fork). */
	cp_flush_tlb_mm(src_mm);
unlock:
	unlock_two_mms(src_mm, dst_mm);
	if (ret && linked)
		vm_munmap(a->src_addr, len);
	if (!ret) {
		a->out_len = len;
		a->out_pages = 0;
	}
out:
	mmput(src_mm);
	put_task_struct(task);
	return ret;
}

static long cp_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	void __user *uarg = (void __user *)arg;

	switch (cmd) {
	case VMA_CP_IOC_VERSION: {
		u32 v = VMA_CP_ABI_VERSION;

		return copy_to_user(uarg, &v, sizeof(v)) ? -EFAULT : 0;
	}
	case VMA_CP_IOC_PICK: {
		struct vma_cherrypick_args a;
		long ret;

		if (copy_from_user(&a, uarg, sizeof(a)))
			return -EFAULT;
		ret = do_pick(&a);
		if (!ret && copy_to_user(uarg, &a, sizeof(a)))
			return -EFAULT;
		return ret;
	}
	default:
		return -ENOTTY;
	}
}

static const struct file_operations cp_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = cp_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice cp_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "vma_cherrypick",
	.fops = &cp_fops,
	.mode = 0666,	/* the ioctl itself checks capabilities */
};

static int __init cp_init(void)
{
	int ret = resolve_symbols();

	if (ret)
		return ret;
	ret = misc_register(&cp_misc);
	if (ret)
		return ret;
	pr_info("registered /dev/vma_cherrypick (abi %u)\n", VMA_CP_ABI_VERSION);
	return 0;
}

static void __exit cp_exit(void)
{
	misc_deregister(&cp_misc);
}

module_init(cp_init);
module_exit(cp_exit);
/* GPL: required by register_kprobe(), and we call GPL-only mm internals. */
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("copy-on-write VMA cherry-pick from a stopped process (tfork)");
