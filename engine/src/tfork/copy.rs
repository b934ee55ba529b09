//! Kernel objects of the source's own that a fork-made clone gets a copy
//! of, made by injection into the clone in `finish` (docs/ARCHITECTURE.md,
//! "tfork", "Isolation"): an eventfd (its count, semaphore mode), a
//! signalfd (its mask), a timerfd armed relative (time left, interval,
//! pending expirations), a pipe with both ends in the process (its buffer
//! size and queued bytes), a unix socketpair with both ends in the
//! process (stream, datagram or seqpacket; both queues; default socket
//! options, nothing in flight, nothing shut down), an epoll set (every
//! watch: events and data, added again through the fd numbers, which hold
//! the clone's copies by then). Each is made fresh with the state collected at the freeze, then
//! `dup3`'d over every fd that shared its description (with each fd's
//! close-on-exec flag) and its status flags set, as `--tcp-close` does
//! for a connection ([`super::net`]). The source's objects are not
//! touched. Other kinds of the process's own send it down the restore
//! path ([`super::iso`]).

use super::TforkError;
use crate::kinds::Kind;
use crate::model::{FileDesc, Task};
use crate::restore::space::Space;
use crate::sys::inject::Injector;
use crate::sys::Pid;
use std::os::unix::fs::FileExt;

/// Bytes written through the scratch area at once (it holds 60 KiB).
const CHUNK: usize = 32 << 10;
/// TCP_ESTABLISHED and TCP_LISTEN, a unix socket's states too.
const ST_ESTABLISHED: u8 = 1;
const ST_LISTEN: u8 = 10;
/// `_IOW('T', 0, u64)`.
const TFD_IOC_SET_TICKS: u64 = (1 << 30) | (8 << 16) | ((b'T' as u64) << 8);

/// One object to make in each clone.
#[derive(Debug, Clone)]
enum Obj {
    Eventfd { count: u64, semaphore: bool },
    Signalfd { mask: u64 },
    /// Relative only; `value`/`interval` (s, ns).
    Timerfd { clock: u32, ticks: u64, value: (u64, u64), interval: (u64, u64) },
    /// The entry's description is end `a`; `queues`: what each end
    /// (a, b) has to read.
    Socketpair { ty: u8, queues: [Vec<Vec<u8>>; 2], b: Desc },
    /// `data`: the bytes queued at the freeze.
    Pipe { size: u32, data: Vec<u8>, write: Desc },
    Epoll { targets: Vec<(i32, u32, u64)> },
}

/// One open file description: its status flags and (fd, close-on-exec)
/// of every fd that shares it.
#[derive(Debug, Clone)]
struct Desc {
    flags: u32,
    fds: Vec<(i32, bool)>,
}

/// What each fork-made clone gets its own copy of (a pipe's entry is its
/// read end's description, with its write end's inside).
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan(Vec<(Obj, Desc)>);

fn desc_of(task: &Task, desc: u32, flags: u32) -> Desc {
    Desc { flags, fds: task.fds.iter().filter(|g| g.desc == desc).map(|g| (g.fd, g.cloexec)).collect() }
}

