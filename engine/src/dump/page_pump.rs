//! One-copy page dump: the frozen process `vmsplice`s its own pages into a
//! pipe (an injected syscall: the pipe references the pages, nothing is
//! copied) and an engine thread `splice`s the pipe into the pages file (the
//! one copy, into the page cache); two pipes, one filled while the other is
//! drained. Against reading the pages through
//! process_vm_readv or /proc/PID/mem into a buffer and writing that, it
//! saves a copy and the remote page-table walk of the read
//! (docs/PERFORMANCE.md, "Dump and restore").
//!
//! Not O_DIRECT: splicing the source's pages straight to the disk (no copy
//! at all) ran at a steady 1.2-1.4 GB/s here, but this VM's disk failed such
//! writes with EIO (`I/O error, dev vda ... phys_seg 12`) for some source
//! pages, so the pages file is always written through the page cache.
//!
//! The pipes are made in the source (`pipe2`), and the engine takes
//! duplicates of their read ends with `pidfd_getfd`. While the pipes' fds
//! live in the source, its main thread is parked on the parasite's cleanup
//! code (close them, put back its CPU mask, then `rt_sigreturn`): an engine
//! that dies anywhere leaves the source with its own fd table, CPU mask and
//! registers ([`Parasite::arm_pump`]).
//!
//! Pages that `vmsplice` can't take (PROT_NONE or otherwise unreadable to
//! their owner) fall back to [`ProcessMem`] for that piece; a source where
//! the pump can't start at all (fd limit reached, no pidfd_getfd) is dumped
//! by [`ProcessMem`] alone.

use super::freeze::Frozen;
use super::parasite::{Parasite, Read, PUMP_FDS, PUMP_FDS_OFF};
use crate::mem_source::{MemError, MemSource, ProcessMem};
use crate::sys::{process as p, Pid, PAGE_SIZE};
use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// At most this many iovecs per vmsplice (one scratch page of them).
const MAX_IOVS: usize = 256;
/// Pipes in the source (each takes two of the parasite's fd slots): two,
/// filled and drained in turn.
const PIPES: usize = PUMP_FDS / 2;

/// The most pages the pump takes on; larger dumps go the two-copy way with
/// O_DIRECT writes (`mem_source`) from the start. The pump's one copy lands
/// in new page cache, which on this VM is fast while the kernel has free
/// memory the host still backs and slow (a host fault per page) once it
/// hands out memory the host took back; so the pump watches its splicer's
/// rate and hands the rest over to O_DIRECT when it falls under
/// [`SWITCH_RATE`]. Measured here, same minutes, `Copied ... in` of the
/// dump log (docs/PERFORMANCE.md): 64 MiB through the pump 0.020-0.030 s
/// against 0.057-0.092 s with O_DIRECT; 256 MiB 0.095-0.129 s against
/// 0.155-0.214 s; in a slow hour, without the hand-over, 64 MiB took
/// 0.03-0.24 s and 256 MiB 0.48-1.26 s through the pump. 4 GiB buffered
/// took 12.6-16.7 s against 2.1-2.6 s with O_DIRECT. 1 GiB (session 14,
/// `dump --leave-running` of a 1 GiB process, whole command, page cache
/// dropped before each): the pump 0.56-0.80 s, O_DIRECT from the start
/// 2.7-2.8 s (the disk at 0.35-0.7 GB/s that hour), upstream 0.78-0.86 s;
/// so the bound is 2 GiB (and the dirty background threshold,
/// [`under_dirty_threshold`]: ~2 GiB on this 24 GiB machine; half of it,
/// as before, kept a 1 GiB process out of the pump by a few MiB).
pub const PUMP_MAX: u64 = 2 << 30;

/// Above this many bytes (or past the dirty background threshold) a
/// two-copy dump writes with O_DIRECT ([`direct_from_start`]).
const DIRECT_FROM: u64 = 1 << 30;

/// Bytes the pump splices before it judges its rate.
const SWITCH_PROBE: u64 = 4 << 20;

