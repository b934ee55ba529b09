//! Replacing the child's address space with the dumped one, by syscalls
//! injected into its main thread.

use super::{ioe, RestoreError};
use crate::dump::proc::parse_maps_line;
use crate::mem_source::MemSource;
use crate::model::{Task, Vma, VmaKind};
use crate::sys::batch::{self, Batch};
use crate::sys::inject::Injector;
use crate::sys::process as p;
use crate::sys::uffd;
use crate::sys::Pid;
use crate::{pr_debug, pr_info};
use std::fs::File;
use std::path::Path;
use std::os::unix::fs::FileExt;

/// Size of the gadget area: `syscall; int3` at its start and the syscall
/// batch loop at [`STUB_OFF`], scratch from [`SCRATCH_OFF`], the batch
/// records from [`BATCH_OFF`] to the end.
pub const GADGET_LEN: u64 = BATCH_OFF + BATCH_LEN;
/// Scratch area inside the gadget mapping.
pub const SCRATCH_OFF: u64 = 4096;
/// The batch loop (`sys/batch.rs`) in the gadget page.
const STUB_OFF: u64 = 16;
/// Record buffer of syscall batches: 16,383 calls per stop.
const BATCH_OFF: u64 = 16 * 4096;
const BATCH_LEN: u64 = 1 << 20;

/// The built address space: where the gadget and scratch live.
#[derive(Debug)]
pub struct Space {
    pub pid: Pid,
    pub gadget_page: u64,
    pub gadget: u64,
    pub scratch: u64,
    pub mem: File,
    /// The task's pid in its own pid namespace (what it sees as getpid()).
    pub ns_pid: i32,
    /// Where syscall batches run (any thread of the task can run them).
    pub batch: batch::Place,
}

impl Space {
    pub fn write(&self, off: u64, data: &[u8]) -> Result<u64, RestoreError> {
        self.mem.write_all_at(data, self.scratch + off).map_err(ioe(self.pid, "writing scratch memory"))?;
        Ok(self.scratch + off)
    }

    /// Run `b` in the thread of `inj`; `what` names the step in errors.
    pub fn run(&self, inj: &mut Injector, b: &Batch, what: &str) -> Result<Vec<u64>, RestoreError> {
        let tid = inj.tid;
        batch::run(inj, &self.mem, self.batch, b).map_err(ioe(tid, what))
    }
}

impl Space {
    /// Map a gadget area (gadget, batch loop, scratch, batch records) in
    /// the stopped process `main.tid`, free in its current layout, and make
    /// it the injector's gadget (tfork: the process already has its final
    /// address space). `ns_pid` as in [`Space::ns_pid`].
    pub fn map_gadget(main: &mut Injector, ns_pid: i32) -> Result<Space, RestoreError> {
        let pid = main.tid;
        let e = |what: &str| ioe(pid, what.to_string());
        let used: Vec<(u64, u64)> = current_maps(pid)?.iter().map(|(s, e, _)| (*s, *e)).collect();
        let g = free_gap(&used, GADGET_LEN).ok_or_else(|| RestoreError::Unsupported(format!("no free address range for a gadget in {pid}")))?;
        let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
        let got = main.call("mmap(gadget)", libc::SYS_mmap, &[g, GADGET_LEN, prot, flags, u64::MAX, 0]).map_err(e("mapping the gadget"))?;
        if got != g {
            return Err(RestoreError::Unsupported(format!("gadget of {pid} mapped at {got:#x}, wanted {g:#x}")));
        }
        let mem = std::fs::OpenOptions::new().read(true).write(true).open(format!("/proc/{pid}/mem")).map_err(e("opening /proc/PID/mem"))?;
        mem.write_all_at(&[0x0f, 0x05, 0xcc], g).map_err(e("writing the gadget"))?;
        mem.write_all_at(&batch::STUB, g + STUB_OFF).map_err(e("writing the batch loop"))?;
        main.gadget = g;
        let batch = batch::Place { stub: g + STUB_OFF, buf: g + BATCH_OFF, buf_len: BATCH_LEN };
        Ok(Space { pid, gadget_page: g, gadget: g, scratch: g + SCRATCH_OFF, mem, ns_pid, batch })
    }

    /// The same gadget area in `pid`, a fork of this space's process made
    /// after [`map_gadget`](Self::map_gadget) (its own copy of the area).
    pub fn for_fork(&self, pid: Pid, ns_pid: i32) -> Result<Space, RestoreError> {
        let mem = std::fs::OpenOptions::new().read(true).write(true).open(format!("/proc/{pid}/mem")).map_err(ioe(pid, "opening /proc/PID/mem"))?;
        Ok(Space { pid, gadget_page: self.gadget_page, gadget: self.gadget, scratch: self.scratch, mem, ns_pid, batch: self.batch })
    }
}

fn current_maps(pid: Pid) -> Result<Vec<(u64, u64, String)>, RestoreError> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(ioe(pid, "maps"))?;
    Ok(t.lines().filter_map(parse_maps_line).map(|m| (m.start, m.end, m.name)).collect())
}

/// `[s, e)` minus the `kept` ranges.
fn without_kept(s: u64, e: u64, kept: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = vec![(s, e)];
    for &(ks, ke) in kept.iter().filter(|&&(ks, ke)| ks < e && s < ke) {
        out = out.into_iter().flat_map(|(a, b)| [(a, b.min(ks)), (a.max(ke), b)]).filter(|(a, b)| a < b).collect();
    }
    out
}

/// The ranges that unmap the engine's mappings `cur` (sorted, as
/// /proc/PID/maps lists them) but the `keep` ranges and the gadget: one
/// range across neighbouring mappings and the unmapped holes between them
/// (unmapping a hole does nothing) as long as nothing kept lies in
/// between, so a few munmap calls instead of one per mapping (each call
/// takes the mmap lock, updates the VMA tree and flushes the TLB once).
/// `[vsyscall]` is not a VMA and stays.
fn unmap_ranges(cur: Vec<(u64, u64, String)>, keep: &[(u64, u64)], gadget: (u64, u64)) -> Vec<(u64, u64)> {
    let mut fence: Vec<(u64, u64)> = keep.to_vec();
    fence.push(gadget);
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for (s, e, name) in cur {
        if name == "[vsyscall]" || (s >= gadget.0 && e <= gadget.1) {
            continue;
        }
        match spans.last_mut() {
            Some(last) if last.1 <= s && !fence.iter().any(|&(fs, fe)| fs < s && fe > last.1) => last.1 = e,
            _ => spans.push((s, e)),
        }
    }
    // (a kept VMA may lie inside a span, or have merged with a mapping of
    // the engine's)
    spans.into_iter().flat_map(|(s, e)| without_kept(s, e, keep)).collect()
}

/// First gap of `len` bytes at or above 1 MiB free in both lists of ranges.
fn free_gap(a: &[(u64, u64)], len: u64) -> Option<u64> {
    let mut v = a.to_vec();
    v.sort_unstable();
    let mut cand = 0x10_0000u64;
    for (s, e) in v {
        if cand.checked_add(len)? <= s {
            return Some(cand);
        }
        cand = cand.max(e);
    }
    (cand.checked_add(len)? < 0x7fff_0000_0000).then_some(cand)
}