impl Plan {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The copies `task` needs, or why it can't be cloned by fork with
    /// copies (then it goes down the restore path): a kind [`super::iso`]
    /// routes here but in a shape not copied (a pipe end with two
    /// descriptions, an epoll set watching another epoll set).
    pub(crate) fn new(task: &Task) -> Result<Plan, String> {
        let pid = task.pid;
        let mut plan = Plan::default();
        let mut seen = std::collections::HashSet::new();
        let mut epolls = Vec::new();
        let mut fresh: std::collections::HashMap<u8, crate::kinds::sk_opts::SkOpts> = std::collections::HashMap::new();
        for f in &task.fds {
            let FileDesc::Kind(k) = &f.file;
            if !seen.insert(f.desc) {
                continue;
            }
            match k {
                Kind::Eventfd(e) => plan.0.push((Obj::Eventfd { count: e.count, semaphore: e.semaphore }, desc_of(task, f.desc, e.flags))),
                Kind::Signalfd(s) => plan.0.push((Obj::Signalfd { mask: s.mask }, desc_of(task, f.desc, s.flags))),
                Kind::Timerfd(t) => {
                    if t.settime_flags != 0 {
                        return Err(format!("fd {} of {pid} is a timerfd armed with flags {:#x} (TFD_TIMER_ABSTIME)", f.fd, t.settime_flags));
                    }
                    plan.0.push((Obj::Timerfd { clock: t.clock, ticks: t.ticks, value: t.value, interval: t.interval }, desc_of(task, f.desc, t.flags)));
                }
                Kind::Unix(u) if u.state == ST_LISTEN && !u.name.is_empty() => {}
                Kind::Unix(u) => {
                    let why = |what: &str| format!("fd {} of {pid} is a unix socket {what}", f.fd);
                    let peer = task.fds.iter().find_map(|g| match &g.file {
                        FileDesc::Kind(Kind::Unix(q)) if u.peer != 0 && q.ino == u.peer && q.peer == u.ino => Some((g.desc, q)),
                        _ => None,
                    });
                    let Some((pdesc, q)) = peer else { return Err(why("whose peer is not a socket of the process")) };
                    if seen.contains(&pdesc) {
                        // (its pair was planned from the other end)
                        continue;
                    }
                    seen.insert(pdesc);
                    if u.state != ST_ESTABLISHED || !u.name.is_empty() || !q.name.is_empty() {
                        return Err(why("bound to a name, or not a connected pair"));
                    }
                    if u.shutdown != 0 || q.shutdown != 0 || !u.passed.is_empty() || !q.passed.is_empty() {
                        return Err(why("of a pair that is shut down or holds files in flight"));
                    }
                    let small = |x: &crate::kinds::unix::UnixSk| x.queue.len() <= 64 && x.queue.iter().map(Vec::len).sum::<usize>() <= CHUNK;
                    if !small(u) || !small(q) {
                        return Err(why("of a pair with more than 64 messages or 32 KiB queued"));
                    }
                    if !matches!(i32::from(u.ty), libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_SEQPACKET) {
                        return Err(why(&format!("of type {}", u.ty)));
                    }
                    let def = match fresh.get(&u.ty) {
                        Some(d) => d.clone(),
                        None => {
                            use std::os::fd::AsFd;
                            let (x, _y) = crate::sys::sock::socketpair(i32::from(u.ty) | libc::SOCK_CLOEXEC).map_err(|e| format!("a socketpair to compare options with: {e}"))?;
                            let d = crate::kinds::sk_opts::SkOpts::read(x.as_fd()).map_err(|e| format!("options of a fresh socketpair: {e}"))?;
                            fresh.insert(u.ty, d.clone());
                            d
                        }
                    };
                    if u.opts != def || q.opts != def {
                        return Err(why("of a pair with socket options set"));
                    }
                    plan.0.push((Obj::Socketpair { ty: u.ty, queues: [u.queue.clone(), q.queue.clone()], b: desc_of(task, pdesc, q.flags) }, desc_of(task, f.desc, u.flags)));
                }
                Kind::Epoll(e) => {
                    for t in &e.targets {
                        if task.fds.iter().any(|g| g.fd == t.fd && matches!(&g.file, FileDesc::Kind(Kind::Epoll(_)))) {
                            return Err(format!("fd {} of {pid} is an epoll set watching another (fd {})", f.fd, t.fd));
                        }
                    }
                    epolls.push((Obj::Epoll { targets: e.targets.iter().map(|t| (t.fd, t.events, t.data)).collect() }, desc_of(task, f.desc, e.flags)));
                }
                Kind::Pipe(p) if p.flags as i32 & libc::O_ACCMODE != libc::O_WRONLY => {
                    let ends = |wr: bool| -> Vec<(u32, u32)> {
                        let mut v: Vec<(u32, u32)> = task
                            .fds
                            .iter()
                            .filter_map(|g| match &g.file {
                                FileDesc::Kind(Kind::Pipe(q)) if q.pipe_id == p.pipe_id && (q.flags as i32 & libc::O_ACCMODE == libc::O_WRONLY) == wr => Some((g.desc, q.flags)),
                                _ => None,
                            })
                            .collect();
                        v.sort_unstable();
                        v.dedup_by_key(|x| x.0);
                        v
                    };
                    let (r, w) = (ends(false), ends(true));
                    if r.len() != 1 || w.len() != 1 {
                        return Err(format!("fd {} of {pid} is a pipe with {} read and {} write descriptions in the process", f.fd, r.len(), w.len()));
                    }
                    let data = task.fds.iter().find_map(|g| match &g.file {
                        FileDesc::Kind(Kind::Pipe(q)) if q.pipe_id == p.pipe_id => q.data.clone(),
                        _ => None,
                    });
                    let (size, bytes) = data.map(|d| (d.size, d.data.clone())).unwrap_or((0, Vec::new()));
                    plan.0.push((Obj::Pipe { size, data: bytes, write: desc_of(task, w[0].0, w[0].1) }, desc_of(task, r[0].0, r[0].1)));
                }
                _ => {}
            }
        }
        // (the sets last: their watches are added through the copies)
        plan.0.extend(epolls);
        Ok(plan)
    }

