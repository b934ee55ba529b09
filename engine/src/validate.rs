//! Consistency checks of an image set that no single image can make on its
//! own, run before anything is created: VMAs must not overlap, and every
//! page run of the pagemap must lie inside VMAs (runs may span adjacent
//! VMAs). Errors name the image file, the entry and the addresses.
#![forbid(unsafe_code)]

use crate::images_io::ImagesError;

fn bad(file: &str, what: String) -> ImagesError {
    ImagesError::Bad { file: file.to_string(), what }
}

/// Check `vmas` ((start, end) of the entries of `mm_file`, in file order)
/// and `runs` ((vaddr, nr_pages) of the entries of `pagemap_file` after its
/// head, in file order).
pub fn mm_layout(mm_file: &str, pagemap_file: &str, vmas: &[(u64, u64)], runs: &[(u64, u64)]) -> Result<(), ImagesError> {
    let mut v: Vec<(u64, u64, usize)> = vmas.iter().enumerate().map(|(i, &(s, e))| (s, e, i)).collect();
    v.sort_unstable();
    for w in v.windows(2) {
        let ((s0, e0, i0), (s1, e1, i1)) = (w[0], w[1]);
        if s1 < e0 {
            return Err(bad(mm_file, format!("vma {i1} ({s1:#x}-{e1:#x}) overlaps vma {i0} ({s0:#x}-{e0:#x})")));
        }
    }
    for (k, &(vaddr, nr_pages)) in runs.iter().enumerate() {
        let (a, b) = (vaddr, vaddr.saturating_add(nr_pages.saturating_mul(4096)));
        let mut at = a;
        let mut i = v.partition_point(|x| x.1 <= a);
        while at < b {
            match v.get(i) {
                Some(&(s, e, _)) if s <= at => {
                    at = e;
                    i += 1;
                }
                _ => {
                    return Err(bad(
                        pagemap_file,
                        format!(
                            "entry {} (vaddr {a:#x}, {} pages): {at:#x} is outside every VMA of {mm_file}",
                            k + 1,
                            nr_pages
                        ),
                    ))
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vma(start: u64, end: u64) -> (u64, u64) {
        (start, end)
    }
    fn run(vaddr: u64, nr_pages: u64) -> (u64, u64) {
        (vaddr, nr_pages)
    }

    #[test]
    fn good_layout_with_a_run_spanning_two_vmas() {
        let v = [vma(0x1000, 0x3000), vma(0x3000, 0x5000), vma(0x8000, 0x9000)];
        mm_layout("mm-1.img", "pagemap-1.img", &v, &[run(0x1000, 1), run(0x2000, 2), run(0x8000, 1)]).unwrap();
    }

    #[test]
    fn overlap_is_named() {
        let v = [vma(0x1000, 0x4000), vma(0x3000, 0x5000)];
        let e = mm_layout("mm-7.img", "pagemap-7.img", &v, &[]).unwrap_err().to_string();
        assert_eq!(e, "mm-7.img: vma 1 (0x3000-0x5000) overlaps vma 0 (0x1000-0x4000)");
    }

    #[test]
    fn run_outside_is_named() {
        let v = [vma(0x1000, 0x3000), vma(0x4000, 0x5000)];
        let e = mm_layout("mm-7.img", "pagemap-7.img", &v, &[run(0x1000, 1), run(0x2000, 3)]).unwrap_err().to_string();
        assert_eq!(e, "pagemap-7.img: entry 2 (vaddr 0x2000, 3 pages): 0x3000 is outside every VMA of mm-7.img");
        let e = mm_layout("mm-7.img", "pagemap-7.img", &v, &[run(0x9000, 1)]).unwrap_err().to_string();
        assert!(e.contains("entry 1 (vaddr 0x9000"), "{e}");
    }
}

/// One pstree.img entry, as the checks below see it.
#[derive(Debug, Clone)]
pub struct PstreeShape {
    pub pid: u32,
    pub ppid: u32,
    pub pgid: u32,
    pub sid: u32,
    pub threads: Vec<u32>,
    /// Its core image says it is a zombie (TASK_DEAD), whatever its thread
    /// list holds (upstream 4.2 writes one thread of no set value for a
    /// zombie: 0, or whatever its memory held).
    pub dead: bool,
}

/// The kernel's largest pid (PID_MAX_LIMIT on 64-bit).
const PID_MAX: u32 = 1 << 22;
/// Processes and threads of one image set: far above any real tree, low
/// enough that a hostile pstree cannot make restore plan millions of them.
const MAX_TASKS: usize = 1 << 16;

/// The shape of a tree as pstree.img gives it: at least one entry, pids
/// and thread ids in range and unique across the tree, every entry's
/// parent an earlier entry (the root's parent outside the tree), a live
/// process's first thread its own pid, a zombie (thread list `[0]` or
/// empty, or `dead`) with no children, a session leader leading its own group.
pub fn pstree(file: &str, ps: &[PstreeShape]) -> Result<(), ImagesError> {
    use std::collections::HashMap;
    if ps.is_empty() {
        return Err(bad(file, "no processes".into()));
    }
    if ps.len() > MAX_TASKS {
        return Err(bad(file, format!("{} processes: more than this engine restores ({MAX_TASKS})", ps.len())));
    }
    let mut at: HashMap<u32, usize> = HashMap::with_capacity(ps.len());
    let mut tids: HashMap<u32, usize> = HashMap::new();
    let mut zombie = vec![false; ps.len()];
    for (i, p) in ps.iter().enumerate() {
        let e = |what: String| bad(file, format!("entry {i} (pid {}): {what}", p.pid));
        if p.pid == 0 || p.pid >= PID_MAX {
            return Err(e(format!("pid {} is out of range", p.pid)));
        }
        if let Some(j) = at.insert(p.pid, i) {
            return Err(e(format!("pid {} is also entry {j}'s", p.pid)));
        }
        if p.pgid >= PID_MAX || p.sid >= PID_MAX {
            return Err(e(format!("pgid {} or sid {} is out of range", p.pgid, p.sid)));
        }
        if p.sid == p.pid && p.pgid != p.pid {
            return Err(e(format!("a session leader in group {} (a session leader leads its own group)", p.pgid)));
        }
        if i == 0 {
            if p.ppid != 0 && ps.iter().any(|q| q.pid == p.ppid) {
                return Err(e(format!("the root's parent {} is in the tree", p.ppid)));
            }
        } else {
            match at.get(&p.ppid) {
                Some(&j) if j < i && !zombie[j] => {}
                Some(&j) if zombie[j] => return Err(e(format!("its parent {} (entry {j}) is a zombie", p.ppid))),
                _ => return Err(e(format!("its parent {} is not an earlier entry", p.ppid))),
            }
        }
        zombie[i] = p.dead || p.threads.is_empty() || p.threads == [0];
        if zombie[i] {
            continue;
        }
        if p.threads.len() > MAX_TASKS {
            return Err(e(format!("{} threads", p.threads.len())));
        }
        if p.threads[0] != p.pid {
            return Err(e(format!("its first thread is {}, not the process itself", p.threads[0])));
        }
        for &t in &p.threads {
            if t == 0 || t >= PID_MAX {
                return Err(e(format!("thread id {t} is out of range")));
            }
            if let Some(j) = tids.insert(t, i) {
                return Err(e(format!("thread id {t} is also a thread of entry {j}")));
            }
        }
    }
    // a thread id may not be another process's pid
    for (&t, &i) in &tids {
        if let Some(&j) = at.get(&t) {
            if j != i {
                return Err(bad(file, format!("entry {i}: thread id {t} is the pid of entry {j}")));
            }
        }
    }
    if tids.len() > MAX_TASKS {
        return Err(bad(file, format!("{} threads in all: more than this engine restores ({MAX_TASKS})", tids.len())));
    }
    Ok(())
}
