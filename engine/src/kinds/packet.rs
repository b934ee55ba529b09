//! Packet sockets (AF_PACKET, SOCK_RAW or SOCK_DGRAM): protocol, bound
//! interface, the common options, multicast/promiscuous memberships.
//!
//! Dump: claimed by the sockfs protocol name `PACKET`; one sock_diag dump
//! of the namespace's packet sockets (`packet_diag`: info, memberships,
//! rings, fanout) per fd table, the socket found by inode; SO_TYPE and the
//! buffer sizes through a `pidfd_getfd` duplicate. Refused by name: a
//! ring (PACKET_RX_RING/TX_RING), a fanout group, a socket filter. Packets
//! queued unread are not carried: a warning (packets are lossy; upstream
//! 4.2 does not carry them either). Image: `PACKETSK` `packet_sock_entry`
//! as upstream 4.2 writes it (protocol in network order, one `mclist` entry
//! per membership reference). Restore: socket, bind to the interface,
//! the options (version, reserve, aux data, orig dev, vnet header, loss,
//! timestamp, copy threshold), PACKET_ADD_MEMBERSHIP per entry, the
//! locked buffer sizes, status flags.

use super::{Collect, FileKind, ImageAcc, Read, Restore};
use crate::dump::files::FilesError;
use crate::images_io::ImagesError;
use crate::sys::sock;
use images_proto::pb;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const PACKET_SHOW_INFO: u32 = 1;
const PACKET_SHOW_MCLIST: u32 = 2;
const PACKET_SHOW_RING_CFG: u32 = 4;
const PACKET_SHOW_FANOUT: u32 = 8;
const PACKET_DIAG_INFO: u16 = 0;
const PACKET_DIAG_MCLIST: u16 = 1;
const PACKET_DIAG_RX_RING: u16 = 2;
const PACKET_DIAG_TX_RING: u16 = 3;
const PACKET_DIAG_FANOUT: u16 = 4;
const PDI_AUXDATA: u32 = 2;
const PDI_ORIGDEV: u32 = 4;
const PDI_VNETHDR: u32 = 8;
const PDI_LOSS: u32 = 0x10;
// socket options of SOL_PACKET
const PACKET_ADD_MEMBERSHIP: i32 = 1;
const PACKET_AUXDATA: i32 = 8;
const PACKET_ORIGDEV: i32 = 9;
const PACKET_VERSION: i32 = 10;
const PACKET_RESERVE: i32 = 12;
const PACKET_LOSS: i32 = 14;
const PACKET_VNET_HDR: i32 = 15;
const PACKET_TIMESTAMP: i32 = 17;
const PACKET_COPY_THRESH: i32 = 7;
/// Memberships read back at most.
const MAX_MCLIST: usize = 1024;

/// One membership (PACKET_ADD_MEMBERSHIP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mc {
    pub ifindex: u32,
    /// PACKET_MR_MULTICAST, PROMISC, ALLMULTI, UNICAST.
    pub ty: u32,
    pub addr: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Packet {
    pub ino: u32,
    pub ty: u32,
    /// Ethernet protocol, host order (0: receives nothing until bound).
    pub protocol: u32,
    pub flags: u32,
    pub ifindex: u32,
    pub version: u32,
    pub reserve: u32,
    pub aux_data: bool,
    pub orig_dev: bool,
    pub vnet_hdr: bool,
    pub loss: bool,
    pub timestamp: u32,
    pub copy_thresh: u32,
    /// One entry per reference (a membership added twice: twice).
    pub mclist: Vec<Mc>,
    pub sndbuf: u32,
    pub rcvbuf: u32,
    pub buf_lock: u32,
}

