//! One-copy page dump: the frozen process `vmsplice`s its own pages into a
//! pipe (an injected syscall: the pipe references the pages, nothing is
//! copied) and the engine `splice`s the pipe into the pages file (the one
//! copy, into the page cache). Against reading the pages through
//! process_vm_readv or /proc/PID/mem into a buffer and writing that, it
//! saves a copy and the remote page-table walk of the read; on this 2-vCPU
//! VM the reader and writer threads of the two-copy path also slow each
//! other down 3x (docs/PERFORMANCE.md).
//!
//! The pipe is made in the source (`pipe2`), and the engine takes a
//! duplicate of its read end with `pidfd_getfd`. While the pipe's two fds
//! live in the source, its main thread is parked on the parasite's cleanup
//! code (close both, then `rt_sigreturn`): an engine that dies anywhere
//! leaves the source with its own fd table and registers
//! ([`Parasite::arm_pump`]).
//!
//! Pages that `vmsplice` can't take (PROT_NONE or otherwise unreadable to
//! their owner) fall back to [`ProcessMem`] for that piece; a source where
//! the pump can't start at all (fd limit reached, no pidfd_getfd) is dumped
//! by [`ProcessMem`] alone.

use super::freeze::Frozen;
use super::parasite::{Parasite, PUMP_FDS_OFF};
use crate::mem_source::{MemError, MemSource, ProcessMem};
use crate::sys::{process as p, Pid, PAGE_SIZE};
use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// At most this many iovecs per vmsplice (one scratch page of them).
const MAX_IOVS: usize = 256;

/// The source's memory, dumped through a vmsplice pump.
pub struct PagePump {
    pid: Pid,
    par: RefCell<Parasite>,
    mem: ProcessMem,
    /// The engine's duplicate of the pipe's read end.
    rd: OwnedFd,
    /// The write end's number in the source.
    wr: i32,
    /// Bytes one vmsplice may put in the pipe (its capacity).
    cap: usize,
    /// The engine thread's CPU mask before the pump pinned it.
    engine_mask: [u64; 16],
}

impl Drop for PagePump {
    fn drop(&mut self) {
        // the source's side (fds, CPU mask) is put back by the parasite's
        // cleanup when `par` drops
        let _ = p::sched_setaffinity(0, &self.engine_mask);
    }
}

/// Runs `f` when dropped (an early return of [`PagePump::start`]).
struct Guard<F: FnMut()>(F);
impl<F: FnMut()> Drop for Guard<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}
fn scopeguard<F: FnMut()>(f: F) -> Guard<F> {
    Guard(f)
}

fn other(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl PagePump {
    /// Start the pump in the frozen `f`; an error means "use [`ProcessMem`]".
    pub fn start(f: &Frozen) -> io::Result<PagePump> {
        let pid = f.pid;
        let mem = ProcessMem::open(pid)?;
        let mut par = Parasite::start(f, f.gadget)?;
        // the engine and the source's main thread on one CPU: each injected
        // call is then a local switch, not a wakeup of an idle vCPU
        // (0.05 ms instead of 0.27 ms per call here)
        let engine_mask = p::sched_getaffinity(0)?;
        let cpu = p::current_cpu();
        if let Some(c) = cpu {
            let mut one = [0u64; 16];
            one[c / 64] |= 1 << (c % 64);
            let _ = p::sched_setaffinity(0, &one);
        }
        let pump_mask = engine_mask;
        let restore_engine = scopeguard(move || {
            let _ = p::sched_setaffinity(0, &pump_mask);
        });
        par.arm_pump(cpu)?;
        let r = par.pump_call(libc::SYS_pipe2, &[par.scratch + PUMP_FDS_OFF, libc::O_CLOEXEC as u64])?;
        crate::sys::check_raw(r).map_err(other(format!("injected pipe2 in {pid}")))?;
        let fds = par.read(PUMP_FDS_OFF, 8)?;
        let rd_t = i32::from_le_bytes(fds[0..4].try_into().expect("4 bytes"));
        let wr = i32::from_le_bytes(fds[4..8].try_into().expect("4 bytes"));
        let pidfd = p::pidfd_open(pid).map_err(other(format!("pidfd_open({pid})")))?;
        let rd = p::pidfd_getfd(&pidfd, rd_t).map_err(other(format!("pidfd_getfd of fd {rd_t} of {pid}")))?;
        // the biggest pipe an unprivileged owner may have; the default
        // (64 KiB) if even that is refused (pipe-user-pages-soft)
        let max: u64 = std::fs::read_to_string("/proc/sys/fs/pipe-max-size").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1 << 20);
        let _ = p::syscall6(libc::SYS_fcntl, [rd.as_raw_fd() as u64, libc::F_SETPIPE_SZ as u64, max, 0, 0, 0]);
        let cap = p::syscall6(libc::SYS_fcntl, [rd.as_raw_fd() as u64, libc::F_GETPIPE_SZ as u64, 0, 0, 0, 0])
            .map_err(other(format!("F_GETPIPE_SZ of the pump pipe of {pid}")))? as usize;
        crate::pr_debug!("page pump of {pid}: pipe fds {rd_t},{wr} in the source, {cap} bytes");
        std::mem::forget(restore_engine);
        Ok(PagePump { pid, par: RefCell::new(par), mem, rd, wr, cap: cap.min(MAX_IOVS * PAGE_SIZE as usize), engine_mask })
    }

    /// vmsplice `batch` (iovecs of the source) into the pipe; the bytes taken.
    fn fill(&self, batch: &[(u64, u64)]) -> Result<usize, MemError> {
        let mut iov = Vec::with_capacity(batch.len() * 16);
        for &(a, n) in batch {
            iov.extend_from_slice(&a.to_le_bytes());
            iov.extend_from_slice(&n.to_le_bytes());
        }
        let err = |e: io::Error| MemError::Read { what: format!("vmsplice pump of {}", self.pid), vaddr: batch[0].0, len: 0, source: e };
        let mut par = self.par.borrow_mut();
        par.write(0, &iov).map_err(err)?;
        let scratch = par.scratch;
        let r = par.pump_call(libc::SYS_vmsplice, &[self.wr as u64, scratch, batch.len() as u64, libc::SPLICE_F_NONBLOCK as u64]).map_err(err)?;
        // EFAULT/EAGAIN: nothing taken, the caller copies the batch itself
        Ok(usize::try_from(r).unwrap_or(0))
    }

    /// The pieces of `batch` after its first `done` bytes.
    fn rest(batch: &[(u64, u64)], mut done: u64) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        for &(a, n) in batch {
            if done >= n {
                done -= n;
                continue;
            }
            v.push((a + done, n - done));
            done = 0;
        }
        v
    }
}