/// Below this rate (bytes per second of the splicer's own CPU time, not
/// of the wall clock: on a loaded machine the splicer also waits for a
/// CPU, which O_DIRECT would not save) the pump hands
/// the rest to the two-copy path with O_DIRECT writes, which runs at the
/// disk's 1.2-1.8 GB/s whatever the page cache costs. On this VM the
/// pump's new page cache runs at 2-3 GB/s while the kernel hands out memory
/// the host still backs and at 0.2-0.6 GB/s once it hands out memory the
/// host took back (free page reporting), and which it will be is not known
/// in advance: so the pump starts, and steps aside when it is slow.
const SWITCH_RATE: f64 = 1.5e9;

/// The rate (bytes/s) of the last hand-over's O_DIRECT writes in this
/// engine, 0 until one was made. The disk is not always at its
/// 1.2-1.8 GB/s: while other writers keep it busy it ran at 0.07-0.17 GB/s
/// here, under the page cache's slow 0.5 GB/s; so once a hand-over has
/// measured it, a later pump (the next process of a tree) steps aside only
/// for a page cache slower than that.
static DIRECT_RATE: AtomicU64 = AtomicU64::new(0);

/// The rate under which the pump steps aside: [`SWITCH_RATE`], or the
/// O_DIRECT rate measured last if lower; `None` with `CRIU_RS_PUMP=always`
/// (the pump to the end, for comparisons). `CRIU_RS_PUMP_MIN_RATE`
/// (bytes/s) overrides, for tests.
fn switch_rate() -> Option<f64> {
    if std::env::var("CRIU_RS_PUMP").as_deref() == Ok("always") {
        return None;
    }
    if let Some(v) = std::env::var("CRIU_RS_PUMP_MIN_RATE").ok().and_then(|v| v.parse().ok()) {
        return Some(v);
    }
    let direct = DIRECT_RATE.load(Ordering::Relaxed) as f64;
    Some(if direct > 0.0 { SWITCH_RATE.min(direct) } else { SWITCH_RATE })
}

/// Whether the pump is the path for `bytes` of pages: up to [`PUMP_MAX`]
/// and while the new page cache stays under the dirty background
/// threshold. `CRIU_RS_PUMP=always|never` overrides.
pub fn pays_off(bytes: u64) -> bool {
    match std::env::var("CRIU_RS_PUMP").as_deref() {
        Ok("always") => true,
        Ok("never") => false,
        _ => bytes <= PUMP_MAX && under_dirty_threshold(bytes),
    }
}

/// Whether a two-copy dump of `bytes` writes with O_DIRECT from the start:
/// over [`DIRECT_FROM`] or past the dirty background threshold.
pub fn direct_from_start(bytes: u64) -> bool {
    bytes > DIRECT_FROM || !under_dirty_threshold(bytes)
}

/// Whether `bytes` of new page cache stay under the dirty background
/// threshold (`vm.dirty_background_bytes`, or `dirty_background_ratio`% of
/// MemAvailable). Past it the kernel starts writing back in the
/// background, which does not stop the writer; writers are throttled only
/// past the midpoint between it and the dirty limit (`dirty_ratio`, 20%
/// by default), so staying under it leaves room for other writers' dirty
/// pages too. (The threshold is read once per dump:
/// `super::cache::dirty_background`.)
pub fn under_dirty_threshold(bytes: u64) -> bool {
    bytes <= super::cache::dirty_background()
}

/// One pipe of the pump: the engine's read end, the source's write end.
struct Pipe {
    rd: OwnedFd,
    wr: i32,
}

/// The source's memory, dumped through a vmsplice pump.
pub struct PagePump {
    pid: Pid,
    par: RefCell<Parasite>,
    mem: ProcessMem,
    pipes: Vec<Pipe>,
    /// Bytes one pipe holds (the same for all).
    cap: usize,
    /// Where the splicer runs: the engine's CPUs but the pinned one (all of
    /// them when that is the only one).
    splice_mask: [u64; 16],
    /// The engine thread pinned beside the source's main thread (its own
    /// mask back when the pump drops).
    pinned: p::PinnedHere,
}

