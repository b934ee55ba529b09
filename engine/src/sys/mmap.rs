//! Read-only file mappings (image files as memory sources), page-aligned
//! anonymous buffers (O_DIRECT writes), and the
//! zero-page PFN probe.

use super::last_err;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

/// A whole file mapped read-only and shared.
///
/// A read of the mapping past the file's end (someone truncated the file
/// while it was mapped) raises SIGBUS; the engine then stops with
/// `Error: image file PATH was truncated while mapped` on stderr and exit
/// status 1, instead of dying of the signal (see [`BusGuard`]).
#[derive(Debug)]
pub struct MappedFile {
    ptr: *mut libc::c_void,
    len: usize,
    /// Slot in the SIGBUS guard's table, if one was free.
    slot: Option<usize>,
    /// The file's path (what the SIGBUS message names); the guard's table
    /// points into it, so it lives as long as the registration.
    _name: Box<[u8]>,
}

/// Where a SIGBUS is looked up: the live mappings of image files. The
/// handler only reads atomics (no lock, no allocation: async-signal-safe);
/// registration and removal, outside signal context, hold `LOCK`.
struct BusGuard;

const GUARD_SLOTS: usize = 64;

struct Slot {
    start: AtomicUsize,
    /// 0: free.
    len: AtomicUsize,
    name: AtomicPtr<u8>,
    name_len: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)] // a template for the array below, never used as a value
const FREE_SLOT: Slot =
    Slot { start: AtomicUsize::new(0), len: AtomicUsize::new(0), name: AtomicPtr::new(std::ptr::null_mut()), name_len: AtomicUsize::new(0) };
static SLOTS: [Slot; GUARD_SLOTS] = [FREE_SLOT; GUARD_SLOTS];
static LOCK: Mutex<()> = Mutex::new(());
static INSTALL: Once = Once::new();

impl BusGuard {
    /// Install the handler (once per process) and enter `[ptr, ptr+len)`
    /// named `name`; the slot, or `None` when the table is full (a SIGBUS
    /// there is then the plain signal).
    fn register(ptr: usize, len: usize, name: &[u8]) -> Option<usize> {
        INSTALL.call_once(|| {
            // SAFETY: a zeroed sigaction is valid; the handler is an
            // `extern "C"` fn with the SA_SIGINFO signature, which only
            // reads atomics and calls async-signal-safe functions.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_sigbus as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
            }
        });
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let i = SLOTS.iter().position(|s| s.len.load(Ordering::Relaxed) == 0)?;
        let s = &SLOTS[i];
        s.start.store(ptr, Ordering::Relaxed);
        s.name.store(name.as_ptr().cast_mut(), Ordering::Relaxed);
        s.name_len.store(name.len(), Ordering::Relaxed);
        // published last: the handler reads len first (Acquire)
        s.len.store(len, Ordering::Release);
        Some(i)
    }

    fn unregister(slot: usize) {
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        SLOTS[slot].len.store(0, Ordering::Release);
    }
}

