//! Private anonymous memory a child inherited from its parent, restored
//! copy-on-write shared as it was.
//!
//! Before the fork: [`plan`] finds, per edge parent -> child of the
//! restore plan, the private anonymous VMAs the child has exactly as its
//! parent has them (same start, end and flags; not growsdown, not locked,
//! not MADV_DONTFORK/WIPEONFORK) and in which the parent has pages: the
//! *inheritance candidates*. In the restore children ([`prepare`], run by
//! each process before it forks its own): a process keeps each candidate
//! it inherited from its parent and makes it equal its own image, writing
//! only the pages that differ (a page read and found equal stays shared)
//! and dropping (MADV_DONTNEED) what its parent has and it has not; it
//! unmaps every other inherited region; then it maps (at the dumped
//! address, `MAP_FIXED_NOREPLACE`) and fills from its pages image the
//! candidates its own children need that it did not inherit. Its
//! children fork after that and inherit them. A region that can't be had
//! (the engine copy's own memory is there) is left to the ordinary path.
//!
//! The report line of each process names what it did not keep
//! ([`note`]); the engine ([`CowPlan::kept`]) leaves the kept VMAs in
//! place at injection (no munmap, no mmap, no fill: `space::build`),
//! giving them only their protection, advice and locks.

use crate::mem_source::MemSource;
use crate::model::{Task, Tree, Vma, VmaKind};
use crate::sys::mmap::MappedFile;
use crate::sys::premap;
use std::collections::HashMap;
use std::path::PathBuf;

const PAGE: u64 = 4096;
const MADV_HUGEPAGE_BIT: u64 = 1 << libc::MADV_HUGEPAGE;
const MADV_NOHUGEPAGE_BIT: u64 = 1 << libc::MADV_NOHUGEPAGE;
/// Advice that keeps a VMA from being inherited as it is.
const NOT_INHERITED: u64 = (1 << libc::MADV_DONTFORK) | (1 << libc::MADV_WIPEONFORK);

/// A run of a process's own pages: (vaddr, len, file index in
/// [`CowPlan`], offset in that file).
#[derive(Debug, Clone, Copy)]
struct Piece {
    vaddr: u64,
    len: u64,
    file: usize,
    off: u64,
}

/// One inheritance candidate of one process.
#[derive(Debug, Clone)]
pub struct CowVma {
    pub start: u64,
    pub end: u64,
    /// MAP_* flags it is mapped with (PRIVATE | ANONYMOUS [| NORESERVE],
    /// or PRIVATE for a file's).
    flags: u32,
    /// A private mapping of a regular file: its path in the image (a key
    /// of `map_files`) and the byte offset it maps from.
    file: Option<(String, u64)>,
    /// MADV_HUGEPAGE or MADV_NOHUGEPAGE, applied before the fill.
    thp: Option<i32>,
    /// The process inherits it from the process that forks it.
    from_parent: bool,
    /// A child of the process inherits it.
    for_children: bool,
    /// The process's own pages in it.
    pieces: Vec<Piece>,
    /// Where its parent has pages and it has none: dropped from the
    /// inherited copy.
    drop: Vec<(u64, u64)>,
    /// For its children, a child's pages instead of its own (`prefork`),
    /// its own put back once they forked, and `undo` (where that child
    /// has pages and it has none) dropped then: see [`CowPlan::new`].
    prefork: Option<Vec<Piece>>,
    undo: Vec<(u64, u64)>,
}

/// The candidates of every process of the tree, and the pages files they
/// are filled from (each process maps the ones its pieces are in while it
/// prepares, and unmaps them before it forks: a mapping every process
/// inherited would cost every fork and every injection's munmap).
#[derive(Debug, Default)]
pub struct CowPlan {
    files: Vec<PathBuf>,
    /// By task index; empty for a process without candidates.
    tasks: Vec<Vec<CowVma>>,
}