/// Protection a VMA is mapped with before its pages are filled: private
/// regions holding dumped pages but not writable now (RELRO, mprotect'ed
/// data, PROT_NONE with contents) were writable once, so are mapped
/// writable and mprotect'ed after the fill. That lets the target read its
/// pages itself and gives them the VM_ACCOUNT flag they had, so the kernel
/// doesn't merge them with a neighbour that never was writable.
fn fill_prot(task: &Task, v: &Vma) -> u32 {
    let w = libc::PROT_WRITE as u32;
    if v.shared() || v.prot & w != 0 || matches!(v.kind, VmaKind::Vdso | VmaKind::Vvar | VmaKind::Vsyscall) {
        return v.prot;
    }
    let pages = &task.mm.pages;
    let i = pages.partition_point(|r| r.vaddr + r.nr_pages * 4096 <= v.start);
    if pages.get(i).is_some_and(|r| r.vaddr < v.end) {
        v.prot | w | libc::PROT_READ as u32
    } else {
        v.prot
    }
}

/// How [`fill_private`] copies pages (`CRIU_RS_FILL=uffd|preadv|mem`, for
/// measurements; `uffd`, the default, falls back to `preadv` for what it
/// cannot take).
fn fill_mode() -> &'static str {
    match std::env::var("CRIU_RS_FILL").as_deref() {
        Ok("mem") => "mem",
        Ok("preadv") => "preadv",
        _ => "uffd",
    }
}

/// What [`fill_uffd`] left (the pieces for the preadv path), copied (bytes)
/// and leaves to close (the target's userfaultfd).
type UffdFilled = (Vec<(u64, u64)>, u64, Option<u64>);

/// Fill the pieces that lie in private anonymous VMAs with UFFDIO_COPY
/// (`sys/uffd.rs`): the target creates a userfaultfd and registers those
/// VMAs (injected), the engine takes the fd with pidfd_getfd and copies
/// straight from its mmap of the pages file; pages are allocated without
/// being zeroed and no fault is taken per page. Returns the pieces left for
/// the preadv path: those of other VMAs, of MADV_HUGEPAGE VMAs (UFFDIO_COPY
/// would fill them with 4 KiB pages) and everything when userfaultfd is not
/// available (the fill then falls back). The target's userfaultfd, once
/// the copy is done and unregistered, is the caller's to close (its next
/// batch): its fd is the third value.
fn fill_uffd(main: &mut Injector, task: &Task, mem: &dyn MemSource, pieces: Vec<(u64, u64)>, made: Option<u64>) -> Result<UffdFilled, RestoreError> {
    const MADV_HUGEPAGE_BIT: u64 = 1 << 14;
    let pid = main.tid;
    let anon: Vec<&Vma> = task
        .mm
        .vmas
        .iter()
        .filter(|v| v.file.is_none() && !v.shared() && v.shmid == 0 && matches!(v.kind, VmaKind::Anon | VmaKind::Heap | VmaKind::Stack) && v.madv & MADV_HUGEPAGE_BIT == 0 && v.flags & libc::MAP_HUGETLB as u32 == 0)
        .collect();
    // the VMAs are sorted and disjoint
    let vma_of = |a: u64| {
        let i = anon.partition_point(|v| v.end <= a);
        anon.get(i).is_some_and(|v| v.start <= a).then_some(i)
    };
    let (mut mine, mut rest) = (Vec::new(), Vec::new());
    for (a, l) in pieces {
        match vma_of(a) {
            Some(i) if mem.slice(a, l as usize).is_some() => mine.push((a, l, i)),
            _ => rest.push((a, l)),
        }
    }
    if mine.is_empty() {
        // (a userfaultfd the layout batch made is closed by the next batch)
        return Ok((rest, 0, made));
    }
    let give_back = |mine: Vec<(u64, u64, usize)>, mut rest: Vec<(u64, u64)>| {
        rest.extend(mine.into_iter().map(|(a, l, _)| (a, l)));
        rest.sort_unstable();
        rest
    };
    // the target's userfaultfd: made by its layout batch, else now
    let tfd = match made {
        Some(fd) => fd,
        None => match main.call("userfaultfd", libc::SYS_userfaultfd, &[(libc::O_CLOEXEC | libc::O_NONBLOCK) as u64]) {
            Ok(fd) => fd,
            Err(e) => {
                crate::pr_debug!("userfaultfd in {pid}: {e}; filling with preadv");
                return Ok((give_back(mine, rest), 0, None));
            }
        },
    };
    // the engine's copy; the API handshake and one registration per VMA
    // that gets pages through it (they act on the target's mm: no stop)
    let mut registered: Vec<(u64, u64)> = Vec::new();
    let mut idx: Vec<usize> = mine.iter().map(|m| m.2).collect();
    idx.dedup();
    let ours = p::pidfd_open(pid).and_then(|pidfd| uffd::pidfd_getfd(&pidfd, tfd as i32)).and_then(|ufd| {
        uffd::api(&ufd).map_err(|e| std::io::Error::new(e.kind(), format!("UFFDIO_API: {e}")))?;
        for &i in &idx {
            let (start, len) = (anon[i].start, anon[i].len());
            uffd::register(&ufd, start, len).map_err(|e| std::io::Error::new(e.kind(), format!("UFFDIO_REGISTER {start:#x}+{len:#x}: {e}")))?;
            registered.push((start, len));
        }
        Ok(ufd)
    });
    let ufd = match ours {
        Ok(f) => f,
        Err(e) => {
            // closing the target's userfaultfd (the engine's copy is
            // already dropped) drops every registration
            crate::pr_debug!("userfaultfd setup in {pid}: {e}; filling with preadv");
            let _ = main.call("close", libc::SYS_close, &[tfd]);
            return Ok((give_back(mine, rest), 0, None));
        }
    };
    pr_debug!("userfaultfd of {pid}: {} VMAs registered", registered.len());
    let mut copied = 0u64;
    let mut pieces = Vec::with_capacity(mine.len());
    for &(a, l, _) in &mine {
        let src = mem.slice(a, l as usize).ok_or_else(|| RestoreError::Unsupported(format!("pages at {a:#x} vanished from the pages file mapping")))?;
        pieces.push((a, src));
        copied += l;
    }
    // all pieces in one pass: no thread per piece; from the disk with
    // O_DIRECT when the pages files are not cached, else from their mappings
    match direct_pieces(mem, &pieces) {
        Some((files, fp)) => {
            pr_debug!("filling {pid} by userfaultfd from O_DIRECT reads of the pages files");
            uffd::copy_from_files(&ufd, &fp, &files, pid).map_err(ioe(pid, "filling by userfaultfd"))?
        }
        None => match cached_pieces(mem, &pieces) {
            Some((files, fp)) => {
                pr_debug!("filling {pid} by userfaultfd from reads of the cached pages files");
                uffd::copy_from_cache(&ufd, &fp, &files, pid).map_err(ioe(pid, "filling by userfaultfd"))?
            }
            None => uffd::copy(&ufd, &pieces, pid).map_err(ioe(pid, "filling by userfaultfd"))?,
        },
    }
    pr_debug!("userfaultfd of {pid}: {copied} bytes copied");
    for &(a, l) in &registered {
        uffd::unregister(&ufd, a, l).map_err(ioe(pid, format!("UFFDIO_UNREGISTER {a:#x}+{l:#x}")))?;
    }
    drop(ufd);
    Ok((rest, copied, Some(tfd)))
}

/// The pages files opened with O_DIRECT (with their paths, for errors) and
/// the pieces as reads of them.
type DirectPlan = (Vec<(File, String)>, Vec<uffd::FilePiece>);

