//! epoll: every watched target with its events (EPOLLET, EPOLLONESHOT,
//! ... included) and data; nested epoll sets too (a target may be an
//! epoll fd).
//!
//! Dump: fdinfo's `tfd: N events: X data: X pos:P ino:I sdev:D` lines.
//! The number N is the fd the target was added through, at that time: the
//! fd may have been closed since (the watch lives as long as the file
//! does) or now hold another file. Each target is checked with
//! kcmp(KCMP_EPOLL_TFD) against fd N, and when N is not it, against every
//! fd of the task; the target is recorded under the fd that holds it. A
//! target no fd of the task holds (kept alive elsewhere: another process,
//! a socket's queue) is refused by name, as is a file watched twice under
//! numbers that now resolve to one fd.
//!
//! Image: an `EVENTPOLL` files.img entry (`eventpoll_file_entry`) with its
//! targets inline (`tfd`: fd, events, data, and dev/inode/pos of the
//! target), as upstream 4.2 writes it.
//!
//! Restore: after its targets (`after`), epoll_create1 and one
//! EPOLL_CTL_ADD per target with its events and data. A watch whose
//! EPOLLONESHOT already fired shows no events but the private bits, and is
//! added so: disarmed, as it was. An edge-triggered target that is ready
//! is reported once more after restore (the kernel does not tell whether
//! that edge was already reported), as upstream's restore does.

use super::{Collect, FileKind, ImageAcc, Read, Restore};
use crate::dump::files::FilesError;
use crate::images_io::ImagesError;
use crate::sys::event;
use crate::sys::process as p;
use images_proto::pb;
use std::os::fd::{AsFd, OwnedFd};

/// Fd numbers past this are refused in images (the kernel's fd table
/// limit, fs.nr_open, is at most 2^30).
const MAX_FD: u32 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The fd that holds the target (the number it is added through).
    pub fd: i32,
    pub events: u32,
    pub data: u64,
    /// sdev (kernel encoding), inode and position of the target at dump.
    pub dev: u32,
    pub ino: u64,
    pub pos: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoll {
    /// File status flags (O_RDWR, O_NONBLOCK; no O_CLOEXEC).
    pub flags: u32,
    pub targets: Vec<Target>,
}

/// One `tfd:` line of an epoll fdinfo: (tfd, events, data, pos, ino, sdev).
fn parse_tfd(line: &str) -> Option<(i32, u32, u64, u64, u64, u32)> {
    let mut w = line.split_whitespace();
    let mut next = |key: &str| -> Option<&str> {
        let t = w.next()?;
        if let Some(v) = t.strip_prefix(key).filter(|v| !v.is_empty()) {
            return Some(v); // `pos:0`
        }
        (t == key).then(|| w.next()).flatten()
    };
    let tfd = next("tfd:")?.parse().ok()?;
    let events = u32::from_str_radix(next("events:")?, 16).ok()?;
    let data = u64::from_str_radix(next("data:")?, 16).ok()?;
    let pos = next("pos:")?.parse::<i64>().ok()? as u64;
    let ino = u64::from_str_radix(next("ino:")?, 16).ok()?;
    let sdev = u32::from_str_radix(next("sdev:")?, 16).ok()?;
    Some((tfd, events, data, pos, ino, sdev))
}

/// The fd numbers of a task, read once per fd table.
#[derive(Default)]
struct TaskFds(Option<Vec<i32>>);

impl FileKind for Epoll {
    const TYPE: pb::FdTypes = pb::FdTypes::Eventpoll;
    const NAME: &'static str = "eventpoll";

    fn claims(link: &str, _meta: &std::fs::Metadata) -> bool {
        link == "anon_inode:[eventpoll]"
    }

