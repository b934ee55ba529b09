//! Address space: VMAs from smaps, mm fields from stat/auxv, and which
//! pages hold data: for private mappings from PAGEMAP_SCAN (present or
//! swapped, not the shared zero page, not a page-cache page of a file
//! mapping; per-entry /proc/PID/pagemap reads when the kernel lacks the
//! ioctl), for shared anonymous memory the data ranges of its shmem object
//! (SEEK_DATA on /proc/PID/map_files/..., which sees swapped pages too).

use super::proc::{self, SmapsVma};
use crate::model::{MapFile, Mm, PageRun, Vma, VmaKind};
use crate::sys::pagemap::{self as pm, PageRegion, ScanSpec};
use crate::sys::Pid;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

#[derive(Debug, thiserror::Error)]
pub enum MmError {
    #[error("reading {what} of {pid}")]
    Read { pid: Pid, what: &'static str, #[source] source: io::Error },
    #[error("{pid}: mapping {start:#x}-{end:#x} of {name:?} is not supported yet")]
    Unsupported { pid: Pid, start: u64, end: u64, name: String },
    #[error("{pid}: mapping {start:#x}-{end:#x} of {name:?}: {why}")]
    Deleted { pid: Pid, start: u64, end: u64, name: String, why: String },
    #[error("{pid}'s executable {path} was deleted and no mapping of it is left to read it from: not supported")]
    DeletedExe { pid: Pid, path: String },
    #[error("{pid} runs a program from a memfd ({path} is its executable): not supported yet")]
    MemfdExe { pid: Pid, path: String },
}

/// Kernel-made mappings whose names also end in " (deleted)" but that are
/// not files someone unlinked (SysV shm, AIO rings, anonymous hugetlb,
/// memfds, shared anonymous memory).
fn is_kernel_object(name: &str) -> bool {
    ["/SYSV", "/[aio]", "/anon_hugepage", "/memfd:", "/dev/zero"].iter().any(|p| name.starts_with(p))
}

/// The contents of a file that was unlinked while mapped (`NAME (deleted)`),
/// read through `/proc/PID/map_files/START-END`, once per inode (`seen`).
fn deleted_mapping(pid: Pid, m: &proc::MapsLine, seen: &mut std::collections::HashMap<(u64, u64), std::sync::Arc<crate::model::Ghost>>, limit: u64) -> Result<std::sync::Arc<crate::model::Ghost>, MmError> {
    use std::os::unix::fs::MetadataExt;
    let orig = m.name.strip_suffix(" (deleted)").unwrap_or(&m.name);
    let err = |why: String| MmError::Deleted { pid, start: m.start, end: m.end, name: m.name.clone(), why };
    let open = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    if orig == "/secretmem" && crate::sys::process::is_secretmem(std::path::Path::new(&open)) {
        return Err(err("it is memfd_secret(2) memory, which only the process itself can read: not supported yet".into()));
    }
    let meta = std::fs::metadata(&open).map_err(|e| err(format!("stat of its file: {e}")))?;
    if let Some(g) = seen.get(&(meta.dev(), meta.ino())) {
        return Ok(g.clone());
    }
    if !meta.file_type().is_file() {
        return Err(err("it is not a regular file: not supported yet".into()));
    }
    if meta.nlink() != 0 {
        return Err(err(format!("the file was unlinked from {orig} but still has {} links elsewhere (link remap of a mapping is not supported yet)", meta.nlink())));
    }
    let g = crate::kinds::ghost::ghost_of(&open, pid, -1, orig, &meta, limit).map_err(|e| err(crate::log::error_chain(&e)))?;
    let g = std::sync::Arc::new(g);
    seen.insert((meta.dev(), meta.ino()), g.clone());
    Ok(g)
}

fn rd(pid: Pid, what: &'static str) -> Result<String, MmError> {
    std::fs::read_to_string(format!("/proc/{pid}/{what}")).map_err(|e| MmError::Read { pid, what, source: e })
}

/// What a mapped file's path shows through the process's root: size,
/// mode, build-id (one stat a path per process, not one per mapping: a
/// library is mapped 4 or 5 times).
type Seen = (Option<u64>, u32, Vec<u32>);

fn seen_through_root(pid: Pid, path: &str) -> Seen {
    // (the path as the process sees it: through its root, which may be in
    // a mount namespace of its own)
    let seen = format!("/proc/{pid}/root{path}");
    let meta = std::fs::metadata(&seen).ok();
    (
        meta.as_ref().map(std::os::unix::fs::MetadataExt::size),
        meta.as_ref().map(std::os::unix::fs::MetadataExt::mode).unwrap_or(0),
        super::elf::build_id_known(std::path::Path::new(&seen), meta.as_ref()).unwrap_or_default(),
    )
}

fn vma_from_smaps(
    pid: Pid,
    s: &SmapsVma,
    ghosts: &mut std::collections::HashMap<(u64, u64), std::sync::Arc<crate::model::Ghost>>,
    paths: &mut std::collections::HashMap<String, Seen>,
    ghost_limit: u64,
) -> Result<Vma, MmError> {
    let m = &s.map;
    let mut prot = 0u32;
    if m.r {
        prot |= libc::PROT_READ as u32;
    }
    if m.w {
        prot |= libc::PROT_WRITE as u32;
    }
    if m.x {
        prot |= libc::PROT_EXEC as u32;
    }
    let mut flags = if m.shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE } as u32;
    if s.vm_flags.iter().any(|f| f == "gd") {
        flags |= libc::MAP_GROWSDOWN as u32;
    }
    // VM_NORESERVE: mapped MAP_NORESERVE (upstream keeps it in the flags too)
    if s.vm_flags.iter().any(|f| f == "nr") {
        flags |= libc::MAP_NORESERVE as u32;
    }
    // VM_LOCKED (mlock, MAP_LOCKED): kept as MAP_LOCKED in the flags, as
    // upstream does; restore locks the region again once it is filled
    if s.vm_flags.iter().any(|f| f == "lo") {
        flags |= libc::MAP_LOCKED as u32;
        if s.vm_flags.iter().any(|f| f == "lf") {
            crate::pr_warn!(
                "{pid}: {:#x}-{:#x} is locked on fault (mlock2 MLOCK_ONFAULT); the image format has no place for that, so it is restored locked in full (every page of it resident)",
                m.start,
                m.end
            );
        }
    }
    // hugetlb memory (VM_HUGETLB): anonymous MAP_HUGETLB mappings show as
    // "/anon_hugepage (deleted)" on the kernel's internal hugetlbfs mount;
    // kept as MAP_HUGETLB with the page size (MAP_HUGE_SHIFT), as upstream
    // 4.2 records them. A shared one is a shmem-like object: its shmid is
    // its inode, its pages read through its map_files link.
    let anon_huge = m.name == "/anon_hugepage (deleted)" && m.dev.0 == 0;
    if s.vm_flags.iter().any(|f| f == "ht") {
        flags |= hugetlb_flags(pid, m, s.kernel_page_kb)?;
        // (a hugetlb memfd is a memfd: its inode read with the others)
        if !(anon_huge || m.name.starts_with("/memfd:") && m.name.ends_with(" (deleted)")) {
            return Err(MmError::Unsupported { pid, start: m.start, end: m.end, name: format!("{} (a hugetlbfs file mapping: not supported yet)", m.name) });
        }
    } else if anon_huge {
        return Err(MmError::Unsupported { pid, start: m.start, end: m.end, name: format!("{} without VM_HUGETLB", m.name) });
    }
    // MAP_SHARED|MAP_ANONYMOUS (and shared mappings of /dev/zero) are
    // shmem objects the kernel names "/dev/zero (deleted)", on an
    // anonymous device (major 0); named ones show as [anon_shmem:NAME]
    let shared_anon = m.shared
        && ((m.dev.0 == 0 && (m.name == "/dev/zero (deleted)" || m.name == "/dev/zero")) || m.name.starts_with("[anon_shmem:") || anon_huge);
    let kind = match m.name.as_str() {
        _ if shared_anon => VmaKind::Anon,
        _ if anon_huge => VmaKind::Anon,
        "[heap]" => VmaKind::Heap,
        "[stack]" => VmaKind::Stack,
        "[vdso]" => VmaKind::Vdso,
        "[vvar]" | "[vvar_vclock]" => VmaKind::Vvar,
        "[vsyscall]" => VmaKind::Vsyscall,
        // an AIO ring: its pages are read like the vdso's (all of them)
        "/[aio] (deleted)" if m.shared && m.dev.0 == 0 => VmaKind::Aio,
        // a SysV shm attachment: its inode number is the segment's id
        // (carried only with the tree's own ipc namespace: utsipc)
        n if n.starts_with("/SYSV") && n.ends_with(" (deleted)") && m.shared && m.dev.0 == 0 && u32::try_from(m.ino).is_ok_and(|i| i <= i32::MAX as u32) => {
            VmaKind::SysvShm(m.ino as u32)
        }
        n if n.starts_with('/') && m.ino != 0 && !n.ends_with(" (deleted)") => VmaKind::File,
        // a memfd (its inode is read once with the fds': files::collect_memfds)
        n if n.starts_with("/memfd:") && n.ends_with(" (deleted)") && m.ino != 0 && m.dev.0 == 0 => VmaKind::File,
        n if n.starts_with('/') && m.ino != 0 && !is_kernel_object(n) => VmaKind::File,
        n if n.is_empty() || n.starts_with("[anon:") || n.starts_with("[stack:") => VmaKind::Anon,
        n => {
            return Err(MmError::Unsupported { pid, start: m.start, end: m.end, name: n.to_string() });
        }
    };
    if kind != VmaKind::File {
        flags |= libc::MAP_ANONYMOUS as u32;
    }
    let memfd = m.name.starts_with("/memfd:") && m.name.ends_with(" (deleted)");
    let ghost = match kind == VmaKind::File && !memfd && m.name.ends_with(" (deleted)") {
        true => Some(deleted_mapping(pid, m, ghosts, ghost_limit)?),
        false => None,
    };
    let file = (kind == VmaKind::File).then(|| match (memfd, ghost) {
        (true, _) => MapFile {
            path: m.name.clone(),
            flags: if m.shared && m.w { libc::O_RDWR as u32 } else { libc::O_RDONLY as u32 },
            size: None,
            mode: 0,
            build_id: Vec::new(),
            ghost: None,
            memfd: Some(m.ino),
        },
        (false, Some(g)) => MapFile {
            path: m.name.strip_suffix(" (deleted)").unwrap_or(&m.name).to_string(),
            flags: if m.shared && m.w { libc::O_RDWR as u32 } else { libc::O_RDONLY as u32 },
            size: Some(g.size),
            mode: g.mode,
            build_id: Vec::new(),
            ghost: Some(g),
            memfd: None,
        },
        (false, None) => {
            let (size, mode, build_id) = paths.entry(m.name.clone()).or_insert_with(|| seen_through_root(pid, &m.name)).clone();
            MapFile {
                path: m.name.clone(),
                flags: if m.shared && m.w { libc::O_RDWR as u32 } else { libc::O_RDONLY as u32 },
                size,
                mode,
                build_id,
                ghost: None,
                memfd: None,
            }
        }
    });
    Ok(Vma {
        start: m.start,
        end: m.end,
        pgoff: if kind == VmaKind::File || shared_anon || matches!(kind, VmaKind::SysvShm(_)) { m.pgoff } else { 0 },
        prot,
        flags,
        kind,
        madv: proc::madv_from_vmflags(&s.vm_flags),
        file,
        shmid: if shared_anon { m.ino } else { 0 },
    })
}