/// Whether `v` may be kept through a fork as it is: private anonymous
/// memory (not the main stack: see docs/ARCHITECTURE.md), or a private
/// mapping of a regular file
/// (the pages a process wrote in its libraries' data and relocations,
/// which its children had copy-on-write).
fn eligible(v: &Vma) -> bool {
    let common = v.shmid == 0 && v.madv & NOT_INHERITED == 0 && !v.is_empty();
    if let Some(f) = &v.file {
        let plain = f.memfd.is_none() && f.ghost.is_none() && !f.path.starts_with('\0') && f.path.starts_with('/');
        return common && plain && v.kind == VmaKind::File && v.flags == libc::MAP_PRIVATE as u32;
    }
    let base = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
    let flags_ok = v.flags & base == base && v.flags & !(base | libc::MAP_NORESERVE as u32) == 0;
    common && matches!(v.kind, VmaKind::Anon | VmaKind::Heap) && flags_ok
}

/// The file a candidate maps and from where (`None` for anonymous memory).
fn file_of(v: &Vma) -> Option<(String, u64)> {
    v.file.as_ref().map(|f| (crate::images_io::map_key(f), v.pgoff))
}

/// `task`'s page runs clipped to `[s, e)`, as (start, end).
fn runs_in(task: &Task, s: u64, e: u64) -> Vec<(u64, u64)> {
    let pages = &task.mm.pages;
    let first = pages.partition_point(|r| r.vaddr.saturating_add(r.nr_pages.saturating_mul(PAGE)) <= s);
    pages[first..]
        .iter()
        .take_while(|r| r.vaddr < e)
        .map(|r| (r.vaddr.max(s), r.vaddr.saturating_add(r.nr_pages.saturating_mul(PAGE)).min(e)))
        .filter(|(a, b)| a < b)
        .collect()
}

/// `a` minus `b`, both sorted lists of disjoint ranges.
fn minus(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(mut s, e) in a {
        while j < b.len() && b[j].1 <= s {
            j += 1;
        }
        let mut k = j;
        while s < e {
            match b.get(k) {
                Some(&(bs, be)) if bs < e => {
                    if bs > s {
                        out.push((s, bs));
                    }
                    s = s.max(be);
                    k += 1;
                }
                _ => {
                    out.push((s, e));
                    break;
                }
            }
        }
    }
    out
}

/// On unless `CRIU_RS_COW` says `off` (for measurements: the restore
/// without copy-on-write sharing, as before).
fn enabled() -> bool {
    std::env::var("CRIU_RS_COW").as_deref() != Ok("off")
}

/// `CRIU_RS_COW=alternate` (for tests): every second candidate a process
/// would map for its children is treated as taken (as when the engine
/// copy's own memory is there), so that the fallback is exercised beside
/// kept VMAs.
fn refused_for_test(k: usize) -> bool {
    k % 2 == 1 && std::env::var("CRIU_RS_COW").as_deref() == Ok("alternate")
}

