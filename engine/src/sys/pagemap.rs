//! PAGEMAP_SCAN (ioctl on /proc/PID/pagemap, Linux 6.7+): the kernel walks
//! the page tables and returns runs of pages with wanted properties, instead
//! of one 8-byte pagemap entry per page read from userspace.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

// include/uapi/linux/fs.h
pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
pub const PAGE_IS_HUGE: u64 = 1 << 6;
pub const PAGE_IS_SOFT_DIRTY: u64 = 1 << 7;
/// A guard page (MADV_GUARD_INSTALL, Linux 6.13+); kernels without the
/// category refuse it with EINVAL.
pub const PAGE_IS_GUARD: u64 = 1 << 8;
/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 = 0xc060_6610;

/// `struct page_region`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// `struct pm_scan_arg` (the 96-byte version).
#[repr(C)]
#[derive(Debug, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// What a scan selects: a page is reported when `(cats ^ inverted) & mask == mask`
/// and, if `anyof` is non-zero, `(cats ^ inverted) & anyof != 0`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanSpec {
    pub inverted: u64,
    pub mask: u64,
    pub anyof: u64,
    pub ret: u64,
}

/// One PAGEMAP_SCAN ioctl over `[start, end)`, results into `out`. Returns
/// (regions filled, address where the walk stopped: `end` when complete).
pub fn scan(pagemap: &File, start: u64, end: u64, spec: ScanSpec, out: &mut [PageRegion]) -> io::Result<(usize, u64)> {
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        start,
        end,
        vec: out.as_mut_ptr() as u64,
        vec_len: out.len() as u64,
        category_inverted: spec.inverted,
        category_mask: spec.mask,
        category_anyof_mask: spec.anyof,
        return_mask: spec.ret,
        ..Default::default()
    };
    // SAFETY: `arg` is a properly sized pm_scan_arg living across the call;
    // `vec`/`vec_len` describe `out`, which the kernel fills with at most
    // `vec_len` page_region structs (same layout, repr(C)).
    let rc = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg as *mut PmScanArg) };
    if rc < 0 {
        return Err(super::last_err());
    }
    Ok((usize::try_from(rc).unwrap_or(0), arg.walk_end))
}

/// Whether PAGEMAP_SCAN exists on `pagemap` (/proc/PID/pagemap): the ioctl
/// with a NULL argument fails with EFAULT when it does, ENOTTY or EINVAL
/// when not.
pub fn probe_scan(pagemap: &File) -> io::Result<()> {
    // SAFETY: a NULL argument: the kernel reads nothing through it and
    // answers EFAULT (or ENOTTY when it lacks the ioctl).
    let rc = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, std::ptr::null_mut::<PmScanArg>()) };
    if rc < 0 {
        let e = super::last_err();
        return if e.raw_os_error() == Some(libc::EFAULT) { Ok(()) } else { Err(e) };
    }
    Ok(())
}

/// lseek(2) with SEEK_DATA (`data` true) or SEEK_HOLE from `off`; `None`
/// when there is no more data (ENXIO).
pub fn seek(f: &File, off: u64, data: bool) -> io::Result<Option<u64>> {
    let whence = if data { libc::SEEK_DATA } else { libc::SEEK_HOLE };
    let off = i64::try_from(off).map_err(io::Error::other)?;
    // SAFETY: lseek on an fd we own; no memory is passed.
    let rc = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if rc < 0 {
        let e = super::last_err();
        return if e.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(e) };
    }
    Ok(Some(rc as u64))
}

/// Whether this kernel's PAGEMAP_SCAN knows [`PAGE_IS_GUARD`] (asked once,
/// with a scan of one page of our own stack).
pub fn knows_guard() -> bool {
    static KNOWS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *KNOWS.get_or_init(|| {
        let Ok(f) = File::open("/proc/self/pagemap") else { return false };
        let here = &f as *const File as u64 & !4095;
        let mut out = [PageRegion::default(); 1];
        let spec = ScanSpec { mask: PAGE_IS_GUARD, ret: PAGE_IS_GUARD, ..Default::default() };
        scan(&f, here, here + 4096, spec, &mut out).is_ok()
    })
}