fn other(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl PagePump {
    /// Start the pump in the frozen `f`; an error means "use [`ProcessMem`]".
    pub fn start(f: &Frozen) -> io::Result<PagePump> {
        let pid = f.pid;
        let mem = ProcessMem::with_file(pid, f.mem()?.try_clone()?);
        let mut par = Parasite::start(f, f.gadget)?;
        // the engine and the source's main thread on one CPU: each injected
        // call is then a local switch, not a wakeup of an idle vCPU
        // (0.05 ms instead of 0.27 ms per call here)
        // (the source's side, fds and CPU mask, is put back by the
        // parasite's cleanup when `par` drops)
        let pinned = p::PinnedHere::new();
        let cpu = pinned.cpu();
        par.arm_pump(cpu)?;
        let pidfd = p::pidfd_open(pid).map_err(other(format!("pidfd_open({pid})")))?;
        // the biggest pipe an unprivileged owner may have; the default
        // (64 KiB) if even that is refused (pipe-user-pages-soft)
        let max: u64 = super::cache::pipe_max_size();
        let mut pipes = Vec::new();
        let mut cap = usize::MAX;
        // the pipes made in one batch (their fds written straight into the
        // cleanup's slots: a dead engine midway leaves them to the cleanup)
        let calls: Vec<Read> = (0..PIPES)
            .map(|k| Read::new("pipe2", libc::SYS_pipe2, &[par.scratch + PUMP_FDS_OFF + 8 * k as u64, libc::O_CLOEXEC as u64]))
            .collect();
        let made = par.pump_calls(&calls)?;
        let slots = par.read(PUMP_FDS_OFF, 8 * PIPES)?;
        for (k, &r) in made.iter().enumerate() {
            if let Err(e) = crate::sys::check_raw(r) {
                if k == 0 {
                    return Err(other(format!("injected pipe2 in {pid}"))(e));
                }
                crate::pr_debug!("page pump of {pid}: pipe {k} refused ({e}); going on with {k}");
                break;
            }
            let fds = &slots[8 * k..8 * k + 8];
            let rd_t = i32::from_le_bytes(fds[0..4].try_into().expect("4 bytes"));
            let wr = i32::from_le_bytes(fds[4..8].try_into().expect("4 bytes"));
            let rd = p::pidfd_getfd(&pidfd, rd_t).map_err(other(format!("pidfd_getfd of fd {rd_t} of {pid}")))?;
            let _ = p::fcntl_int(rd.as_raw_fd(), libc::F_SETPIPE_SZ, max);
            let c = p::fcntl_int(rd.as_raw_fd(), libc::F_GETPIPE_SZ, 0)
                .map_err(other(format!("F_GETPIPE_SZ of pump pipe {k} of {pid}")))? as usize;
            crate::pr_debug!("page pump of {pid}: pipe {k} is fds {rd_t},{wr} in the source, {c} bytes");
            cap = cap.min(c);
            pipes.push(Pipe { rd, wr });
        }
        let cap = cap.min(MAX_IOVS * PAGE_SIZE as usize);
        let mut splice_mask = pinned.saved();
        if let Some(c) = cpu {
            splice_mask[c / 64] &= !(1 << (c % 64));
        }
        if splice_mask.iter().all(|&w| w == 0) {
            splice_mask = pinned.saved();
        }
        Ok(PagePump { pid, par: RefCell::new(par), mem, pipes, cap, splice_mask, pinned })
    }

    /// vmsplice `batch` (iovecs of the source) into pipe `k`; the bytes taken.
    fn fill(&self, k: usize, batch: &[(u64, u64)]) -> Result<usize, MemError> {
        let mut iov = Vec::with_capacity(batch.len() * 16);
        for &(a, n) in batch {
            iov.extend_from_slice(&a.to_le_bytes());
            iov.extend_from_slice(&n.to_le_bytes());
        }
        let err = |e: io::Error| MemError::Read { what: format!("vmsplice pump of {}", self.pid), vaddr: batch[0].0, len: 0, source: e };
        let mut par = self.par.borrow_mut();
        par.write(0, &iov).map_err(err)?;
        let scratch = par.scratch;
        let wr = self.pipes[k].wr as u64;
        let r = par.pump_call(libc::SYS_vmsplice, &[wr, scratch, batch.len() as u64, libc::SPLICE_F_NONBLOCK as u64]).map_err(err)?;
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

/// `ranges` cut into batches of at most `half` bytes and [`MAX_IOVS`] pieces.
fn batches(ranges: &[(u64, u64)], half: u64) -> Vec<Vec<(u64, u64)>> {
    let mut out: Vec<Vec<(u64, u64)>> = vec![Vec::new()];
    let mut in_batch = 0u64;
    for &(start, len) in ranges {
        let (mut a, end) = (start, start + len);
        while a < end {
            let n = (end - a).min(half - in_batch);
            let cur = out.last_mut().expect("one batch");
            cur.push((a, n));
            in_batch += n;
            a += n;
            if in_batch == half || cur.len() == MAX_IOVS {
                out.push(Vec::new());
                in_batch = 0;
            }
        }
    }
    out.retain(|b| !b.is_empty());
    out
}

/// Which pipes hold pages not yet spliced, and whether the splicer gave up.
struct Flow {
    in_pipe: [usize; PIPES],
    failed: bool,
}

/// The memory of one frozen process of a tree, copied through a page
/// pump started for that copy only (when [`pays_off`] says so for its
/// size) and ended right after it: one process at a time has a pump's
/// injection session and pipes, so a tree of hundreds does not hold
/// hundreds of pipes at once. Anything else, and a pump that can't be
/// started, reads from outside ([`ProcessMem`]).
pub struct PumpOnDemand<'a> {
    frozen: &'a Frozen,
    mem: ProcessMem,
}

impl<'a> PumpOnDemand<'a> {
    pub fn new(frozen: &'a Frozen) -> io::Result<Self> {
        Ok(PumpOnDemand { frozen, mem: ProcessMem::with_file(frozen.pid, frozen.mem()?.try_clone()?) })
    }
}

impl MemSource for PumpOnDemand<'_> {
    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.mem.read(vaddr, buf)
    }

    fn copy_to(&self, ranges: &[(u64, u64)], out: &File, off: u64) -> Result<(), MemError> {
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        if std::env::var("CRIU_RS_DUMP_READ").is_ok() || !pays_off(total) {
            return self.mem.copy_to(ranges, out, off);
        }
        match PagePump::start(self.frozen) {
            Ok(pump) => pump.copy_to(ranges, out, off),
            Err(e) => {
                crate::pr_warn!("page pump of {} unavailable ({e}); reading its memory instead", self.frozen.pid);
                self.mem.copy_to(ranges, out, off)
            }
        }
    }
}

