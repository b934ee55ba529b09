//! The one interface through which dump and restore reach the memory of a
//! dumped address space: a pages image (mmap of pages-N.img and
//! pages-M.img of shared memory), a live process (/proc/PID/mem), or
//! anything else that can produce the bytes of a dumped virtual address
//! range.
//!
//! Bulk copies go through [`MemSource::copy_to`] (dump: ranges -> pages
//! file) and [`MemSource::file_range`] (restore: where a range lies in
//! which pages file, so the target can read it itself). Measured choices
//! are in docs/PERFORMANCE.md, "Dump and restore".

use crate::model::PageRun;
use crate::sys::mmap::{AnonBuf, MappedFile};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum MemError {
    #[error("reading {len} bytes at {vaddr:#x} from {what}")]
    Read { what: String, vaddr: u64, len: usize, #[source] source: io::Error },
    #[error("writing {len} bytes of {what} at offset {off} of the pages file")]
    Write { what: String, off: u64, len: usize, #[source] source: io::Error },
    /// A write through io_uring failed (the source says which and where).
    #[error("writing the pages file through io_uring")]
    Ring(#[source] io::Error),
    #[error("{what} has no page at {vaddr:#x}")]
    Missing { what: String, vaddr: u64 },
    #[error("{what}: pages image is {have} bytes, pagemap needs {need}")]
    Short { what: String, have: u64, need: u64 },
}

/// Size of one copy chunk of [`MemSource::copy_to`].
const CHUNK: usize = 8 << 20;

/// Bytes of a dumped address space.
pub trait MemSource {
    /// Fill `buf` with the bytes at `vaddr` (a range inside one dumped page run).
    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// The bytes at `vaddr` without copying, when the source is in memory.
    fn slice(&self, _vaddr: u64, _len: usize) -> Option<&[u8]> {
        None
    }
    /// Copy `ranges` (vaddr, len), in order, back to back into `out` from
    /// offset `off` on.
    fn copy_to(&self, ranges: &[(u64, u64)], out: &File, off: u64) -> Result<(), MemError> {
        let mut buf = vec![0u8; CHUNK];
        let mut pos = off;
        for_packs(ranges, |pieces, n| {
            let mut at = 0;
            for &(a, len) in pieces {
                self.read(a, &mut buf[at..at + len])?;
                at += len;
            }
            let a = pieces[0].0;
            out.write_all_at(&buf[..n], pos).map_err(|e| MemError::Write { what: format!("{a:#x}"), off: pos, len: n, source: e })?;
            pos += n as u64;
            Ok(())
        })
    }
    /// Files backing this source, in the order [`MemSource::file_range`] numbers them.
    fn files(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    /// (index into [`MemSource::files`], offset) of the bytes at `vaddr..vaddr+len`
    /// when they lie contiguously in one of the files.
    fn file_range(&self, _vaddr: u64, _len: u64) -> Option<(usize, u64)> {
        None
    }
    /// The live, stopped process whose private anonymous VMAs a restore
    /// may take copy-on-write through the `kmod/` device instead of
    /// copying their pages (tfork of a namespace init).
    fn cherry_pick_source(&self) -> Option<i32> {
        None
    }
    /// Private anonymous VMAs `(start, end, at)` whose pages the restore
    /// target already holds, inherited copy-on-write, in a region of the
    /// same length parked at `at` (tfork's restored clones, `sys/park.rs`):
    /// moved into place, not mapped or filled again.
    fn parked(&self) -> &[(u64, u64, u64)] {
        &[]
    }
    /// This source, when several threads may read it at once (the restore
    /// then sets up several processes of a tree at once:
    /// `restore/workers.rs`).
    fn as_sync(&self) -> Option<&(dyn MemSource + Sync)> {
        None
    }
    /// Keep the source's own mappings out of the processes this one forks
    /// (`out`), or let them have them again: the restore forks its tree
    /// (which never reads them) with them out (`restore/mod.rs`).
    fn out_of_forks(&self, _out: bool) {}
    /// The restore has filled the process of this source (`restore/`):
    /// what the source keeps mapped for it may let go of its page tables
    /// (the bytes stay readable), so that the engine's exit does not tear
    /// them all down after the tree runs.
    fn filled(&self) {}
}

/// Whether a two-copy dump of `total` bytes writes with O_DIRECT: when it
/// is not a small dump (`dump::page_pump::direct_from_start`: over 1 GiB,
/// or past the dirty background threshold). There the page cache is
/// the cost: on this VM filling it runs at 0.25-4 GB/s depending on
/// whether the host still backs the memory it gets, and past the dirty
/// threshold writeback throttles buffered writers to the disk's speed
/// anyway; O_DIRECT from our own aligned buffers ran at a steady 1.4-2
/// GB/s. `CRIU_RS_DUMP_DIRECT=always|never` overrides.
fn direct_pays_off(total: u64) -> bool {
    match std::env::var("CRIU_RS_DUMP_DIRECT").as_deref() {
        Ok("always") => true,
        Ok("never") => false,
        _ => crate::dump::page_pump::direct_from_start(total),
    }
}

/// Split `ranges` into pieces of at most [`CHUNK`] bytes.
fn for_chunks(ranges: &[(u64, u64)], mut f: impl FnMut(u64, usize) -> Result<(), MemError>) -> Result<(), MemError> {
    for &(start, len) in ranges {
        let mut a = start;
        let end = start + len;
        while a < end {
            let n = usize::try_from((end - a).min(CHUNK as u64)).unwrap_or(CHUNK);
            f(a, n)?;
            a += n as u64;
        }
    }
    Ok(())
}

/// `ranges` packed into chunks of at most [`CHUNK`] bytes: each call gets
/// the pieces (vaddr, len) that fill one chunk back to back, and their
/// total. Many small runs (fragmented memory: every other page written)
/// make one chunk, so one write, instead of one write per page.
fn for_packs(ranges: &[(u64, u64)], mut f: impl FnMut(&[(u64, usize)], usize) -> Result<(), MemError>) -> Result<(), MemError> {
    let mut pack: Vec<(u64, usize)> = Vec::new();
    let mut fill = 0usize;
    for_chunks(ranges, |a, n| {
        if fill + n > CHUNK {
            f(&pack, fill)?;
            pack.clear();
            fill = 0;
        }
        pack.push((a, n));
        fill += n;
        Ok(())
    })?;
    if fill > 0 {
        f(&pack, fill)?;
    }
    Ok(())
}

/// A live (frozen) process read through /proc/PID/mem.
#[derive(Debug)]
pub struct ProcessMem {
    pid: i32,
    file: File,
    /// Read with process_vm_readv first; `CRIU_RS_DUMP_READ=mem` turns it
    /// off (/proc/PID/mem only), for same-run comparisons in cr-bench.
    vm_readv: bool,
    /// Write the pages through io_uring ([`ProcessMem::with_io_uring`]).
    uring: bool,
    /// Write with O_DIRECT whatever the size ([`ProcessMem::with_direct`]).
    always_direct: bool,
    /// How the last [`MemSource::copy_to`] wrote (`WROTE_*`).
    wrote: std::sync::atomic::AtomicU8,
    /// Why io_uring was not used, when it was refused.
    refused: std::sync::Mutex<Option<String>>,
    /// [`MemSource::cherry_pick_source`]: offered for the cherry-pick.
    pick: bool,
}

/// [`ProcessMem::wrote`]: no copy yet, plain writes, io_uring.
const WROTE_NONE: u8 = 0;
const WROTE_PLAIN: u8 = 1;
const WROTE_URING: u8 = 2;

/// How a [`ProcessMem`] wrote its pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PagesWrite {
    /// Nothing copied yet.
    None,
    /// pwrite(2) from a writer thread; `refused`: why not io_uring, when it was asked for.
    Plain { refused: Option<String> },
    IoUring,
}

impl ProcessMem {
    pub fn open(pid: i32) -> io::Result<Self> {
        Ok(Self::with_file(pid, std::fs::OpenOptions::new().read(true).open(format!("/proc/{pid}/mem"))?))
    }

    /// [`ProcessMem::open`] with `pid`'s /proc/PID/mem already open as `file`.
    pub fn with_file(pid: i32, file: File) -> Self {
        let vm_readv = std::env::var("CRIU_RS_DUMP_READ").as_deref() != Ok("mem");
        ProcessMem { pid, file, vm_readv, uring: false, always_direct: false, wrote: WROTE_NONE.into(), refused: Default::default(), pick: false }
    }

    /// Read through /proc/PID/mem only: for memory shared copy-on-write
    /// (tfork's snapshot), which process_vm_readv's pinning would unshare
    /// page by page.
    pub fn open_mem_only(pid: i32) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new().read(true).open(format!("/proc/{pid}/mem"))?;
        Ok(ProcessMem { pid, file, vm_readv: false, uring: false, always_direct: false, wrote: WROTE_NONE.into(), refused: Default::default(), pick: false })
    }

    /// Offer this (stopped) process's private anonymous VMAs to a restore
    /// to take copy-on-write through the `kmod/` device where it is present
    /// ([`MemSource::cherry_pick_source`]).
    pub fn with_cherry_pick(mut self, on: bool) -> Self {
        self.pick = on;
        self
    }

    /// Write the pages through io_uring ([`crate::sys::uring::RingWriter`]),
    /// falling back to plain writes where io_uring is refused
    /// (`kernel.io_uring_disabled`, seccomp, ENOSYS), which
    /// [`ProcessMem::pages_write`] then tells.
    pub fn with_io_uring(mut self, on: bool) -> Self {
        self.uring = on;
        self
    }

    /// Write the pages with O_DIRECT whatever their size (where the file
    /// system takes it; `CRIU_RS_DUMP_DIRECT=never` still turns it off):
    /// for an image set that must be durable, where the fsync after a
    /// write through the page cache costs what the write saved
    /// (docs/PERFORMANCE.md, "tfork").
    pub fn with_direct(mut self, on: bool) -> Self {
        self.always_direct = on;
        self
    }

    /// How the last copy wrote the pages.
    pub fn pages_write(&self) -> PagesWrite {
        match self.wrote.load(std::sync::atomic::Ordering::Relaxed) {
            WROTE_URING => PagesWrite::IoUring,
            WROTE_PLAIN => PagesWrite::Plain { refused: self.refused.lock().map(|r| r.clone()).unwrap_or(None) },
            _ => PagesWrite::None,
        }
    }
}

impl MemSource for ProcessMem {
    fn cherry_pick_source(&self) -> Option<i32> {
        self.pick.then_some(self.pid)
    }

    /// process_vm_readv first (2x the throughput of /proc/PID/mem here: no
    /// per-page remote GUP walk through the mem file), then /proc/PID/mem
    /// for whatever it stopped short at: pages the owner cannot read
    /// (PROT_NONE, execute-only) are readable only through the mem file's
    /// forced access.
    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let done = if self.vm_readv { crate::sys::process::vm_read(self.pid, vaddr, buf).unwrap_or(0) } else { 0 };
        let rest = &mut buf[done..];
        if rest.is_empty() {
            return Ok(());
        }
        let at = vaddr + done as u64;
        self.file.read_exact_at(rest, at).map_err(|e| MemError::Read {
            what: format!("/proc/{}/mem", self.pid),
            vaddr: at,
            len: rest.len(),
            source: e,
        })
    }

    /// Two stages on two threads: this one reads the process (see `read`) into one of
    /// three chunk buffers while a writer thread pwrites the previous chunk
    /// to the pages file (the two copies overlap instead of adding up).
    fn copy_to(&self, ranges: &[(u64, u64)], out: &File, off: u64) -> Result<(), MemError> {
        let t = std::time::Instant::now();
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        let direct = if self.always_direct { std::env::var("CRIU_RS_DUMP_DIRECT").as_deref() != Ok("never") } else { direct_pays_off(total) };
        let (r, how) = match self.uring.then(|| self.copy_to_uring(ranges, out, off, direct)) {
            Some(Ok(r)) => {
                self.wrote.store(WROTE_URING, std::sync::atomic::Ordering::Relaxed);
                (r, "io_uring")
            }
            Some(Err(refused)) => {
                crate::pr_info!("io_uring refused ({refused}): pages of {} written with plain writes", self.pid);
                if let Ok(mut r) = self.refused.lock() {
                    *r = Some(refused.to_string());
                }
                self.wrote.store(WROTE_PLAIN, std::sync::atomic::Ordering::Relaxed);
                (self.copy_to_inner(ranges, out, off, total, direct), "plain writes")
            }
            None => {
                self.wrote.store(WROTE_PLAIN, std::sync::atomic::Ordering::Relaxed);
                (self.copy_to_inner(ranges, out, off, total, direct), "plain writes")
            }
        };
        let s = t.elapsed().as_secs_f64();
        crate::pr_info!("Copied {total} bytes of {} in {:.3} s ({:.2} GB/s, {how})", self.pid, s, total as f64 / s.max(1e-9) / 1e9);
        r
    }
}

impl ProcessMem {
    /// [`MemSource::copy_to`] through io_uring: this thread reads chunks of
    /// the process into one of four buffers while the kernel writes the
    /// others (O_DIRECT when `want_direct` and the file takes it). The
    /// outer `Err` is io_uring refused before anything was written (the
    /// caller writes plainly instead); the inner result is the copy's.
    fn copy_to_uring(&self, ranges: &[(u64, u64)], out: &File, off: u64, want_direct: bool) -> Result<Result<(), MemError>, io::Error> {
        let direct = if want_direct { open_direct(out) } else { None };
        let mut w = crate::sys::uring::RingWriter::new(out, direct.as_ref(), 4, CHUNK)?;
        let mut pos = off;
        let res = for_packs(ranges, |pieces, n| {
            let (i, buf) = w.buffer().map_err(MemError::Ring)?;
            let mut at = 0;
            for &(a, len) in pieces {
                self.read(a, &mut buf[at..at + len])?;
                at += len;
            }
            w.write(i, n, pos).map_err(MemError::Ring)?;
            pos += n as u64;
            Ok(())
        });
        let (ops, direct_on) = (w.ops, w.is_direct());
        let fin = w.finish().map_err(MemError::Ring);
        crate::pr_debug!("io_uring: {ops} writes{}", if direct_on { " (O_DIRECT)" } else { "" });
        Ok(res.and(fin))
    }

    /// [`MemSource::copy_to`] writing with O_DIRECT whatever the size (the
    /// page pump hands over what is left when the page cache turns slow).
    pub fn copy_to_direct(&self, ranges: &[(u64, u64)], out: &File, off: u64) -> Result<(), MemError> {
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        self.copy_to_inner(ranges, out, off, total, std::env::var("CRIU_RS_DUMP_DIRECT").as_deref() != Ok("never"))
    }

    fn copy_to_inner(&self, ranges: &[(u64, u64)], out: &File, off: u64, total: u64, want_direct: bool) -> Result<(), MemError> {
        if total <= CHUNK as u64 {
            let mut buf = vec![0u8; CHUNK];
            let mut pos = off;
            return for_packs(ranges, |pieces, n| {
                let mut at = 0;
                for &(a, len) in pieces {
                    self.read(a, &mut buf[at..at + len])?;
                    at += len;
                }
                let a = pieces[0].0;
                out.write_all_at(&buf[..n], pos).map_err(|e| MemError::Write { what: format!("{a:#x}"), off: pos, len: n, source: e })?;
                pos += n as u64;
                Ok(())
            });
        }
        let (full_tx, full_rx) = mpsc::sync_channel::<(AnonBuf, usize, u64, u64)>(2);
        let (free_tx, free_rx) = mpsc::channel::<AnonBuf>();
        for _ in 0..3 {
            let b = AnonBuf::new(CHUNK).map_err(|e| MemError::Write { what: "a copy buffer".into(), off, len: CHUNK, source: e })?;
            free_tx.send(b).expect("receiver alive");
        }
        // Large dumps bypass the page cache ([`direct_pays_off`]).
        let direct = if want_direct { open_direct(out) } else { None };
        let direct_on = direct.is_some();
        std::thread::scope(|s| {
            let writer = s.spawn(move || -> Result<Duration, MemError> {
                let mut busy = Duration::ZERO;
                let mut dst = direct.as_ref();
                while let Ok((buf, n, pos, vaddr)) = full_rx.recv() {
                    let t = Instant::now();
                    let bytes = &buf.as_slice()[..n];
                    let werr = |e| MemError::Write { what: format!("{vaddr:#x}"), off: pos, len: n, source: e };
                    match dst.map(|d| d.write_all_at(bytes, pos)) {
                        Some(Ok(())) => {}
                        // refused (alignment, file system): the rest buffered
                        Some(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                            crate::pr_debug!("O_DIRECT write refused ({e}); writing through the page cache");
                            dst = None;
                            out.write_all_at(bytes, pos).map_err(werr)?;
                        }
                        Some(Err(e)) => return Err(werr(e)),
                        None => out.write_all_at(bytes, pos).map_err(werr)?,
                    }
                    busy += t.elapsed();
                    if free_tx.send(buf).is_err() {
                        break;
                    }
                }
                Ok(busy)
            });
            let mut pos = off;
            let mut read_busy = Duration::ZERO;
            let read_res = for_packs(ranges, |pieces, n| {
                // the writer hung up only after an error, which join() reports
                let Ok(mut buf) = free_rx.recv() else { return Ok(()) };
                let t = Instant::now();
                let mut at = 0;
                for &(a, len) in pieces {
                    self.read(a, &mut buf.as_mut_slice()[at..at + len])?;
                    at += len;
                }
                read_busy += t.elapsed();
                let a = pieces[0].0;
                if full_tx.send((buf, n, pos, a)).is_err() {
                    return Ok(());
                }
                pos += n as u64;
                Ok(())
            });
            drop(full_tx);
            let write_res = writer.join().unwrap_or_else(|_| Err(MemError::Write { what: "writer thread".into(), off, len: 0, source: io::Error::other("panicked") }));
            if let Ok(write_busy) = &write_res {
                crate::pr_debug!(
                    "copy stages busy: reading {:.3} s, writing {:.3} s{}",
                    read_busy.as_secs_f64(),
                    write_busy.as_secs_f64(),
                    if direct_on { " (O_DIRECT)" } else { "" }
                );
            }
            read_res.and(write_res.map(|_| ()))
        })
    }
}

/// `out` opened again with O_DIRECT, when the file system allows it.
fn open_direct(out: &File) -> Option<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", out.as_raw_fd()))
        .map_err(|e| crate::pr_debug!("no O_DIRECT for the pages file ({e}); writing through the page cache"))
        .ok()
}