impl CowPlan {
    /// The candidates of `tree` under the restore plan `rp` (who forks
    /// whom), with page contents from `mems` (pages files only: a VMA
    /// whose pages are not all in one is no candidate).
    pub fn new(tree: &Tree, rp: &super::plan::Plan, mems: &[&dyn MemSource]) -> CowPlan {
        use super::plan::Role;
        let mut cp = CowPlan { files: Vec::new(), tasks: vec![Vec::new(); tree.tasks.len()] };
        // (parked memory, tfork's restored clones: every process inherits
        // its own from the engine already)
        if !enabled() || mems.len() != tree.tasks.len() || mems.iter().any(|m| !m.parked().is_empty()) {
            return cp;
        }
        let live = |i: usize| tree.tasks[i].zombie_exit.is_none();
        // (parent task, child task) of every fork between two live tasks
        let mut edges = Vec::new();
        for n in &rp.nodes {
            if let Role::Task(p) = n.role {
                for &c in &n.children {
                    if let Role::Task(ci) = rp.nodes[c].role {
                        if live(p) && live(ci) {
                            edges.push((p, ci));
                        }
                    }
                }
            }
        }
        if edges.is_empty() {
            return cp;
        }
        // pieces of a task's eligible VMA, or None when some page is not in a pages file
        let mut paths: HashMap<PathBuf, usize> = HashMap::new();
        let mut want_files: Vec<PathBuf> = Vec::new();
        let mut pieces_of = |i: usize, s: u64, e: u64| -> Option<Vec<Piece>> {
            let files = mems[i].files();
            let mut out = Vec::new();
            for (a, b) in runs_in(&tree.tasks[i], s, e) {
                let (fi, off) = mems[i].file_range(a, b - a)?;
                let path = files.get(fi)?.clone();
                let file = *paths.entry(path.clone()).or_insert_with(|| {
                    want_files.push(path);
                    want_files.len() - 1
                });
                out.push(Piece { vaddr: a, len: b - a, file, off });
            }
            Some(out)
        };
        let mut cand: HashMap<(usize, u64), CowVma> = HashMap::new();
        for &(p, c) in &edges {
            let (pt, ct) = (&tree.tasks[p], &tree.tasks[c]);
            for v in ct.mm.vmas.iter().filter(|v| eligible(v)) {
                let i = pt.mm.vmas.partition_point(|w| w.start < v.start);
                let Some(w) = pt.mm.vmas.get(i).filter(|w| w.start == v.start && w.end == v.end && w.flags == v.flags && eligible(w) && file_of(w) == file_of(v)) else { continue };
                let p_runs = runs_in(pt, w.start, w.end);
                if p_runs.is_empty() {
                    continue; // nothing to share
                }
                let mut both = true;
                for (t, x) in [(p, w), (c, v)] {
                    if let std::collections::hash_map::Entry::Vacant(e) = cand.entry((t, x.start)) {
                        match pieces_of(t, x.start, x.end) {
                            Some(pieces) => drop(e.insert(new_vma(x, pieces))),
                            None => both = false,
                        }
                    }
                }
                if !both {
                    continue;
                }
                let c_runs = runs_in(ct, v.start, v.end);
                if let Some(cv) = cand.get_mut(&(c, v.start)) {
                    cv.from_parent = true;
                    cv.drop = minus(&p_runs, &c_runs);
                }
                if let Some(pv) = cand.get_mut(&(p, w.start)) {
                    pv.for_children = true;
                }
            }
        }
        // A library's data that the children share with each other but not
        // with their parent (it wrote its own after the forks): the parent
        // maps the first child's pages for the forks, then its own
        // (copy-on-write broken in it alone). Only where the parent
        // inherits nothing itself, and only for private file mappings,
        // small (the compare after the forks reads all its pages again);
        // not the main stack, where each child differs from the others in
        // more pages than from its parent.
        for &(p, c) in &edges {
            let starts: Vec<u64> = cand.iter().filter(|((t, _), v)| *t == p && v.for_children && !v.from_parent && v.prefork.is_none() && v.file.is_some()).map(|((_, s), _)| *s).collect();
            for s in starts {
                let Some(cv) = cand.get(&(c, s)).filter(|cv| cv.from_parent) else { continue };
                let c_pieces = cv.pieces.clone();
                let c_runs: Vec<(u64, u64)> = c_pieces.iter().map(|pc| (pc.vaddr, pc.vaddr + pc.len)).collect();
                let pv = cand.get_mut(&(p, s)).expect("listed");
                let p_runs: Vec<(u64, u64)> = pv.pieces.iter().map(|pc| (pc.vaddr, pc.vaddr + pc.len)).collect();
                pv.undo = minus(&c_runs, &p_runs);
                pv.prefork = Some(c_pieces);
                // every child of p inherits c's pages now
                for &(p2, c2) in &edges {
                    if p2 != p {
                        continue;
                    }
                    if let Some(v2) = cand.get_mut(&(c2, s)).filter(|v2| v2.from_parent) {
                        let runs: Vec<(u64, u64)> = v2.pieces.iter().map(|pc| (pc.vaddr, pc.vaddr + pc.len)).collect();
                        v2.drop = minus(&c_runs, &runs);
                    }
                }
            }
        }
        for ((i, _), v) in cand {
            if v.from_parent || v.for_children {
                cp.tasks[i].push(v);
            }
        }
        for t in &mut cp.tasks {
            t.sort_by_key(|v| v.start);
        }
        cp.files = want_files;
        let n: usize = cp.tasks.iter().map(Vec::len).sum();
        crate::pr_debug!("copy-on-write candidates: {n} VMAs over {} processes", cp.tasks.iter().filter(|t| !t.is_empty()).count());
        cp
    }

