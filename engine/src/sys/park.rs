//! "Parked" memory of tfork's restored clones (docs/ARCHITECTURE.md,
//! "tfork", "Memory of a clone tree"): private anonymous regions the
//! engine maps at addresses no process of the frozen tree uses, fills
//! once with the frozen pages, and that every restoring helper, clone
//! root and child then inherits copy-on-write through fork; the restore
//! moves each process's own regions into place (`mremap`, injected) and
//! unmaps the others.
//!
//! The regions are kept in a [`Regions`] table of this process (see
//! `sys/regions.rs` for why that is sound); their memory is written only
//! by the kernel (pread), here.

use super::last_err;
use super::regions::{Regions, PAGE};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

static REGIONS: Regions = Regions::new();

/// The process that made the regions (0: none made yet).
static MAKER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Map `[start, start+len)` as a region ([`Regions::map`]; `norsv`:
/// MAP_NORESERVE), then `thp` (MADV_HUGEPAGE or MADV_NOHUGEPAGE) if any.
pub fn map(start: u64, len: u64, norsv: bool, thp: Option<i32>) -> io::Result<()> {
    if thp.is_some_and(|a| a != libc::MADV_HUGEPAGE && a != libc::MADV_NOHUGEPAGE) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    REGIONS.map(start, len, norsv)?;
    MAKER.store(std::process::id(), std::sync::atomic::Ordering::Relaxed);
    if let Some(a) = thp {
        let _held = REGIONS.holding(start, len)?;
        // SAFETY: the fresh region, which no Rust reference points into;
        // this advice only changes how its pages are allocated.
        if unsafe { libc::madvise(start as *mut libc::c_void, len as usize, a) } != 0 {
            return Err(last_err());
        }
    }
    Ok(())
}

/// Read `len` bytes of `file` at `off` into the region memory at `addr`
/// (inside one region; whole pages), allocated first in one call
/// (MADV_POPULATE_WRITE, advice only).
pub fn fill(addr: u64, len: u64, file: &File, off: u64) -> io::Result<()> {
    if !addr.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let _held = REGIONS.holding(addr, len)?;
    // SAFETY: `holding` checked the range is inside one of our regions and
    // keeps it mapped until `_held` drops, after the call.
    unsafe { fill_locked(addr, len, file, off) }
}

/// How [`fill_all`] filled the regions: bytes copied in by UFFDIO_COPY,
/// bytes read in place (MADV_POPULATE_WRITE, then pread), and why none
/// went by UFFDIO_COPY where some were to (userfaultfd refused...).
#[derive(Debug, Default, Clone)]
pub struct Filled {
    /// by UFFDIO_COPY injected into the snapshots ([`Snap`])
    pub by_snapshots: u64,
    pub copied: u64,
    pub read: u64,
    pub why_not_copied: Option<String>,
}

/// Whether a region with advice `thp` (MADV_HUGEPAGE, MADV_NOHUGEPAGE or
/// none) gets 4 KiB pages when it is filled in place, by this kernel's
/// `transparent_hugepage/enabled` (`always`: unless MADV_NOHUGEPAGE;
/// `madvise`: unless MADV_HUGEPAGE; `never`): such a region is filled by
/// UFFDIO_COPY (which installs 4 KiB pages) with nothing changed in what
/// its pages are. An unreadable setting counts as `always` (the read
/// path, which gives what the kernel gives).
pub fn small_pages(thp: Option<i32>) -> bool {
    static MODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let mode = MODE.get_or_init(|| {
        let s = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
        s.split('[').nth(1).and_then(|r| r.split(']').next()).unwrap_or("always").to_string()
    });
    match mode.as_str() {
        "never" => true,
        "madvise" => thp != Some(libc::MADV_HUGEPAGE),
        _ => thp == Some(libc::MADV_NOHUGEPAGE),
    }
}

/// [`fill`] of every job `(addr, len, file, off, copy)` (each inside one
/// region; whole pages), by `threads` threads at once (a copy is
/// CPU-bound: each CPU copies its share). The jobs are cut into pieces of
/// at most 8 MiB at 2 MiB boundaries of the address (a huge page is
/// filled whole by one thread), taken in order by whichever thread is
/// free. The first error is returned, once every thread has stopped.
///
/// A region whose jobs all have `copy` (4 KiB pages: [`small_pages`]) is
/// filled by UFFDIO_COPY instead of in place: registered with a
/// userfaultfd of this process for that fill only, each piece read by
/// pread into a small buffer of its thread and copied in (the kernel
/// allocates each page and copies into it: no zeroing first, which the
/// in-place fill's MADV_POPULATE_WRITE does; 64 MiB of a process read
/// from /proc/PID/mem in 28.5 ms against 38.5 ms here,
/// docs/PERFORMANCE.md). Where userfaultfd is refused, or
/// `CRIU_RS_TFORK_PARK_FILL=read` (measurements), every region is filled
/// in place; [`Filled`] says which.
///
/// A job of such a region whose `from[k]` names a [`Snap`] (its bytes are
/// that process's memory at `off..off + len`, `file` its /proc/PID/mem)
/// is copied by the snapshot itself first: the userfaultfd passed into it
/// and UFFDIO_COPY injected into it, from its own pages (the kernel
/// copies each page once, with no read into a buffer of the engine's:
/// 64 MiB in ~19 ms against 28.5 ms), all snapshots at once, each in its
/// own context; what that can't copy goes by the threads as above
/// (`CRIU_RS_TFORK_PARK_FILL=pread`: none by the snapshots, for
/// measurements). Runs on the calling thread, which must be the
/// snapshots' tracer. `from` is empty or one entry per job.
pub fn fill_all(jobs: &[(u64, u64, &File, u64, bool)], threads: usize, from: &[Option<Snap>]) -> io::Result<Filled> {
    if jobs.iter().any(|&(a, l, _, _, _)| !a.is_multiple_of(PAGE) || !l.is_multiple_of(PAGE) || a.checked_add(l).is_none()) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut pieces: Vec<(u64, u64, &File, u64, bool)> = Vec::new();
    for &(addr, len, file, off, copy) in jobs {
        let mut done = 0u64;
        while done < len {
            let a = addr + done;
            let cut = piece_len(a, addr + len);
            pieces.push((a, cut, file, off + done, copy));
            done += cut;
        }
    }
    let mut filled = Filled::default();
    if pieces.is_empty() {
        return Ok(filled);
    }
    // (the table is held by this thread for the whole fill: no region is
    // unmapped under the copying threads, nor unregistered early)
    let _held = REGIONS.holding(pieces[0].0, pieces[0].1)?;
    let mut region_of = Vec::with_capacity(pieces.len());
    for &(a, l, _, _, _) in &pieces {
        let Some(&r) = _held.iter().find(|&&(s, e)| s <= a && a + l <= e) else {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        };
        region_of.push(r);
    }
    // the regions filled by UFFDIO_COPY: those whose pieces all ask for it
    // (a piece read in place into a registered region would fault on its
    // missing pages with no one to serve them)
    let mut copy_regions: Vec<(u64, u64)> = region_of.iter().zip(&pieces).filter(|(_, p)| p.4).map(|(r, _)| *r).collect();
    copy_regions.sort_unstable();
    copy_regions.dedup();
    copy_regions.retain(|r| region_of.iter().zip(&pieces).all(|(q, p)| q != r || p.4));
    let uffd = if copy_regions.is_empty() {
        None
    } else if std::env::var("CRIU_RS_TFORK_PARK_FILL").as_deref() == Ok("read") {
        filled.why_not_copied = Some("CRIU_RS_TFORK_PARK_FILL=read".into());
        None
    } else {
        // SAFETY: every region registered is one of the held table's,
        // touched by no one but this fill until it is unregistered.
        match unsafe { ParkUffd::register(&copy_regions) } {
            Ok(u) => Some(u),
            Err(e) => {
                filled.why_not_copied = Some(e.to_string());
                None
            }
        }
    };
    let by_copy: Vec<bool> = region_of.iter().map(|r| uffd.is_some() && copy_regions.binary_search(r).is_ok()).collect();
    // the jobs the snapshots copy themselves (pieces keep their job's order)
    let mut done_jobs = vec![false; jobs.len()];
    if let Some(u) = uffd.as_ref().filter(|_| from.len() == jobs.len() && std::env::var("CRIU_RS_TFORK_PARK_FILL").as_deref() != Ok("pread")) {
        let mut mine: Vec<(Snap, Vec<SnapJob>)> = Vec::new();
        for (k, &(a, l, _, o, _)) in jobs.iter().enumerate() {
            let Some(sn) = from[k] else { continue };
            let registered = copy_regions.iter().any(|&(s, e)| s <= a && a + l <= e);
            if !registered {
                continue;
            }
            match mine.iter_mut().find(|(x, _)| x.pid == sn.pid) {
                Some((_, v)) => v.push((k, a, o, l)),
                None => mine.push((sn, vec![(k, a, o, l)])),
            }
        }
        if !mine.is_empty() {
            // SAFETY: every destination lies in a region registered with
            // `u`, held (with the table) until this function returns.
            for k in unsafe { u.copy_in_snapshots(&mine) } {
                done_jobs[k] = true;
                filled.by_snapshots += jobs[k].1;
            }
        }
    }
    let job_of: Vec<usize> = jobs.iter().enumerate().flat_map(|(k, &(_, len, _, _, _))| std::iter::repeat_n(k, pieces_in(jobs[k].0, len))).collect();
    let skip: Vec<bool> = job_of.iter().map(|&k| done_jobs[k]).collect();
    for ((p, &c), &sk) in pieces.iter().zip(&by_copy).zip(&skip) {
        if sk {
            continue;
        }
        if c {
            filled.copied += p.1;
        } else {
            filled.read += p.1;
        }
    }
    let threads = threads.clamp(1, pieces.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let work = || -> io::Result<()> {
        let mut buf = None;
        loop {
            let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(&(a, l, f, o, _)) = pieces.get(k) else { return Ok(()) };
            if failed.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(());
            }
            if skip[k] {
                continue;
            }
            let r = match (&uffd, by_copy[k]) {
                (Some(u), true) => {
                    let b = match &mut buf {
                        Some(b) => b,
                        None => buf.insert(super::mmap::AnonBuf::new(COPY_BUF)?),
                    };
                    // SAFETY: the piece lies in a region of `_held`
                    // registered with `u`, both kept until every thread
                    // has ended.
                    unsafe { u.fill_locked(a, l, f, o, b) }
                }
                // SAFETY: each piece was checked inside a region of
                // `_held`, which this function keeps until every thread
                // has ended (and, read in place, not registered).
                _ => unsafe { fill_locked(a, l, f, o) },
            };
            crate::fault::point("tforktree-mid-park");
            if let Err(e) = r {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                return Err(e);
            }
        }
    };
    if threads == 1 {
        work()?;
        drop(uffd);
        return Ok(filled);
    }
    let before = threads_now();
    let r = std::thread::scope(|sc| {
        let others: Vec<_> = (1..threads).map(|_| sc.spawn(work)).collect();
        let mut r = work();
        for h in others {
            let o = h.join().unwrap_or_else(|_| Err(io::Error::other("a parking fill thread panicked")));
            r = r.and(o);
        }
        r
    });
    // (the regions unregistered, the userfaultfd closed: a fork of the
    // engine must not find them armed)
    drop(uffd);
    // A joined thread may still be counted for a moment (it wakes its
    // joiner before it leaves the thread group): the engine forks its
    // restoring helpers next, which needs it single-threaded again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while threads_now() > before && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    r.map(|()| filled)
}

/// The length of [`fill_all`]'s piece at `a` of a job ending at `end`: up
/// to the next 8 MiB step past the next huge page boundary (a huge page is
/// filled whole by one thread).
fn piece_len(a: u64, end: u64) -> u64 {
    const STEP: u64 = 8 << 20;
    const HUGE: u64 = 2 << 20;
    let next = (a / HUGE + 1) * HUGE;
    (next + STEP - HUGE).min(end) - a
}

/// How many pieces [`fill_all`] cuts a job `[addr, addr + len)` into.
fn pieces_in(addr: u64, len: u64) -> usize {
    let (mut a, mut n) = (addr, 0);
    while a < addr + len {
        a += piece_len(a, addr + len);
        n += 1;
    }
    n
}

/// A snapshot fork that can copy its own memory into the parked regions
/// ([`fill_all`]): stopped, traced by the calling thread, never run but
/// for calls injected into it (signals blocked), with a `syscall; int3`
/// gadget at `scratch + 0x800` and `scratch..scratch + 0x2000` its own
/// writable memory (its copy of the dump's scratch mapping).
#[derive(Debug, Clone, Copy)]
pub struct Snap {
    pub pid: super::Pid,
    pub scratch: u64,
}

/// Bytes read per pread of a fill by UFFDIO_COPY: small enough that the
/// buffer stays in the CPU's cache between the read and the copy (64 KiB
/// to 1 MiB measured the same here).
const COPY_BUF: usize = 256 << 10;

/// A userfaultfd of this process with regions of the table registered
/// (missing mode) for one [`fill_all`]: the kernel's UFFDIO_COPY then
/// allocates a page and copies into it. Only the fill's threads use it,
/// and no one touches a registered region's memory meanwhile (a fault in
/// a missing page would wait for a handler there is none of). Dropped:
/// each region unregistered, the fd closed. Never handed out: the engine
/// keeps no userfaultfd of its own mm beyond one fill (`uffd::copy`'s
/// soundness rests on that for the restores' fills).
struct ParkUffd {
    fd: std::os::fd::OwnedFd,
    regions: Vec<(u64, u64)>,
}

impl ParkUffd {
    /// A new userfaultfd with each of `regions` registered.
    ///
    /// # Safety
    /// Each region is one of the table's, held by the caller until the
    /// value is dropped, and nothing touches its memory meanwhile but
    /// [`ParkUffd::fill_locked`].
    unsafe fn register(regions: &[(u64, u64)]) -> io::Result<ParkUffd> {
        use std::os::fd::FromRawFd;
        // SAFETY: integer-only syscall.
        let r = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if r < 0 {
            let e = last_err();
            return Err(io::Error::new(e.kind(), format!("userfaultfd: {e}")));
        }
        // SAFETY: the kernel returned a fresh fd that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(r as i32) };
        let mut api = [super::uffd::UFFD_API, 0, 0];
        // SAFETY: `api` is a struct uffdio_api (api, features, ioctls) the
        // kernel reads and writes for the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), super::uffd::UFFDIO_API as _, api.as_mut_ptr()) } < 0 {
            let e = last_err();
            return Err(io::Error::new(e.kind(), format!("UFFDIO_API: {e}")));
        }
        let mut me = ParkUffd { fd, regions: Vec::with_capacity(regions.len()) };
        for &(s, e) in regions {
            // struct uffdio_register: range (start, len), mode, ioctls (out)
            let mut reg = [s, e - s, super::uffd::UFFDIO_REGISTER_MODE_MISSING, 0];
            // SAFETY: `reg` is a struct uffdio_register for the call; the
            // range is a region of the table (the caller's contract), so
            // registering it changes how faults in it are served and
            // nothing else.
            if unsafe { libc::ioctl(me.fd.as_raw_fd(), super::uffd::UFFDIO_REGISTER as _, reg.as_mut_ptr()) } < 0 {
                let err = last_err();
                return Err(io::Error::new(err.kind(), format!("UFFDIO_REGISTER {s:#x}-{e:#x}: {err}")));
            }
            me.regions.push((s, e));
        }
        Ok(me)
    }

    /// Read `len` bytes of `file` at `off` into `buf` a piece at a time,
    /// each UFFDIO_COPY'd to its place from `addr` on.
    ///
    /// # Safety
    /// `[addr, addr + len)` lies inside a region registered with this
    /// userfaultfd, kept mapped and registered (the caller holds the
    /// table) until this returns, with no Rust reference into it; several
    /// threads may fill disjoint ranges.
    unsafe fn fill_locked(&self, addr: u64, len: u64, file: &File, off: u64, buf: &mut super::mmap::AnonBuf) -> io::Result<()> {
        let b = buf.as_mut_slice();
        let mut done = 0u64;
        while done < len {
            let chunk = (len - done).min(b.len() as u64) as usize;
            // (the engine's own buffer: std's read_exact_at, which retries
            // EINTR and short reads)
            std::os::unix::fs::FileExt::read_exact_at(file, &mut b[..chunk], off + done).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    io::Error::new(io::ErrorKind::UnexpectedEof, format!("pages file ends before offset {}", off + done + chunk as u64))
                } else {
                    e
                }
            })?;
            let mut copied = 0usize;
            while copied < chunk {
                // struct uffdio_copy: dst, src, len, mode, copy (out)
                let mut c = [addr + done + copied as u64, b[copied..].as_ptr() as u64, (chunk - copied) as u64, 0, 0];
                // SAFETY: `c` is a struct uffdio_copy for the call; the
                // kernel reads its `len` bytes from `b[copied..chunk]` and
                // writes only the registered destination pages, inside a
                // held region (the caller's contract), missing until now.
                let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), super::uffd::UFFDIO_COPY as _, c.as_mut_ptr()) };
                let e = (r < 0).then(last_err);
                let n = c[4] as i64;
                if n > 0 {
                    copied += n as usize;
                    continue;
                }
                match e {
                    Some(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
                    // (a page a snapshot copied before its copy failed)
                    Some(e) if e.raw_os_error() == Some(libc::EEXIST) => copied += PAGE as usize,
                    Some(e) => return Err(io::Error::new(e.kind(), format!("UFFDIO_COPY to {:#x}: {e}", addr + done + copied as u64))),
                    None => copied = chunk,
                }
            }
            done += chunk as u64;
        }
        Ok(())
    }
}