/// One pages file of a [`PagesImage`].
#[derive(Debug)]
struct PagesFileMap {
    path: PathBuf,
    map: MappedFile,
}

/// pages-N.img files mapped in memory, indexed by their pagemaps' runs
/// (the process's own pages and those of its shared memory objects, all
/// placed at the virtual addresses where the dumped process had them).
#[derive(Debug, Default)]
pub struct PagesImage {
    files: Vec<PagesFileMap>,
    /// [`MemSource::filled`] drops the mappings' page tables: a one-shot
    /// restore (`criu restore`), not a source several restores read.
    release_when_filled: bool,
    /// (vaddr, nr_pages, file index, offset in the file), sorted by vaddr.
    runs: Vec<(u64, u64, usize, u64)>,
}

impl PagesImage {
    /// Map `path`; `runs` are the pagemap's entries in file order.
    pub fn open(path: &Path, runs: &[PageRun]) -> Result<Self, MemError> {
        let mut p = PagesImage::default();
        let mut off = 0u64;
        let mut idx: Vec<(u64, u64, u64)> = Vec::with_capacity(runs.len());
        for r in runs {
            idx.push((r.vaddr, r.nr_pages, off));
            off = r.nr_pages.checked_mul(4096).and_then(|l| off.checked_add(l)).ok_or_else(|| MemError::Short { what: path.display().to_string(), have: 0, need: u64::MAX })?;
        }
        p.add(path, idx)?;
        Ok(p)
    }