/// The pieces as O_DIRECT reads of the pages files, with those files opened
/// so, when the fill should read that way: at least [`uffd::DIRECT_FILL_MIN`]
/// bytes, mostly not in the page cache (`CRIU_RS_FILL_READ=direct|mmap`
/// decides instead, for comparisons), and every file takes an O_DIRECT
/// read (a probe of its first page; file systems without O_DIRECT refuse
/// it). `None`: copy from the mappings.
fn direct_pieces(mem: &dyn MemSource, pieces: &[(u64, &[u8])]) -> Option<DirectPlan> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let total: usize = pieces.iter().map(|(_, s)| s.len()).sum();
    match std::env::var("CRIU_RS_FILL_READ").as_deref() {
        Ok("mmap") => return None,
        Ok("direct") => {}
        _ if total < uffd::DIRECT_FILL_MIN || !uffd::mostly_cold(pieces) => return None,
        _ => {}
    }
    let mut fp = Vec::with_capacity(pieces.len());
    for &(dst, src) in pieces {
        let (file, off) = mem.file_range(dst, src.len() as u64)?;
        fp.push(uffd::FilePiece { dst, file, off, len: src.len() });
    }
    let mut probe = crate::sys::mmap::AnonBuf::new(4096).ok()?;
    let mut files = Vec::new();
    for path in mem.files() {
        let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(&path);
        match f.and_then(|f| f.read_at(probe.as_mut_slice(), 0).map(|_| f)) {
            Ok(f) => files.push((f, path.display().to_string())),
            Err(e) => {
                pr_debug!("no O_DIRECT reads of {}: {e}; copying from its mapping", path.display());
                return None;
            }
        }
    }
    Some((files, fp))
}

/// The pieces as plain reads of the pages files, with those files opened,
/// when the fill should read that way ([`uffd::copy_from_cache`]): at
/// least 90% of it in the page cache (a cold fill reads faster through the
/// mapping's populate, or O_DIRECT).
/// `CRIU_RS_FILL_READ=pread` chooses it whatever the size and cache,
/// `mmap` never, for comparisons. `None`: copy from the mappings.
fn cached_pieces(mem: &dyn MemSource, pieces: &[(u64, &[u8])]) -> Option<DirectPlan> {
    match std::env::var("CRIU_RS_FILL_READ").as_deref() {
        Ok("mmap") => return None,
        Ok("pread") => {}
        _ if !uffd::mostly_warm(pieces) => return None,
        _ => {}
    }
    let mut fp = Vec::with_capacity(pieces.len());
    for &(dst, src) in pieces {
        let (file, off) = mem.file_range(dst, src.len() as u64)?;
        fp.push(uffd::FilePiece { dst, file, off, len: src.len() });
    }
    let mut files = Vec::new();
    for path in mem.files() {
        match std::fs::File::open(&path) {
            Ok(f) => files.push((f, path.display().to_string())),
            Err(e) => {
                pr_debug!("no plain reads of {}: {e}; copying from its mapping", path.display());
                return None;
            }
        }
    }
    Some((files, fp))
}

/// Fill the private VMAs with the dumped pages. Pieces that lie in a pages
/// file the target has open (`page_fds`, by [`MemSource::files`] index) are
/// read by the target itself with injected `preadv` (up to 1024 iovecs,
/// one contiguous file range per call: one copy, page cache -> its fresh
/// pages); anything else is written through /proc/PID/mem.
///
/// Returns the target's userfaultfd when it is still open, for the
/// caller's next batch to close.
#[allow(clippy::too_many_arguments)] // (the layout batch's userfaultfd, 8th)
fn fill_private(main: &mut Injector, memf: &File, task: &Task, mem: &dyn MemSource, page_fds: &[Option<u64>], scratch: u64, place: batch::Place, made_uffd: Option<u64>) -> Result<Option<u64>, RestoreError> {
    let pid = main.tid;
    let e = |what: &str| ioe(pid, what.to_string());
    // pieces: page runs clipped to private VMAs, in address order (each
    // inside one run, so inside one stretch of one pages file)
    let mut pieces: Vec<(u64, u64)> = Vec::new();
    let mut total = 0u64;
    for r in &task.mm.pages {
        let end = r.vaddr + r.nr_pages * 4096;
        let mut covered = 0u64;
        // the VMAs are sorted and disjoint (validate.rs): those overlapping the run
        let first = task.mm.vmas.partition_point(|v| v.end <= r.vaddr);
        for v in task.mm.vmas[first..].iter().take_while(|v| v.start < end) {
            let (lo, hi) = (r.vaddr.max(v.start), end.min(v.end));
            covered += hi - lo;
            if matches!(v.kind, VmaKind::Vdso | VmaKind::Vvar | VmaKind::Vsyscall) || v.shared() || v.shmid != 0 {
                continue;
            }
            pieces.push((lo, hi - lo));
        }
        if covered != end - r.vaddr {
            return Err(RestoreError::Unsupported(format!("pages at {:#x}..{end:#x} lie outside the VMAs", r.vaddr)));
        }
        total += r.nr_pages;
    }
    const IOV_MAX: usize = 1024;
    const MAX_BATCH: u64 = 1 << 30;
    let (pieces, by_uffd, uffd_fd) = if fill_mode() == "uffd" { fill_uffd(main, task, mem, pieces, made_uffd)? } else { (pieces, 0, None) };
    let use_preadv = fill_mode() != "mem";
    // (only for pieces outside the pages files' mappings: made when one
    // comes, not 1 MiB zeroed for every process)
    let mut buf: Vec<u8> = Vec::new();
    const BUF_LEN: usize = 1 << 20;
    let mut by_preadv = 0u64;
    // file batches, read once all are known: in one injected batch
    let mut pending: Vec<FileBatch> = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        let (a, len) = pieces[i];
        // a batch: pieces back to back in one pages file
        let mut batch: Vec<(u64, u64)> = Vec::new();
        let mut start: Option<(u64, u64)> = None; // (fd, file offset)
        if use_preadv {
            let mut next_off = 0;
            while i < pieces.len() && batch.len() < IOV_MAX {
                let (pa, pl) = pieces[i];
                let Some((fi, off)) = mem.file_range(pa, pl) else { break };
                let Some(fd) = page_fds.get(fi).copied().flatten() else { break };
                match start {
                    None => start = Some((fd, off)),
                    Some((sfd, _)) if sfd == fd && off == next_off && batch.iter().map(|b| b.1).sum::<u64>() + pl <= MAX_BATCH => {}
                    Some(_) => break,
                }
                next_off = off + pl;
                batch.push((pa, pl));
                i += 1;
            }
        }
        if let Some((fd, off)) = start {
            by_preadv += batch.iter().map(|b| b.1).sum::<u64>();
            pending.push((fd, off, batch));
            continue;
        }
        // no file for this piece: through /proc/PID/mem
        let mut p = a;
        while p < a + len {
            let n = usize::try_from((a + len - p).min(BUF_LEN as u64)).unwrap_or(BUF_LEN);
            let data: &[u8] = match mem.slice(p, n) {
                Some(s) => s,
                None => {
                    buf.resize(BUF_LEN, 0);
                    mem.read(p, &mut buf[..n])?;
                    &buf[..n]
                }
            };
            memf.write_all_at(data, p).map_err(e(&format!("writing pages at {p:#x}")))?;
            p += n as u64;
        }
        i += 1;
    }
    // the target's userfaultfd closed by the file pages' batch when there
    // is one (a stop fewer), else by the caller's next batch; again after
    // a failed batch (EBADF if the batch closed it: nothing else made an
    // fd since)
    let close_uffd = |main: &mut Injector, fd: u64| main.call("close", libc::SYS_close, &[fd]).map(drop).map_err(ioe(pid, "closing the userfaultfd"));
    if pending.is_empty() {
        pr_info!("Restored {total} pages ({} by userfaultfd, 0 by the target's preadv)", by_uffd / 4096);
        return Ok(uffd_fd);
    } else if !preadv_in_one_batch(main, memf, place, &pending, uffd_fd) {
        if let Some(fd) = uffd_fd {
            let _ = close_uffd(main, fd);
        }
        for (fd, off, batch) in &pending {
            let t0 = std::time::Instant::now();
            populate(main, batch);
            let t1 = t0.elapsed();
            preadv_all(main, memf, *fd, *off, batch, scratch).map_err(e(&format!("preadv of pages at {:#x}", batch[0].0)))?;
            crate::pr_debug!("preadv batch of {} pieces at {:#x}: populate {:.3} s, preadv {:.3} s", batch.len(), batch[0].0, t1.as_secs_f64(), (t0.elapsed() - t1).as_secs_f64());
        }
    }
    pr_info!("Restored {total} pages ({} by userfaultfd, {} by the target's preadv)", by_uffd / 4096, by_preadv / 4096);
    Ok(None)
}