/// Where [`ParkUffd::copy_in_snapshots`] keeps its data in a snapshot's
/// scratch memory ([`Snap::scratch`] + 0x1000): the socketpair's fds, the
/// received byte, the iovec, the control message, the msghdr, the
/// uffdio_copy.
const AT_SV: u64 = 0x1000;
const AT_BYTE: u64 = 0x1010;
const AT_IOV: u64 = 0x1020;
const AT_CTL: u64 = 0x1040;
const AT_HDR: u64 = 0x1080;
const AT_COPY: u64 = 0x1100;

/// A job a snapshot copies: (job index, destination, its source address,
/// length).
type SnapJob = (usize, u64, u64, u64);

/// One snapshot copying its jobs ([`ParkUffd::copy_in_snapshots`]): its
/// injector, its /proc/PID/mem, the userfaultfd's number in it, the jobs
/// left `(job, dst, src, len)` and the one in flight.
struct SnapCopier {
    inj: super::inject::Injector,
    mem: File,
    sn: Snap,
    ufd: u64,
    queue: std::collections::VecDeque<(usize, u64, u64, u64)>,
    cur: Option<(usize, u64, u64, u64)>,
}

impl SnapCopier {
    /// Pass the userfaultfd `ufd` into snapshot `sn`: a socketpair made in
    /// it, one end taken by pidfd_getfd, the fd sent (SCM_RIGHTS) and
    /// received by an injected recvmsg; both ends closed in it again.
    fn enter(sn: Snap, ufd: std::os::fd::BorrowedFd<'_>, queue: Vec<(usize, u64, u64, u64)>) -> io::Result<SnapCopier> {
        use std::os::unix::fs::FileExt;
        let mem = std::fs::OpenOptions::new().read(true).write(true).open(format!("/proc/{}/mem", sn.pid))?;
        let mut inj = super::inject::Injector::new(sn.pid, sn.scratch + 0x800)?;
        let at = |off: u64| sn.scratch + off;
        inj.call("socketpair", libc::SYS_socketpair, &[libc::AF_UNIX as u64, (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as u64, 0, at(AT_SV)])?;
        let mut sv = [0u8; 8];
        mem.read_exact_at(&mut sv, at(AT_SV))?;
        let (a, b) = (i32::from_le_bytes([sv[0], sv[1], sv[2], sv[3]]), i32::from_le_bytes([sv[4], sv[5], sv[6], sv[7]]));
        let got = (|| -> io::Result<u64> {
            let pidfd = super::process::pidfd_open(sn.pid)?;
            let theirs = super::uffd::pidfd_getfd(&pidfd, b)?;
            use std::os::fd::AsFd;
            super::sock::send_fds(theirs.as_fd(), b"u", 0, None, &[ufd])?;
            let mut iov = at(AT_BYTE).to_le_bytes().to_vec();
            iov.extend(1u64.to_le_bytes());
            mem.write_all_at(&iov, at(AT_IOV))?;
            mem.write_all_at(&[0u8; 32], at(AT_CTL))?;
            // struct msghdr: name, namelen, iov, iovlen, control, controllen, flags
            let hdr: Vec<u8> = [0, 0, at(AT_IOV), 1, at(AT_CTL), 32, 0].iter().flat_map(|w: &u64| w.to_le_bytes()).collect();
            mem.write_all_at(&hdr, at(AT_HDR))?;
            inj.call("recvmsg", libc::SYS_recvmsg, &[a as u64, at(AT_HDR), (libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) as u64])?;
            // struct cmsghdr: len (8), level, type, then the fd
            let mut c = [0u8; 20];
            mem.read_exact_at(&mut c, at(AT_CTL))?;
            let word = |i: usize| i32::from_le_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
            if (word(8), word(12)) != (libc::SOL_SOCKET, libc::SCM_RIGHTS) || word(16) < 0 {
                return Err(io::Error::other(format!("snapshot {} received no userfaultfd", sn.pid)));
            }
            Ok(word(16) as u64)
        })();
        for fd in [a, b] {
            let _ = inj.raw(libc::SYS_close, &[fd as u64]);
        }
        Ok(SnapCopier { inj, mem, sn, ufd: got?, queue: queue.into(), cur: None })
    }

    /// Start the copy of what is left of the job in flight (or of the
    /// next one): one injected UFFDIO_COPY. False when none is left or
    /// it could not start (the jobs left go to the threads).
    fn start(&mut self) -> bool {
        use std::os::unix::fs::FileExt;
        if self.cur.is_none() {
            self.cur = self.queue.pop_front();
        }
        let Some((_, dst, src, len)) = self.cur else { return false };
        let at = self.sn.scratch + AT_COPY;
        // struct uffdio_copy: dst, src, len, mode, copy (out)
        let c: Vec<u8> = [dst, src, len, 0, 0].iter().flat_map(|w: &u64| w.to_le_bytes()).collect();
        let r = self.mem.write_all_at(&c, at).and_then(|()| self.inj.begin(libc::SYS_ioctl, &[self.ufd, super::uffd::UFFDIO_COPY, at]));
        if let Err(e) = r {
            crate::pr_warn!("snapshot {} stops copying its memory into the parked regions ({e}): the engine copies the rest", self.sn.pid);
            self.cur = None;
            self.queue.clear();
            return false;
        }
        true
    }

    /// Wait for the copy in flight: the job it wholly copied, if it did
    /// (`Ok(None)`: not yet whole, started again; `Err`: given up, its
    /// rest left to the threads).
    fn end(&mut self) -> Result<Option<usize>, ()> {
        use std::os::unix::fs::FileExt;
        let Some((job, dst, src, len)) = self.cur else { return Err(()) };
        let r = self.inj.end(libc::SYS_ioctl);
        let mut w = [0u8; 8];
        let copied = r.as_ref().ok().and_then(|_| self.mem.read_exact_at(&mut w, self.sn.scratch + AT_COPY + 32).ok()).map(|()| i64::from_le_bytes(w));
        let step = match (r, copied) {
            (Ok(0), _) => len,
            (Ok(_), Some(n)) if n > 0 => n as u64,
            (Ok(e), _) if e == -(libc::EAGAIN as i64) => 0,
            (Ok(e), _) if e == -(libc::EEXIST as i64) => PAGE,
            (r, _) => {
                let why = match r {
                    Ok(e) => io::Error::from_raw_os_error((-e) as i32),
                    Err(e) => e,
                };
                crate::pr_warn!("UFFDIO_COPY of {len:#x} bytes from {src:#x} in snapshot {} to {dst:#x}: {why}: the engine copies it", self.sn.pid);
                self.cur = None;
                return Err(());
            }
        };
        let step = step.min(len);
        self.cur = (step < len).then_some((job, dst + step, src + step, len - step));
        if self.cur.is_none() {
            return Ok(Some(job));
        }
        Ok(None)
    }
}

impl ParkUffd {
    /// Have each snapshot of `work` copy its jobs `(job, dst, src, len)`
    /// (its memory at `src`, to `dst` in a registered region) by
    /// UFFDIO_COPY injected into it, every snapshot with a copy in flight
    /// at once; the jobs wholly copied. A snapshot that fails is left
    /// alone with the jobs it had not copied (the threads copy them; pages
    /// it did copy are skipped there).
    ///
    /// # Safety
    /// Every `dst..dst + len` lies inside a region registered with this
    /// userfaultfd, kept mapped and registered (the caller holds the
    /// table) until this returns, with no Rust reference into it.
    unsafe fn copy_in_snapshots(&self, work: &[(Snap, Vec<SnapJob>)]) -> Vec<usize> {
        use std::os::fd::AsFd;
        let mut cs: Vec<SnapCopier> = Vec::with_capacity(work.len());
        for (sn, jobs) in work {
            match SnapCopier::enter(*sn, self.fd.as_fd(), jobs.clone()) {
                Ok(c) => cs.push(c),
                Err(e) => crate::pr_warn!("the userfaultfd could not be passed into snapshot {} ({e}): the engine copies its memory", sn.pid),
            }
        }
        let mut done = Vec::new();
        let mut busy: Vec<bool> = cs.iter_mut().map(SnapCopier::start).collect();
        while busy.iter().any(|&b| b) {
            for (c, b) in cs.iter_mut().zip(busy.iter_mut()).filter(|(_, b)| **b) {
                if let Ok(Some(job)) = c.end() {
                    crate::fault::point("tforktree-mid-park");
                    if crate::fault::fails("tforktree-mid-park") {
                        // (the tests' failing snapshot: its job copied but
                        // not counted, it and the rest left to the threads)
                        crate::pr_warn!("snapshot {} stops copying its memory into the parked regions (injected failure, CRIU_RS_FAULT_AT): the engine copies the rest", c.sn.pid);
                        c.queue.clear();
                    } else {
                        done.push(job);
                    }
                }
                *b = c.start();
            }
        }
        for c in &mut cs {
            let _ = c.inj.raw(libc::SYS_close, &[c.ufd]);
        }
        done
    }
}

impl Drop for ParkUffd {
    fn drop(&mut self) {
        for &(s, e) in &self.regions {
            let _ = super::uffd::unregister(&self.fd, s, e - s);
        }
    }
}

/// `Threads:` of /proc/self/status (0 if unreadable).
fn threads_now() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// The copy of [`fill`] and [`fill_all`]: allocate the range's pages
/// (MADV_POPULATE_WRITE, advice only), then pread `len` bytes of `file` at
/// `off` into it.
///
/// # Safety
/// `[addr, addr + len)` lies inside one of our regions, kept mapped (the
/// region table held by the caller) until this returns, and no Rust
/// reference points into it; several threads may fill disjoint ranges.
unsafe fn fill_locked(addr: u64, len: u64, file: &File, off: u64) -> io::Result<()> {
    const MADV_POPULATE_WRITE: i32 = 23;
    // SAFETY: the range is one of our mapped regions' (the caller's
    // contract); this advice only allocates its pages.
    let _ = unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, MADV_POPULATE_WRITE) };
    let mut done = 0u64;
    while done < len {
        let chunk = (len - done).min(1 << 30);
        let Ok(at) = libc::off_t::try_from(off + done) else { return Err(io::Error::from_raw_os_error(libc::EOVERFLOW)) };
        // SAFETY: the destination lies inside one of our writable regions
        // (the caller's contract); only the kernel writes it, each byte by
        // one thread.
        let n = unsafe { libc::pread(file.as_raw_fd(), (addr + done) as *mut libc::c_void, chunk as usize, at) };
        if n < 0 {
            let e = last_err();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("pages file ends at offset {}", off + done)));
        }
        done += n as u64;
    }
    Ok(())
}