/// MAP_HUGETLB and the page size (log2 << MAP_HUGE_SHIFT) of a hugetlb
/// mapping of `kb` kB pages.
fn hugetlb_flags(pid: Pid, m: &proc::MapsLine, kb: u64) -> Result<u32, MmError> {
    if kb < 8 || !kb.is_power_of_two() {
        return Err(MmError::Unsupported { pid, start: m.start, end: m.end, name: format!("{} (hugetlb pages of {kb} kB?)", m.name) });
    }
    let shift = (kb * 1024).trailing_zeros();
    Ok(libc::MAP_HUGETLB as u32 | (shift << libc::MAP_HUGE_SHIFT))
}

/// VMAs of `pid`, leaving out `[skip.0, skip.1)` (our scratch page);
/// `ghost_limit`: the most allocated bytes a file unlinked while mapped may
/// have (`--ghost-limit`).
pub fn collect_vmas(pid: Pid, ghost_limit: u64) -> Result<Vec<Vma>, MmError> {
    let text = rd(pid, "smaps")?;
    let mut out: Vec<Vma> = Vec::new();
    let mut ghosts = std::collections::HashMap::new();
    let mut paths = std::collections::HashMap::new();
    for s in proc::parse_smaps(&text) {
        let v = vma_from_smaps(pid, &s, &mut ghosts, &mut paths, ghost_limit)?;
        // [vvar_vclock] folds into [vvar], as upstream 4.2 records it
        if s.map.name == "[vvar_vclock]" {
            if let Some(prev) = out.last_mut() {
                if prev.kind == VmaKind::Vvar && prev.end == v.start {
                    prev.end = v.end;
                    continue;
                }
            }
        }
        if v.kind == VmaKind::Aio {
            // the ring shows completed events only: said, not dropped silently
            crate::pr_warn!(
                "{pid}: AIO context {:#x}: its completed, unreaped events are carried; requests still in flight (submitted, not completed), if any, are not visible from outside the kernel and are not carried",
                v.start
            );
        }
        out.push(v);
    }
    Ok(out)
}

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
const PM_PFN: u64 = (1 << 55) - 1;
/// A guard page (Linux 6.14+; shown with PM_SWAP).
const PM_GUARD_REGION: u64 = 1 << 58;