/// SIGBUS: a fault inside a registered image mapping is a truncated image
/// file: say so and exit 1. Any other is the plain signal: the default
/// action is put back and the faulting access runs again.
extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler;
    // for SIGBUS si_addr is the faulting address.
    let addr = unsafe { (*info).si_addr() } as usize;
    for s in &SLOTS {
        let len = s.len.load(Ordering::Acquire);
        let start = s.start.load(Ordering::Relaxed);
        if len != 0 && addr >= start && addr - start < len {
            let name = s.name.load(Ordering::Relaxed);
            let n = s.name_len.load(Ordering::Relaxed);
            let out = |b: &[u8]| {
                // SAFETY: write(2) of a live buffer: async-signal-safe.
                unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
            };
            out(b"Error: image file ");
            // SAFETY: `name`/`n` describe the path bytes the MappedFile
            // keeps alive while its slot is registered.
            out(unsafe { std::slice::from_raw_parts(name, n) });
            out(b" was truncated while mapped (a read past its new end)\n");
            // SAFETY: _exit is async-signal-safe and ends the process.
            unsafe { libc::_exit(1) };
        }
    }
    // SAFETY: a zeroed sigaction with SIG_DFL is valid; the access that
    // faulted runs again on return and gets the default action.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    }
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
        let name: Box<[u8]> = {
            use std::os::unix::ffi::OsStrExt;
            let p = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap_or_default();
            p.as_os_str().as_bytes().into()
        };
        if len == 0 {
            return Ok(MappedFile { ptr: std::ptr::null_mut(), len: 0, slot: None, _name: name });
        }
        // SAFETY: a fresh mapping chosen by the kernel; aliases nothing in our memory.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(last_err());
        }
        let slot = BusGuard::register(p as usize, len, &name);
        Ok(MappedFile { ptr: p, len, slot, _name: name })
    }

    /// The file's bytes as mapped.
    ///
    /// A truncation of the file underneath is caught: a read past its new
    /// end raises SIGBUS, and the engine exits 1 naming the file (the
    /// kernel's own reads of the mapping, UFFDIO_COPY and pwrite, get EFAULT
    /// instead). Not enforced (issue 8, item 8, left open): a concurrent
    /// *write* to the file changes bytes under this shared reference. The
    /// engine maps only image files of the directory it was given and
    /// treats that directory as its own for the duration of the command, as
    /// upstream CRIU does; enforcing it needs the consumers
    /// (`MemSource::slice`, `uffd::copy`, the restore fill) to take a
    /// kernel-only view (address and length) instead of `&[u8]`.
    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: ptr..ptr+len is our live read-only mapping. A read past a
        // truncation ends the process (SIGBUS guard); the engine does not
        // write the image file while it is mapped, and holds the image
        // directory as its own (see above).
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl MappedFile {
    /// Leave the mapping out of the processes this one forks from now on
    /// (`out`: MADV_DONTFORK), or give it to them again (MADV_DOFORK). A
    /// restore's tree never reads the engine's image mappings, and each
    /// one its processes inherited would cost every fork a VMA to copy and
    /// every injection one to unmap. Advice only: an error changes nothing
    /// but speed.
    pub fn out_of_forks(&self, out: bool) {
        if self.len == 0 {
            return;
        }
        let advice = if out { libc::MADV_DONTFORK } else { libc::MADV_DOFORK };
        // SAFETY: advice on exactly our live mapping; it changes only
        // whether a child of fork() gets a copy of it.
        unsafe { libc::madvise(self.ptr, self.len, advice) };
    }

    /// Read no more of the file than is touched (MADV_RANDOM): a fault on
    /// a mapping otherwise reads a whole read-ahead window (8 MiB here)
    /// around the page. For sparse reads of a large file, each range asked
    /// for first ([`advise_willneed_at`]). Advice only.
    pub fn no_read_around(&self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: advice on exactly our live mapping; it changes only how
        // much the kernel reads ahead on a fault.
        unsafe { libc::madvise(self.ptr, self.len, libc::MADV_RANDOM) };
    }

    /// Drop this mapping's page-table entries (MADV_DONTNEED): the file's
    /// pages stay in the page cache and the bytes stay readable (a later
    /// read faults them in again), but unmapping it, or the engine's exit,
    /// no longer has every one of them to tear down. Advice only.
    pub fn drop_page_tables(&self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: advice on exactly our live mapping. It is a shared
        // read-only mapping of a file: after MADV_DONTNEED a read gets the
        // file's bytes again from the page cache, so the `&[u8]` views of
        // `bytes` still read what they read before.
        unsafe { libc::madvise(self.ptr, self.len, libc::MADV_DONTNEED) };
    }

    /// Map the page-cache pages of `[off, off+len)` of the file into this
    /// mapping at once (madvise MADV_POPULATE_READ; 5.14+): one call
    /// instead of a fault per few pages when the range is read next. The
    /// range is clipped to the mapping and widened to whole pages. Advice
    /// only: an error (an old kernel, a truncated file) changes nothing
    /// but speed.
    pub fn populate(&self, off: usize, len: usize) {
        const MADV_POPULATE_READ: i32 = 22;
        let start = off & !4095;
        let end = off.saturating_add(len).min(self.len);
        if self.len == 0 || start >= end {
            return;
        }
        // SAFETY: advice on a page-aligned range inside our live mapping;
        // it only fills page tables, no memory is written.
        unsafe { libc::madvise(self.ptr.cast::<u8>().add(start).cast(), end - start, MADV_POPULATE_READ) };
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            BusGuard::unregister(slot);
        }
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

/// posix_fadvise(2) POSIX_FADV_WILLNEED over `len` bytes at `off`: the
/// kernel allocates page cache for what is not cached and queues the
/// reads, then returns. One call reads at most the read-ahead window, so
/// the range is asked for 4 MiB at a time.
pub fn advise_willneed_at(f: &File, off: u64, len: u64) -> io::Result<()> {
    const STEP: u64 = 4 << 20;
    let end = off.checked_add(len).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut at = off;
    while at < end {
        let n = STEP.min(end - at);
        let o = i64::try_from(at).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: advice on an fd we own; no memory is passed.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), o, n as i64, libc::POSIX_FADV_WILLNEED) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        at += n;
    }
    Ok(())
}