/// Pieces back to back in a pages file the target has open: (its fd, the
/// file offset of the first, the pieces (vaddr, len)).
type FileBatch = (u64, u64, Vec<(u64, u64)>);

/// The file batches of [`fill_private`] as one injected batch: each batch's
/// `MADV_POPULATE_WRITE` per stretch, then its `preadv`, so a process
/// whose private file mappings hold a few pages each (libc's data, the
/// program's) is filled in one stop, not two per mapping. A short read is
/// read again on its own (`preadv_all`). `false` when the batch failed
/// (a kernel without MADV_POPULATE_WRITE, a read error): the caller
/// reads them one by one as before (reading a piece again is harmless).
fn preadv_in_one_batch(main: &mut Injector, memf: &File, place: batch::Place, pending: &[FileBatch], close_first: Option<u64>) -> bool {
    const MADV_POPULATE_WRITE: u64 = 23;
    let mut b = Batch::new();
    if let Some(fd) = close_first {
        b.push("close(userfaultfd)", libc::SYS_close, &[fd]);
    }
    let mut reads = Vec::with_capacity(pending.len());
    for (fd, off, batch) in pending {
        let mut i = 0;
        while i < batch.len() {
            let (start, mut len) = batch[i];
            i += 1;
            while i < batch.len() && batch[i].0 == start + len {
                len += batch[i].1;
                i += 1;
            }
            b.push(format!("madvise(MADV_POPULATE_WRITE) {start:#x}+{len:#x}"), libc::SYS_madvise, &[start, len, MADV_POPULATE_WRITE]);
        }
        let iov: Vec<u8> = batch.iter().flat_map(|(a, l)| a.to_le_bytes().into_iter().chain(l.to_le_bytes())).collect();
        reads.push(b.len());
        b.push_data(format!("preadv of pages at {:#x}", batch[0].0), libc::SYS_preadv, &[*fd, 0, batch.len() as u64, *off, 0], 1, &iov);
    }
    let t0 = std::time::Instant::now();
    let res = match batch::run(main, memf, place, &b) {
        Ok(r) => r,
        Err(err) => {
            crate::pr_debug!("file pages in one batch: {err}; one batch at a time instead");
            return false;
        }
    };
    for ((fd, off, batch), &k) in pending.iter().zip(&reads) {
        let want: u64 = batch.iter().map(|p| p.1).sum();
        if res.get(k).copied() != Some(want) {
            // a short read: the rest on its own
            crate::pr_debug!("preadv at {:#x} read {:?} of {want} bytes in the batch", batch[0].0, res.get(k));
            if preadv_all(main, memf, *fd, *off, batch, place.buf).is_err() {
                return false;
            }
        }
    }
    crate::pr_debug!("{} file batches ({} calls) read in one batch in {:.3} s", pending.len(), b.len(), t0.elapsed().as_secs_f64());
    true
}

/// Pre-fault the pages a batch is about to be read into, with one injected
/// `madvise(MADV_POPULATE_WRITE)` per contiguous stretch: allocating them in
/// one call instead of one page fault per 4 KiB page during the `preadv`
/// makes the fill ~25% faster here (docs/PERFORMANCE.md). It changes no VMA
/// flag; where the kernel lacks it (before 5.14) the fill just faults.
fn populate(main: &mut Injector, batch: &[(u64, u64)]) {
    const MADV_POPULATE_WRITE: u64 = 23;
    let mut i = 0;
    while i < batch.len() {
        let (start, mut len) = batch[i];
        i += 1;
        while i < batch.len() && batch[i].0 == start + len {
            len += batch[i].1;
            i += 1;
        }
        if let Err(err) = main.call("madvise", libc::SYS_madvise, &[start, len, MADV_POPULATE_WRITE]) {
            crate::pr_debug!("MADV_POPULATE_WRITE {start:#x}+{len:#x}: {err}; the fill will fault instead");
        }
    }
}

/// Injected `preadv(fd, iov, n, off)` until all of `batch` (vaddr, len),
/// back to back in the file from `off`, is read; iovecs go to `scratch`.
fn preadv_all(main: &mut Injector, memf: &File, fd: u64, mut off: u64, batch: &[(u64, u64)], scratch: u64) -> std::io::Result<()> {
    let mut iov: Vec<(u64, u64)> = batch.to_vec();
    let mut first = 0;
    while first < iov.len() {
        let bytes: Vec<u8> = iov[first..].iter().flat_map(|(b, l)| b.to_le_bytes().into_iter().chain(l.to_le_bytes())).collect();
        memf.write_all_at(&bytes, scratch)?;
        let n = main.call("preadv", libc::SYS_preadv, &[fd, scratch, (iov.len() - first) as u64, off, 0])?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("pages file ends at offset {off}")));
        }
        off += n;
        let mut left = n;
        while left > 0 && first < iov.len() {
            let take = left.min(iov[first].1);
            iov[first].0 += take;
            iov[first].1 -= take;
            left -= take;
            if iov[first].1 == 0 {
                first += 1;
            }
        }
    }
    Ok(())
}