/// Append page `addr..addr+n*4096` to `runs`, merging with the previous run
/// when contiguous and of the same kind (lazy, same shmem object or none).
fn push_run(runs: &mut Vec<PageRun>, groups: &mut Vec<u64>, addr: u64, n: u64, lazy: bool, group: u64) {
    if let (Some(r), Some(&g)) = (runs.last_mut(), groups.last()) {
        if r.vaddr + r.nr_pages * 4096 == addr && r.lazy == lazy && g == group {
            r.nr_pages += n;
            return;
        }
    }
    runs.push(PageRun { vaddr: addr, nr_pages: n, lazy });
    groups.push(group);
}

/// How a VMA's pages are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    /// Private memory: present or swapped, not the zero page, not page cache.
    Private,
    /// The vdso: every page.
    Present,
    /// Shared anonymous memory: the shmem object's data.
    Shmem,
    Skip,
}

fn pick(v: &Vma) -> Pick {
    match v.kind {
        VmaKind::Vvar | VmaKind::Vsyscall => Pick::Skip,
        VmaKind::Vdso | VmaKind::Aio => Pick::Present,
        _ if v.shmid != 0 => Pick::Shmem,
        _ if v.shared() => Pick::Skip,
        _ => Pick::Private,
    }
}

fn lazy(v: &Vma) -> bool {
    v.kind != VmaKind::File && v.kind != VmaKind::Vdso && v.kind != VmaKind::Aio && v.shmid == 0
}

