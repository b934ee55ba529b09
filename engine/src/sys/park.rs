//! "Parked" memory of tfork's restored clones (docs/ARCHITECTURE.md,
//! "tfork", "Memory of a clone tree"): private anonymous regions the
//! engine maps at addresses no process of the frozen tree uses, fills
//! once with the frozen pages, and that every restoring helper, clone
//! root and child then inherits copy-on-write through fork; the restore
//! moves each process's own regions into place (`mremap`, injected) and
//! unmaps the others.
//!
//! The regions are kept in a [`Regions`] table of this process (see
//! `sys/regions.rs` for why that is sound); their memory is written only
//! by the kernel (pread), here.

use super::last_err;
use super::regions::{Regions, PAGE};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

static REGIONS: Regions = Regions::new();

/// The process that made the regions (0: none made yet).
static MAKER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Map `[start, start+len)` as a region ([`Regions::map`]; `norsv`:
/// MAP_NORESERVE), then `thp` (MADV_HUGEPAGE or MADV_NOHUGEPAGE) if any.
pub fn map(start: u64, len: u64, norsv: bool, thp: Option<i32>) -> io::Result<()> {
    if thp.is_some_and(|a| a != libc::MADV_HUGEPAGE && a != libc::MADV_NOHUGEPAGE) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    REGIONS.map(start, len, norsv)?;
    MAKER.store(std::process::id(), std::sync::atomic::Ordering::Relaxed);
    if let Some(a) = thp {
        let _held = REGIONS.holding(start, len)?;
        // SAFETY: the fresh region, which no Rust reference points into;
        // this advice only changes how its pages are allocated.
        if unsafe { libc::madvise(start as *mut libc::c_void, len as usize, a) } != 0 {
            return Err(last_err());
        }
    }
    Ok(())
}

/// Read `len` bytes of `file` at `off` into the region memory at `addr`
/// (inside one region; whole pages), allocated first in one call
/// (MADV_POPULATE_WRITE, advice only).
pub fn fill(addr: u64, len: u64, file: &File, off: u64) -> io::Result<()> {
    if !addr.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let _held = REGIONS.holding(addr, len)?;
    // SAFETY: `holding` checked the range is inside one of our regions and
    // keeps it mapped until `_held` drops, after the call.
    unsafe { fill_locked(addr, len, file, off) }
}

/// [`fill`] of every job `(addr, len, file, off)` (each inside one
/// region; whole pages), by `threads` threads at once (a copy is
/// CPU-bound: each CPU copies its share). The jobs are cut into pieces of
/// at most 8 MiB at 2 MiB boundaries of the address (a huge page is
/// filled whole by one thread), taken in order by whichever thread is
/// free. The first error is returned, once every thread has stopped.
pub fn fill_all(jobs: &[(u64, u64, &File, u64)], threads: usize) -> io::Result<()> {
    const STEP: u64 = 8 << 20;
    const HUGE: u64 = 2 << 20;
    if jobs.iter().any(|&(a, l, _, _)| !a.is_multiple_of(PAGE) || !l.is_multiple_of(PAGE) || a.checked_add(l).is_none()) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut pieces: Vec<(u64, u64, &File, u64)> = Vec::new();
    for &(addr, len, file, off) in jobs {
        let mut done = 0u64;
        while done < len {
            let a = addr + done;
            // up to the next STEP boundary past the next huge page boundary
            let next = (a / HUGE + 1) * HUGE;
            let cut = (next + STEP - HUGE).min(addr + len) - a;
            pieces.push((a, cut, file, off + done));
            done += cut;
        }
    }
    if pieces.is_empty() {
        return Ok(());
    }
    let threads = threads.clamp(1, pieces.len());
    if threads == 1 {
        return pieces.iter().try_for_each(|&(a, l, f, o)| fill(a, l, f, o));
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let work = || -> io::Result<()> {
        loop {
            let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(&(a, l, f, o)) = pieces.get(k) else { return Ok(()) };
            if failed.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(());
            }
            // SAFETY: each piece was checked inside a region of `_held`,
            // which this function keeps until every thread has ended.
            if let Err(e) = unsafe { fill_locked(a, l, f, o) } {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                return Err(e);
            }
        }
    };
    // (the table is held by this thread for the whole fill: no region is
    // unmapped under the copying threads)
    let _held = REGIONS.holding(pieces[0].0, pieces[0].1)?;
    for &(a, l, _, _) in &pieces {
        if !_held.iter().any(|&(s, e)| s <= a && a + l <= e) {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
    }
    let before = threads_now();
    let r = std::thread::scope(|sc| {
        let others: Vec<_> = (1..threads).map(|_| sc.spawn(work)).collect();
        let mut r = work();
        for h in others {
            let o = h.join().unwrap_or_else(|_| Err(io::Error::other("a parking fill thread panicked")));
            r = r.and(o);
        }
        r
    });
    // A joined thread may still be counted for a moment (it wakes its
    // joiner before it leaves the thread group): the engine forks its
    // restoring helpers next, which needs it single-threaded again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while threads_now() > before && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    r
}

/// `Threads:` of /proc/self/status (0 if unreadable).
fn threads_now() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// The copy of [`fill`] and [`fill_all`]: allocate the range's pages
/// (MADV_POPULATE_WRITE, advice only), then pread `len` bytes of `file` at
/// `off` into it.
///
/// # Safety
/// `[addr, addr + len)` lies inside one of our regions, kept mapped (the
/// region table held by the caller) until this returns, and no Rust
/// reference points into it; several threads may fill disjoint ranges.
unsafe fn fill_locked(addr: u64, len: u64, file: &File, off: u64) -> io::Result<()> {
    const MADV_POPULATE_WRITE: i32 = 23;
    // SAFETY: the range is one of our mapped regions' (the caller's
    // contract); this advice only allocates its pages.
    let _ = unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, MADV_POPULATE_WRITE) };
    let mut done = 0u64;
    while done < len {
        let chunk = (len - done).min(1 << 30);
        let Ok(at) = libc::off_t::try_from(off + done) else { return Err(io::Error::from_raw_os_error(libc::EOVERFLOW)) };
        // SAFETY: the destination lies inside one of our writable regions
        // (the caller's contract); only the kernel writes it, each byte by
        // one thread.
        let n = unsafe { libc::pread(file.as_raw_fd(), (addr + done) as *mut libc::c_void, chunk as usize, at) };
        if n < 0 {
            let e = last_err();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("pages file ends at offset {}", off + done)));
        }
        done += n as u64;
    }
    Ok(())
}