/// One shared anonymous object (`shmid`) and all its mappings: mapped
/// read-write once at a free address, its pages written there, then each
/// dumped mapping of it created at its place by `mremap(old_size = 0)` (a
/// second mapping of the same pages, keeping the offset into the object),
/// given its protection, and the staging mapping dropped.
fn build_shmem(main: &mut Injector, memf: &File, task: &Task, mem: &dyn MemSource, shmid: u64, gadget: u64) -> Result<(), RestoreError> {
    let pid = main.tid;
    let e = |what: &str| ioe(pid, what.to_string());
    let maps: Vec<&Vma> = task.mm.vmas.iter().filter(|v| v.shmid == shmid).collect();
    // (read_images checked that pgoff + len of every VMA is an off_t)
    let size = maps.iter().map(|v| v.pgoff.saturating_add(v.len())).max().unwrap_or(0);
    let cur = current_maps(pid)?;
    let mut used: Vec<(u64, u64)> = cur.iter().map(|(s, e, _)| (*s, *e)).collect();
    used.extend(task.mm.vmas.iter().map(|v| (v.start, v.end)));
    used.push((gadget, gadget + GADGET_LEN));
    // hugetlb memory (MAP_HUGETLB and its page size in the flags) is
    // staged as hugetlb memory too, at an address aligned to its pages
    let huge = maps.iter().map(|v| v.flags & (libc::MAP_HUGETLB as u32 | (0x3f << libc::MAP_HUGE_SHIFT))).max().unwrap_or(0);
    let align = if huge != 0 { 1u64 << ((huge >> libc::MAP_HUGE_SHIFT) & 0x3f).max(12) } else { 4096 };
    let tmp = free_gap(&used, size + align - 4096)
        .map(|a| a.next_multiple_of(align))
        .ok_or_else(|| RestoreError::Unsupported(format!("no free range of {size} bytes to build shared memory {shmid}")))?;
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64 | u64::from(huge);
    let got = main.call("mmap(shmem)", libc::SYS_mmap, &[tmp, size, rw, flags, u64::MAX, 0]).map_err(e(&format!("mapping shared memory {shmid}")))?;
    if got != tmp {
        return Err(RestoreError::Unsupported(format!("shared memory {shmid} mapped at {got:#x}, wanted {tmp:#x}")));
    }
    let mut buf = vec![0u8; 1 << 20];
    for v in &maps {
        for r in task.mm.pages.iter().filter(|r| r.vaddr < v.end && v.start < r.vaddr + r.nr_pages * 4096) {
            let (lo, hi) = (r.vaddr.max(v.start), (r.vaddr + r.nr_pages * 4096).min(v.end));
            let mut a = lo;
            while a < hi {
                let n = usize::try_from((hi - a).min(buf.len() as u64)).unwrap_or(buf.len());
                let data: &[u8] = match mem.slice(a, n) {
                    Some(s) => s,
                    None => {
                        mem.read(a, &mut buf[..n])?;
                        &buf[..n]
                    }
                };
                let at = tmp + v.pgoff + (a - v.start);
                memf.write_all_at(data, at).map_err(e(&format!("writing shared memory {shmid} pages of {a:#x}")))?;
                a += n as u64;
            }
        }
    }
    if huge != 0 {
        // mremap can't make a second mapping of hugetlb memory (old_size
        // 0): each mapping is made from the object opened through its
        // map_files link, as a later process maps it
        map_shared_from(main, memf, task, shmid, pid, tmp, gadget + SCRATCH_OFF)?;
    }
    for v in maps.iter().filter(|_| huge == 0) {
        let mflags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
        let got = main
            .call("mremap(shmem)", libc::SYS_mremap, &[tmp + v.pgoff, 0, v.len(), mflags, v.start])
            .map_err(e(&format!("placing shared memory {shmid} at {:#x}", v.start)))?;
        if got != v.start {
            return Err(RestoreError::Unsupported(format!("shared memory {shmid} placed at {got:#x}, wanted {:#x}", v.start)));
        }
        if u64::from(v.prot) != rw {
            main.call("mprotect", libc::SYS_mprotect, &[v.start, v.len(), u64::from(v.prot)]).map_err(e(&format!("mprotect {:#x}", v.start)))?;
        }
    }
    main.call("munmap(shmem staging)", libc::SYS_munmap, &[tmp, size]).map_err(e("unmapping shared memory staging"))?;
    pr_debug!("shared memory {shmid}: {size} bytes, {} mappings", maps.len());
    Ok(())
}

/// The `MAP_SHARED` anonymous objects the tree's restore has built so
/// far: shmid -> (host pid of the process that built it, the start of
/// one of its mappings of it). A later process maps the same object
/// through `/proc/PID/map_files/` of that mapping, so the processes share
/// it as they did.
#[derive(Debug, Default)]
pub struct SharedAnon(std::collections::HashMap<u64, (Pid, u64)>);

/// Map this task's mappings of shared anonymous object `shmid`, already
/// built by process `owner` (mapped at `at` there): the object opened
/// through `/proc/OWNER/map_files/START-END` by the target (injected),
/// each mapping made from it at its offset, the fd closed.
fn map_shared_from(main: &mut Injector, memf: &File, task: &Task, shmid: u64, owner: Pid, at: u64, scratch: u64) -> Result<(), RestoreError> {
    let pid = main.tid;
    let e = |what: &str| ioe(pid, what.to_string());
    let (s, en, _) = current_maps(owner)?
        .into_iter()
        .find(|(s, e, _)| *s <= at && at < *e)
        .ok_or_else(|| RestoreError::Unsupported(format!("shared memory {shmid}: process {owner} no longer maps it at {at:#x}")))?;
    let path = format!("/proc/{owner}/map_files/{s:x}-{en:x}\0");
    memf.write_all_at(path.as_bytes(), scratch).map_err(e("writing scratch memory"))?;
    let fd = main
        .call("openat(map_files)", libc::SYS_openat, &[libc::AT_FDCWD as u64, scratch, (libc::O_RDWR | libc::O_CLOEXEC) as u64, 0])
        .map_err(e(&format!("opening shared memory {shmid} through {}", path.trim_end_matches('\0'))))?;
    for v in task.mm.vmas.iter().filter(|v| v.shmid == shmid) {
        let flags = (libc::MAP_SHARED | libc::MAP_FIXED) as u64;
        let got = main
            .call("mmap(shared anon)", libc::SYS_mmap, &[v.start, v.len(), u64::from(v.prot), flags, fd, v.pgoff])
            .map_err(e(&format!("mapping shared memory {shmid} at {:#x}", v.start)))?;
        if got != v.start {
            return Err(RestoreError::Unsupported(format!("shared memory {shmid} mapped at {got:#x}, wanted {:#x}", v.start)));
        }
    }
    main.call("close", libc::SYS_close, &[fd]).map_err(e("closing the shared memory fd"))?;
    pr_debug!("shared memory {shmid}: mapped from {owner}'s");
    Ok(())
}