    /// Add one more pages file; `runs` are (vaddr, nr_pages, offset in the
    /// file): `vaddr` is where the pages go in the restored address space.
    pub fn add(&mut self, path: &Path, runs: impl IntoIterator<Item = (u64, u64, u64)>) -> Result<(), MemError> {
        let name = path.display().to_string();
        // a regular file only, opened without blocking (the image directory is untrusted)
        let f = images_proto::image::open_regular(path).map_err(|e| {
            let why = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            MemError::Read { what: name.clone(), vaddr: 0, len: 0, source: std::io::Error::other(why) }
        })?;
        // read once, front to back: a larger readahead window; advice only
        let _ = crate::sys::mmap::advise_sequential(&f);
        let map = MappedFile::map(&f).map_err(|e| MemError::Read { what: name.clone(), vaddr: 0, len: 0, source: e })?;
        // (`images_io::read_images` asked for its start already)
        let idx = self.files.len();
        let have = map.bytes().len() as u64;
        for (vaddr, nr, off) in runs {
            // offsets and lengths come from an image: checked, never wrapped
            let len = nr.checked_mul(4096).filter(|l| vaddr.checked_add(*l).is_some());
            let need = len.and_then(|l| off.checked_add(l));
            let Some(need) = need else {
                return Err(MemError::Read {
                    what: name,
                    vaddr,
                    len: 0,
                    source: std::io::Error::other(format!("{nr} pages at offset {off:#x} overflow the address space or the file")),
                });
            };
            if have < need {
                return Err(MemError::Short { what: name, have, need });
            }
            self.runs.push((vaddr, nr, idx, off));
        }
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        self.files.push(PagesFileMap { path, map });
        self.runs.sort_by_key(|r| r.0);
        Ok(())
    }