/// What `packet_diag` says of one socket.
#[derive(Debug, Clone, Default)]
struct Diag {
    ty: u8,
    protocol: u16,
    info: Option<[u32; 6]>,
    mclist: Vec<Mc>,
    ring: bool,
    fanout: Option<u32>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn request(seq: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(36);
    b.extend_from_slice(&36u32.to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&(0x1u16 | 0x300).to_ne_bytes()); // NLM_F_REQUEST | NLM_F_DUMP
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.push(libc::AF_PACKET as u8);
    b.push(0);
    b.extend_from_slice(&0u16.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // ino (a dump lists all)
    b.extend_from_slice(&(PACKET_SHOW_INFO | PACKET_SHOW_MCLIST | PACKET_SHOW_RING_CFG | PACKET_SHOW_FANOUT).to_ne_bytes());
    b.extend_from_slice(&u32::MAX.to_ne_bytes());
    b.extend_from_slice(&u32::MAX.to_ne_bytes());
    b
}

/// One `packet_diag_msg` with its attributes: (inode, what it says).
fn parse_one(p: &[u8]) -> Result<(u32, Diag), String> {
    if p.len() < 16 {
        return Err(format!("packet_diag_msg of {} bytes", p.len()));
    }
    let ino = u32_at(p, 4).unwrap_or(0);
    let mut d = Diag { ty: p[1], protocol: u16_at(p, 2).unwrap_or(0), ..Default::default() };
    let mut at = 16;
    while at + 4 <= p.len() {
        let len = usize::from(u16_at(p, at).unwrap_or(0));
        let ty = u16_at(p, at + 2).unwrap_or(0) & 0x3fff;
        if len < 4 || at + len > p.len() {
            return Err(format!("socket {ino}: attribute {ty} of length {len} at {at} past the message ({} bytes)", p.len()));
        }
        let v = &p[at + 4..at + len];
        match ty {
            PACKET_DIAG_INFO => {
                let mut w = [0u32; 6];
                for (i, x) in w.iter_mut().enumerate() {
                    *x = u32_at(v, i * 4).ok_or_else(|| format!("socket {ino}: packet_diag_info of {} bytes", v.len()))?;
                }
                d.info = Some(w);
            }
            PACKET_DIAG_MCLIST => {
                for m in v.chunks_exact(44).take(MAX_MCLIST) {
                    let count = u32_at(m, 4).unwrap_or(0).min(MAX_MCLIST as u32);
                    let alen = usize::from(u16_at(m, 10).unwrap_or(0)).min(32);
                    let mc = Mc { ifindex: u32_at(m, 0).unwrap_or(0), ty: u32::from(u16_at(m, 8).unwrap_or(0)), addr: m[12..12 + alen].to_vec() };
                    for _ in 0..count.max(1) {
                        d.mclist.push(mc.clone());
                    }
                }
            }
            PACKET_DIAG_RX_RING | PACKET_DIAG_TX_RING => d.ring = true,
            PACKET_DIAG_FANOUT => d.fanout = u32_at(v, 0),
            _ => {}
        }
        at = (at + len).checked_add(3).ok_or("attribute offset overflow")? & !3;
    }
    Ok((ino, d))
}

/// Every packet socket of the engine's network namespace, by inode.
fn all_packet() -> std::io::Result<HashMap<u32, Diag>> {
    let s = crate::netns::diag_socket()?;
    let seq = 0x5ec0_0002;
    sock::send(s.as_fd(), &request(seq), 0)?;
    let mut buf = vec![0u8; 64 << 10];
    let mut out = HashMap::new();
    loop {
        let n = sock::recv(s.as_fd(), &mut buf, 0)?.min(buf.len());
        if n == 0 {
            return Err(std::io::Error::other("packet_diag: the reply ended without NLMSG_DONE"));
        }
        let b = &buf[..n];
        let mut at = 0;
        while at + 16 <= b.len() {
            let len = u32_at(b, at).unwrap_or(0) as usize;
            let ty = u16_at(b, at + 4).unwrap_or(0);
            if len < 16 || len > b.len() - at {
                return Err(std::io::Error::other(format!("packet_diag: message of length {len} at {at} of a {}-byte reply", b.len())));
            }
            if u32_at(b, at + 8) == Some(seq) {
                let payload = &b[at + 16..at + len];
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = u32_at(payload, 0).map_or(0, |e| -(e as i32));
                        return Err(std::io::Error::from_raw_os_error(errno));
                    }
                    SOCK_DIAG_BY_FAMILY => {
                        let (ino, d) = parse_one(payload).map_err(std::io::Error::other)?;
                        out.insert(ino, d);
                    }
                    _ => {}
                }
            }
            at = (at + len + 3) & !3;
        }
    }
}