/// The regions of this process (made here or inherited through fork).
pub fn regions() -> Vec<(u64, u64)> {
    REGIONS.list()
}

/// Unmap region `[start, end)` (exactly one of the table's; EINVAL
/// otherwise).
pub fn unmap(start: u64, end: u64) -> io::Result<()> {
    REGIONS.unmap(start, end)
}

/// Before a fork that is to take only the regions `keep` (a restore
/// process forking a child: the child's subtree's): MADV_DOFORK on those,
/// MADV_DONTFORK on every other region, so that the fork copies no page
/// table of the others (a fork's cost is its page-table copy, and the
/// child would only unmap them). The child must call [`forget_others`]
/// with the same `keep` before anything else; the parent, once its forks
/// are made, [`fork_all_again`].
pub fn fork_only(keep: &[(u64, u64)]) -> io::Result<()> {
    for (s, e) in REGIONS.list() {
        let advice = if keep.contains(&(s, e)) { libc::MADV_DOFORK } else { libc::MADV_DONTFORK };
        let _held = REGIONS.holding(s, e - s)?;
        // SAFETY: one of our regions, kept mapped by `_held`; this advice
        // only changes whether a fork copies it, never its contents.
        if unsafe { libc::madvise(s as *mut libc::c_void, (e - s) as usize, advice) } != 0 {
            return Err(last_err());
        }
    }
    Ok(())
}