/// Build the dumped address space in the stopped child `main.tid`.
/// `pinned`: the engine thread's pin beside the target, lifted for the
/// fill (whose copier threads want every CPU).
/// `kept`: private anonymous VMAs (start, end) the child already holds
/// at their place, inherited copy-on-write and filled (`cow.rs`): left
/// mapped, not mapped or filled again, given their final protection.
#[allow(clippy::too_many_arguments)]
///
/// Returns the space and its last batch, not yet run (final protections,
/// locks, PR_SET_MM_MAP, whose struct and auxv wait in the scratch area):
/// the caller appends what else needs no result in between and runs it
/// before anything else writes the scratch area.
pub fn build(main: &mut Injector, task: &Task, mem: &dyn MemSource, svc_base: i32, map_files: &[(String, i32)], pinned: &p::PinnedHere, shm: &mut SharedAnon, kept: &[(u64, u64)]) -> Result<(Space, Batch), RestoreError> {
    let pid = main.tid;
    let e = |what: &str| ioe(pid, what.to_string());
    // The layout calls (rseq unregistered, the engine's memory unmapped,
    // the vdso, every VMA, its advice) go into one batch, one stop, when
    // nothing between them needs a result first: parked or cherry-picked
    // memory (tfork) and shared memory (5b, 5c) split it as before.
    let one_stop = mem.parked().is_empty()
        && mem.cherry_pick_source().is_none()
        && !task.mm.vmas.iter().any(|v| v.shmid != 0 || matches!(v.kind, VmaKind::SysvShm(_)));
    // 1. gadget page, free in the child now and in the image (mapped from
    // the engine's own gadget, which the copy has)
    let cur = current_maps(pid)?;
    let mut used: Vec<(u64, u64)> = cur.iter().map(|(s, e, _)| (*s, *e)).collect();
    used.extend(task.mm.vmas.iter().map(|v| (v.start, v.end)));
    let g = free_gap(&used, GADGET_LEN).ok_or_else(|| RestoreError::Unsupported("no free address range for the restore gadget".into()))?;
    let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
    let got = main.call("mmap(gadget)", libc::SYS_mmap, &[g, GADGET_LEN, prot, flags, u64::MAX, 0]).map_err(e("mapping the gadget"))?;
    if got != g {
        return Err(RestoreError::Unsupported(format!("gadget mapped at {got:#x}, wanted {g:#x}")));
    }
    let memf = std::fs::OpenOptions::new().read(true).write(true).open(format!("/proc/{pid}/mem")).map_err(e("opening /proc/PID/mem"))?;
    memf.write_all_at(&[0x0f, 0x05, 0xcc], g).map_err(e("writing the gadget"))?;
    memf.write_all_at(&batch::STUB, g + STUB_OFF).map_err(e("writing the batch loop"))?;
    main.gadget = g;
    let place = batch::Place { stub: g + STUB_OFF, buf: g + BATCH_OFF, buf_len: BATCH_LEN };
    let run = |main: &mut Injector, b: &Batch, what: &str| batch::run(main, &memf, place, b).map_err(e(what));
    pr_debug!("restore gadget at {g:#x}");
    // 2. the engine's rseq registration must go before its memory does
    // (the first call of the layout batch)
    let mut lay = Batch::new();
    let rc = crate::sys::ptrace::rseq_config(pid).map_err(e("rseq configuration"))?;
    if rc.rseq_abi_pointer != 0 {
        lay.push("rseq(unregister)", libc::SYS_rseq, &[rc.rseq_abi_pointer, u64::from(rc.rseq_abi_size), 1, u64::from(rc.signature)]);
    }
    // 3. drop everything of the engine's (but this process's parked
    // memory, moved into place in 4a; other processes' parked memory goes)
    let parked = mem.parked();
    let mut keep: Vec<(u64, u64)> = kept.to_vec();
    keep.extend(parked.iter().map(|&(s, e, at)| (at, at + (e - s))));
    let engine_maps = cur.len();
    let munmaps = lay.len();
    for (s, end) in unmap_ranges(cur, &keep, (g, g + GADGET_LEN)) {
        lay.push(format!("munmap {s:#x}-{end:#x}"), libc::SYS_munmap, &[s, end - s]);
    }
    pr_debug!("{engine_maps} mappings in the restore child ({} munmap calls)", lay.len() - munmaps);
    // 4. vdso where it was (checked once the batch has run)
    let vvar = task.mm.vmas.iter().find(|v| v.kind == VmaKind::Vvar);
    if let Some(vvar) = vvar {
        const ARCH_MAP_VDSO_64: u64 = 0x2003;
        lay.push("arch_prctl(ARCH_MAP_VDSO_64)", libc::SYS_arch_prctl, &[ARCH_MAP_VDSO_64, vvar.start]);
    }
    let check_vdso = || -> Result<(), RestoreError> {
        if vvar.is_none() {
            return Ok(());
        }
        let now = current_maps(pid)?;
        if let Some(vd) = task.mm.vmas.iter().find(|v| v.kind == VmaKind::Vdso) {
            if !now.iter().any(|(s, en, n)| n == "[vdso]" && *s == vd.start && *en == vd.end) {
                return Err(RestoreError::Unsupported(format!(
                    "this kernel's vdso layout differs from the image's (vdso at {:#x}-{:#x}); vdso remapping is not implemented yet",
                    vd.start, vd.end
                )));
            }
        }
        Ok(())
    };
    if !one_stop {
        run(main, &lay, "unmapping the engine's memory")?;
        lay = Batch::new();
        check_vdso()?;
    }
    // 4a. parked memory (tfork's restored clones): each region moved to
    // its VMA's place with its pages, still anonymous and copy-on-write
    // with the other clones'; from here on a kept VMA
    let kept_and_parked: Vec<(u64, u64)>;
    let kept = if parked.is_empty() {
        kept
    } else {
        let mut b = Batch::new();
        for &(s, end, at) in parked {
            let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
            b.push(format!("mremap {at:#x} -> {s:#x}-{end:#x}"), libc::SYS_mremap, &[at, end - s, end - s, flags, s]);
        }
        for (got, &(want, _, at)) in run(main, &b, "moving parked memory into place")?.into_iter().zip(parked) {
            if got != want {
                return Err(RestoreError::Unsupported(format!("parked memory at {at:#x} moved to {got:#x}, wanted {want:#x}")));
            }
        }
        let bytes: u64 = parked.iter().map(|(s, e, _)| e - s).sum();
        pr_info!("{} private anonymous VMAs ({} KiB) moved into place from parked memory (copy-on-write)", parked.len(), bytes / 1024);
        kept_and_parked = kept.iter().copied().chain(parked.iter().map(|&(s, e, _)| (s, e))).collect();
        &kept_and_parked[..]
    };
    // 4b. a live source's private anonymous VMAs taken copy-on-write
    // through the kmod device, where offered and present (tfork)
    let picked = match mem.cherry_pick_source() {
        Some(src) => crate::tfork::cherry_pick_vmas(main, &memf, task, src, g + SCRATCH_OFF)?,
        None => Vec::new(),
    };
    // 5. every VMA, in batches (after the layout calls above when they
    // are still to run: their results come first)
    let mut b = lay;
    let first_mmap = b.len();
    let mut starts = Vec::new();
    for v in &task.mm.vmas {
        if matches!(v.kind, VmaKind::Vdso | VmaKind::Vvar | VmaKind::Vsyscall) || picked.iter().any(|&(s, _)| s == v.start) {
            continue;
        }
        if v.kind == VmaKind::Aio {
            continue; // made by io_setup once the memory is in (7b)
        }
        if matches!(v.kind, VmaKind::SysvShm(_)) {
            continue; // attached below (5c)
        }
        if kept.contains(&(v.start, v.end)) {
            continue;
        }
        if v.shmid != 0 {
            continue; // below, one object per shmid
        }
        let (fd, off) = match &v.file {
            Some(f) => {
                let key = crate::images_io::map_key(f);
                let i = map_files.iter().position(|(p, _)| p == &key).expect("planned");
                ((svc_base + 1 + i as i32) as u64, v.pgoff)
            }
            None => (u64::MAX, 0),
        };
        // locked once filled (step 7): MAP_LOCKED now would populate the
        // region before its pages are copied in
        let flags = (u64::from(v.flags) & !(libc::MAP_LOCKED as u64)) | libc::MAP_FIXED as u64;
        b.push(format!("mmap {:#x}-{:#x}", v.start, v.end), libc::SYS_mmap, &[v.start, v.len(), u64::from(fill_prot(task, v)), flags, fd, off]);
        starts.push(v.start);
    }
    let nmaps = b.len() - first_mmap;
    // 6. advice first: MADV_HUGEPAGE regions get huge pages while filled
    // (in the same batch when nothing comes between: 5b and 5c below)
    let mut advice = Batch::new();
    for v in &task.mm.vmas {
        if matches!(v.kind, VmaKind::Vdso | VmaKind::Vvar | VmaKind::Vsyscall | VmaKind::Aio) {
            continue;
        }
        for bit in 0..64u64 {
            if v.madv & (1 << bit) != 0 {
                let what = format!("madvise({bit}) {:#x}", v.start);
                if one_stop {
                    b.push(what, libc::SYS_madvise, &[v.start, v.len(), bit]);
                } else {
                    advice.push(what, libc::SYS_madvise, &[v.start, v.len(), bit]);
                }
            }
        }
    }
    let nadvice = if one_stop { b.len() - first_mmap - nmaps } else { advice.len() };
    // the pages files the target reads itself (step 7): read front to back
    // (advice on a regular file's fd; in the layout batch, after the advice,
    // when that is one stop)
    let page_fds: Vec<Option<u64>> = mem
        .files()
        .iter()
        .map(|p| map_files.iter().position(|(m, _)| Path::new(m) == p).map(|i| (svc_base + 1 + i as i32) as u64))
        .collect();
    if one_stop {
        for fd in page_fds.iter().flatten() {
            b.push("fadvise64(POSIX_FADV_SEQUENTIAL)", libc::SYS_fadvise64, &[*fd, 0, 0, libc::POSIX_FADV_SEQUENTIAL as u64]);
        }
    }
    // the target's userfaultfd for the fill (step 7), last in the layout
    // batch when that is one stop: a stop fewer than a call of its own
    // (its failure, e.g. no userfaultfd in this kernel, only leaves the
    // fill to the preadv path, as a failed call of its own would)
    let uffd_at = (one_stop && fill_mode() == "uffd" && !task.mm.pages.is_empty()).then(|| {
        b.push("userfaultfd", libc::SYS_userfaultfd, &[(libc::O_CLOEXEC | libc::O_NONBLOCK) as u64]);
        b.len() - 1
    });
    let what = if one_stop { "setting up the address space" } else { "mapping the VMAs" };
    let (res, uffd_err) = batch::run_tail_optional(main, &memf, place, &b, uffd_at.unwrap_or(b.len())).map_err(e(what))?;
    let made_uffd = uffd_at.and_then(|i| res.get(i).copied());
    if let Some(err) = uffd_err {
        pr_debug!("userfaultfd in {pid}: {err}; filling with preadv");
    }
    for (&got, want) in res.iter().skip(first_mmap).zip(starts) {
        if got != want {
            return Err(RestoreError::Unsupported(format!("mmap of {want:#x} landed at {got:#x}")));
        }
    }
    if one_stop {
        check_vdso()?;
    }
    pr_debug!("{nmaps} VMAs mapped");
    crate::fault::point("mid-mm");
    // 5b. shared anonymous memory, filled before it gets its final place
    let mut shmids: Vec<u64> = task.mm.vmas.iter().filter(|v| v.shmid != 0).map(|v| v.shmid).collect();
    shmids.sort_unstable();
    shmids.dedup();
    for shmid in shmids {
        match shm.0.get(&shmid) {
            Some(&(owner, at)) => map_shared_from(main, &memf, task, shmid, owner, at, g + SCRATCH_OFF)?,
            None => {
                build_shmem(main, &memf, task, mem, shmid, g)?;
                let at = task.mm.vmas.iter().find(|v| v.shmid == shmid).map_or(0, |v| v.start);
                shm.0.insert(shmid, (pid, at));
            }
        }
    }
    // 5c. SysV shm segments of the tree's own ipc namespace (made by the
    // root before it forked: crate::utsipc), attached again where they were
    const SHM_RDONLY: u64 = 0o10000;
    const SHM_EXEC: u64 = 0o100000;
    for v in &task.mm.vmas {
        let VmaKind::SysvShm(id) = v.kind else { continue };
        let mut flags = 0;
        if v.prot & libc::PROT_WRITE as u32 == 0 {
            flags |= SHM_RDONLY;
        }
        if v.prot & libc::PROT_EXEC as u32 != 0 {
            flags |= SHM_EXEC;
        }
        let got = main.call("shmat", libc::SYS_shmat, &[u64::from(id), v.start, flags]).map_err(e(&format!("attaching SysV shm segment {id} at {:#x}", v.start)))?;
        if got != v.start {
            return Err(RestoreError::Unsupported(format!("SysV shm segment {id} was attached at {got:#x}, wanted {:#x}", v.start)));
        }
    }
    if !advice.is_empty() {
        run(main, &advice, "madvise")?;
    }
    pr_debug!("{nadvice} madvise calls");
    // 7. contents, then the final protection of regions filled writable
    if !one_stop {
        for fd in page_fds.iter().flatten() {
            // the target's own open file of the pages image: read front to back
            let _ = main.call("fadvise64", libc::SYS_fadvise64, &[*fd, 0, 0, libc::POSIX_FADV_SEQUENTIAL as u64]);
        }
    }
    if kept.len() > parked.len() {
        let bytes: u64 = kept[..kept.len() - parked.len()].iter().map(|(s, e)| e - s).sum();
        pr_info!("{} private VMAs ({} KiB) kept as the restore child made them (copy-on-write from its parent, or for its children)", kept.len() - parked.len(), bytes / 1024);
    }
    let unpicked;
    let to_fill = if picked.is_empty() && kept.is_empty() {
        task
    } else {
        let mut skip = picked.clone();
        skip.extend_from_slice(kept);
        unpicked = crate::tfork::without_ranges(task, &skip);
        &unpicked
    };
    let uffd_open = pinned.released(|| fill_private(main, &memf, to_fill, mem, &page_fds, g + SCRATCH_OFF, place, made_uffd))?;
    // 7b. AIO rings: new contexts with the dumped events, moved into place
    for v in task.mm.vmas.iter().filter(|v| v.kind == VmaKind::Aio) {
        super::aio::restore_ring(main, &memf, mem, v, g + SCRATCH_OFF)?;
    }
    let mut b = Batch::new();
    if let Some(fd) = uffd_open {
        b.push("close (the userfaultfd)", libc::SYS_close, &[fd]);
    }
    // (kept VMAs were mapped read-write)
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
    for v in task.mm.vmas.iter().filter(|v| fill_prot(task, v) != v.prot || (v.prot != rw && kept.contains(&(v.start, v.end)))) {
        b.push(format!("mprotect {:#x}", v.start), libc::SYS_mprotect, &[v.start, v.len(), u64::from(v.prot)]);
    }
    // guard regions, once the pages around them are in (a guard region
    // refuses to be locked, so before mlock2)
    const MADV_GUARD_INSTALL: u64 = 102;
    for &(s, en) in &task.mm.guards {
        main.call("madvise(MADV_GUARD_INSTALL)", libc::SYS_madvise, &[s, en - s, MADV_GUARD_INSTALL])
            .map_err(e(&format!("installing guard region {s:#x}-{en:#x}")))?;
    }
    // locked memory (VM_LOCKED, kept as MAP_LOCKED): locked again now that
    // its pages are in (mlock2 faults in the rest, as mlock did)
    for v in task.mm.vmas.iter().filter(|v| v.flags & libc::MAP_LOCKED as u32 != 0) {
        b.push(format!("mlock2 {:#x}-{:#x}", v.start, v.end), libc::SYS_mlock2, &[v.start, v.len(), 0]);
    }
    let sp = Space { pid, gadget_page: g, gadget: g, scratch: g + SCRATCH_OFF, mem: memf, ns_pid: task.pid, batch: place };
    // 8. mm fields (PR_SET_MM_MAP in the same batch, after the locks: its
    // struct and the auxv are in the scratch area, the batch's own buffer
    // is apart)
    let mm = &task.mm;
    let mut auxv = mm.auxv.clone();
    auxv.extend([0, 0]);
    let auxv_bytes: Vec<u8> = auxv.iter().flat_map(|w| w.to_le_bytes()).collect();
    let auxv_ptr = sp.write(1024, &auxv_bytes)?;
    let exe_fd = match &mm.exe {
        Some(x) => {
            let key = crate::images_io::map_key(x);
            svc_base + 1 + map_files.iter().position(|(p, _)| p == &key).expect("planned") as i32
        }
        None => -1,
    };
    let mut m: Vec<u8> = [
        mm.start_code, mm.end_code, mm.start_data, mm.end_data, mm.start_brk, mm.brk, mm.start_stack,
        mm.arg_start, mm.arg_end, mm.env_start, mm.env_end, auxv_ptr,
    ]
    .iter()
    .flat_map(|w| w.to_le_bytes())
    .collect();
    m.extend((auxv_bytes.len() as u32).to_le_bytes());
    m.extend((exe_fd as u32).to_le_bytes());
    let mptr = sp.write(0, &m)?;
    const PR_SET_MM: u64 = 35;
    const PR_SET_MM_MAP: u64 = 14;
    b.push("prctl(PR_SET_MM_MAP)", libc::SYS_prctl, &[PR_SET_MM, PR_SET_MM_MAP, mptr, m.len() as u64, 0]);
    Ok((sp, b))
}

