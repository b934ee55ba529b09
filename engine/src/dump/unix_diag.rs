//! Unix sockets as the kernel's sock_diag reports them (NETLINK_SOCK_DIAG,
//! family AF_UNIX, `linux/unix_diag.h`): one dump of every unix socket of
//! the engine's network namespace, read from outside the frozen task:
//! inode, type, state, bound name, the bound file's inode, peer inode, the
//! client inodes queued on a listening socket, queue lengths, shutdown.
//!
//! Message layout (all native-endian): `nlmsghdr` {len u32, type u16,
//! flags u16, seq u32, pid u32}; request `unix_diag_req` {family u8,
//! protocol u8, pad u16, states u32, ino u32, show u32, cookie [u32; 2]};
//! reply `unix_diag_msg` {family u8, type u8, state u8, pad u8, ino u32,
//! cookie [u32; 2]} followed by netlink attributes {len u16, type u16,
//! payload, padded to 4}.

use crate::sys::sock;
use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;

const UDIAG_SHOW_NAME: u32 = 0x01;
const UDIAG_SHOW_VFS: u32 = 0x02;
const UDIAG_SHOW_PEER: u32 = 0x04;
const UDIAG_SHOW_ICONS: u32 = 0x08;
const UDIAG_SHOW_RQLEN: u32 = 0x10;

const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

/// Socket states as the kernel numbers them (TCP_*).
pub const ST_ESTABLISHED: u8 = 1;
pub const ST_CLOSE: u8 = 7;
pub const ST_LISTEN: u8 = 10;

/// One unix socket as sock_diag sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixDiag {
    pub ino: u32,
    /// SOCK_STREAM (1), SOCK_DGRAM (2), SOCK_SEQPACKET (5).
    pub ty: u8,
    /// TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN.
    pub state: u8,
    /// The bound name (a path, or `\0` + abstract name); for an accepted
    /// socket, its listener's.
    pub name: Option<Vec<u8>>,
    /// (inode, device) of the bound socket file, for a path name.
    pub vfs: Option<(u32, u32)>,
    /// The peer's inode (0: none, or an orphan peer).
    pub peer: u32,
    /// A listening socket: the inodes of the clients whose connections
    /// are queued, not yet accepted.
    pub icons: Vec<u32>,
    /// (rqueue, wqueue): bytes queued for reading (a datagram socket: the
    /// first datagram's) and bytes sent not yet read; a listening socket:
    /// queued connections and the backlog.
    pub rqlen: (u32, u32),
    /// RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2).
    pub shutdown: u8,
}

/// The dump request for every unix socket in every state.
pub fn request(seq: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(40);
    b.extend_from_slice(&40u32.to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.push(libc::AF_UNIX as u8);
    b.push(0);
    b.extend_from_slice(&0u16.to_ne_bytes());
    b.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    b.extend_from_slice(&0u32.to_ne_bytes());
    let show = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;
    b.extend_from_slice(&show.to_ne_bytes());
    b.extend_from_slice(&u32::MAX.to_ne_bytes());
    b.extend_from_slice(&u32::MAX.to_ne_bytes());
    b
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn align4(n: usize) -> Option<usize> {
    Some(n.checked_add(3)? & !3)
}

/// One `unix_diag_msg` with its attributes.
fn parse_one(p: &[u8]) -> Result<UnixDiag, String> {
    if p.len() < 16 {
        return Err(format!("unix_diag_msg of {} bytes", p.len()));
    }
    let mut d = UnixDiag { ty: p[1], state: p[2], ino: u32_at(p, 4).unwrap_or(0), ..Default::default() };
    let mut at = 16;
    while at + 4 <= p.len() {
        let len = usize::from(u16_at(p, at).unwrap_or(0));
        let ty = u16_at(p, at + 2).unwrap_or(0) & 0x3fff;
        if len < 4 || at + len > p.len() {
            return Err(format!("socket {}: attribute {ty} of length {len} at {at} past the message ({} bytes)", d.ino, p.len()));
        }
        let v = &p[at + 4..at + len];
        match ty {
            UNIX_DIAG_NAME => d.name = Some(v.to_vec()),
            UNIX_DIAG_VFS => d.vfs = u32_at(v, 0).zip(u32_at(v, 4)),
            UNIX_DIAG_PEER => d.peer = u32_at(v, 0).unwrap_or(0),
            UNIX_DIAG_ICONS => d.icons = v.chunks_exact(4).filter_map(|c| u32_at(c, 0)).collect(),
            UNIX_DIAG_RQLEN => d.rqlen = (u32_at(v, 0).unwrap_or(0), u32_at(v, 4).unwrap_or(0)),
            UNIX_DIAG_SHUTDOWN => d.shutdown = v.first().copied().unwrap_or(0),
            _ => {}
        }
        at = align4(at + len).ok_or("attribute offset overflow")?;
    }
    Ok(d)
}

/// The messages of one netlink datagram, appended to `out`; true at the
/// end of the dump (NLMSG_DONE).
pub fn parse_datagram(b: &[u8], seq: u32, out: &mut Vec<UnixDiag>) -> Result<bool, String> {
    let mut at = 0;
    while at + 16 <= b.len() {
        let len = u32_at(b, at).unwrap_or(0) as usize;
        let ty = u16_at(b, at + 4).unwrap_or(0);
        if len < 16 || len > b.len() - at {
            return Err(format!("netlink message of length {len} at {at} of a {}-byte reply", b.len()));
        }
        if u32_at(b, at + 8) != Some(seq) {
            // a stale reply of another request on this socket
            at = align4(at + len).ok_or("message offset overflow")?;
            continue;
        }
        let payload = &b[at + 16..at + len];
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = u32_at(payload, 0).map_or(0, |e| -(e as i32));
                return Err(format!("sock_diag answered with an error: {}", io::Error::from_raw_os_error(errno)));
            }
            SOCK_DIAG_BY_FAMILY => out.push(parse_one(payload)?),
            _ => {}
        }
        at = align4(at + len).ok_or("message offset overflow")?;
    }
    Ok(false)
}

