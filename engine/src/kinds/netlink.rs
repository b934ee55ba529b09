//! Netlink sockets (NETLINK_ROUTE, NETLINK_KOBJECT_UEVENT, ... any
//! protocol): bound port id, multicast groups, destination, buffer sizes.
//!
//! Dump: claimed by the socket's protocol name (sockfs xattr
//! `system.sockprotoname` = `NETLINK`); the socket taken with
//! `pidfd_getfd` and asked: SO_PROTOCOL, SO_TYPE, getsockname (port id;
//! 0: never bound), NETLINK_LIST_MEMBERSHIPS (every group, not only the
//! first 32 the address shows), getpeername (destination port and
//! group), SO_SNDBUF/SO_RCVBUF and SO_BUF_LOCK. Messages queued unread
//! (notifications, answers) are not carried: a warning with their count
//! (the program sees what an overrun would give it; upstream 4.2 does not
//! carry them either). Image: `NETLINKSK` `netlink_sk_entry` as upstream
//! 4.2 writes it (groups as 32-bit bitmap words, `state` 7 = unconnected,
//! 1 = connected). Restore: socket, the buffer sizes that were locked,
//! bind to the port id and the first 32 groups (a port id taken now fails
//! naming it), NETLINK_ADD_MEMBERSHIP for the groups past 32, connect to
//! the destination, status flags.

use super::{Collect, FileKind, ImageAcc, Read, Restore};
use crate::dump::files::FilesError;
use crate::images_io::ImagesError;
use crate::sys::sock;
use images_proto::pb;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;
/// TCP_ESTABLISHED / TCP_CLOSE, as upstream records a netlink socket's state.
const ST_CONNECTED: u32 = 1;
const ST_UNCONNECTED: u32 = 7;
/// Group bitmap words read back at most (the kernel has at most 2^32
/// groups per family; real families use a few dozen).
const MAX_GROUP_WORDS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netlink {
    /// The socket's inode (its `socket:[N]`).
    pub ino: u32,
    pub protocol: u32,
    /// SOCK_RAW or SOCK_DGRAM.
    pub ty: u32,
    /// File status flags (no O_CLOEXEC).
    pub flags: u32,
    pub portid: u32,
    /// Multicast groups, bitmap words (group g+1 is bit g).
    pub groups: Vec<u32>,
    pub dst_portid: u32,
    pub dst_group: u32,
    pub sndbuf: u32,
    pub rcvbuf: u32,
    pub buf_lock: u32,
}

fn membership(s: BorrowedFd<'_>) -> std::io::Result<Vec<u32>> {
    let mut buf = [0u8; MAX_GROUP_WORDS * 4];
    let n = sock::get_bytes(s, libc::SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, &mut buf)?;
    let mut v: Vec<u32> = buf[..n.min(buf.len())].chunks_exact(4).map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect();
    while v.last() == Some(&0) {
        v.pop();
    }
    Ok(v)
}

/// Messages queued on `s`, peeked (not consumed).
fn queued(s: BorrowedFd<'_>) -> usize {
    let mut buf = [0u8; 1];
    let mut n = 0;
    // SO_PEEK_OFF is not for netlink: one peek tells whether any is there
    if let Ok(Some(_)) = sock::peek(s, &mut buf) {
        n += 1;
    }
    n
}

impl FileKind for Netlink {
    const TYPE: pb::FdTypes = pb::FdTypes::Netlinksk;
    const NAME: &'static str = "netlink socket";

    fn claims(_link: &str, _meta: &std::fs::Metadata) -> bool {
        false
    }

    fn claims_fd(cx: &Collect<'_>) -> bool {
        cx.link.starts_with("socket:[")
            && crate::sys::inet::sock_proto_name(std::path::Path::new(&format!("/proc/{}/fd/{}", cx.pid, cx.fd))).is_ok_and(|n| n == "NETLINK")
    }

    fn collect(cx: &mut Collect<'_>) -> Result<Self, FilesError> {
        let (pid, fd) = (cx.pid, cx.fd);
        let io = |what: &str, e: std::io::Error| FilesError::Kind { pid, fd, kind: Self::NAME, why: format!("{what}: {e}") };
        let pidfd = crate::sys::process::pidfd_open(pid).map_err(|e| FilesError::Io { pid, fd, source: e })?;
        let s = crate::sys::process::pidfd_getfd(&pidfd, fd).map_err(|e| io("pidfd_getfd", e))?;
        let s = s.as_fd();
        let int = |name: i32, what: &str| sock::get_int(s, libc::SOL_SOCKET, name).map(|v| v as u32).map_err(|e| io(what, e));
        let protocol = int(libc::SO_PROTOCOL, "SO_PROTOCOL")?;
        let ty = int(libc::SO_TYPE, "SO_TYPE")?;
        let (portid, first) = sock::nl_name(s, false).map_err(|e| io("getsockname", e))?;
        let mut groups = membership(s).map_err(|e| io("NETLINK_LIST_MEMBERSHIPS", e))?;
        if groups.is_empty() && first != 0 {
            groups.push(first);
        }
        // the peer's groups are a mask of the one destination group
        let (dst_portid, dst_group) = match sock::nl_name(s, true) {
            Ok((p, mask)) => (p, if mask == 0 { 0 } else { mask.trailing_zeros() + 1 }),
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => (0, 0),
            Err(e) => return Err(io("getpeername", e)),
        };
        let n = queued(s);
        if n != 0 {
            crate::pr_warn!("fd {fd} of {pid}: netlink socket (protocol {protocol}, port {portid}) has messages queued unread: they are not carried");
        }
        let ino = cx.link.strip_prefix("socket:[").and_then(|l| l.strip_suffix(']')).and_then(|n| n.parse().ok()).unwrap_or(0);
        Ok(Netlink {
            ino,
            protocol,
            ty,
            flags: cx.flags,
            portid,
            groups,
            dst_portid,
            dst_group,
            sndbuf: int(libc::SO_SNDBUF, "SO_SNDBUF")?,
            rcvbuf: int(libc::SO_RCVBUF, "SO_RCVBUF")?,
            buf_lock: int(libc::SO_BUF_LOCK, "SO_BUF_LOCK")?,
        })
    }

