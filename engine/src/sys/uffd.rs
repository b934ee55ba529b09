//! userfaultfd for the restore fill: the target creates the uffd (by an
//! injected syscall, so it belongs to the target's mm; the last call of its
//! layout batch), the engine takes a copy of it with pidfd_getfd(2),
//! registers the target's VMAs through it (registration acts on the uffd's
//! mm) and fills the target's fresh
//! anonymous memory with UFFDIO_COPY straight from its mmap of the pages
//! file: the kernel allocates each page and copies into it without zeroing
//! it first, and no page fault is taken per 4 KiB page.

use super::{last_err, Pid};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
pub const UFFDIO_API: u64 = 0xc018_aa3f;
/// `_IOWR(0xAA, 0x00, struct uffdio_register)`.
pub const UFFDIO_REGISTER: u64 = 0xc020_aa00;
/// `_IOR(0xAA, 0x01, struct uffdio_range)`.
pub const UFFDIO_UNREGISTER: u64 = 0x8010_aa01;
/// `_IOWR(0xAA, 0x03, struct uffdio_copy)`.
pub const UFFDIO_COPY: u64 = 0xc028_aa03;
pub const UFFD_API: u64 = 0xaa;
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

/// pidfd_getfd(2): a duplicate of fd `target_fd` of the process `pidfd`.
pub fn pidfd_getfd(pidfd: &OwnedFd, target_fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall on a pidfd we own; the result is checked and a
    // non-negative value is a fresh fd that nothing else owns.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) };
    if r < 0 {
        return Err(last_err());
    }
    // SAFETY: `r` is a new fd returned by the kernel, owned by us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

/// Bytes of source populated (and then copied) at a time.
const CHUNK: usize = 32 << 20;
const MADV_POPULATE_READ: i32 = 22;

/// UFFDIO_COPY each `(dst, src)` piece into the uffd's mm, all of it.
/// Safe for any `uffd`: the kernel writes only into ranges of the mm the
/// uffd was created in that were registered with it, and the engine never
/// registers its own memory but for tfork's parking fill (`park.rs`,
/// whose userfaultfd is private to `park::fill_all` and closed before it
/// returns: no caller of this function can hold it), and keeps no other
/// userfaultfd of its own (see `process::probe_userfaultfd`), so no piece
/// can land in the engine.
///
/// Retries the partial copies and EAGAIN the kernel may return. The
/// sources are a file mapping: a second thread populates them ahead, chunk
/// by chunk, with MADV_POPULATE_READ (large reads of the file, no page fault
/// per 4 KiB page in the engine), so a cold file's disk reads overlap the
/// copying; where the copy catches up or populating fails, the copy faults
/// pages in itself. All pieces go in one pass: a thread per piece cost
/// ~0.5 ms each (a 16-thread process has a piece per thread stack).
pub fn copy(uffd: &OwnedFd, pieces: &[(u64, &[u8])], pid: Pid) -> io::Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // every piece in chunks of at most CHUNK bytes, in order
    let chunks: Vec<(u64, &[u8])> =
        pieces.iter().flat_map(|&(dst, src)| src.chunks(CHUNK).enumerate().map(move |(i, c)| (dst + (i * CHUNK) as u64, c))).collect();
    let populate = |c: &[u8]| {
        // SAFETY: madvise on memory of a live slice; MADV_POPULATE_READ
        // only faults pages in, it never changes contents or mappings.
        unsafe { libc::madvise(c.as_ptr() as *mut libc::c_void, c.len(), MADV_POPULATE_READ) };
    };
    let total: usize = pieces.iter().map(|(_, src)| src.len()).sum();
    if chunks.len() <= 1 || total <= CHUNK {
        // nothing to overlap, or too little for it to pay: no threads
        // (starting one costs about what populating a few MiB does; a
        // tree's small processes each had two pieces, a heap and a stack)
        for &(dst, c) in &chunks {
            populate(c);
            copy_chunk(uffd, dst, c, pid)?;
            fill_fault()?;
        }
        return Ok(());
    }
    let populated = AtomicUsize::new(0);
    let n = copiers(pieces);
    std::thread::scope(|s| {
        s.spawn(|| {
            for &(_, c) in &chunks {
                populate(c);
                populated.fetch_add(1, Ordering::Release);
            }
        });
        let copier = |w: usize| -> io::Result<()> {
            for (i, &(dst, c)) in chunks.iter().enumerate().filter(|(i, _)| i % n == w) {
                // Copy a chunk only once it is in: faulting a cold file mapping
                // page by page is far slower than the populate's large reads.
                while populated.load(Ordering::Acquire) <= i {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                copy_chunk(uffd, dst, c, pid)?;
                fill_fault()?;
            }
            Ok(())
        };
        let others: Vec<_> = (1..n).map(|w| s.spawn(move || copier(w))).collect();
        let mut r = copier(0);
        for o in others {
            r = r.and(o.join().unwrap_or_else(|_| Err(io::Error::other("userfaultfd copier thread panicked"))));
        }
        r
    })
}

/// Threads doing UFFDIO_COPY: two when at least 90% of the source pages are
/// already in the page cache (the allocation and first touch of the
/// target's pages then run on both vCPUs: 1 GiB warm in 0.21-0.49 s against
/// 0.35-2.8 s with one), one when they must come from the disk (the copies
/// then only wait for the read-ahead, and a second copier measured slower:
/// 0.66-1.6 s against 0.63-2.8 s). `CRIU_RS_UFFD_COPIERS=N` overrides, for
/// comparisons.
fn copiers(pieces: &[(u64, &[u8])]) -> usize {
    if let Some(n) = std::env::var("CRIU_RS_UFFD_COPIERS").ok().and_then(|v| v.parse().ok()).filter(|&n: &usize| (1..=8).contains(&n)) {
        return n;
    }
    let (resident, pages) = pieces.iter().map(|(_, src)| resident_pages(src)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    if pages > 0 && resident * 10 >= pages * 9 {
        2
    } else {
        1
    }
}

/// Whether fewer than half of the source pages are in the page cache: the
/// fill must read them from the disk.
pub fn mostly_cold(pieces: &[(u64, &[u8])]) -> bool {
    let (resident, pages) = pieces.iter().map(|(_, src)| resident_pages(src)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    resident * 2 < pages
}

/// (pages of `src` in the page cache, pages of `src`), by mincore; none
/// resident when it can't tell.
fn resident_pages(src: &[u8]) -> (usize, usize) {
    let addr = src.as_ptr() as usize;
    let pages = src.len().div_ceil(4096);
    if !addr.is_multiple_of(4096) || src.is_empty() {
        return (0, pages);
    }
    let mut v = vec![0u8; pages];
    // SAFETY: `src` is a live, page-aligned mapping of `src.len()` bytes;
    // the kernel writes one byte per page into `v`, which has that many.
    if unsafe { libc::mincore(addr as *mut libc::c_void, src.len(), v.as_mut_ptr()) } != 0 {
        return (0, pages);
    }
    (v.iter().filter(|&&b| b & 1 != 0).count(), pages)
}

fn copy_chunk(uffd: &OwnedFd, dst: u64, src: &[u8], pid: Pid) -> io::Result<()> {
    let mut done = 0usize;
    while done < src.len() {
        let mut c = UffdioCopy { dst: dst + done as u64, src: src[done..].as_ptr() as u64, len: (src.len() - done) as u64, mode: 0, copy: 0 };
        // SAFETY: `c` is a valid uffdio_copy for the duration of the call; the
        // kernel reads `len` bytes from `src`, which `src[done..]` covers, and
        // writes only into the target's (pid) registered range.
        let r = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_COPY as _, &mut c) };
        let e = if r < 0 { Some(last_err()) } else { None };
        if c.copy > 0 {
            done += c.copy as usize;
            continue;
        }
        match e {
            Some(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            Some(e) => return Err(io::Error::new(e.kind(), format!("UFFDIO_COPY to {:#x} of {pid}: {e}", dst + done as u64))),
            None => done = src.len(),
        }
    }
    Ok(())
}

/// A piece to fill from a pages file: `len` bytes at `off` of file `file`
/// go to `dst` in the target.
#[derive(Debug, Clone, Copy)]
pub struct FilePiece {
    pub dst: u64,
    pub file: usize,
    pub off: u64,
    pub len: usize,
}

/// Below this many bytes to fill, reading through the page cache (the
/// mappings, with read-ahead) beat O_DIRECT reads: cold 64 MiB 0.115-0.13 s
/// against 0.15-0.18 s; at 256 MiB O_DIRECT won (0.31-0.39 s against
/// 0.37-0.68 s), at 1 GiB by 2x (1.0-1.6 s against 2.1-3.7 s).
pub const DIRECT_FILL_MIN: usize = 128 << 20;

/// Bytes read per O_DIRECT read (split into 4 MiB requests by this disk).
const DIRECT_CHUNK: usize = 8 << 20;
/// Buffers in the ring: enough for both readers to keep a read in flight
/// while the copier drains one.
const DIRECT_BUFS: usize = 6;
/// Threads reading: two 8 MiB reads in flight.
const DIRECT_READERS: usize = 2;
/// Threads copying from the ring (at most one per CPU). UFFDIO_COPY
/// allocates the target's pages, and on this VM a page the host took back
/// costs a host fault, which two vCPUs take in parallel: 4 GiB cold 7.7-8.7 s
/// with two against 10.6-12.6 s with one (8.8-10.8 s of it copying); at
/// 1 GiB, bound by the disk read, no difference.
const DIRECT_COPIERS: usize = 2;

/// `pieces` cut into pieces of at most `chunk` bytes, in order.
fn split(pieces: &[FilePiece], chunk: usize) -> Vec<FilePiece> {
    pieces
        .iter()
        .flat_map(|p| {
            (0..p.len.div_ceil(chunk)).map(move |k| {
                let at = k * chunk;
                FilePiece { dst: p.dst + at as u64, file: p.file, off: p.off + at as u64, len: (p.len - at).min(chunk) }
            })
        })
        .collect()
}

/// UFFDIO_COPY every piece from `files` (opened with O_DIRECT, so the
/// pages never enter the page cache): reader threads fill a ring of
/// page-aligned buffers straight from the disk and the calling thread
/// copies each into the target. A cold restore then allocates only the
/// target's own memory, not a page-cache copy of the image as well (on this
/// VM every freshly allocated page can cost a host fault), and leaves no
/// gigabytes of page cache behind. Offsets and lengths are multiples of
/// 4 KiB (pages files are).
/// `files` are (file, its path for errors).
pub fn copy_from_files(uffd: &OwnedFd, pieces: &[FilePiece], files: &[(std::fs::File, String)], pid: Pid) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Mutex};
    let chunks = split(pieces, DIRECT_CHUNK);
    if chunks.is_empty() {
        return Ok(());
    }
    let (free_tx, free_rx) = mpsc::channel::<super::mmap::AnonBuf>();
    for _ in 0..DIRECT_BUFS.min(chunks.len() + 1) {
        free_tx.send(super::mmap::AnonBuf::new(DIRECT_CHUNK)?).map_err(|_| io::Error::other("buffer ring"))?;
    }
    let free_rx = Mutex::new(free_rx);
    let (full_tx, full_rx) = mpsc::channel::<(usize, super::mmap::AnonBuf, io::Result<()>)>();
    let full_rx = Mutex::new(full_rx);
    let (next, claimed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        let readers = std::env::var("CRIU_RS_FILL_READERS").ok().and_then(|v| v.parse().ok()).filter(|&n: &usize| (1..=8).contains(&n)).unwrap_or(DIRECT_READERS);
        for _ in 0..readers {
            let full_tx = full_tx.clone();
            let (chunks, free_rx, next) = (&chunks, &free_rx, &next);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(c) = chunks.get(i) else { break };
                // a closed ring means the copier gave up: stop
                let Ok(mut buf) = free_rx.lock().map_err(drop).and_then(|rx| rx.recv().map_err(drop)) else { break };
                let r = match files.get(c.file) {
                    None => Err(io::Error::other(format!("no pages file number {}", c.file))),
                    Some((f, name)) => f
                        .read_exact_at(&mut buf.as_mut_slice()[..c.len], c.off)
                        .map_err(|e| io::Error::new(e.kind(), format!("O_DIRECT read of {} bytes at offset {:#x} of {name}: {e}", c.len, c.off))),
                };
                if full_tx.send((i, buf, r)).is_err() {
                    break;
                }
            });
        }
        drop(full_tx);
        // the copiers, this thread and maybe more; when all have dropped
        // their `free_tx` the readers stop
        let copier = |free_tx: mpsc::Sender<super::mmap::AnonBuf>| -> io::Result<std::time::Duration> {
            let mut copying = std::time::Duration::ZERO;
            while claimed.fetch_add(1, Ordering::Relaxed) < chunks.len() {
                let got = full_rx.lock().map_err(|_| io::Error::other("buffer ring"))?.recv();
                let (i, buf, r) = got.map_err(|_| io::Error::other("pages file readers stopped early"))?;
                r?;
                let c = chunks[i];
                let t = std::time::Instant::now();
                copy_chunk(uffd, c.dst, &buf.as_slice()[..c.len], pid)?;
                copying += t.elapsed();
                fill_fault()?;
                let _ = free_tx.send(buf);
            }
            Ok(copying)
        };
        let t0 = std::time::Instant::now();
        let n = direct_copiers();
        let others: Vec<_> = (1..n).map(|_| {
            let tx = free_tx.clone();
            s.spawn(move || copier(tx))
        }).collect();
        let mut r = copier(free_tx);
        for o in others {
            let o = o.join().unwrap_or_else(|_| Err(io::Error::other("userfaultfd copier thread panicked")));
            r = r.and_then(|a| o.map(|b| a + b));
        }
        let copying = r?;
        crate::pr_debug!("O_DIRECT fill of {pid}: {:.3} s, copying {:.3} s on {n} thread(s), {readers} readers", t0.elapsed().as_secs_f64(), copying.as_secs_f64());
        Ok(())
    })
}