#[derive(Default)]
struct DumpScratch {
    /// (pid whose table is read, the namespace's packet sockets).
    diag: Option<(crate::sys::Pid, HashMap<u32, Diag>)>,
}

impl FileKind for Packet {
    const TYPE: pb::FdTypes = pb::FdTypes::Packetsk;
    const NAME: &'static str = "packet socket";

    fn claims(_link: &str, _meta: &std::fs::Metadata) -> bool {
        false
    }

    fn claims_fd(cx: &Collect<'_>) -> bool {
        cx.link.starts_with("socket:[")
            && crate::sys::inet::sock_proto_name(std::path::Path::new(&format!("/proc/{}/fd/{}", cx.pid, cx.fd))).is_ok_and(|n| n == "PACKET")
    }

    fn collect(cx: &mut Collect<'_>) -> Result<Self, FilesError> {
        let (pid, fd) = (cx.pid, cx.fd);
        let refuse = |why: String| FilesError::Kind { pid, fd, kind: Self::NAME, why };
        let io = |what: &str, e: std::io::Error| refuse(format!("{what}: {e}"));
        let ino: u32 = cx.link.strip_prefix("socket:[").and_then(|l| l.strip_suffix(']')).and_then(|n| n.parse().ok()).ok_or_else(|| refuse(format!("odd link {}", cx.link)))?;
        let st = cx.scratch.get::<DumpScratch>();
        if st.diag.as_ref().is_none_or(|(p, _)| *p != pid) {
            st.diag = Some((pid, all_packet().map_err(|e| io("packet_diag", e))?));
        }
        let d = st.diag.as_ref().and_then(|(_, m)| m.get(&ino)).cloned().ok_or_else(|| refuse(format!("socket:[{ino}] is not in packet_diag's list (another network namespace?)")))?;
        let what = format!("socket:[{ino}] (protocol {:#06x})", d.protocol);
        if d.ring {
            return Err(refuse(format!("{what} has a ring (PACKET_RX_RING/TX_RING): not supported yet")));
        }
        if let Some(f) = d.fanout {
            return Err(refuse(format!("{what} is in fanout group {} (PACKET_FANOUT {f:#x}): not supported yet", f & 0xffff)));
        }
        let info = d.info.ok_or_else(|| refuse(format!("{what}: packet_diag gave no info")))?;
        let pidfd = crate::sys::process::pidfd_open(pid).map_err(|e| FilesError::Io { pid, fd, source: e })?;
        let s = crate::sys::process::pidfd_getfd(&pidfd, fd).map_err(|e| io("pidfd_getfd", e))?;
        let s = s.as_fd();
        if sock::get_int(s, libc::SOL_SOCKET, libc::SO_GET_FILTER).unwrap_or(0) > 0 {
            return Err(refuse(format!("{what}: a socket filter (SO_ATTACH_FILTER) is attached: not supported yet")));
        }
        let int = |name: i32, w: &str| sock::get_int(s, libc::SOL_SOCKET, name).map(|v| v as u32).map_err(|e| io(w, e));
        if crate::sys::event::bytes_queued(s).unwrap_or(0) > 0 {
            crate::pr_warn!("fd {fd} of {pid}: packet {what} has packets queued unread: they are not carried");
        }
        Ok(Packet {
            ino,
            ty: u32::from(d.ty),
            protocol: u32::from(d.protocol),
            flags: cx.flags,
            ifindex: info[0],
            version: info[1],
            reserve: info[2],
            copy_thresh: info[3],
            timestamp: info[4],
            aux_data: info[5] & PDI_AUXDATA != 0,
            orig_dev: info[5] & PDI_ORIGDEV != 0,
            vnet_hdr: info[5] & PDI_VNETHDR != 0,
            loss: info[5] & PDI_LOSS != 0,
            mclist: d.mclist,
            sndbuf: int(libc::SO_SNDBUF, "SO_SNDBUF")?,
            rcvbuf: int(libc::SO_RCVBUF, "SO_RCVBUF")?,
            buf_lock: int(libc::SO_BUF_LOCK, "SO_BUF_LOCK")?,
        })
    }