    /// In the stopped clone `pid` (`main` its injector, `sp` its gadget
    /// area): each object made again and put on its fds.
    pub(crate) fn apply(&self, pid: Pid, main: &mut Injector, sp: &Space) -> Result<(), TforkError> {
        let ioe = |what: String| move |e: std::io::Error| TforkError::Io { pid, what, source: e, loc: std::panic::Location::caller() };
        let nonblock = |flags: u32| u64::from(flags & libc::O_NONBLOCK as u32);
        for (obj, d) in &self.0 {
            let first = d.fds.first().map_or(-1, |f| f.0);
            let fd = match obj {
                Obj::Eventfd { count, semaphore } => {
                    let fl = libc::EFD_CLOEXEC as u64 | nonblock(d.flags) | if *semaphore { libc::EFD_SEMAPHORE as u64 } else { 0 };
                    let e = main.call("eventfd2", libc::SYS_eventfd2, &[0, fl]).map_err(ioe(format!("a copy of the eventfd of fd {first}")))?;
                    if *count != 0 {
                        let at = sp.write(0, &count.to_le_bytes())?;
                        main.call("write(eventfd)", libc::SYS_write, &[e, at, 8]).map_err(ioe(format!("the count {count} of the eventfd of fd {first}")))?;
                    }
                    e
                }
                Obj::Signalfd { mask } => {
                    let at = sp.write(0, &mask.to_le_bytes())?;
                    main.call("signalfd4", libc::SYS_signalfd4, &[u64::MAX, at, 8, libc::SFD_CLOEXEC as u64 | nonblock(d.flags)])
                        .map_err(ioe(format!("a copy of the signalfd of fd {first}")))?
                }
                Obj::Timerfd { clock, ticks, value, interval } => {
                    let t = main.call("timerfd_create", libc::SYS_timerfd_create, &[u64::from(*clock), libc::TFD_CLOEXEC as u64 | nonblock(d.flags)])
                        .map_err(ioe(format!("a copy of the timerfd of fd {first}")))?;
                    // an expired periodic timer shows no time left (re-armed
                    // on read): its next period
                    let zero = |x: (u64, u64)| x == (0, 0);
                    let left = if zero(*value) && !zero(*interval) && *ticks > 0 { *interval } else { *value };
                    if !zero(left) || !zero(*interval) {
                        let its: Vec<u8> = [interval.0, interval.1, left.0, left.1].iter().flat_map(|w| w.to_le_bytes()).collect();
                        let at = sp.write(0, &its)?;
                        main.call("timerfd_settime", libc::SYS_timerfd_settime, &[t, 0, at, 0])
                            .map_err(ioe(format!("arming the copy of the timerfd of fd {first} ({left:?} left, interval {interval:?})")))?;
                    }
                    if *ticks > 0 {
                        let at = sp.write(0, &ticks.to_le_bytes())?;
                        main.call("ioctl(TFD_IOC_SET_TICKS)", libc::SYS_ioctl, &[t, TFD_IOC_SET_TICKS, at])
                            .map_err(ioe(format!("{ticks} pending expirations of the copy of the timerfd of fd {first}")))?;
                    }
                    t
                }
                Obj::Socketpair { ty, queues, b } => {
                    let at = sp.write(0, &[0u8; 8])?;
                    main.call("socketpair", libc::SYS_socketpair, &[libc::AF_UNIX as u64, u64::from(*ty) | libc::SOCK_CLOEXEC as u64, 0, at])
                        .map_err(ioe(format!("a copy of the socketpair of fd {first}")))?;
                    let mut fds = [0u8; 8];
                    sp.mem.read_exact_at(&mut fds, at).map_err(ioe("reading the new socketpair's fds".into()))?;
                    let ends = [u64::from(u32::from_le_bytes([fds[0], fds[1], fds[2], fds[3]])), u64::from(u32::from_le_bytes([fds[4], fds[5], fds[6], fds[7]]))];
                    // what each end has to read, sent from the other: a
                    // stream's bytes at once, each message on its own
                    for (to, q) in queues.iter().enumerate() {
                        let from = ends[1 - to];
                        let msgs: Vec<Vec<u8>> = if i32::from(*ty) == libc::SOCK_STREAM { vec![q.concat()] } else { q.clone() };
                        for m in msgs.iter().filter(|m| !m.is_empty() || i32::from(*ty) != libc::SOCK_STREAM) {
                            let at = sp.write(4096, m)?;
                            let n = main.call("sendto", libc::SYS_sendto, &[from, at, m.len() as u64, libc::MSG_DONTWAIT as u64, 0, 0])
                                .map_err(ioe(format!("queueing {} bytes in the copy of the socketpair of fd {first}", m.len())))?;
                            if n != m.len() as u64 {
                                return Err(TforkError::Unsupported(format!("clone {pid}: the copy of the socketpair of fd {first} took {n} of {} bytes", m.len())));
                            }
                        }
                    }
                    put(main, pid, ends[1], b, "socketpair")?;
                    ends[0]
                }
                Obj::Epoll { targets } => {
                    let ep = main.call("epoll_create1", libc::SYS_epoll_create1, &[libc::EPOLL_CLOEXEC as u64]).map_err(ioe(format!("a copy of the epoll set of fd {first}")))?;
                    for &(tfd, events, data) in targets {
                        // struct epoll_event, packed on x86_64: events, data
                        let mut ev = events.to_le_bytes().to_vec();
                        ev.extend(data.to_le_bytes());
                        let at = sp.write(0, &ev)?;
                        main.call("epoll_ctl(ADD)", libc::SYS_epoll_ctl, &[ep, libc::EPOLL_CTL_ADD as u64, tfd as u64, at])
                            .map_err(ioe(format!("watching fd {tfd} (events {events:#x}) in the copy of the epoll set of fd {first}")))?;
                    }
                    ep
                }
                Obj::Pipe { size, data, write } => {
                    let at = sp.write(0, &[0u8; 8])?;
                    main.call("pipe2", libc::SYS_pipe2, &[at, libc::O_CLOEXEC as u64]).map_err(ioe(format!("a copy of the pipe of fd {first}")))?;
                    let mut b = [0u8; 8];
                    sp.mem.read_exact_at(&mut b, at).map_err(ioe("reading the new pipe's fds".into()))?;
                    let (r, w) = (u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])), u64::from(u32::from_le_bytes([b[4], b[5], b[6], b[7]])));
                    if *size != 0 {
                        main.call("fcntl(F_SETPIPE_SZ)", libc::SYS_fcntl, &[w, libc::F_SETPIPE_SZ as u64, u64::from(*size)])
                            .map_err(ioe(format!("the buffer size {size} of the copy of the pipe of fd {first}")))?;
                    }
                    // the queued bytes, through the scratch area (60 KiB) in chunks
                    for chunk in data.chunks(CHUNK) {
                        let at = sp.write(4096, chunk)?;
                        let n = main.call("write(pipe)", libc::SYS_write, &[w, at, chunk.len() as u64]).map_err(ioe(format!("refilling the copy of the pipe of fd {first}")))?;
                        if n != chunk.len() as u64 {
                            return Err(TforkError::Unsupported(format!("clone {pid}: the copy of the pipe of fd {first} took {n} of {} bytes", chunk.len())));
                        }
                    }
                    put(main, pid, w, write, "pipe")?;
                    r
                }
            };
            put(main, pid, fd, d, match obj {
                Obj::Eventfd { .. } => "eventfd",
                Obj::Signalfd { .. } => "signalfd",
                Obj::Timerfd { .. } => "timerfd",
                Obj::Socketpair { .. } => "socketpair",
                Obj::Epoll { .. } => "epoll set",
                Obj::Pipe { .. } => "pipe",
            })?;
        }
        if !self.0.is_empty() {
            crate::pr_info!("clone {pid}: its own copies of {} objects of the source (fds {:?})", self.0.len(), self.0.iter().flat_map(|(_, d)| d.fds.iter().map(|f| f.0)).collect::<Vec<_>>());
        }
        Ok(())
    }
}