    fn write(&self, id: u32, _acc: &mut ImageAcc) -> Result<pb::FileEntry, ImagesError> {
        let connected = self.dst_portid != 0 || self.dst_group != 0;
        Ok(pb::FileEntry {
            r#type: Self::TYPE as i32,
            id,
            nlsk: Some(pb::NetlinkSkEntry {
                id,
                ino: self.ino,
                protocol: self.protocol,
                state: if connected { ST_CONNECTED } else { ST_UNCONNECTED },
                flags: self.flags,
                portid: self.portid,
                groups: self.groups.clone(),
                dst_portid: self.dst_portid,
                dst_group: self.dst_group,
                fown: super::fown(),
                opts: pb::SkOptsEntry {
                    so_sndbuf: self.sndbuf,
                    so_rcvbuf: self.rcvbuf,
                    so_buf_lock: Some(self.buf_lock),
                    ..Default::default()
                },
                ns_id: None,
            }),
            ..Default::default()
        })
    }

    fn read(e: &pb::FileEntry, cx: &mut Read<'_>) -> Result<Self, ImagesError> {
        let m = cx.member(e, "nlsk", &e.nlsk)?;
        if m.protocol >= 32 {
            return Err(cx.bad(e, "nlsk.protocol", format!("{} is not a netlink protocol (MAX_LINKS 32)", m.protocol)));
        }
        if m.groups.len() > MAX_GROUP_WORDS {
            return Err(cx.bad(e, "nlsk.groups", format!("{} bitmap words, more than {MAX_GROUP_WORDS}", m.groups.len())));
        }
        if m.dst_group >= 32 * MAX_GROUP_WORDS as u32 {
            return Err(cx.bad(e, "nlsk.dst_group", format!("{} is past the groups a socket can name", m.dst_group)));
        }
        let buf_lock = m.opts.so_buf_lock.unwrap_or(0);
        if buf_lock > 3 {
            return Err(cx.bad(e, "nlsk.opts.so_buf_lock", format!("{buf_lock} is not a set of buffer locks")));
        }
        Ok(Netlink {
            ino: m.ino,
            protocol: m.protocol,
            // upstream records no type: netlink sockets are SOCK_RAW (or
            // SOCK_DGRAM, the same to the kernel)
            ty: libc::SOCK_RAW as u32,
            flags: m.flags,
            portid: m.portid,
            groups: m.groups.clone(),
            dst_portid: m.dst_portid,
            dst_group: m.dst_group,
            sndbuf: m.opts.so_sndbuf,
            rcvbuf: m.opts.so_rcvbuf,
            buf_lock,
        })
    }

    fn restore(&self, _cx: &mut Restore<'_>) -> Result<OwnedFd, String> {
        let what = format!("netlink socket (protocol {}, port {})", self.protocol, self.portid);
        let s = crate::sys::inet::socket(libc::AF_NETLINK, self.ty as i32, self.protocol as i32).map_err(|e| format!("{what}: socket: {e}"))?;
        let f = s.as_fd();
        if self.buf_lock & 1 != 0 {
            sock::set_int(f, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, (self.sndbuf / 2) as i32).map_err(|e| format!("{what}: SO_SNDBUFFORCE: {e}"))?;
        }
        if self.buf_lock & 2 != 0 {
            sock::set_int(f, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (self.rcvbuf / 2) as i32).map_err(|e| format!("{what}: SO_RCVBUFFORCE: {e}"))?;
        }
        let first = self.groups.first().copied().unwrap_or(0);
        if self.portid != 0 || first != 0 {
            sock::nl_bind(f, self.portid, first, false).map_err(|e| {
                let hint = if e.raw_os_error() == Some(libc::EADDRINUSE) { " (another socket holds that port id now)" } else { "" };
                format!("{what}: bind to port {} groups {first:#x}: {e}{hint}", self.portid)
            })?;
        }
        for (w, bits) in self.groups.iter().enumerate().skip(1) {
            for b in 0..32 {
                if bits & (1 << b) != 0 {
                    let g = (w * 32 + b + 1) as i32;
                    sock::set_int(f, libc::SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, g).map_err(|e| format!("{what}: NETLINK_ADD_MEMBERSHIP {g}: {e}"))?;
                }
            }
        }
        if self.dst_portid != 0 || self.dst_group != 0 {
            let g = if self.dst_group == 0 { 0 } else { 1u32 << ((self.dst_group - 1) % 32) };
            sock::nl_bind(f, self.dst_portid, g, true).map_err(|e| format!("{what}: connect to port {} group {}: {e}", self.dst_portid, self.dst_group))?;
        }
        super::set_status_flags(&s, self.flags)?;
        Ok(s)
    }
}