/// Which way [`collect_pages`] found the private pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageWalk {
    /// One PAGEMAP_SCAN ioctl per VMA (per 4096 result regions).
    Scan,
    /// 8 bytes of /proc/PID/pagemap per page.
    Pagemap,
}

/// Runs of pages with data, sorted by address. PAGEMAP_SCAN where the
/// kernel has it, else /proc/PID/pagemap entry by entry.
pub fn collect_pages(pid: Pid, vmas: &[Vma], zero_pfn: u64) -> Result<Vec<PageRun>, MmError> {
    match collect_pages_with(pid, vmas, zero_pfn, PageWalk::Scan) {
        Err(MmError::Read { source, .. }) if matches!(source.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => {
            collect_pages_with(pid, vmas, zero_pfn, PageWalk::Pagemap)
        }
        r => r,
    }
}

/// [`collect_pages`] with a chosen page-table walk (tests compare both).
pub fn collect_pages_with(pid: Pid, vmas: &[Vma], zero_pfn: u64, walk: PageWalk) -> Result<Vec<PageRun>, MmError> {
    let pmf = File::open(format!("/proc/{pid}/pagemap")).map_err(|e| MmError::Read { pid, what: "pagemap", source: e })?;
    let mut runs: Vec<PageRun> = Vec::new();
    let mut groups: Vec<u64> = Vec::new();
    let mut buf = vec![0u8; 8 * 4096];
    let mut regions = vec![PageRegion::default(); 4096];
    let mut guards: Vec<(u64, u64)> = Vec::new();
    for v in vmas {
        let p = pick(v);
        match p {
            Pick::Skip => continue,
            Pick::Shmem => {
                shmem_pages(pid, v, &pmf, &mut runs, &mut groups)?;
                continue;
            }
            Pick::Present => {
                // the whole vdso: a child that has not called into it since
                // the fork has no page of it mapped yet, and upstream's
                // restorer parses the dumped vdso (reading faults it in)
                push_run(&mut runs, &mut groups, v.start, (v.end - v.start) / 4096, false, 0);
                continue;
            }
            Pick::Private => {}
        }
        let lz = lazy(v);
        if walk == PageWalk::Scan {
            // guard pages (MADV_GUARD_INSTALL) are swap-entry markers, so
            // they show as swapped: their regions are told apart by the
            // guard category and left out (reading them fails with EIO)
            let guard = if pm::knows_guard() { pm::PAGE_IS_GUARD } else { 0 };
            let spec = ScanSpec {
                inverted: pm::PAGE_IS_FILE | pm::PAGE_IS_PFNZERO,
                mask: pm::PAGE_IS_FILE | pm::PAGE_IS_PFNZERO,
                anyof: pm::PAGE_IS_PRESENT | pm::PAGE_IS_SWAPPED,
                ret: pm::PAGE_IS_PRESENT | pm::PAGE_IS_SWAPPED | guard,
            };
            scan_vma(pid, &pmf, v, spec, &mut regions, |s, e, cats| {
                if cats & pm::PAGE_IS_GUARD != 0 {
                    push_guard(&mut guards, s, e);
                } else {
                    push_run(&mut runs, &mut groups, s, (e - s) / 4096, lz, 0);
                }
            })?;
            continue;
        }
        let mut page = v.start / 4096;
        let end = v.end / 4096;
        while page < end {
            let n = (end - page).min(4096);
            let bytes = usize::try_from(n * 8).unwrap_or(0);
            pmf.read_exact_at(&mut buf[..bytes], page * 8).map_err(|e| MmError::Read { pid, what: "pagemap", source: e })?;
            for (i, c) in buf[..bytes].chunks_exact(8).enumerate() {
                let e = u64::from_le_bytes(c.try_into().expect("8 bytes"));
                let a = (page + i as u64) * 4096;
                if e & PM_GUARD_REGION != 0 {
                    push_guard(&mut guards, a, a + 4096);
                    continue;
                }
                let want = (e & PM_PRESENT != 0 && e & PM_FILE == 0 && (e & PM_PFN) != zero_pfn) || e & PM_SWAP != 0;
                if want {
                    push_run(&mut runs, &mut groups, a, 1, lz, 0);
                }
            }
            page += n;
        }
    }
    if !guards.is_empty() {
        let list: Vec<String> = guards.iter().map(|(s, e)| format!("{s:#x}-{e:#x}")).collect();
        crate::pr_info!("{pid}: guard pages (MADV_GUARD_INSTALL) at {}: no contents, kept as guard regions", list.join(", "));
    }
    Ok(runs)
}

/// Guard regions (MADV_GUARD_INSTALL) of `pid`'s VMAs, merged, sorted.
/// Empty where PAGEMAP_SCAN lacks the guard category (the pages walk
/// then shows guard pages as swapped, and reading them fails the dump).
pub fn collect_guards(pid: Pid, vmas: &[Vma]) -> Result<Vec<(u64, u64)>, MmError> {
    let mut guards: Vec<(u64, u64)> = Vec::new();
    if !pm::knows_guard() {
        return Ok(guards);
    }
    let pmf = File::open(format!("/proc/{pid}/pagemap")).map_err(|e| MmError::Read { pid, what: "pagemap", source: e })?;
    let mut regions = vec![PageRegion::default(); 1024];
    let spec = ScanSpec { mask: pm::PAGE_IS_GUARD, ret: pm::PAGE_IS_GUARD, ..Default::default() };
    for v in vmas.iter().filter(|v| pick(v) != Pick::Skip) {
        scan_vma(pid, &pmf, v, spec, &mut regions, |s, e, _| push_guard(&mut guards, s, e))?;
    }
    Ok(guards)
}

/// Append guard range `s..e`, merging with the previous one.
fn push_guard(guards: &mut Vec<(u64, u64)>, s: u64, e: u64) {
    match guards.last_mut() {
        Some(g) if g.1 == s => g.1 = e,
        _ => guards.push((s, e)),
    }
}

/// PAGEMAP_SCAN over all of `v`, as many ioctls as it takes; `found` gets
/// each selected range (with its categories) once, in ascending order, never overlapping the
/// previous one.
///
/// When the result vector fills, the kernel (6.18 here) can report a
/// `walk_end` below the end of the regions it already returned (seen: 4 MiB
/// back, after 4096 one-page regions of a mapping with every other page
/// written); restarting there reported those pages a second time and wrote
/// an image whose runs overlap. So the next ioctl starts at whichever is
/// further, `walk_end` or the end of the last region returned (everything
/// below a returned region's end has been walked), and any part of a region
/// below what was already reported is dropped.
fn scan_vma(pid: Pid, pmf: &File, v: &Vma, spec: ScanSpec, regions: &mut [PageRegion], mut found: impl FnMut(u64, u64, u64)) -> Result<(), MmError> {
    let mut a = v.start;
    // everything below `done` has been reported (or found empty)
    let mut done = v.start;
    while a < v.end {
        let (n, walk_end) = pm::scan(pmf, a, v.end, spec, regions).map_err(|e| MmError::Read { pid, what: "pagemap (PAGEMAP_SCAN)", source: e })?;
        for r in &regions[..n] {
            let (s, e) = (r.start.max(done), r.end.min(v.end));
            if s < e {
                found(s, e, r.categories);
                done = e;
            }
        }
        let next = walk_end.max(done);
        if next <= a {
            return Err(MmError::Read {
                pid,
                what: "pagemap (PAGEMAP_SCAN)",
                source: io::Error::other(format!("the walk of {:#x}-{:#x} made no progress at {a:#x}", v.start, v.end)),
            });
        }
        a = next;
    }
    Ok(())
}

/// Pages of a shared anonymous mapping: the data ranges (SEEK_DATA /
/// SEEK_HOLE) of its shmem object inside the mapped window, through
/// /proc/PID/map_files; when that can't be opened (no
/// CAP_CHECKPOINT_RESTORE), the present pages of this mapping.
fn shmem_pages(pid: Pid, v: &Vma, pmf: &File, runs: &mut Vec<PageRun>, groups: &mut Vec<u64>) -> Result<(), MmError> {
    let base = v.pgoff;
    let lim = v.pgoff + v.len();
    let to_vaddr = |off: u64| v.start + (off - base);
    match File::open(format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end)) {
        Ok(f) => {
            let mut off = base;
            while off < lim {
                let Some(d) = pm::seek(&f, off, true).map_err(|e| MmError::Read { pid, what: "shmem SEEK_DATA", source: e })? else { break };
                if d >= lim {
                    break;
                }
                let h = pm::seek(&f, d, false).map_err(|e| MmError::Read { pid, what: "shmem SEEK_HOLE", source: e })?.unwrap_or(lim).min(lim);
                let (d, h) = (d & !4095, (h + 4095) & !4095);
                push_run(runs, groups, to_vaddr(d), (h - d) / 4096, false, v.shmid);
                off = h;
            }
        }
        Err(_) => {
            let mut regions = vec![PageRegion::default(); 4096];
            let spec = ScanSpec { anyof: pm::PAGE_IS_PRESENT | pm::PAGE_IS_SWAPPED, ret: pm::PAGE_IS_PRESENT, ..Default::default() };
            scan_vma(pid, pmf, v, spec, &mut regions, |s, e, _| push_run(runs, groups, s, (e - s) / 4096, false, v.shmid))?;
        }
    }
    Ok(())
}