/// Every unix socket of the engine's network namespace, by inode.
pub fn all_unix() -> io::Result<HashMap<u32, UnixDiag>> {
    let s = crate::netns::diag_socket()?;
    let seq = 0x5ec0_0001;
    sock::send(s.as_fd(), &request(seq), 0)?;
    let mut buf = vec![0u8; 64 << 10];
    let mut list = Vec::new();
    loop {
        let n = sock::recv(s.as_fd(), &mut buf, 0)?;
        if n == 0 {
            return Err(io::Error::other("sock_diag: the reply ended without NLMSG_DONE"));
        }
        let done = parse_datagram(&buf[..n.min(buf.len())], seq, &mut list).map_err(io::Error::other)?;
        if done {
            break;
        }
    }
    Ok(list.into_iter().map(|d| (d.ino, d)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, v: &[u8]) -> Vec<u8> {
        let mut b = ((4 + v.len()) as u16).to_ne_bytes().to_vec();
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(v);
        while !b.len().is_multiple_of(4) {
            b.push(0);
        }
        b
    }

    fn msg(ty: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = ((16 + payload.len()) as u32).to_ne_bytes().to_vec();
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn parses_a_reply() {
        let mut p = vec![1u8, 1, 10, 0];
        p.extend_from_slice(&77u32.to_ne_bytes());
        p.extend_from_slice(&[0; 8]);
        p.extend(attr(UNIX_DIAG_NAME, b"\0abs"));
        p.extend(attr(UNIX_DIAG_ICONS, &[5u32.to_ne_bytes(), 6u32.to_ne_bytes()].concat()));
        p.extend(attr(UNIX_DIAG_RQLEN, &[2u32.to_ne_bytes(), 128u32.to_ne_bytes()].concat()));
        p.extend(attr(UNIX_DIAG_SHUTDOWN, &[3]));
        let mut b = msg(SOCK_DIAG_BY_FAMILY, 9, &p);
        b.extend(msg(NLMSG_DONE, 9, &[0; 4]));
        let mut out = Vec::new();
        assert!(parse_datagram(&b, 9, &mut out).unwrap());
        assert_eq!(
            out,
            vec![UnixDiag {
                ino: 77, ty: 1, state: ST_LISTEN, name: Some(b"\0abs".to_vec()), vfs: None, peer: 0,
                icons: vec![5, 6], rqlen: (2, 128), shutdown: 3,
            }]
        );
    }

    #[test]
    fn refuses_bad_lengths() {
        let mut p = vec![1u8, 1, 1, 0];
        p.extend_from_slice(&[0; 12]);
        p.extend_from_slice(&200u16.to_ne_bytes());
        p.extend_from_slice(&0u16.to_ne_bytes());
        let b = msg(SOCK_DIAG_BY_FAMILY, 1, &p);
        assert!(parse_datagram(&b, 1, &mut Vec::new()).is_err());
        let mut b = msg(SOCK_DIAG_BY_FAMILY, 1, &[0; 16]);
        b[0] = 0xff;
        assert!(parse_datagram(&b, 1, &mut Vec::new()).is_err());
    }
}