/// The regions of this process (made here or inherited through fork).
pub fn regions() -> Vec<(u64, u64)> {
    REGIONS.list()
}

/// Unmap region `[start, end)` (exactly one of the table's; EINVAL
/// otherwise).
pub fn unmap(start: u64, end: u64) -> io::Result<()> {
    REGIONS.unmap(start, end)
}

/// Unmap every region in a process that inherited them (a fork of the
/// one that made them); nothing in the maker itself.
pub fn drop_inherited() {
    if MAKER.load(std::sync::atomic::Ordering::Relaxed) != std::process::id() {
        unmap_all();
    }
}

/// Unmap every region.
pub fn unmap_all() {
    REGIONS.unmap_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn fill_all_copies_every_piece_on_several_threads() {
        const PG: usize = 4096;
        // 21 MiB and 3 pages, each page holding its number at both ends
        let pages = (21 << 20) / PG + 3;
        let data: Vec<u8> = (0..pages as u64)
            .flat_map(|p| {
                let mut pg = vec![0u8; PG];
                pg[..8].copy_from_slice(&(p ^ 0xabcd).to_le_bytes());
                pg[PG - 8..].copy_from_slice(&p.to_le_bytes());
                pg
            })
            .collect();
        let path = std::env::temp_dir().join(format!("criu-rs-park-fill-{}", std::process::id()));
        std::fs::write(&path, &data).unwrap();
        let f = File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        // not 2 MiB aligned: pieces cut at huge-page boundaries; two jobs,
        // the second from the middle of the file
        let len = data.len() as u64;
        let at = 0x5a5a_0000_0000u64 + 5 * PAGE;
        map(at, len, false, None).unwrap();
        let half = (10 << 20) + PAGE;
        fill_all(&[(at, half, &f, 0), (at + half, len - half, &f, half)], 2).unwrap();
        let me = File::open("/proc/self/mem").unwrap();
        let mut back = vec![0u8; data.len()];
        me.read_exact_at(&mut back, at).unwrap();
        let bad = back.chunks(PG).zip(data.chunks(PG)).position(|(a, b)| a != b);
        // out of a region: refused, nothing read
        let outside = fill_all(&[(at + len, PAGE, &f, 0)], 2);
        unmap(at, at + len).unwrap();
        assert_eq!(bad, None, "first page filled wrong");
        assert_eq!(outside.unwrap_err().raw_os_error(), Some(libc::EFAULT));
        assert_eq!(fill_all(&[(at + 1, PAGE, &f, 0)], 2).unwrap_err().raw_os_error(), Some(libc::EINVAL));
    }
}
