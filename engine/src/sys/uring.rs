//! io_uring for writing image files (the `io-uring` crate): a page copy
//! that reads in this thread while the kernel writes the previous chunks
//! ([`RingWriter`]), and a batch of fsyncs submitted at once
//! ([`fsync_all`]).
//!
//! io_uring can be refused: `kernel.io_uring_disabled` (1: only for
//! CAP_SYS_ADMIN or the `io_uring_group`; 2: for everyone, EPERM), a
//! seccomp filter (ENOSYS or EPERM from io_uring_setup, _enter or
//! _register), a kernel built without it (ENOSYS), or an opcode it lacks.
//! [`open_ring`] checks each of these before anything is written (setup,
//! an opcode probe through io_uring_register, and one NOP through
//! io_uring_enter), so a caller can fall back to plain writes with
//! nothing half done.

use super::mmap::AnonBuf;
use io_uring::{opcode, squeue, types, IoUring, Probe};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Name the step of a refused io_uring in the error.
fn step(what: &str) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Retry `submit_and_wait(want)` across EINTR.
fn submit_wait(ring: &IoUring, want: usize) -> io::Result<usize> {
    loop {
        match ring.submit_and_wait(want) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// A ring of `entries` whose io_uring_setup, io_uring_register (opcode
/// probe: WRITE and FSYNC) and io_uring_enter (one NOP, completed) all
/// work: the error names the step refused.
pub fn open_ring(entries: u32) -> io::Result<IoUring> {
    let mut ring = IoUring::new(entries.max(2)).map_err(step("io_uring_setup"))?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(step("io_uring_register(PROBE)"))?;
    for (code, name) in [(opcode::Write::CODE, "IORING_OP_WRITE"), (opcode::Fsync::CODE, "IORING_OP_FSYNC")] {
        if !probe.is_supported(code) {
            return Err(io::Error::new(io::ErrorKind::Unsupported, format!("{name} is not supported by this kernel")));
        }
    }
    let nop = opcode::Nop::new().build().user_data(u64::MAX);
    // SAFETY: a NOP refers to no memory and no file.
    unsafe { ring.submission().push(&nop) }.map_err(|_| io::Error::other("io_uring submission queue full"))?;
    submit_wait(&ring, 1).map_err(step("io_uring_enter"))?;
    let res: Vec<i32> = ring.completion().map(|c| c.result()).collect();
    if let Some(&r) = res.iter().find(|&&r| r < 0) {
        return Err(step("IORING_OP_NOP")(io::Error::from_raw_os_error(-r)));
    }
    Ok(ring)
}

/// One buffer of a [`RingWriter`] and the write it is in, if any.
struct Slot {
    buf: AnonBuf,
    len: usize,
    done: usize,
    off: u64,
    direct: bool,
}

/// Writes of whole buffers to one file through io_uring, several in
/// flight: take a free buffer ([`RingWriter::buffer`], which waits for a
/// write to complete when none is free), fill it, hand it back with
/// [`RingWriter::write`]; [`RingWriter::finish`] waits for the rest. The
/// first failed write (e.g. ENOSPC) is returned by the next call. Short
/// writes are resubmitted for the rest.
///
/// With a `direct` file (the same file opened O_DIRECT) the writes bypass
/// the page cache and complete when the device has the data; a write it
/// refuses with EINVAL (alignment, file system) is made again through
/// `out`, as is everything after it. Writes through the page cache are
/// flagged IOSQE_ASYNC: the kernel's workers copy into the page cache
/// while this thread fills the next buffer (inline, the copy would happen
/// in the submitting call).
pub struct RingWriter<'f> {
    ring: IoUring,
    out: &'f File,
    direct: Option<&'f File>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    inflight: usize,
    /// Write operations submitted (resubmissions included).
    pub ops: u64,
}

impl<'f> RingWriter<'f> {
    /// `nbufs` buffers of `size` bytes (page-aligned: mmap'd).
    pub fn new(out: &'f File, direct: Option<&'f File>, nbufs: usize, size: usize) -> io::Result<Self> {
        let nbufs = nbufs.max(1);
        let ring = open_ring(u32::try_from(nbufs).unwrap_or(64).saturating_mul(2))?;
        let mut slots = Vec::with_capacity(nbufs);
        for _ in 0..nbufs {
            slots.push(Slot { buf: AnonBuf::new(size)?, len: 0, done: 0, off: 0, direct: false });
        }
        Ok(RingWriter { ring, out, direct, slots, free: (0..nbufs).rev().collect(), inflight: 0, ops: 0 })
    }

    /// Whether writes still go O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// A free buffer: (its number, its bytes).
    pub fn buffer(&mut self) -> io::Result<(usize, &mut [u8])> {
        while self.free.is_empty() {
            self.reap(true)?;
        }
        let i = self.free.pop().expect("a free slot");
        Ok((i, self.slots[i].buf.as_mut_slice()))
    }

    /// Write the first `len` bytes of buffer `i` at `off` of the file.
    pub fn write(&mut self, i: usize, len: usize, off: u64) -> io::Result<()> {
        let direct = self.direct.is_some();
        let s = &mut self.slots[i];
        if len > s.buf.as_slice().len() {
            self.free.push(i);
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{len} bytes in a buffer of {}", s.buf.as_slice().len())));
        }
        (s.len, s.done, s.off, s.direct) = (len, 0, off, direct);
        if len == 0 {
            self.free.push(i);
            return Ok(());
        }
        self.push(i)?;
        self.ring.submit().map_err(step("io_uring_enter"))?;
        // collect what completed meanwhile (errors early), without waiting
        self.reap(false)
    }

    /// Queue the rest of slot `i`'s write.
    fn push(&mut self, i: usize) -> io::Result<()> {
        let s = &self.slots[i];
        let (fd, flags) = match (s.direct, self.direct) {
            (true, Some(d)) => (d.as_raw_fd(), squeue::Flags::empty()),
            _ => (self.out.as_raw_fd(), squeue::Flags::ASYNC),
        };
        let rest = s.len - s.done;
        let ptr = s.buf.as_slice()[s.done..].as_ptr();
        let len = u32::try_from(rest).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "write over 4 GiB"))?;
        let e = opcode::Write::new(types::Fd(fd), ptr, len).offset(s.off + s.done as u64).build().flags(flags).user_data(i as u64);
        // SAFETY: the write reads `len` bytes of slot i's buffer, which stays
        // mapped and unmodified until its completion is reaped: the slot is
        // not in `free` until then, and `Drop` waits for every write in
        // flight (or leaks the buffers if it cannot). The fd is borrowed
        // for 'f, longer than this writer.
        unsafe { self.ring.submission().push(&e) }.map_err(|_| io::Error::other("io_uring submission queue full"))?;
        self.inflight += 1;
        self.ops += 1;
        Ok(())
    }

    /// Take the completions there are (waiting for one if `wait`); the
    /// first failed write is the error.
    fn reap(&mut self, wait: bool) -> io::Result<()> {
        if wait && self.inflight > 0 {
            submit_wait(&self.ring, 1).map_err(step("io_uring_enter"))?;
        }
        let done: Vec<(u64, i32)> = self.ring.completion().map(|c| (c.user_data(), c.result())).collect();
        let mut first_err = None;
        let mut again = false;
        for (ud, res) in done {
            let i = ud as usize;
            self.inflight -= 1;
            let s = &mut self.slots[i];
            if res == -libc::EINVAL && s.direct {
                // O_DIRECT refused: this write and the rest through the page cache
                crate::pr_debug!("O_DIRECT write refused by io_uring (EINVAL): writing through the page cache");
                s.direct = false;
                self.direct = None;
                self.push(i)?;
                again = true;
                continue;
            }
            if res < 0 {
                let e = io::Error::from_raw_os_error(-res);
                first_err.get_or_insert_with(|| io::Error::new(e.kind(), format!("writing {} bytes at offset {}: {e}", s.len - s.done, s.off + s.done as u64)));
                self.free.push(i);
                continue;
            }
            if res == 0 {
                first_err.get_or_insert_with(|| io::Error::new(io::ErrorKind::WriteZero, format!("write of {} bytes at offset {} wrote nothing", s.len - s.done, s.off + s.done as u64)));
                self.free.push(i);
                continue;
            }
            s.done += res as usize;
            if s.done < s.len {
                self.push(i)?;
                again = true;
            } else {
                self.free.push(i);
            }
        }
        if again {
            self.ring.submit().map_err(step("io_uring_enter"))?;
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Wait for every write: the first error, if any.
    pub fn finish(mut self) -> io::Result<()> {
        let mut res = Ok(());
        while self.inflight > 0 {
            if let Err(e) = self.reap(true) {
                if res.is_ok() {
                    res = Err(e);
                }
                if self.ring_broken() {
                    break;
                }
            }
        }
        res
    }

    /// Whether waiting on the ring itself fails (not a write).
    fn ring_broken(&self) -> bool {
        self.inflight > 0 && submit_wait(&self.ring, 0).is_err()
    }
}

impl Drop for RingWriter<'_> {
    fn drop(&mut self) {
        while self.inflight > 0 {
            if self.reap(true).is_err() && self.ring_broken() {
                // the kernel may still read the buffers: never unmap them
                for s in std::mem::take(&mut self.slots) {
                    std::mem::forget(s.buf);
                }
                return;
            }
        }
    }
}

