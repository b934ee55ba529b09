//! Read-only file mappings (image files as memory sources), page-aligned
//! anonymous buffers (O_DIRECT writes), and the
//! zero-page PFN probe.

use super::last_err;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// A whole file mapped read-only and shared.
#[derive(Debug)]
pub struct MappedFile {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and never remapped while the value lives;
// sharing `&[u8]` views of it between threads is sound.
unsafe impl Send for MappedFile {}
// SAFETY: as above.
unsafe impl Sync for MappedFile {}

impl MappedFile {
    /// mmap(2) the whole of `f` PROT_READ, MAP_SHARED.
    pub fn map(f: &File) -> io::Result<Self> {
        let len = usize::try_from(f.metadata()?.len()).map_err(io::Error::other)?;
        if len == 0 {
            return Ok(MappedFile { ptr: std::ptr::null_mut(), len: 0 });
        }
        // SAFETY: a fresh mapping chosen by the kernel; aliases nothing in our memory.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(last_err());
        }
        Ok(MappedFile { ptr: p, len })
    }

    /// The file's bytes as mapped.
    ///
    /// Not enforced here (issue 8, item 8, left open): the file must not be
    /// written or truncated by anyone while the slice lives. A truncation
    /// makes a read past the new end raise SIGBUS (the engine dies; no
    /// memory of ours is corrupted); a concurrent write changes bytes under
    /// a shared reference. The engine maps only image files of the directory
    /// it was given, and treats that directory as its own for the duration
    /// of the command, as upstream CRIU does. Making it enforced needs the
    /// consumers (`MemSource::slice`, `uffd::copy`, the restore fill) to take
    /// a kernel-only view (address and length, copies through the kernel so a
    /// truncation is EFAULT) instead of `&[u8]`.
    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: ptr..ptr+len is our live read-only mapping. The engine does
        // not write or truncate the image file while it is mapped, and holds
        // the image directory as its own (see above for what happens if
        // someone else does).
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: unmapping exactly what `map` mapped; no borrows outlive self.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

/// PFN of the kernel's shared zero page, found by reading a fresh anonymous
/// page of our own and looking it up in /proc/self/pagemap.
pub fn zero_page_pfn() -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    // SAFETY: fresh private anonymous page, unmapped below before returning.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
    if p == libc::MAP_FAILED {
        return Err(last_err());
    }
    // SAFETY: p is a readable mapped page; a volatile read faults in the zero page.
    let _ = unsafe { std::ptr::read_volatile(p as *const u8) };
    let f = File::open("/proc/self/pagemap");
    let res = f.and_then(|f| {
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, (p as u64 / 4096) * 8)?;
        Ok(u64::from_le_bytes(b) & ((1u64 << 55) - 1))
    });
    // SAFETY: unmapping the page mapped above.
    unsafe { libc::munmap(p, 4096) };
    res
}

/// posix_fadvise(2) POSIX_FADV_SEQUENTIAL over the whole of `f`: a file read
/// once front to back gets a larger readahead window.
pub fn advise_sequential(f: &File) -> io::Result<()> {
    // SAFETY: advice on an fd we own; no memory is passed.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// posix_fadvise(2) POSIX_FADV_WILLNEED over `len` bytes from 0: start
/// reading them into the page cache now, in the background.
pub fn advise_willneed(f: &File, len: u64) -> io::Result<()> {
    let len = i64::try_from(len).unwrap_or(i64::MAX);
    // SAFETY: advice on an fd we own; no memory is passed.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, len, libc::POSIX_FADV_WILLNEED) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// A page-aligned private anonymous buffer (O_DIRECT needs the alignment;
/// a `Vec` of this size is 16 bytes past a page boundary).
#[derive(Debug)]
pub struct AnonBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is owned memory like a Vec's; moving it between threads
// moves that ownership.
unsafe impl Send for AnonBuf {}

impl AnonBuf {
    pub fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping chosen by the kernel; aliases nothing.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len.max(1), libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        if p == libc::MAP_FAILED {
            return Err(last_err());
        }
        Ok(AnonBuf { ptr: p.cast(), len })
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, writable, and `&mut self` makes the view unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AnonBuf {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this value owns.
        unsafe { libc::munmap(self.ptr.cast(), self.len.max(1)) };
    }
}