/// Bytes read per `pread` of the warm fill ([`copy_from_cache`]): small
/// enough that the buffer stays in the CPU's cache between the read and
/// the copy.
const CACHED_CHUNK: usize = 256 << 10;

/// UFFDIO_COPY every piece from `files` (opened for plain buffered reads),
/// read by `pread` into a small buffer per copying thread: for pages that
/// are in the page cache, a copy of each into a buffer that stays in the
/// CPU's cache costs less than mapping the page-cache pages into the
/// engine (MADV_POPULATE_READ sets a PTE and takes a reference per 4 KiB
/// page, and dropping the mapping's page tables after the fill undoes
/// each): a warm 17 MiB pages file filled in 4.4 ms against 5.2 ms
/// through its populated mapping (best of 10, docs/PERFORMANCE.md). One
/// thread, the caller, for [`CHUNK`] bytes or less (a tree's processes,
/// each filled by a restore worker); else two, as [`copy`] has for a warm
/// source (`CRIU_RS_UFFD_COPIERS=N` overrides). A short file is an error
/// naming it. `files` are (file, its path for errors).
pub fn copy_from_cache(uffd: &OwnedFd, pieces: &[FilePiece], files: &[(std::fs::File, String)], pid: Pid) -> io::Result<()> {
    use std::sync::atomic::AtomicUsize;
    let chunks = split(pieces, CACHED_CHUNK);
    let total: usize = pieces.iter().map(|p| p.len).sum();
    let next = AtomicUsize::new(0);
    let copier = || -> io::Result<()> {
        // the thread's buffer from an earlier fill (a restore worker fills
        // one process after another): a fresh one would take a page fault
        // and a zeroed page per 4 KiB at every fill
        let mut buf = match CACHED_BUF.with(|b| b.take()) {
            Some(b) => b,
            None => super::mmap::AnonBuf::new(CACHED_CHUNK)?,
        };
        let r = copy_cached_chunks(uffd, &chunks, &next, files, &mut buf, pid);
        CACHED_BUF.with(|b| b.set(Some(buf)));
        r
    };
    let n = if total <= CHUNK {
        1
    } else {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::var("CRIU_RS_UFFD_COPIERS").ok().and_then(|v| v.parse().ok()).filter(|&n: &usize| (1..=8).contains(&n)).unwrap_or(2.min(cpus))
    };
    let r = if n == 1 {
        copier()
    } else {
        std::thread::scope(|s| {
            let others: Vec<_> = (1..n).map(|_| s.spawn(copier)).collect();
            let mut r = copier();
            for o in others {
                r = r.and(o.join().unwrap_or_else(|_| Err(io::Error::other("userfaultfd copier thread panicked"))));
            }
            r
        })
    };
    r?;
    fill_fault()
}