    /// The VMAs of task `i` left in place by its restore child, from its
    /// report's note ([`note`]): every candidate but those named.
    pub fn kept(&self, i: usize, note: &str) -> Vec<(u64, u64)> {
        let Some(vmas) = self.tasks.get(i) else { return Vec::new() };
        let missed: Vec<u64> = match note.trim().strip_prefix("nocow ") {
            None if note.trim().is_empty() => Vec::new(),
            Some(list) if list != "all" => match list.split(',').map(|h| u64::from_str_radix(h, 16)).collect::<Result<Vec<u64>, _>>() {
                Ok(v) => v,
                Err(_) => vmas.iter().map(|v| v.start).collect(),
            },
            _ => vmas.iter().map(|v| v.start).collect(),
        };
        let kept: Vec<(u64, u64)> = vmas.iter().filter(|v| !missed.contains(&v.start)).map(|v| (v.start, v.end)).collect();
        if kept.len() < vmas.len() {
            crate::pr_info!("{} of {} copy-on-write candidates of process {i} not kept by its restore child: restored as copies of their own", vmas.len() - kept.len(), vmas.len());
        }
        kept
    }

}

/// The pages files one process maps while it prepares, by index in
/// [`CowPlan::files`] (`None`: not needed, or it would not map: the VMAs
/// with pages in it are left to the ordinary path).
///
/// Each file is read no further than the runs asked for (read-around
/// off, each run asked for in one request before it is populated): every
/// process of a tree reads a few runs of its pages file here, and a
/// read-ahead window around each (8 MiB) had the forks read nearly the
/// whole image set from a cold page cache before any process was filled
/// (docs/PERFORMANCE.md, "Restore from a cold page cache").
struct Maps(Vec<Option<(std::fs::File, MappedFile)>>);

impl Maps {
    fn open(cp: &CowPlan, vmas: &[CowVma]) -> Maps {
        let mut m: Vec<Option<(std::fs::File, MappedFile)>> = (0..cp.files.len()).map(|_| None).collect();
        for f in vmas.iter().flat_map(|v| v.pieces.iter().chain(v.prefork.iter().flatten()).map(|pc| pc.file)) {
            if m[f].is_none() {
                m[f] = images_proto::image::open_regular(&cp.files[f]).ok().and_then(|file| {
                    let map = MappedFile::map(&file).ok()?;
                    map.no_read_around();
                    Some((file, map))
                });
            }
        }
        Maps(m)
    }

    fn usable(&self, v: &CowVma) -> bool {
        v.pieces.iter().chain(v.prefork.iter().flatten()).all(|pc| self.0.get(pc.file).is_some_and(Option::is_some))
    }

    /// The bytes of `pc` in its pages file, their page-table entries made
    /// at once (see [`MappedFile::populate`]).
    fn src(&self, pc: &Piece) -> Result<&[u8], String> {
        let off = usize::try_from(pc.off).map_err(|_| format!("pages offset {:#x} out of range", pc.off))?;
        let len = usize::try_from(pc.len).map_err(|_| format!("pages length {:#x} out of range", pc.len))?;
        let (file, f) = self.0.get(pc.file).and_then(Option::as_ref).ok_or_else(|| format!("no pages file for {:#x}", pc.vaddr))?;
        let _ = crate::sys::mmap::advise_willneed_at(file, pc.off, pc.len);
        f.populate(off, len);
        f.bytes().get(off..off.saturating_add(len)).ok_or_else(|| format!("pages of {:#x}..{:#x} not in their pages file", pc.vaddr, pc.vaddr + pc.len))
    }
}

