//! Private regions (anonymous, or private mappings of a file) a restore
//! child maps at the dumped addresses
//! in its own address space before it forks its children, so that they
//! inherit them copy-on-write (`restore/cow.rs`).
//!
//! The regions are kept in a [`Regions`] table of this process (see
//! `sys/regions.rs` for why that is sound; nothing else in a restore child
//! maps at fixed addresses: the engine's own mappings are placed by the
//! kernel, which never places one over an existing mapping).

use super::last_err;
use super::regions::{Regions, PAGE};
use std::io;

static REGIONS: Regions = Regions::new();

/// Map `[start, start+len)` as a region ([`Regions::map_with`]): `flags`
/// is `MAP_PRIVATE | MAP_ANONYMOUS`, with `MAP_NORESERVE` or not; any
/// other flag is refused with EINVAL.
pub fn map(start: u64, len: u64, flags: u32) -> io::Result<()> {
    let base = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
    let allowed = base | libc::MAP_NORESERVE as u32;
    if flags & !allowed != 0 || flags & base != base {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    REGIONS.map_with(start, len, (flags & !(libc::MAP_PRIVATE as u32)) as i32, None)
}

/// Map `[start, start+len)` as a region that is a private mapping of
/// `file` from byte `off` (`MAP_PRIVATE`, read-write: writes stay in this
/// process and its forks, copy-on-write).
pub fn map_file(start: u64, len: u64, file: std::os::fd::BorrowedFd<'_>, off: u64) -> io::Result<()> {
    REGIONS.map_with(start, len, 0, Some((file, off)))
}

/// The regions of this process (made here or inherited through fork).
pub fn regions() -> Vec<(u64, u64)> {
    REGIONS.list()
}

/// Unmap region `[start, end)` (exactly one of the table's).
pub fn unmap(start: u64, end: u64) -> io::Result<()> {
    REGIONS.unmap(start, end)
}

/// madvise(2) on a range inside one region: MADV_DONTNEED (the range
/// reads as zeros again, or as its file), MADV_HUGEPAGE, MADV_NOHUGEPAGE or
/// MADV_POPULATE_WRITE; any other advice is refused with EINVAL.
pub fn advise(addr: u64, len: u64, advice: i32) -> io::Result<()> {
    const MADV_POPULATE_WRITE: i32 = 23;
    if ![libc::MADV_DONTNEED, libc::MADV_HUGEPAGE, libc::MADV_NOHUGEPAGE, MADV_POPULATE_WRITE].contains(&advice) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let _held = REGIONS.holding(addr, len)?;
    // SAFETY: the range is inside one of our regions, which no Rust
    // reference points into; these advices only drop or allocate pages.
    if unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, advice) } != 0 {
        return Err(last_err());
    }
    Ok(())
}

/// Copy `src` to `addr`, inside one region.
pub fn write(addr: u64, src: &[u8]) -> io::Result<()> {
    let _held = REGIONS.holding(addr, src.len() as u64)?;
    // SAFETY: the destination lies inside one of our writable regions,
    // which no Rust reference points into (so it cannot overlap `src`),
    // and the table's lock keeps it mapped for the copy.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), addr as *mut u8, src.len()) };
    Ok(())
}

/// Make the region's memory at `addr` equal `src`, page by page, writing
/// only the pages that differ: a page read and found equal stays shared
/// with the process it was inherited from. `addr` and `src.len()` are
/// whole pages. Returns the number of pages written.
pub fn sync(addr: u64, src: &[u8]) -> io::Result<u64> {
    let len = src.len() as u64;
    if !addr.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let _held = REGIONS.holding(addr, len)?;
    let mut written = 0;
    for (k, want) in src.chunks_exact(PAGE as usize).enumerate() {
        let at = addr + k as u64 * PAGE;
        // SAFETY: the page lies inside one of our regions (checked above,
        // kept mapped by the lock) and nothing else refers to it; reading
        // it does not unshare it. The shared view ends before the write.
        let same = unsafe { std::slice::from_raw_parts(at as *const u8, PAGE as usize) } == want;
        if !same {
            // SAFETY: as above; `want` is outside our regions.
            unsafe { std::ptr::copy_nonoverlapping(want.as_ptr(), at as *mut u8, PAGE as usize) };
            written += 1;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A free range found by mapping and unmapping one (this test's
    /// process only; other tests may map concurrently, so it retries).
    fn free_range(len: u64) -> u64 {
        let b = crate::sys::mmap::AnonBuf::new(len as usize).unwrap();
        let a = b.as_slice().as_ptr() as u64;
        drop(b);
        a
    }

    #[test]
    fn map_write_sync_and_unmap() {
        let len = 4 * PAGE;
        let mut start = 0;
        for _ in 0..10 {
            start = free_range(len);
            if map(start, len, (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32).is_ok() {
                break;
            }
            start = 0;
        }
        assert_ne!(start, 0);
        // a second map of the same range is refused
        assert_eq!(map(start, len, (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32).unwrap_err().raw_os_error(), Some(libc::EEXIST));
        let page = vec![7u8; PAGE as usize];
        write(start + PAGE, &page).unwrap();
        let mut want = vec![0u8; len as usize];
        want[PAGE as usize..2 * PAGE as usize].fill(7);
        want[3 * PAGE as usize] = 1;
        // only the last page differs
        assert_eq!(sync(start, &want).unwrap(), 1);
        assert_eq!(sync(start, &want).unwrap(), 0);
        advise(start + PAGE, PAGE, libc::MADV_DONTNEED).unwrap();
        want[PAGE as usize..2 * PAGE as usize].fill(0);
        assert_eq!(sync(start, &want).unwrap(), 0);
        // outside the region, or a foreign flag: refused
        assert!(write(start + len - 1, &[0, 0]).is_err());
        assert!(sync(start + len, &page).is_err());
        assert!(map(start, len, libc::MAP_SHARED as u32).is_err());
        assert!(advise(start, PAGE, libc::MADV_FREE).is_err());
        unmap(start, start + len).unwrap();
        assert!(!regions().contains(&(start, start + len)));
    }
}