/// fsync every file of `files`, all submitted at once on one ring (the
/// file system can overlap them). The outer error: io_uring refused or
/// failed (fsync them otherwise: again is harmless); the inner: the first
/// failed fsync, naming the file's index.
pub fn fsync_all(files: &[File]) -> io::Result<io::Result<()>> {
    if files.is_empty() {
        return Ok(Ok(()));
    }
    let batch = files.len().min(64);
    let mut ring = open_ring(u32::try_from(batch).unwrap_or(64))?;
    let mut first_err = None;
    for (k, chunk) in files.chunks(batch).enumerate() {
        for (j, f) in chunk.iter().enumerate() {
            let e = opcode::Fsync::new(types::Fd(f.as_raw_fd())).build().user_data((k * batch + j) as u64);
            // SAFETY: an fsync refers to no memory; the file is looked up
            // at submission (the ring holds its own reference from then on)
            // and `files` is borrowed until all completed.
            unsafe { ring.submission().push(&e) }.map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        let mut left = chunk.len();
        while left > 0 {
            submit_wait(&ring, 1).map_err(step("io_uring_enter"))?;
            for c in ring.completion() {
                left -= 1;
                if c.result() < 0 {
                    let e = io::Error::from_raw_os_error(-c.result());
                    first_err.get_or_insert_with(|| io::Error::new(e.kind(), format!("fsync of file {}: {e}", c.user_data())));
                }
            }
        }
    }
    Ok(first_err.map_or(Ok(()), Err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn tmp(name: &str) -> (std::path::PathBuf, File) {
        let p = std::env::temp_dir().join(format!("criu-rs-uring-{name}-{}", std::process::id()));
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
        (p, f)
    }

    #[test]
    fn ring_writes_land_where_asked_and_fsync() {
        test_support::require!(open_ring(4).err().map(|e| format!("io_uring refused here: {e}")));
        let (p, f) = tmp("w");
        let mut w = RingWriter::new(&f, None, 3, 1 << 16).unwrap();
        // more writes than buffers, out of order offsets
        for k in [5u64, 1, 7, 0, 3, 2, 6, 4] {
            let (i, b) = w.buffer().unwrap();
            b.fill(k as u8 + 1);
            w.write(i, 1 << 16, k << 16).unwrap();
        }
        assert!(w.ops >= 8);
        w.finish().unwrap();
        fsync_all(std::slice::from_ref(&f)).unwrap().unwrap();
        let mut buf = vec![0u8; 8 << 16];
        f.read_exact_at(&mut buf, 0).unwrap();
        for k in 0..8usize {
            assert!(buf[k << 16..(k + 1) << 16].iter().all(|&b| b == k as u8 + 1), "chunk {k}");
        }
        let _ = std::fs::remove_file(p);
    }
}