/// [`finish_process`] of a process without POSIX timers, as calls
/// appended to one batch (their data in the batch's own buffer).
pub fn finish_calls(b: &mut Batch, task: &Task, svc_base: i32, nfiles: usize) -> Result<(), RestoreError> {
    for (which, t) in task.itimers.iter().enumerate() {
        let (vsec, mut vusec) = (t.vsec, t.vusec);
        if vsec == 0 && vusec == 0 {
            if t.isec == 0 && t.iusec == 0 {
                continue;
            }
            vusec = 1; // expired at dump time and not yet re-armed: due now
        }
        let d: Vec<u8> = [t.isec, t.iusec, vsec, vusec].iter().flat_map(|w| w.to_le_bytes()).collect();
        b.push_data("setitimer", libc::SYS_setitimer, &[which as u64, 0, 0], 1, &d);
    }
    for si in &task.shared_pending {
        let signo = u64::from(u32::from_le_bytes(si[0..4].try_into().expect("4")));
        b.push_data("rt_sigqueueinfo (a shared signal)", libc::SYS_rt_sigqueueinfo, &[task.pid as u64, signo, 0], 2, si);
    }
    if nfiles > 0 {
        let (first, last) = ((svc_base + 1) as u64, (svc_base + nfiles as i32) as u64);
        b.push("close_range (the service fds)", libc::SYS_close_range, &[first, last, 0]);
    }
    if task.mm.dumpable != 1 {
        b.push("prctl(PR_SET_DUMPABLE)", libc::SYS_prctl, &[libc::PR_SET_DUMPABLE as u64, u64::from(task.mm.dumpable)]);
    }
    const PR_SET_THP_DISABLE: u64 = 41;
    if task.mm.thp_disabled {
        b.push("prctl(PR_SET_THP_DISABLE)", libc::SYS_prctl, &[PR_SET_THP_DISABLE, 1, 0, 0, 0]);
    }
    for cmd in membarrier_cmds(task)? {
        b.push(format!("membarrier registration {cmd:#x}"), libc::SYS_membarrier, &[u64::from(cmd), 0, 0]);
    }
    Ok(())
}