impl MemSource for PagePump {
    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.mem.read(vaddr, buf)
    }

    /// Two threads over one pipe: this one (on the source's CPU) has the
    /// source vmsplice half a pipe of pages at a time, a splicer thread (on
    /// any CPU) moves each half into the file. A rendezvous channel keeps at
    /// most two halves in the pipe, so a vmsplice never finds it full.
    fn copy_to(&self, ranges: &[(u64, u64)], out: &File, off: u64) -> Result<(), MemError> {
        let t = Instant::now();
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        let half = ((self.cap / 2) as u64 / PAGE_SIZE).max(1) * PAGE_SIZE;
        let mut batches: Vec<Vec<(u64, u64)>> = vec![Vec::new()];
        let mut in_batch = 0u64;
        for &(start, len) in ranges {
            let (mut a, end) = (start, start + len);
            while a < end {
                let n = (end - a).min(half - in_batch);
                let cur = batches.last_mut().expect("one batch");
                cur.push((a, n));
                in_batch += n;
                a += n;
                if in_batch == half || cur.len() == MAX_IOVS {
                    batches.push(Vec::new());
                    in_batch = 0;
                }
            }
        }
        let (rd, pid, engine_mask) = (self.rd.as_raw_fd(), self.pid, self.engine_mask);
        let (tx, rx) = mpsc::sync_channel::<(usize, i64)>(0);
        let (mut inject, mut fallback) = (Duration::ZERO, 0u64);
        let res = std::thread::scope(|sc| {
            let splicer = sc.spawn(move || -> Result<Duration, MemError> {
                let _ = p::sched_setaffinity(0, &engine_mask);
                let mut busy = Duration::ZERO;
                while let Ok((n, mut pos)) = rx.recv() {
                    let t0 = Instant::now();
                    drain(rd, pid, out, &mut pos, n)?;
                    busy += t0.elapsed();
                }
                Ok(busy)
            });
            let mut pos = off as i64;
            let fill_res = (|| -> Result<(), MemError> {
                for batch in batches.iter().filter(|b| !b.is_empty()) {
                    let t0 = Instant::now();
                    let got = self.fill(batch)? as u64;
                    inject += t0.elapsed();
                    if got > 0 {
                        if tx.send((got as usize, pos)).is_err() {
                            return Ok(()); // the splicer failed: join() says why
                        }
                        pos += got as i64;
                    }
                    // what vmsplice could not take: read it the forced way
                    for (a, n) in Self::rest(batch, got) {
                        let mut buf = vec![0u8; n as usize];
                        self.mem.read(a, &mut buf)?;
                        out.write_all_at(&buf, pos as u64).map_err(|e| MemError::Write { what: format!("{a:#x}"), off: pos as u64, len: buf.len(), source: e })?;
                        pos += n as i64;
                        fallback += n;
                    }
                }
                Ok(())
            })();
            drop(tx);
            let splice_res = splicer.join().unwrap_or_else(|_| Err(MemError::Write { what: "splicer thread".into(), off, len: 0, source: io::Error::other("panicked") }));
            fill_res.and(splice_res)
        });
        let splice_t = res?;
        let s = t.elapsed().as_secs_f64();
        crate::pr_debug!(
            "page pump: vmsplice {:.3} s, splice {:.3} s, {fallback} bytes read the forced way",
            inject.as_secs_f64(),
            splice_t.as_secs_f64()
        );
        crate::pr_info!("Copied {total} bytes of {} in {:.3} s ({:.2} GB/s, page pump)", self.pid, s, total as f64 / s.max(1e-9) / 1e9);
        Ok(())
    }
}

/// Splice exactly `n` bytes out of pipe `rd` into `out` at `*pos`.
fn drain(rd: i32, pid: Pid, out: &File, pos: &mut i64, n: usize) -> Result<(), MemError> {
    let mut left = n;
    while left > 0 {
        let at = *pos;
        let err = |e| MemError::Write { what: format!("pages of {pid} from the pump pipe"), off: at as u64, len: left, source: e };
        match p::splice_to_file(rd, out.as_raw_fd(), pos, left).map_err(err)? {
            0 => return Err(err(io::Error::other("the pipe ran dry"))),
            moved => left -= moved,
        }
    }
    Ok(())
}