/// posix_fadvise(2) POSIX_FADV_DONTNEED over the whole of `f`: its clean
/// pages leave the page cache (tests and measurements of cold restores).
pub fn advise_dontneed(f: &File) -> io::Result<()> {
    // SAFETY: advice on an fd we own; no memory is passed.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// How many of the pages of `f`'s first `len` bytes are in the page cache
/// (mincore of a private read-only mapping of it; `len` rounded up to
/// pages). Errors: the mapping or mincore failed.
pub fn cached_pages(f: &File, len: u64) -> io::Result<usize> {
    if len == 0 {
        return Ok(0);
    }
    let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: a new shared read-only mapping of an fd we own; nothing else
    // refers to the address range, which is unmapped below.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let pages = len.div_ceil(4096);
    let mut v = vec![0u8; pages];
    // SAFETY: `p` maps `len` bytes; the kernel writes one byte per page of
    // it into `v`, which has that many.
    let rc = unsafe { libc::mincore(p, len, v.as_mut_ptr()) };
    let err = io::Error::last_os_error();
    // SAFETY: unmapping the mapping made above.
    unsafe { libc::munmap(p, len) };
    if rc != 0 {
        return Err(err);
    }
    Ok(v.iter().filter(|&&b| b & 1 != 0).count())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Run in a child process by `truncated_image_is_named_not_a_crash`:
    /// map the file named by the environment, truncate it, read past the
    /// new end.
    #[test]
    #[ignore = "the child process of truncated_image_is_named_not_a_crash"]
    fn truncation_victim() {
        let p = std::env::var_os("CRIU_RS_TEST_TRUNCATE_VICTIM").expect("CRIU_RS_TEST_TRUNCATE_VICTIM");
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let m = MappedFile::map(&f).unwrap();
        assert_eq!(m.bytes()[3 * 4096], 7);
        f.set_len(4096).unwrap();
        let b = std::hint::black_box(m.bytes())[3 * 4096];
        panic!("read {b} past the truncation without a fault");
    }

    /// A pages file truncated while mapped stops the engine with the file
    /// named and exit 1, not a bus error (before: killed by SIGBUS).
    #[test]
    fn truncated_image_is_named_not_a_crash() {
        let p = std::env::temp_dir().join(format!("criu-rs-mmap-truncate-{}.img", std::process::id()));
        std::fs::write(&p, vec![7u8; 4 * 4096]).unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "sys::mmap::tests::truncation_victim", "--ignored", "--test-threads=1", "--nocapture"])
            .env("CRIU_RS_TEST_TRUNCATE_VICTIM", &p)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&p);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{:?}\n{err}", out.status);
        assert!(err.contains(&format!("Error: image file {} was truncated while mapped", p.display())), "{err}");
    }

    #[test]
    fn guard_slots_are_given_back() {
        let p = std::env::temp_dir().join(format!("criu-rs-mmap-slots-{}.img", std::process::id()));
        std::fs::write(&p, [1u8; 4096]).unwrap();
        let f = File::open(&p).unwrap();
        // more maps over time than there are slots: each drop frees its own
        for _ in 0..3 * GUARD_SLOTS {
            let m = MappedFile::map(&f).unwrap();
            assert!(m.slot.is_some());
        }
        let _ = std::fs::remove_file(&p);
    }
}

/// A shared read-write mapping of a whole file (one that can't be written
/// with write(2), e.g. on hugetlbfs), unmapped on drop.
#[derive(Debug)]
pub struct SharedMut {
    ptr: *mut u8,
    len: usize,
}

impl SharedMut {
    /// Map `len` bytes of `f` (open read-write, at least `len` long).
    pub fn map(f: &File, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a new shared mapping chosen by the kernel, of an fd we
        // hold open for the call; nothing else refers to that range.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, f.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedMut { ptr: p.cast(), len })
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, ours
        // alone (borrowed mutably) until drop. (A file truncated under it
        // would SIGBUS: the restore child's own memfd, which nobody else
        // has yet.)
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for SharedMut {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `map`, no slice of it left.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