/// Map candidate `v` of file `path` from byte `off`, when the file
/// covers the whole mapping now (a page past its end would fault).
fn map_file(v: &CowVma, path: &str, off: u64, open: &dyn Fn(&str) -> Result<std::os::fd::OwnedFd, String>) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let fd = open(path).map_err(std::io::Error::other)?;
    let size = std::fs::File::from(fd.try_clone()?).metadata()?.len();
    if off.saturating_add(v.end - v.start) > size.next_multiple_of(PAGE) {
        return Err(std::io::Error::other(format!("{path} is {size} bytes, shorter than the mapping")));
    }
    premap::map_file(v.start, v.end - v.start, fd.as_fd(), off)
}

fn new_vma(v: &Vma, pieces: Vec<Piece>) -> CowVma {
    let thp = if v.madv & MADV_HUGEPAGE_BIT != 0 {
        Some(libc::MADV_HUGEPAGE)
    } else if v.madv & MADV_NOHUGEPAGE_BIT != 0 {
        Some(libc::MADV_NOHUGEPAGE)
    } else {
        None
    };
    CowVma { start: v.start, end: v.end, flags: v.flags, file: file_of(v), thp, from_parent: false, for_children: false, pieces, drop: Vec::new(), prefork: None, undo: Vec::new() }
}

/// In the restore child of task `i`, before it forks: keep and correct
/// what it inherited, unmap the other inherited regions, map and fill
/// what its children need (see the module's doc). `open` opens a mapped
/// file of the image read-only (by its path in the image).
pub fn prepare(cp: &CowPlan, i: usize, open: &dyn Fn(&str) -> Result<std::os::fd::OwnedFd, String>) -> Result<(), String> {
    let vmas: &[CowVma] = cp.tasks.get(i).map_or(&[], Vec::as_slice);
    let inherited = premap::regions();
    if vmas.is_empty() && inherited.is_empty() {
        return Ok(());
    }
    // (unmapped when it returns, before the forks)
    let maps = Maps::open(cp, vmas);
    let mut kept: Vec<(u64, u64)> = Vec::new();
    let (mut same, mut written) = (0u64, 0u64);
    for v in vmas.iter().filter(|v| v.from_parent && inherited.contains(&(v.start, v.end)) && maps.usable(v)) {
        for pc in &v.pieces {
            let n = premap::sync(pc.vaddr, maps.src(pc)?).map_err(|e| format!("copy-on-write memory at {:#x}: {e}", pc.vaddr))?;
            written += n;
            same += pc.len / PAGE - n;
        }
        for &(s, e) in &v.drop {
            premap::advise(s, e - s, libc::MADV_DONTNEED).map_err(|err| format!("dropping inherited pages {s:#x}-{e:#x}: {err}"))?;
        }
        kept.push((v.start, v.end));
    }
    for &(s, e) in inherited.iter().filter(|r| !kept.contains(r)) {
        premap::unmap(s, e).map_err(|err| format!("unmapping inherited memory {s:#x}-{e:#x}: {err}"))?;
    }
    let mut filled = 0u64;
    for (k, v) in vmas.iter().enumerate() {
        if !v.for_children || kept.contains(&(v.start, v.end)) || !maps.usable(v) {
            continue;
        }
        let mapped = if refused_for_test(k) {
            Err(std::io::Error::from_raw_os_error(libc::EEXIST))
        } else {
            match &v.file {
                None => premap::map(v.start, v.end - v.start, v.flags),
                Some((path, off)) => map_file(v, path, *off, open),
            }
        };
        if let Err(e) = mapped {
            // (the engine copy's own memory is there: the ordinary path)
            crate::pr_debug!("premapping {:#x}-{:#x}: {e}; restored without sharing", v.start, v.end);
            continue;
        }
        if let Some(a) = v.thp {
            let _ = premap::advise(v.start, v.end - v.start, a);
        }
        for pc in v.prefork.as_ref().unwrap_or(&v.pieces) {
            const MADV_POPULATE_WRITE: i32 = 23;
            // one allocation call instead of a fault per page (advice only)
            let _ = premap::advise(pc.vaddr, pc.len, MADV_POPULATE_WRITE);
            premap::write(pc.vaddr, maps.src(pc)?).map_err(|e| format!("filling {:#x}: {e}", pc.vaddr))?;
            filled += pc.len / PAGE;
        }
        kept.push((v.start, v.end));
    }
    crate::pr_debug!("copy-on-write: {} VMAs kept, {same} inherited pages shared, {written} rewritten, {filled} filled", kept.len());
    Ok(())
}