    fn collect(cx: &mut Collect<'_>) -> Result<Self, FilesError> {
        let n = Self::NAME;
        let (pid, epfd) = (cx.pid, cx.fd);
        let mut targets: Vec<Target> = Vec::new();
        // registrations seen so far per fd number: the `toff` of kcmp
        let mut seen: std::collections::HashMap<i32, u32> = std::collections::HashMap::new();
        for line in cx.fdinfo.lines().filter(|l| l.starts_with("tfd:")) {
            let (tfd, events, data, pos, ino, dev) = parse_tfd(line).ok_or_else(|| cx.refuse(n, format!("fdinfo line {line:?} is not a tfd line")))?;
            let toff = seen.entry(tfd).or_insert(0);
            let off = *toff;
            *toff += 1;
            let kcmp_err = |e: std::io::Error| FilesError::Io { pid, fd: epfd, source: e };
            let fd = if event::kcmp_epoll_tfd(pid, tfd, epfd, tfd, off).map_err(kcmp_err)? {
                tfd
            } else {
                let fds = match &cx.scratch.get::<TaskFds>().0 {
                    Some(v) => v.clone(),
                    None => {
                        let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| FilesError::Io { pid, fd: epfd, source: e })?;
                        let v: Vec<i32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
                        cx.scratch.get::<TaskFds>().0 = Some(v.clone());
                        v
                    }
                };
                let mut found = None;
                for f in fds {
                    if f != epfd && event::kcmp_epoll_tfd(pid, f, epfd, tfd, off).map_err(kcmp_err)? {
                        found = Some(f);
                        break;
                    }
                }
                let Some(f) = found else {
                    return Err(cx.refuse(n, format!("it watches a file added as fd {tfd} that no fd of the process holds any more (closed; the file is kept open elsewhere): not supported")));
                };
                crate::pr_debug!("epoll fd {epfd} of {pid}: the target added as fd {tfd} is fd {f} now");
                f
            };
            if let Some(t) = targets.iter().find(|t| t.fd == fd) {
                return Err(cx.refuse(n, format!("it watches the file of fd {fd} twice (added as fd {} and fd {tfd}, one of them closed since): not supported", t.fd)));
            }
            targets.push(Target { fd, events, data, dev, ino, pos });
        }
        Ok(Epoll { flags: cx.flags, targets })
    }

    fn write(&self, id: u32, _acc: &mut ImageAcc) -> Result<pb::FileEntry, ImagesError> {
        let tfd = self
            .targets
            .iter()
            .map(|t| pb::EventpollTfdEntry {
                id: 0,
                tfd: t.fd as u32,
                events: t.events,
                data: t.data,
                dev: Some(t.dev),
                inode: Some(t.ino),
                pos: Some(t.pos),
            })
            .collect();
        Ok(pb::FileEntry {
            r#type: Self::TYPE as i32,
            id,
            epfd: Some(pb::EventpollFileEntry { id, flags: self.flags, fown: super::fown(), tfd }),
            ..Default::default()
        })
    }

    fn read(e: &pb::FileEntry, cx: &mut Read<'_>) -> Result<Self, ImagesError> {
        let m = cx.member(e, "epfd", &e.epfd)?;
        let mut targets: Vec<Target> = Vec::with_capacity(m.tfd.len());
        for (i, t) in m.tfd.iter().enumerate() {
            if t.tfd >= MAX_FD {
                return Err(cx.bad(e, &format!("epfd.tfd[{i}].tfd"), format!("fd {} is out of range", t.tfd)));
            }
            if targets.iter().any(|x| x.fd == t.tfd as i32) {
                return Err(cx.bad(e, &format!("epfd.tfd[{i}].tfd"), format!("fd {} is watched twice", t.tfd)));
            }
            targets.push(Target {
                fd: t.tfd as i32,
                events: t.events,
                data: t.data,
                dev: t.dev.unwrap_or(0),
                ino: t.inode.unwrap_or(0),
                pos: t.pos.unwrap_or(0),
            });
        }
        Ok(Epoll { flags: m.flags, targets })
    }

    fn after(&self) -> Vec<i32> {
        self.targets.iter().map(|t| t.fd).collect()
    }

    fn restore(&self, cx: &mut Restore<'_>) -> Result<OwnedFd, String> {
        let ep = event::epoll_create(0).map_err(|e| format!("epoll_create1: {e}"))?;
        for t in &self.targets {
            let at = cx.fd_of(t.fd);
            if at == cx.fd {
                return Err(format!("it watches itself (fd {})", t.fd));
            }
            // a watch is keyed by the fd number it was added through (the
            // program's EPOLL_CTL_MOD/DEL name it): when the target sits on
            // another number here (the root making a description shared
            // across the tree), it is added through its own number, free
            // in the root at this point, for that moment
            let borrowed = at != t.fd && p::fcntl_int(t.fd, libc::F_GETFD, 0).is_err();
            if borrowed {
                p::dup2(at, t.fd).map_err(|e| format!("dup2 {at} -> {}: {e}", t.fd))?;
            }
            let via = if borrowed || at == t.fd { t.fd } else { at };
            let r = event::epoll_add(ep.as_fd(), via, t.events, t.data);
            if borrowed {
                p::close(t.fd);
            }
            r.map_err(|e| format!("EPOLL_CTL_ADD fd {via} (dumped fd {}; events {:#x}, data {:#x}): {e}", t.fd, t.events, t.data))?;
        }
        super::set_status_flags(&ep, self.flags)?;
        Ok(ep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tfd_lines() {
        let l = "tfd:       24 events: 80000019 data:             1003  pos:0 ino:40d30b sdev:f";
        assert_eq!(parse_tfd(l), Some((24, 0x8000_0019, 0x1003, 0, 0x40d30b, 0xf)));
        assert_eq!(parse_tfd("tfd: 9 events: 19 data: ffffffffffffffff pos:12 ino:11 sdev:10"), Some((9, 0x19, u64::MAX, 12, 0x11, 0x10)));
        assert_eq!(parse_tfd("tfd: x events: 19"), None);
    }
}