impl MemSource for PagePump {
    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.mem.read(vaddr, buf)
    }

    /// Double buffering over the pipes: this thread (on the source's CPU)
    /// has the source vmsplice a pipeful of pages into the pipes in turn,
    /// while the splicer thread (on the other CPUs) moves the previous
    /// pipeful into the file. A pipe is filled only once it is empty
    /// again, so a vmsplice never finds it full; and the splice of one pipe
    /// (which holds that pipe's lock while it copies) never stalls the
    /// vmsplice into the other.
    fn copy_to(&self, ranges: &[(u64, u64)], out: &File, off: u64) -> Result<(), MemError> {
        let t = Instant::now();
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        let work = batches(ranges, self.cap as u64);
        let flow = (Mutex::new(Flow { in_pipe: [0; PIPES], failed: false }), Condvar::new());
        let (pid, splice_mask, n) = (self.pid, self.splice_mask, self.pipes.len());
        let rds: Vec<i32> = self.pipes.iter().map(|p| p.rd.as_raw_fd()).collect();
        let mut inject = Duration::ZERO;
        let mut fallback = 0u64;
        // One splicer for both pipes, on the CPUs the injector is not
        // pinned to. Two splicers (CRIU_RS_PUMP_SPLICERS=2, kept for
        // comparisons) serialize on the file's inode lock anyway: at 4 GiB
        // a profile showed 23% of all CPU time in rwsem_spin_on_owner and
        // the copy took 19.7 s against 6.8 s with one.
        let per_pipe = std::env::var("CRIU_RS_PUMP_SPLICERS").as_deref() == Ok("2");
        let min_rate = switch_rate();
        // (bytes, CPU nanoseconds) the splicer has moved and spent
        let spliced = (AtomicU64::new(0), AtomicU64::new(0));
        let spliced = &spliced;
        let mut pos = off as i64;
        let res = std::thread::scope(|sc| {
            let flow_ref = &flow;
            let rds = &rds;
            let mut txs = Vec::new();
            let mut splicers = Vec::new();
            for _ in 0..if per_pipe { n } else { 1 } {
                let (tx, rx) = mpsc::channel::<(usize, usize, i64)>();
                txs.push(tx);
                let mask = if per_pipe { self.pinned.saved() } else { splice_mask };
                splicers.push(sc.spawn(move || -> Result<Duration, MemError> {
                    let _ = p::sched_setaffinity(0, &mask);
                    let mut busy = Duration::ZERO;
                    let r = (|| {
                        while let Ok((k, len, pos)) = rx.recv() {
                            let t0 = Instant::now();
                            let c0 = thread_cpu_ns();
                            drain(rds[k], pid, out, pos, len)?;
                            let d = t0.elapsed();
                            busy += d;
                            spliced.0.fetch_add(len as u64, Ordering::Relaxed);
                            // the splicer's own CPU time, not the wall
                            // time: on a loaded machine the splicer waits
                            // for a CPU, and that is no cost of the page
                            // cache (O_DIRECT would wait as long, and for
                            // the disk besides)
                            let spent = match (c0, thread_cpu_ns()) {
                                (Some(a), Some(b)) => b.saturating_sub(a),
                                _ => d.as_nanos() as u64,
                            };
                            spliced.1.fetch_add(spent, Ordering::Relaxed);
                            flow_ref.0.lock().expect("flow lock").in_pipe[k] = 0;
                            flow_ref.1.notify_all();
                        }
                        Ok(())
                    })();
                    if r.is_err() {
                        flow_ref.0.lock().expect("flow lock").failed = true;
                        flow_ref.1.notify_all();
                    }
                    r.map(|()| busy)
                }));
            }
            let fill_res = (|| -> Result<Option<usize>, MemError> {
                for (i, batch) in work.iter().enumerate() {
                    if let Some(min) = min_rate {
                        // the splicer's own rate: the page cache's cost
                        let (b, ns) = (spliced.0.load(Ordering::Relaxed), spliced.1.load(Ordering::Relaxed));
                        if b >= SWITCH_PROBE && (b as f64) < min * ns as f64 / 1e9 {
                            return Ok(Some(i));
                        }
                    }
                    let k = i % n;
                    {
                        let mut f = flow.0.lock().expect("flow lock");
                        while f.in_pipe[k] != 0 && !f.failed {
                            f = flow.1.wait(f).expect("flow lock");
                        }
                        if f.failed {
                            return Ok(None); // the splicer failed: join() says why
                        }
                        f.in_pipe[k] = 1;
                    }
                    let t0 = Instant::now();
                    let got = self.fill(k, batch)? as u64;
                    inject += t0.elapsed();
                    if got > 0 {
                        if txs[if per_pipe { k } else { 0 }].send((k, got as usize, pos)).is_err() {
                            return Ok(None);
                        }
                        pos += got as i64;
                    } else {
                        flow.0.lock().expect("flow lock").in_pipe[k] = 0;
                    }
                    // what vmsplice could not take: read it the forced way
                    for (a, len) in PagePump::rest(batch, got) {
                        let mut buf = vec![0u8; len as usize];
                        self.mem.read(a, &mut buf)?;
                        out.write_all_at(&buf, pos as u64).map_err(|e| MemError::Write { what: format!("{a:#x}"), off: pos as u64, len: buf.len(), source: e })?;
                        pos += len as i64;
                        fallback += len;
                    }
                }
                Ok(None)
            })();
            drop(txs);
            let mut busy = Duration::ZERO;
            let mut splice_res = Ok(());
            for sp in splicers {
                match sp.join().unwrap_or_else(|_| Err(MemError::Write { what: "splicer thread".into(), off, len: 0, source: io::Error::other("panicked") })) {
                    Ok(b) => busy += b,
                    Err(e) => splice_res = splice_res.and(Err(e)),
                }
            }
            fill_res.and_then(|sw| splice_res.map(|()| (busy, sw)))
        });
        let (splice_t, switched) = res?;
        // the page cache turned slow: the rest with O_DIRECT from our buffers
        if let Some(i) = switched {
            let rest: Vec<(u64, u64)> = work[i..].iter().flatten().copied().collect();
            let left: u64 = rest.iter().map(|r| r.1).sum();
            crate::pr_debug!(
                "page pump: {} bytes in {:.3} s (splicer CPU {:.3} s), under {:.1} GB/s: switching to O_DIRECT for the other {left} bytes",
                pos as u64 - off,
                t.elapsed().as_secs_f64(),
                spliced.1.load(Ordering::Relaxed) as f64 / 1e9,
                min_rate.unwrap_or(0.0) / 1e9
            );
            let td = Instant::now();
            self.mem.copy_to_direct(&rest, out, pos as u64)?;
            let rate = left as f64 / td.elapsed().as_secs_f64().max(1e-9);
            DIRECT_RATE.store(rate as u64, Ordering::Relaxed);
            crate::pr_debug!("page pump: O_DIRECT wrote {left} bytes at {:.2} GB/s", rate / 1e9);
        }
        let s = t.elapsed().as_secs_f64();
        crate::pr_debug!(
            "page pump: vmsplice {:.3} s, splice {:.3} s over {n} pipe(s); {fallback} bytes read the forced way",
            inject.as_secs_f64(),
            splice_t.as_secs_f64()
        );
        let how = if switched.is_some() { "page pump, then O_DIRECT" } else { "page pump" };
        crate::pr_info!("Copied {total} bytes of {} in {:.3} s ({:.2} GB/s, {how})", self.pid, s, total as f64 / s.max(1e-9) / 1e9);
        Ok(())
    }
}