/// In the restore child of task `i`, once its children forked: its own
/// pages where it mapped a child's for them ([`prepare`]).
pub fn after_forks(cp: &CowPlan, i: usize) -> Result<(), String> {
    let vmas: Vec<&CowVma> = cp.tasks.get(i).map_or(&[][..], Vec::as_slice).iter().filter(|v| v.prefork.is_some()).collect();
    if vmas.is_empty() {
        return Ok(());
    }
    let have = premap::regions();
    let owned: Vec<CowVma> = vmas.iter().map(|v| (*v).clone()).collect();
    let maps = Maps::open(cp, &owned);
    for v in vmas.iter().filter(|v| have.contains(&(v.start, v.end))) {
        if !maps.usable(v) {
            return Err(format!("pages of {:#x}-{:#x} no longer readable after the forks", v.start, v.end));
        }
        for pc in &v.pieces {
            premap::sync(pc.vaddr, maps.src(pc)?).map_err(|e| format!("own pages at {:#x}: {e}", pc.vaddr))?;
        }
        for &(s, e) in &v.undo {
            premap::advise(s, e - s, libc::MADV_DONTNEED).map_err(|err| format!("dropping a child's pages {s:#x}-{e:#x}: {err}"))?;
        }
    }
    Ok(())
}

/// The note of the report of the process with pid `ns_pid` (see [`note`]).
pub fn report_note(plan: &super::child::ChildPlan, ns_pid: i32) -> String {
    match plan.plan.nodes.iter().find(|n| n.pid == ns_pid).map(|n| n.role) {
        Some(super::plan::Role::Task(i)) => note(&plan.cow, i),
        _ => String::new(),
    }
}

/// The note of task `i`'s report (after [`prepare`]): empty when it kept
/// every candidate, else ` nocow START,...` (hex) naming those it did not,
/// or ` nocow all` when the list would not fit a report line.
pub fn note(cp: &CowPlan, i: usize) -> String {
    let Some(vmas) = cp.tasks.get(i) else { return String::new() };
    let have = premap::regions();
    let missed: Vec<String> = vmas.iter().filter(|v| !have.contains(&(v.start, v.end))).map(|v| format!("{:x}", v.start)).collect();
    if missed.is_empty() {
        return String::new();
    }
    let list = missed.join(",");
    if list.len() > 2000 {
        " nocow all".into()
    } else {
        format!(" nocow {list}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_difference() {
        assert_eq!(minus(&[(0, 100)], &[(10, 20), (30, 40)]), vec![(0, 10), (20, 30), (40, 100)]);
        assert_eq!(minus(&[(0, 10), (20, 30)], &[(5, 25)]), vec![(0, 5), (25, 30)]);
        assert_eq!(minus(&[(0, 10)], &[]), vec![(0, 10)]);
        assert_eq!(minus(&[(0, 10)], &[(0, 10)]), Vec::<(u64, u64)>::new());
        assert_eq!(minus(&[(10, 20)], &[(0, 5), (25, 30)]), vec![(10, 20)]);
    }

    #[test]
    fn kept_reads_the_note() {
        let v = |s| CowVma { start: s, end: s + PAGE, flags: 0, file: None, thp: None, from_parent: true, for_children: false, pieces: vec![], drop: vec![], prefork: None, undo: vec![] };
        let cp = CowPlan { files: vec![], tasks: vec![vec![v(0x1000), v(0x3000)]] };
        assert_eq!(cp.kept(0, ""), vec![(0x1000, 0x2000), (0x3000, 0x4000)]);
        assert_eq!(cp.kept(0, " nocow 3000"), vec![(0x1000, 0x2000)]);
        assert_eq!(cp.kept(0, " nocow all"), vec![]);
        assert_eq!(cp.kept(0, " nocow zz"), vec![]);
        assert_eq!(cp.kept(0, " what"), vec![]);
        assert_eq!(cp.kept(1, ""), vec![]);
    }
}