    /// Let [`MemSource::filled`] drop the page tables of this source's
    /// mappings once its process is filled: for a restore that reads it
    /// once (`criu restore`; the 20 x 17 MiB tree's engine spent ~0.1 s
    /// unmapping 340 MiB of populated mappings after the tree ran,
    /// docs/PERFORMANCE.md).
    pub fn release_when_filled(&mut self) {
        self.release_when_filled = true;
    }

    fn locate(&self, vaddr: u64, len: u64) -> Option<(usize, u64)> {
        let i = self.runs.partition_point(|r| r.0 <= vaddr).checked_sub(1)?;
        let (start, nr, file, off) = self.runs[i];
        let end = start + nr * 4096;
        if vaddr.checked_add(len)? > end {
            return None;
        }
        Some((file, off + (vaddr - start)))
    }
}

impl MemSource for PagesImage {
    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let s = self.slice(vaddr, buf.len()).ok_or_else(|| MemError::Missing { what: self.files.first().map(|f| f.path.display().to_string()).unwrap_or_default(), vaddr })?;
        buf.copy_from_slice(s);
        Ok(())
    }
    fn slice(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        let (file, off) = self.locate(vaddr, len as u64)?;
        let off = usize::try_from(off).ok()?;
        self.files[file].map.bytes().get(off..off + len)
    }
    fn files(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.path.clone()).collect()
    }
    fn file_range(&self, vaddr: u64, len: u64) -> Option<(usize, u64)> {
        self.locate(vaddr, len)
    }
    fn as_sync(&self) -> Option<&(dyn MemSource + Sync)> {
        Some(self)
    }
    fn out_of_forks(&self, out: bool) {
        for f in &self.files {
            f.map.out_of_forks(out);
        }
    }
    fn filled(&self) {
        if self.release_when_filled {
            for f in &self.files {
                f.map.drop_page_tables();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that produces a pattern derived from the address.
    struct Pattern;
    impl MemSource for Pattern {
        fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = ((vaddr + i as u64) % 251) as u8;
            }
            Ok(())
        }
    }

    #[test]
    fn small_runs_pack_into_one_chunk() {
        let many: Vec<(u64, u64)> = (0..3000u64).map(|i| (i * 0x2000, 0x1000)).collect();
        let mut packs = Vec::new();
        for_packs(&many, |p, n| {
            assert_eq!(p.iter().map(|x| x.1).sum::<usize>(), n);
            packs.push((p.len(), n));
            Ok(())
        })
        .unwrap();
        // 2048 pages fill 8 MiB; the rest in a second pack
        assert_eq!(packs, vec![(2048, CHUNK), (952, 952 * 4096)]);
    }

    #[test]
    fn copy_then_map_back() {
        let dir = std::env::temp_dir().join(format!("memsrc-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pages-1.img");
        let f = File::create(&path).unwrap();
        let ranges = [(0x10000u64, 3 * 4096u64), (0x40000, (CHUNK as u64) + 4096), (0x9000_0000, 4096)];
        Pattern.copy_to(&ranges, &f, 0).unwrap();
        drop(f);
        let runs: Vec<PageRun> = ranges.iter().map(|&(v, l)| PageRun { vaddr: v, nr_pages: l / 4096, lazy: false }).collect();
        let img = PagesImage::open(&path, &runs).unwrap();
        for &(v, l) in &ranges {
            let mut want = vec![0u8; l as usize];
            Pattern.read(v, &mut want).unwrap();
            assert_eq!(img.slice(v, l as usize).unwrap(), &want[..]);
        }
        assert_eq!(img.file_range(0x40000 + 4096, 4096), Some((0, 3 * 4096 + 4096)));
        assert!(img.slice(0x10000 + 2 * 4096, 8192).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Resident KiB of this process's mapping that starts at `at`
    /// (/proc/self/smaps).
    fn rss_kib_at(at: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start = format!("{at:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
        assert!(lines.next().is_some(), "no mapping at {at:#x}");
        lines.find_map(|l| l.strip_prefix("Rss:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap()
    }

    #[test]
    fn filled_drops_the_page_tables_of_a_one_shot_source() {
        let dir = std::env::temp_dir().join(format!("memsrc-filled-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pages-1.img");
        let f = File::create(&path).unwrap();
        let ranges = [(0x10000u64, 64 * 4096u64)];
        Pattern.copy_to(&ranges, &f, 0).unwrap();
        drop(f);
        let runs = [PageRun { vaddr: 0x10000, nr_pages: 64, lazy: false }];
        let mut want = vec![0u8; 64 * 4096];
        Pattern.read(0x10000, &mut want).unwrap();
        let mut img = PagesImage::open(&path, &runs).unwrap();
        let at = img.slice(0x10000, 1).unwrap().as_ptr() as usize;
        let touch = |img: &PagesImage| assert_eq!(img.slice(0x10000, want.len()).unwrap(), &want[..]);
        // a source several restores read keeps them
        touch(&img);
        img.filled();
        assert_eq!(rss_kib_at(at), 256, "a source not released lost its page tables");
        img.release_when_filled();
        img.filled();
        assert_eq!(rss_kib_at(at), 0, "the mapping's pages still mapped after `filled`");
        // the bytes are still there
        touch(&img);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