/// The exe file of `pid` when its executable `orig` was unlinked: the
/// file of the mapping of the same inode (its ghost carries the contents).
fn deleted_exe(pid: Pid, orig: &str, vmas: &[Vma]) -> Result<MapFile, MmError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(format!("/proc/{pid}/exe")).map_err(|e| MmError::Read { pid, what: "exe", source: e })?;
    let dev = meta.dev();
    let found = vmas.iter().filter_map(|v| v.file.as_ref()).find(|f| f.ghost.as_ref().is_some_and(|g| (g.dev, g.ino) == (dev, meta.ino())));
    match found {
        Some(f) => Ok(MapFile { flags: libc::O_RDONLY as u32, ..f.clone() }),
        None => Err(MmError::DeletedExe { pid, path: orig.to_string() }),
    }
}

/// mm fields from /proc/PID/stat and auxv; `brk` comes from the parasite.
pub fn collect_mm(pid: Pid, vmas: Vec<Vma>, pages: Vec<PageRun>, brk: u64) -> Result<Mm, MmError> {
    let stat = rd(pid, "stat")?;
    let (_, f) = proc::parse_stat(&stat).ok_or(MmError::Read {
        pid,
        what: "stat",
        source: io::Error::other("unparsable"),
    })?;
    let auxv_raw = std::fs::read(format!("/proc/{pid}/auxv")).map_err(|e| MmError::Read { pid, what: "auxv", source: e })?;
    let mut auxv: Vec<u64> = auxv_raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8"))).collect();
    // drop the AT_NULL terminator pair, as upstream stores it
    while auxv.len() >= 2 && auxv[auxv.len() - 2] == 0 {
        auxv.truncate(auxv.len() - 2);
    }
    let exe_path = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| MmError::Read { pid, what: "exe", source: e })?;
    let exe_path = exe_path.to_string_lossy().to_string();
    if exe_path.starts_with("/memfd:") {
        // (run from a memfd with execveat/fexecve: restore would need the
        // memfd as its exe file, which is not done yet)
        return Err(MmError::MemfdExe { pid, path: exe_path });
    }
    // an executable deleted (or replaced, as a package upgrade does) while
    // it runs: its mapping's ghost serves as the exe file too, as one
    // file entry (before: "NAME (deleted)" was written as a path, which
    // no restore could open)
    let deleted_exe = match exe_path.strip_suffix(" (deleted)") {
        Some(orig) => Some(deleted_exe(pid, orig, &vmas)?),
        None => None,
    };
    let status = rd(pid, "status")?;
    let thp_disabled = proc::status_field(&status, "THP_enabled").map(|v| v == "0").unwrap_or(false);
    Ok(Mm {
        start_code: proc::stat_field(&f, 26),
        end_code: proc::stat_field(&f, 27),
        start_stack: proc::stat_field(&f, 28),
        start_data: proc::stat_field(&f, 45),
        end_data: proc::stat_field(&f, 46),
        start_brk: proc::stat_field(&f, 47),
        brk,
        arg_start: proc::stat_field(&f, 48),
        arg_end: proc::stat_field(&f, 49),
        env_start: proc::stat_field(&f, 50),
        env_end: proc::stat_field(&f, 51),
        auxv,
        exe: Some(match deleted_exe {
            Some(f) => f,
            None => {
                // (its exe as the process sees it, through its root: as a
                // mapping of the same path saw it, when one does)
                let (size, mode, build_id) = vmas
                    .iter()
                    .filter_map(|v| v.file.as_ref())
                    .find(|f| f.path == exe_path && f.ghost.is_none() && f.memfd.is_none())
                    .map(|f| (f.size, f.mode, f.build_id.clone()))
                    .unwrap_or_else(|| seen_through_root(pid, &exe_path));
                MapFile { memfd: None, build_id, path: exe_path, flags: libc::O_RDONLY as u32, size, mode, ghost: None }
            }
        }),
        dumpable: 1,
        thp_disabled,
        guards: collect_guards(pid, &vmas)?,
        vmas,
        pages,
    })
}