thread_local! {
    /// Each thread's buffer of [`copy_from_cache`], kept from one fill to
    /// the next.
    static CACHED_BUF: std::cell::Cell<Option<super::mmap::AnonBuf>> = const { std::cell::Cell::new(None) };
}

/// One copying thread of [`copy_from_cache`]: the next chunk not yet
/// taken (`next`), read into `buf` and copied, until none is left.
fn copy_cached_chunks(uffd: &OwnedFd, chunks: &[FilePiece], next: &std::sync::atomic::AtomicUsize, files: &[(std::fs::File, String)], buf: &mut super::mmap::AnonBuf, pid: Pid) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut since_fault = 0usize;
    loop {
        let Some(c) = chunks.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) else { return Ok(()) };
        let (f, name) = files.get(c.file).ok_or_else(|| io::Error::other(format!("no pages file number {}", c.file)))?;
        f.read_exact_at(&mut buf.as_mut_slice()[..c.len], c.off)
            .map_err(|e| io::Error::new(e.kind(), format!("read of {} bytes at offset {:#x} of {name}: {e}", c.len, c.off)))?;
        copy_chunk(uffd, c.dst, &buf.as_slice()[..c.len], pid)?;
        // (the tests' fault point, every CHUNK bytes as in `copy`)
        since_fault += c.len;
        if since_fault >= CHUNK {
            since_fault = 0;
            fill_fault()?;
        }
    }
}

