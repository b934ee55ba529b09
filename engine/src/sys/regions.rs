//! A table of private regions (anonymous, or private mappings of a file)
//! this process mapped at fixed
//! addresses, reached only through the module that owns the table
//! (`premap`: a restore child's inherited memory; `park`: tfork's parked
//! memory). Each owner keeps one `static` [`Regions`].
//!
//! Soundness rests on three facts: a region is made with
//! `MAP_FIXED_NOREPLACE`, so it overlaps no mapping (and no Rust object)
//! that existed before; it leaves the table only through
//! [`Regions::unmap`] or [`Regions::unmap_all`] (or [`Regions::retain`],
//! in a fork that did not get it); and its memory is touched
//! only while the table's lock is held, after [`Regions::holding`] checked
//! that the range lies inside one region (no Rust reference to it exists
//! outside such a call). A fork inherits the table with the mappings.

use super::last_err;
use std::io;
use std::sync::{Mutex, MutexGuard};

pub const PAGE: u64 = 4096;

/// (start, end) of every region, sorted by start.
pub struct Regions(Mutex<Vec<(u64, u64)>>);

impl Default for Regions {
    fn default() -> Self {
        Self::new()
    }
}

impl Regions {
    pub const fn new() -> Self {
        Regions(Mutex::new(Vec::new()))
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(u64, u64)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The table, locked, when `[addr, addr+len)` lies inside one region
    /// (EFAULT otherwise): the range stays mapped while the guard lives.
    pub fn holding(&self, addr: u64, len: u64) -> io::Result<MutexGuard<'_, Vec<(u64, u64)>>> {
        let t = self.lock();
        let Some(end) = addr.checked_add(len) else { return Err(io::Error::from_raw_os_error(libc::EFAULT)) };
        if !t.iter().any(|&(s, e)| s <= addr && end <= e) {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        Ok(t)
    }

    /// Map `[start, start+len)` read-write, `MAP_PRIVATE | MAP_ANONYMOUS`
    /// (plus `MAP_NORESERVE` when `noreserve`), only where nothing is
    /// mapped: EEXIST when something is (a kernel without
    /// `MAP_FIXED_NOREPLACE`, which takes it as a hint and maps
    /// elsewhere, gets EEXIST too). EINVAL for a range not of whole pages.
    pub fn map(&self, start: u64, len: u64, noreserve: bool) -> io::Result<()> {
        let fl = libc::MAP_ANONYMOUS | if noreserve { libc::MAP_NORESERVE } else { 0 };
        self.map_with(start, len, fl, None)
    }

    /// Like [`map`](Self::map), with `flags` added to `MAP_PRIVATE`
    /// (`MAP_ANONYMOUS`, `MAP_NORESERVE`; any other flag is EINVAL) and, without `MAP_ANONYMOUS`, a private mapping of
    /// `file` (fd, byte offset): its pages read from the file until
    /// written, never written back to it.
    pub fn map_with(&self, start: u64, len: u64, flags: i32, file: Option<(std::os::fd::BorrowedFd<'_>, u64)>) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let allowed = libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        let anon = flags & libc::MAP_ANONYMOUS != 0;
        if !start.is_multiple_of(PAGE) || len == 0 || !len.is_multiple_of(PAGE) || start.checked_add(len).is_none() || flags & !allowed != 0 || anon == file.is_some() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let (fd, off) = match file {
            Some((f, off)) => (f.as_raw_fd(), i64::try_from(off).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?),
            None => (-1, 0),
        };
        let mut t = self.lock();
        let fl = libc::MAP_PRIVATE | libc::MAP_FIXED_NOREPLACE | flags;
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so
        // the new one aliases no memory of this process (a private file
        // mapping's writes stay in this process's copy); a result at another
        // address (an old kernel's hint) is unmapped again below.
        let p = unsafe { libc::mmap(start as *mut libc::c_void, len as usize, libc::PROT_READ | libc::PROT_WRITE, fl, fd, off) };
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
        Ok(())
    }

    /// Drop from the table (without unmapping) every region `keep` refuses:
    /// for a process that does not have them (a fork that left them out,
    /// MADV_DONTFORK), before anything can be mapped where they were.
    pub fn retain(&self, keep: impl Fn((u64, u64)) -> bool) {
        self.lock().retain(|&r| keep(r));
    }

    /// The regions of this process (made here or inherited through fork).
    pub fn list(&self) -> Vec<(u64, u64)> {
        self.lock().clone()
    }

    /// Unmap region `[start, end)` (exactly one of the table's; EINVAL
    /// otherwise).
    pub fn unmap(&self, start: u64, end: u64) -> io::Result<()> {
        let mut t = self.lock();
        let i = t.iter().position(|&r| r == (start, end)).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the region is in the table (see the module's doc) and no
        // reference to its memory outlives a call of its owner.
        if unsafe { libc::munmap(start as *mut libc::c_void, (end - start) as usize) } != 0 {
            return Err(last_err());
        }
        t.remove(i);
        Ok(())
    }

    /// Unmap every region.
    pub fn unmap_all(&self) {
        let mut t = self.lock();
        for &(s, e) in t.iter() {
            // SAFETY: as in `unmap`.
            unsafe { libc::munmap(s as *mut libc::c_void, (e - s) as usize) };
        }
        t.clear();
    }
}
