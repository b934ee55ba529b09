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
    const MADV_POPULATE_WRITE: i32 = 23;
    if !addr.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let _held = REGIONS.holding(addr, len)?;
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