/// The membarrier registrations of the image, one command each.
fn membarrier_cmds(task: &Task) -> Result<Vec<u32>, RestoreError> {
    /// REGISTER_GLOBAL_EXPEDITED, _PRIVATE_EXPEDITED, _SYNC_CORE, _RSEQ
    const MEMBARRIER_REGISTER_CMDS: [u32; 4] = [1 << 2, 1 << 4, 1 << 6, 1 << 8];
    let unknown = task.membarrier & !MEMBARRIER_REGISTER_CMDS.iter().fold(0, |a, b| a | b);
    if unknown != 0 {
        return Err(RestoreError::Unsupported(format!("membarrier registrations {unknown:#x} of the image are not known to this engine")));
    }
    Ok(MEMBARRIER_REGISTER_CMDS.into_iter().filter(|c| task.membarrier & c != 0).collect())
}

/// Process-wide state set last: timers, pending signals, dumpable,
/// pdeath signal; service fds closed.
pub fn finish_process(main: &mut Injector, sp: &Space, task: &Task, svc_base: i32, nfiles: usize) -> Result<(), RestoreError> {
    let pid = main.tid;
    let e = |what: &str| ioe(pid, what.to_string());
    for (which, t) in task.itimers.iter().enumerate() {
        let (vsec, mut vusec) = (t.vsec, t.vusec);
        if vsec == 0 && vusec == 0 {
            if t.isec == 0 && t.iusec == 0 {
                continue;
            }
            // expired at dump time and not yet re-armed: due now
            vusec = 1;
        }
        let b: Vec<u8> = [t.isec, t.iusec, vsec, vusec].iter().flat_map(|w| w.to_le_bytes()).collect();
        let ptr = sp.write(0, &b)?;
        main.call("setitimer", libc::SYS_setitimer, &[which as u64, ptr, 0]).map_err(e("setitimer"))?;
    }
    if !task.posix_timers.is_empty() {
        super::thread::restore_posix_timers(main, sp, task)?;
    }
    for si in &task.shared_pending {
        let ptr = sp.write(0, si)?;
        let signo = u64::from(u32::from_le_bytes(si[0..4].try_into().expect("4")));
        main.call("rt_sigqueueinfo", libc::SYS_rt_sigqueueinfo, &[task.pid as u64, signo, ptr]).map_err(e("queueing a shared signal"))?;
    }
    if nfiles > 0 {
        // the service fds of the mapped files, in one call
        let (first, last) = ((svc_base + 1) as u64, (svc_base + nfiles as i32) as u64);
        main.call("close_range", libc::SYS_close_range, &[first, last, 0]).map_err(e("closing the service fds"))?;
    }
    if task.mm.dumpable != 1 {
        main.call("prctl(PR_SET_DUMPABLE)", libc::SYS_prctl, &[libc::PR_SET_DUMPABLE as u64, u64::from(task.mm.dumpable)]).map_err(e("PR_SET_DUMPABLE"))?;
    }
    mm_wide_state(main, task)
}

/// mm-wide state only the process itself can set, after its memory is in
/// place (so the fill is not slowed by it): PR_SET_THP_DISABLE and the
/// membarrier registrations, one MEMBARRIER_CMD_REGISTER_* call per bit.
fn mm_wide_state(main: &mut Injector, task: &Task) -> Result<(), RestoreError> {
    const PR_SET_THP_DISABLE: u64 = 41;
    let pid = main.tid;
    if task.mm.thp_disabled {
        main.call("prctl(PR_SET_THP_DISABLE)", libc::SYS_prctl, &[PR_SET_THP_DISABLE, 1, 0, 0, 0]).map_err(ioe(pid, "PR_SET_THP_DISABLE"))?;
    }
    for cmd in membarrier_cmds(task)? {
        main.call("membarrier(register)", libc::SYS_membarrier, &[u64::from(cmd), 0, 0])
            .map_err(ioe(pid, format!("membarrier registration {cmd:#x}")))?;
    }
    Ok(())
}