    fn write(&self, id: u32, _acc: &mut ImageAcc) -> Result<pb::FileEntry, ImagesError> {
        Ok(pb::FileEntry {
            r#type: Self::TYPE as i32,
            id,
            psk: Some(pb::PacketSockEntry {
                id,
                r#type: self.ty,
                // network order, as upstream 4.2 records it
                protocol: u32::from((self.protocol as u16).to_be()),
                flags: self.flags,
                ifindex: self.ifindex,
                fown: super::fown(),
                opts: pb::SkOptsEntry { so_sndbuf: self.sndbuf, so_rcvbuf: self.rcvbuf, so_buf_lock: Some(self.buf_lock), ..Default::default() },
                version: self.version,
                reserve: self.reserve,
                aux_data: self.aux_data,
                orig_dev: self.orig_dev,
                vnet_hdr: self.vnet_hdr,
                loss: self.loss,
                timestamp: self.timestamp,
                copy_thresh: self.copy_thresh,
                mclist: self.mclist.iter().map(|m| pb::PacketMclist { index: m.ifindex, r#type: m.ty, addr: m.addr.clone() }).collect(),
                fanout: None,
                rx_ring: None,
                tx_ring: None,
                ns_id: None,
            }),
            ..Default::default()
        })
    }

    fn read(e: &pb::FileEntry, cx: &mut Read<'_>) -> Result<Self, ImagesError> {
        let m = cx.member(e, "psk", &e.psk)?;
        if m.r#type != libc::SOCK_RAW as u32 && m.r#type != libc::SOCK_DGRAM as u32 {
            return Err(cx.bad(e, "psk.type", format!("{} is neither SOCK_RAW nor SOCK_DGRAM", m.r#type)));
        }
        if m.protocol > 0xffff {
            return Err(cx.bad(e, "psk.protocol", format!("{:#x} is past 16 bits", m.protocol)));
        }
        if m.version > 2 {
            return Err(cx.bad(e, "psk.version", format!("{} is not a TPACKET version", m.version)));
        }
        if m.rx_ring.is_some() || m.tx_ring.is_some() {
            return Err(cx.bad(e, "psk.rx_ring", "rings are not supported yet"));
        }
        if m.fanout.is_some_and(|f| f != u32::MAX) {
            return Err(cx.bad(e, "psk.fanout", "fanout groups are not supported yet"));
        }
        if m.mclist.len() > MAX_MCLIST {
            return Err(cx.bad(e, "psk.mclist", format!("{} memberships, more than {MAX_MCLIST}", m.mclist.len())));
        }
        if let Some((i, x)) = m.mclist.iter().enumerate().find(|(_, x)| x.addr.len() > 8) {
            return Err(cx.bad(e, &format!("psk.mclist[{i}].addr"), format!("{} bytes, more than a membership holds (8)", x.addr.len())));
        }
        let buf_lock = m.opts.so_buf_lock.unwrap_or(0);
        if buf_lock > 3 {
            return Err(cx.bad(e, "psk.opts.so_buf_lock", format!("{buf_lock} is not a set of buffer locks")));
        }
        Ok(Packet {
            ino: 0,
            ty: m.r#type,
            protocol: u32::from(u16::from_be(m.protocol as u16)),
            flags: m.flags,
            ifindex: m.ifindex,
            version: m.version,
            reserve: m.reserve,
            aux_data: m.aux_data,
            orig_dev: m.orig_dev,
            vnet_hdr: m.vnet_hdr,
            loss: m.loss,
            timestamp: m.timestamp,
            copy_thresh: m.copy_thresh,
            mclist: m.mclist.iter().map(|x| Mc { ifindex: x.index, ty: x.r#type, addr: x.addr.clone() }).collect(),
            sndbuf: m.opts.so_sndbuf,
            rcvbuf: m.opts.so_rcvbuf,
            buf_lock,
        })
    }

    fn restore(&self, _cx: &mut Restore<'_>) -> Result<OwnedFd, String> {
        let what = format!("packet socket (protocol {:#06x}, interface {})", self.protocol, self.ifindex);
        let proto = (self.protocol as u16).to_be();
        let s = crate::sys::inet::socket(libc::AF_PACKET, self.ty as i32, i32::from(proto)).map_err(|e| format!("{what}: socket: {e}"))?;
        let f = s.as_fd();
        if self.ifindex != 0 {
            sock::packet_bind(f, proto, self.ifindex as i32).map_err(|e| format!("{what}: bind: {e}"))?;
        }
        let set = |name: i32, v: u32, w: &str| sock::set_int(f, libc::SOL_PACKET, name, v as i32).map_err(|e| format!("{what}: {w} {v}: {e}"));
        if self.version != 0 {
            set(PACKET_VERSION, self.version, "PACKET_VERSION")?;
        }
        if self.reserve != 0 {
            set(PACKET_RESERVE, self.reserve, "PACKET_RESERVE")?;
        }
        for (on, name, w) in [(self.aux_data, PACKET_AUXDATA, "PACKET_AUXDATA"), (self.orig_dev, PACKET_ORIGDEV, "PACKET_ORIGDEV"), (self.vnet_hdr, PACKET_VNET_HDR, "PACKET_VNET_HDR"), (self.loss, PACKET_LOSS, "PACKET_LOSS")] {
            if on {
                set(name, 1, w)?;
            }
        }
        if self.timestamp != 0 {
            set(PACKET_TIMESTAMP, self.timestamp, "PACKET_TIMESTAMP")?;
        }
        if self.copy_thresh != 0 {
            set(PACKET_COPY_THRESH, self.copy_thresh, "PACKET_COPY_THRESH")?;
        }
        for m in &self.mclist {
            sock::packet_membership(f, PACKET_ADD_MEMBERSHIP, m.ifindex as i32, m.ty as u16, &m.addr)
                .map_err(|e| format!("{what}: PACKET_ADD_MEMBERSHIP (interface {}, type {}): {e}", m.ifindex, m.ty))?;
        }
        if self.buf_lock & 1 != 0 {
            sock::set_int(f, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, (self.sndbuf / 2) as i32).map_err(|e| format!("{what}: SO_SNDBUFFORCE: {e}"))?;
        }
        if self.buf_lock & 2 != 0 {
            sock::set_int(f, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (self.rcvbuf / 2) as i32).map_err(|e| format!("{what}: SO_RCVBUFFORCE: {e}"))?;
        }
        super::set_status_flags(&s, self.flags)?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_bounds_a_reply() {
        let mut p = vec![libc::AF_PACKET as u8, 3, 0xb5, 0x88];
        p.extend_from_slice(&77u32.to_ne_bytes());
        p.extend_from_slice(&[0; 8]);
        // info
        p.extend_from_slice(&28u16.to_ne_bytes());
        p.extend_from_slice(&PACKET_DIAG_INFO.to_ne_bytes());
        for v in [1u32, 0, 0, 0, 0, PDI_AUXDATA] {
            p.extend_from_slice(&v.to_ne_bytes());
        }
        let (ino, d) = parse_one(&p).unwrap();
        assert_eq!((ino, d.ty, d.info.unwrap()[0]), (77, 3, 1));
        // an attribute past the message
        let mut bad = p.clone();
        bad.extend_from_slice(&200u16.to_ne_bytes());
        bad.extend_from_slice(&PACKET_DIAG_MCLIST.to_ne_bytes());
        assert!(parse_one(&bad).is_err());
        assert!(parse_one(&p[..10]).is_err());
    }
}