/// The new object `new` onto every fd of `d` (its status flags set), the
/// spare fd closed.
fn put(main: &mut Injector, pid: Pid, new: u64, d: &Desc, what: &str) -> Result<(), TforkError> {
    let ioe = |what: String| move |e: std::io::Error| TforkError::Io { pid, what, source: e, loc: std::panic::Location::caller() };
    let settable = (libc::O_NONBLOCK | libc::O_DIRECT) as u32;
    if d.flags & settable != 0 {
        main.call("fcntl(F_SETFL)", libc::SYS_fcntl, &[new, libc::F_SETFL as u64, u64::from(d.flags & settable)])
            .map_err(ioe(format!("status flags {:#o} of the copy of the {what} of fds {:?}", d.flags, d.fds)))?;
    }
    for &(fd, cloexec) in &d.fds {
        if fd as u64 == new {
            continue;
        }
        let fl = if cloexec { libc::O_CLOEXEC as u64 } else { 0 };
        main.call(&format!("dup3(.., {fd})"), libc::SYS_dup3, &[new, fd as u64, fl]).map_err(ioe(format!("fd {fd} onto the copy of its {what}")))?;
    }
    if !d.fds.iter().any(|&(fd, _)| fd as u64 == new) {
        main.call("close", libc::SYS_close, &[new]).map_err(ioe(format!("closing the spare fd of the copy of the {what}")))?;
    }
    Ok(())
}
