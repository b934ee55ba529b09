//! "Parked" memory of tfork's restored clones (docs/ARCHITECTURE.md,
//! "tfork", "Memory of a clone tree"): private anonymous regions the
//! engine maps at addresses no process of the frozen tree uses, fills
//! once with the frozen pages, and that every restoring helper, clone
//! root and child then inherits copy-on-write through fork; the restore
//! moves each process's own regions into place (`mremap`, injected) and
//! unmaps the others.
//!
//! The regions are kept in a table of this process (a fork inherits the
//! table with the mappings). Their memory is reached only through the
//! functions here, which check that the range lies inside one region of
//! the table: no Rust reference to it exists, the kernel alone writes it
//! (pread). A region is made with `MAP_FIXED_NOREPLACE` (it overlaps no
//! mapping, hence no Rust object, that existed before) and leaves the
//! table only through [`unmap`] or [`unmap_all`]. The table's lock is held for each
//! access.

use super::last_err;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

/// (start, end) of every region, sorted by start.
static REGIONS: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

const PAGE: u64 = 4096;

/// The process that made the regions (0: none made yet).
static MAKER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn table() -> std::sync::MutexGuard<'static, Vec<(u64, u64)>> {
    REGIONS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `[addr, addr+len)` lies inside one region of `t`.
fn inside(t: &[(u64, u64)], addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else { return false };
    t.iter().any(|&(s, e)| s <= addr && end <= e)
}

/// Map `[start, start+len)` read-write, `MAP_PRIVATE | MAP_ANONYMOUS`
/// (plus `MAP_NORESERVE` when `norsv`), only where nothing is mapped
/// (EEXIST otherwise; a kernel that takes `MAP_FIXED_NOREPLACE` as a hint
/// gets EEXIST too), then `thp` (MADV_HUGEPAGE or MADV_NOHUGEPAGE) if any.
pub fn map(start: u64, len: u64, norsv: bool, thp: Option<i32>) -> io::Result<()> {
    if !start.is_multiple_of(PAGE) || len == 0 || !len.is_multiple_of(PAGE) || start.checked_add(len).is_none() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    if thp.is_some_and(|a| a != libc::MADV_HUGEPAGE && a != libc::MADV_NOHUGEPAGE) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut t = table();
    let fl = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE | if norsv { libc::MAP_NORESERVE } else { 0 };
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so
    // the new one aliases no memory of this process; a result at another
    // address (an old kernel's hint) is unmapped again below.
    let p = unsafe { libc::mmap(start as *mut libc::c_void, len as usize, libc::PROT_READ | libc::PROT_WRITE, fl, -1, 0) };
    if p == libc::MAP_FAILED {
        return Err(last_err());
    }
    if p as u64 != start {
        // SAFETY: unmapping exactly the fresh mapping just made, which
        // nothing references.
        unsafe { libc::munmap(p, len as usize) };
        return Err(io::Error::from_raw_os_error(libc::EEXIST));
    }
    let i = t.partition_point(|r| r.0 < start);
    t.insert(i, (start, start + len));
    MAKER.store(std::process::id(), std::sync::atomic::Ordering::Relaxed);
    if let Some(a) = thp {
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
    const MADV_POPULATE_WRITE: i32 = 23;
    if !addr.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let t = table();
    if !inside(&t, addr, len) {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    // SAFETY: the range is inside one of our regions (checked, kept mapped
    // by the lock), which no Rust reference points into; this advice only
    // allocates its pages.
    let _ = unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, MADV_POPULATE_WRITE) };
    let mut done = 0u64;
    while done < len {
        let chunk = (len - done).min(1 << 30);
        let Ok(at) = libc::off_t::try_from(off + done) else { return Err(io::Error::from_raw_os_error(libc::EOVERFLOW)) };
        // SAFETY: the destination lies inside one of our writable
        // regions (see above); only the kernel writes it, and the lock
        // keeps it mapped for the call.
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
    table().clone()
}

/// Unmap region `[start, end)` (exactly one of the table's; EINVAL
/// otherwise).
pub fn unmap(start: u64, end: u64) -> io::Result<()> {
    let mut t = table();
    let i = t.iter().position(|&r| r == (start, end)).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the region is ours (see the module's doc) and no reference
    // to its memory outlives a call of this module.
    if unsafe { libc::munmap(start as *mut libc::c_void, (end - start) as usize) } != 0 {
        return Err(last_err());
    }
    t.remove(i);
    Ok(())
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
    let mut t = table();
    for &(s, e) in t.iter() {
        // SAFETY: the region is ours (see the module's doc) and no
        // reference to its memory outlives a call of this module.
        unsafe { libc::munmap(s as *mut libc::c_void, (e - s) as usize) };
    }
    t.clear();
}