/// In the child of a fork prepared by [`fork_only`] (its first call: the
/// table still lists the regions the fork left out, which this process
/// does not have, and nothing may be mapped where they were before they
/// are forgotten): the table keeps only `keep`.
pub fn forget_others(keep: &[(u64, u64)]) {
    REGIONS.retain(|r| keep.contains(&r));
}

/// After the forks [`fork_only`] prepared: every region MADV_DOFORK again
/// (a region moved into place keeps the flag, and the clone's own forks
/// must copy its memory).
pub fn fork_all_again() -> io::Result<()> {
    let all = REGIONS.list();
    fork_only(&all)
}

/// Unmap every region in a process that inherited them (a fork of the
/// one that made them); nothing in the maker itself.
pub fn drop_inherited() {
    if MAKER.load(std::sync::atomic::Ordering::Relaxed) != std::process::id() {
        unmap_all();
    }
}

/// Unmap every region.
pub fn unmap_all() {
    REGIONS.unmap_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn fill_all_copies_every_piece_on_several_threads() {
        const PG: usize = 4096;
        // 21 MiB and 3 pages, each page holding its number at both ends
        let pages = (21 << 20) / PG + 3;
        let data: Vec<u8> = (0..pages as u64)
            .flat_map(|p| {
                let mut pg = vec![0u8; PG];
                pg[..8].copy_from_slice(&(p ^ 0xabcd).to_le_bytes());
                pg[PG - 8..].copy_from_slice(&p.to_le_bytes());
                pg
            })
            .collect();
        let path = std::env::temp_dir().join(format!("criu-rs-park-fill-{}", std::process::id()));
        std::fs::write(&path, &data).unwrap();
        let f = File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        // not 2 MiB aligned: pieces cut at huge-page boundaries; two jobs,
        // the second from the middle of the file
        let len = data.len() as u64;
        let at = 0x5a5a_0000_0000u64 + 5 * PAGE;
        map(at, len, false, None).unwrap();
        let half = (10 << 20) + PAGE;
        let filled = fill_all(&[(at, half, &f, 0, false), (at + half, len - half, &f, half, false)], 2, &[]).unwrap();
        assert_eq!((filled.copied, filled.read), (0, len));
        let me = File::open("/proc/self/mem").unwrap();
        let mut back = vec![0u8; data.len()];
        me.read_exact_at(&mut back, at).unwrap();
        let bad = back.chunks(PG).zip(data.chunks(PG)).position(|(a, b)| a != b);
        // out of a region: refused, nothing read
        let outside = fill_all(&[(at + len, PAGE, &f, 0, false)], 2, &[]);
        unmap(at, at + len).unwrap();
        assert_eq!(bad, None, "first page filled wrong");
        assert_eq!(outside.unwrap_err().raw_os_error(), Some(libc::EFAULT));
        assert_eq!(fill_all(&[(at + 1, PAGE, &f, 0, false)], 2, &[]).unwrap_err().raw_os_error(), Some(libc::EINVAL));
    }

    /// Regions whose jobs all ask for it are filled by UFFDIO_COPY (where
    /// this process may make a userfaultfd), the others in place, a region
    /// with both kinds of jobs in place; every page right either way, the
    /// pages no job names left absent, and the regions usable afterwards
    /// (unregistered: reading the missing page back does not wait for a
    /// handler).
    #[test]
    fn fill_all_copies_by_userfaultfd_where_every_job_of_a_region_asks() {
        const PG: usize = 4096;
        let pages = (9 << 20) / PG + 5;
        let data: Vec<u8> = (0..pages as u64)
            .flat_map(|p| {
                let mut pg = vec![(p % 251) as u8; PG];
                pg[..8].copy_from_slice(&(p ^ 0x5eed).to_le_bytes());
                pg
            })
            .collect();
        let path = std::env::temp_dir().join(format!("criu-rs-park-copy-{}", std::process::id()));
        std::fs::write(&path, &data).unwrap();
        let f = File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let len = data.len() as u64;
        // three regions: all copy (a hole of one page left unfilled), all
        // read, mixed
        let (a, b, c) = (0x5b5b_0000_0000u64 + 3 * PAGE, 0x5b5c_0000_0000u64, 0x5b5d_0000_0000u64 + PAGE);
        for r in [a, b, c] {
            map(r, len, false, None).unwrap();
        }
        let hole = 7 * PAGE;
        let jobs = [
            (a, hole, &f, 0, true),
            (a + hole + PAGE, len - hole - PAGE, &f, hole + PAGE, true),
            (b, len, &f, 0, false),
            (c, PAGE, &f, 0, true),
            (c + PAGE, len - PAGE, &f, PAGE, false),
        ];
        let filled = fill_all(&jobs, 2, &[]).unwrap();
        let can = crate::sys::process::probe_userfaultfd(libc::O_CLOEXEC).is_ok();
        let me = File::open("/proc/self/mem").unwrap();
        let back = |at: u64| {
            let mut v = vec![0u8; data.len()];
            me.read_exact_at(&mut v, at).unwrap();
            v
        };
        // the hole: absent (pagemap's bit 63), before anything reads it
        let mut pm = [0u8; 8];
        File::open("/proc/self/pagemap").unwrap().read_exact_at(&mut pm, (a + hole) / PAGE * 8).unwrap();
        let present = u64::from_le_bytes(pm) >> 63;
        let (ba, bb, bc) = (back(a), back(b), back(c));
        for r in [a, b, c] {
            unmap(r, r + len).unwrap();
        }
        if can {
            assert_eq!((filled.copied, filled.read, filled.why_not_copied), (len - PAGE, 2 * len, None));
        } else {
            assert_eq!(filled.copied, 0, "{filled:?}");
            assert!(filled.why_not_copied.is_some());
        }
        let want_a: Vec<u8> = data.iter().enumerate().map(|(i, &x)| if (hole as usize..hole as usize + PG).contains(&i) { 0 } else { x }).collect();
        assert!(ba == want_a, "the region filled by copy");
        assert!(bb == data, "the region read in place");
        assert!(bc == data, "the mixed region");
        assert_eq!(present, 0, "the page no job named was filled");
    }
}