/// CPU time of the calling thread, ns (`None` if the clock fails).
fn thread_cpu_ns() -> Option<u64> {
    crate::sys::process::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID).ok().map(|(s, ns)| s * 1_000_000_000 + ns)
}

/// Splice exactly `n` bytes out of pipe `rd` into `out` at `pos`.
fn drain(rd: i32, pid: Pid, out: &File, mut pos: i64, n: usize) -> Result<(), MemError> {
    let mut left = n;
    while left > 0 {
        let at = pos;
        let err = |e| MemError::Write { what: format!("pages of {pid} from the pump pipe"), off: at as u64, len: left, source: e };
        match p::splice_to_file(rd, out.as_raw_fd(), &mut pos, left).map_err(err)? {
            0 => return Err(err(io::Error::other("the pipe ran dry"))),
            moved => left -= moved,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cut_at_half_and_iov_limit() {
        let b = batches(&[(0x1000, 0x3000), (0x10000, 0x1000)], 0x2000);
        assert_eq!(b, vec![vec![(0x1000, 0x2000)], vec![(0x3000, 0x1000), (0x10000, 0x1000)]]);
        let many: Vec<(u64, u64)> = (0..300u64).map(|i| (i * 0x2000, 0x1000)).collect();
        let b = batches(&many, 1 << 30);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![MAX_IOVS, 300 - MAX_IOVS]);
        assert_eq!(PagePump::rest(&[(0x1000, 0x2000), (0x8000, 0x1000)], 0x1000), vec![(0x2000, 0x1000), (0x8000, 0x1000)]);
    }
}