/// Whether at least 90% of the source pages are in the page cache.
pub fn mostly_warm(pieces: &[(u64, &[u8])]) -> bool {
    let (resident, pages) = pieces.iter().map(|(_, src)| resident_pages(src)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    pages > 0 && resident * 10 >= pages * 9
}

/// Copier threads of the O_DIRECT fill (`CRIU_RS_UFFD_COPIERS=N` overrides).
fn direct_copiers() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::env::var("CRIU_RS_UFFD_COPIERS").ok().and_then(|v| v.parse().ok()).filter(|&n: &usize| (1..=8).contains(&n)).unwrap_or(DIRECT_COPIERS.min(cpus))
}

/// The tests' fault point after each chunk copied: the engine dies there,
/// or (`mid-fill:fail`) the fill fails.
fn fill_fault() -> io::Result<()> {
    crate::fault::point("mid-fill");
    if crate::fault::fails("mid-fill") {
        return Err(io::Error::other("injected failure in the fill (CRIU_RS_FAULT_AT)"));
    }
    Ok(())
}

/// The UFFDIO_API handshake (no features), from whichever process holds
/// a copy of the fd: it acts on the userfaultfd's context.
pub fn api(uffd: &OwnedFd) -> io::Result<()> {
    let mut a: [u64; 3] = [UFFD_API, 0, 0]; // api, features, ioctls (out)
    // SAFETY: `a` is a valid struct uffdio_api (three u64s) for the duration
    // of the call; the kernel writes only into it.
    if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API as _, a.as_mut_ptr()) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// UFFDIO_REGISTER `start..start+len` (missing-page mode) in the mm the
/// userfaultfd was created in (the target's: registration acts on the
/// context's mm, not the caller's, so the engine registers through its
/// pidfd_getfd copy without an injected call).
pub fn register(uffd: &OwnedFd, start: u64, len: u64) -> io::Result<()> {
    let mut r: [u64; 4] = [start, len, UFFDIO_REGISTER_MODE_MISSING, 0]; // range, mode, ioctls (out)
    // SAFETY: `r` is a valid struct uffdio_register for the duration of the
    // call; the kernel writes only into it.
    if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER as _, r.as_mut_ptr()) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// UFFDIO_UNREGISTER the range `start..start+len`.
pub fn unregister(uffd: &OwnedFd, start: u64, len: u64) -> io::Result<()> {
    let mut r = UffdioRange { start, len };
    // SAFETY: `r` is a valid uffdio_range for the duration of the call.
    if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_UNREGISTER as _, &mut r) } < 0 {
        return Err(last_err());
    }
    Ok(())
}
