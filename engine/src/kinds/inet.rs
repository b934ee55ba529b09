//! Inet sockets (AF_INET, AF_INET6): TCP listening and idle (bound or
//! not) sockets, UDP sockets bound or connected, and with `--tcp-close`
//! TCP connections, restored closed.
//!
//! Dump: the fd's socket, taken with `pidfd_getfd`, is asked directly:
//! SO_DOMAIN/SO_TYPE/SO_PROTOCOL, getsockname/getpeername, TCP_INFO (state;
//! for a listener its accept queue and backlog), socket options. Refused by
//! name: other protocols (raw, SCTP, ...), a listener with connections
//! queued and not accepted, a UDP socket with datagrams queued, and a TCP
//! connection (ESTABLISHED, SYN_SENT, FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK,
//! CLOSING) unless `--tcp-close` is given, which records it to be
//! restored closed, as upstream, and with `--tcp-established` an
//! ESTABLISHED one, or one half or both ways closed (FIN_WAIT1/2,
//! CLOSE_WAIT, LAST_ACK, CLOSING), is carried live (`tcp_stream.rs`:
//! TCP_REPAIR, the network lock; SYN_SENT is refused by name); any other
//! TCP state (TIME_WAIT, SYN_RECV) is refused by name.
//!
//! Image: an `INETSK` files.img entry, `inet_sk_entry` as upstream 4.2
//! writes it (addresses as network-order words, 1 for IPv4 and 4 for
//! IPv6, the unconnected peer as the unspecified address; `sk_opts_entry`
//! with the buffer sizes as getsockopt reports them, doubled). TCP_NODELAY,
//! TCP_CORK and, with SO_KEEPALIVE, the keepalive timings ride in
//! `tcp_opts`.
//!
//! Restore: socket, IPV6_V6ONLY and SO_REUSEPORT and IP_FREEBIND before
//! bind, SO_REUSEADDR on for the bind (a connection of the old socket in
//! TIME_WAIT holds the port) and then as dumped, bind to the dumped name,
//! listen with the backlog or connect a UDP socket to its peer, then the
//! options (buffer sizes only where the program had set them: SO_BUF_LOCK)
//! and status flags. A TCP connection dumped with `--tcp-close` becomes a
//! new socket of its family with its options, never connected, unbound,
//! both directions shut (a read sees end of file, a write EPIPE: as
//! upstream 4.2 leaves it); its image is restored only with `--tcp-close`
//! too.

use super::sk_opts::{SkOpts, Sizes};
use super::{Collect, FileKind, ImageAcc, Read, Restore};
use crate::dump::files::FilesError;
use crate::images_io::ImagesError;
use crate::sys::inet::{self as si, Addr};
use images_proto::pb;
use images_proto::pb::TcpOptsEntry;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// `--tcp-close` was given (dump: connections are recorded; restore: they
/// may be restored, closed).
static TCP_CLOSE: AtomicBool = AtomicBool::new(false);

/// Set from the command line before a dump or a restore.
pub fn set_tcp_close(on: bool) {
    TCP_CLOSE.store(on, Ordering::Relaxed);
}

/// Whether `--tcp-close` was given.
pub fn tcp_close() -> bool {
    TCP_CLOSE.load(Ordering::Relaxed)
}

/// `--tcp-established` was given (dump: established connections are
/// dumped through TCP_REPAIR, `kinds/tcp_stream.rs`).
static TCP_ESTABLISHED_OPT: AtomicBool = AtomicBool::new(false);

/// Set from the command line before a dump or a restore.
pub fn set_tcp_established(on: bool) {
    TCP_ESTABLISHED_OPT.store(on, Ordering::Relaxed);
}

/// Whether `--tcp-established` was given.
pub fn tcp_established() -> bool {
    TCP_ESTABLISHED_OPT.load(Ordering::Relaxed)
}

/// `ADDR:PORT` (`[ADDR]:PORT` for IPv6), for messages.
pub fn ip_port(a: &Addr) -> String {
    ip(a)
}

// TCP states (include/net/tcp_states.h); UDP uses ESTABLISHED and CLOSE.
const TCP_ESTABLISHED: u32 = 1;
const TCP_CLOSE_STATE: u32 = 7;
const TCP_LISTEN: u32 = 10;

/// The name of a TCP state.
pub fn state_name(s: u32) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "unknown",
    }
}

/// States of a TCP connection that `--tcp-close` restores closed (as
/// upstream accepts them with it).
pub(crate) fn is_connection(s: u32) -> bool {
    matches!(s, 1 | 2 | 4 | 5 | 8 | 9 | 11)
}

/// IPV6_FREEBIND (linux/in6.h).
const IPV6_FREEBIND: i32 = 78;
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inet {
    /// File status flags (O_RDWR, O_NONBLOCK, ...).
    pub flags: u32,
    pub ino: u32,
    pub family: i32,
    /// SOCK_STREAM (TCP) or SOCK_DGRAM (UDP).
    pub ty: i32,
    pub proto: i32,
    /// TCP state numbering (a UDP socket: ESTABLISHED when connected, else CLOSE).
    pub state: u32,
    /// Its name (the unspecified address and port 0 when unbound).
    pub src: Addr,
    /// Its peer, when connected.
    pub dst: Option<Addr>,
    pub backlog: u32,
    pub v6only: bool,
    pub freebind: bool,
    pub nodelay: bool,
    pub cork: bool,
    /// TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT of a TCP socket with
    /// SO_KEEPALIVE on.
    pub keep: Option<(u32, u32, u32)>,
    pub opts: SkOpts,
    /// An established connection dumped with `--tcp-established`: its
    /// repair state and queues (`tcp-stream-INO.img`).
    pub stream: Option<Box<super::tcp_stream::TcpStream>>,
}

/// Dump state: a pidfd of the process whose fds are being read.
#[derive(Default)]
struct DumpScratch {
    pidfd: Option<(crate::sys::Pid, OwnedFd)>,
}

fn ip(a: &Addr) -> String {
    if a.family == libc::AF_INET6 {
        let mut b = [0u8; 16];
        for (i, w) in a.words.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        format!("[{}]:{}", std::net::Ipv6Addr::from(b), a.port)
    } else {
        format!("{}:{}", std::net::Ipv4Addr::from(a.words[0].to_ne_bytes()), a.port)
    }
}

/// TCP_NODELAY, TCP_CORK and (SO_KEEPALIVE on) the keepalive timings.
type TcpOpts = (bool, bool, Option<(u32, u32, u32)>);

fn read_opts(s: BorrowedFd<'_>, proto: i32) -> std::io::Result<(SkOpts, TcpOpts)> {
    let int = |l, n| si::get_int(s, l, n);
    let flag = |l, n| int(l, n).map(|v| v != 0);
    let o = SkOpts::read(s)?;
    let t = libc::IPPROTO_TCP;
    let tcp = if proto == t {
        let keep = if o.keepalive {
            Some((int(t, libc::TCP_KEEPIDLE)? as u32, int(t, libc::TCP_KEEPINTVL)? as u32, int(t, libc::TCP_KEEPCNT)? as u32))
        } else {
            None
        };
        (flag(t, libc::TCP_NODELAY)?, flag(t, libc::TCP_CORK)?, keep)
    } else {
        (false, false, None)
    };
    Ok((o, tcp))
}

/// Set the options of `o` (and TCP's) on a restored socket.
fn apply_opts(s: BorrowedFd<'_>, k: &Inet) -> Result<(), String> {
    k.opts.apply(s, Sizes::Locked)?;
    let set = |l, n, v: i32, what: &str| si::set_int(s, l, n, v).map_err(|e| format!("setsockopt {what} {v}: {e}"));
    if k.proto == libc::IPPROTO_TCP {
        if k.nodelay {
            set(libc::IPPROTO_TCP, libc::TCP_NODELAY, 1, "TCP_NODELAY")?;
        }
        if k.cork {
            set(libc::IPPROTO_TCP, libc::TCP_CORK, 1, "TCP_CORK")?;
        }
        if let Some((idle, intvl, cnt)) = k.keep {
            set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle as i32, "TCP_KEEPIDLE")?;
            set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, intvl as i32, "TCP_KEEPINTVL")?;
            set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, cnt as i32, "TCP_KEEPCNT")?;
        }
    }
    Ok(())
}

impl Inet {
    /// [`FileKind::NAME`], for errors made outside the trait.
    pub const NAME_OF: &'static str = "inet socket";
}

impl FileKind for Inet {
    const TYPE: pb::FdTypes = pb::FdTypes::Inetsk;
    const NAME: &'static str = "inet socket";

    /// Not told by the link and stat alone: see [`FileKind::claims_fd`].
    fn claims(_link: &str, _meta: &std::fs::Metadata) -> bool {
        false
    }

    /// A socket whose protocol (sockfs's `system.sockprotoname`) is one of
    /// AF_INET's or AF_INET6's.
    fn claims_fd(cx: &Collect<'_>) -> bool {
        if !cx.link.starts_with("socket:[") {
            return false;
        }
        let path = std::path::PathBuf::from(format!("/proc/{}/fd/{}", cx.pid, cx.fd));
        match si::sock_proto_name(&path) {
            Ok(n) => matches!(
                n.as_str(),
                "TCP" | "TCPv6" | "UDP" | "UDPv6" | "UDP-Lite" | "UDPLITEv6" | "RAW" | "RAWv6" | "PING" | "PINGv6" | "SCTP" | "SCTPv6" | "MPTCP" | "MPTCPv6" | "DCCP" | "DCCPv6" | "L2TP/IP" | "L2TP/IPv6"
            ),
            Err(_) => false,
        }
    }

    fn collect(cx: &mut Collect<'_>) -> Result<Self, FilesError> {
        use std::os::unix::fs::MetadataExt;
        const N: &str = Inet::NAME;
        let (pid, fd) = (cx.pid, cx.fd);
        let io = |what: &str, e: std::io::Error| FilesError::Kind { pid, fd, kind: N, why: format!("{what}: {e}") };
        let st = cx.scratch.get::<DumpScratch>();
        if st.pidfd.as_ref().is_none_or(|(p, _)| *p != pid) {
            let pfd = crate::sys::process::pidfd_open(pid).map_err(|e| FilesError::Io { pid, fd, source: e })?;
            st.pidfd = Some((pid, pfd));
        }
        let pidfd = &st.pidfd.as_ref().expect("just set").1;
        let sk = crate::sys::process::pidfd_getfd(pidfd, fd).map_err(|e| io("pidfd_getfd", e))?;
        let s = sk.as_fd();
        let family = si::get_int(s, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(|e| io("SO_DOMAIN", e))?;
        let ty = si::get_int(s, libc::SOL_SOCKET, libc::SO_TYPE).map_err(|e| io("SO_TYPE", e))?;
        let proto = si::get_int(s, libc::SOL_SOCKET, libc::SO_PROTOCOL).map_err(|e| io("SO_PROTOCOL", e))?;
        let fam = if family == libc::AF_INET6 { "AF_INET6" } else { "AF_INET" };
        match (ty, proto) {
            (libc::SOCK_STREAM, libc::IPPROTO_TCP) | (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => {}
            _ => {
                let what = match proto {
                    libc::IPPROTO_UDPLITE => "a UDP-Lite socket".to_string(),
                    libc::IPPROTO_SCTP => "an SCTP socket".to_string(),
                    libc::IPPROTO_MPTCP => "an MPTCP socket".to_string(),
                    libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6 => "a ping socket".to_string(),
                    _ if ty == libc::SOCK_RAW => format!("a raw socket (protocol {proto})"),
                    _ => format!("a socket of type {ty}, protocol {proto}"),
                };
                return Err(cx.refuse(N, format!("{fam} {what}: only TCP and UDP sockets are supported")));
            }
        }
        let src = si::name(s, false).map_err(|e| io("getsockname", e))?.unwrap_or(Addr::any(family));
        let dst = si::name(s, true).map_err(|e| io("getpeername", e))?;
        let tcp = proto == libc::IPPROTO_TCP;
        let (state, backlog) = if tcp {
            let ti = si::tcp_info(s).map_err(|e| io("TCP_INFO", e))?;
            let state = u32::from(ti.state);
            match state {
                TCP_LISTEN if ti.unacked > 0 => {
                    return Err(cx.refuse(N, format!("a TCP listener on {} with {} connection(s) queued and not accepted: not supported", ip(&src), ti.unacked)));
                }
                TCP_LISTEN => (state, ti.sacked),
                TCP_CLOSE_STATE => (state, 0),
                s if super::tcp_stream::carried(s) && tcp_established() => (state, 0),
                s if is_connection(s) && tcp_close() => (state, 0),
                s if is_connection(s) && tcp_established() => {
                    let ends = dst.map(|d| format!(" {} -> {}", ip(&src), ip(&d))).unwrap_or_default();
                    return Err(cx.refuse(
                        N,
                        format!("a TCP connection{ends} in state {} ({s}): --tcp-established carries ESTABLISHED, FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK and CLOSING connections, not one still connecting (--tcp-close restores it closed)", state_name(s)),
                    ));
                }
                s if is_connection(s) => {
                    let ends = dst.map(|d| format!(" {} -> {}", ip(&src), ip(&d))).unwrap_or_default();
                    let what = if s == TCP_ESTABLISHED { "an established TCP connection".to_string() } else { format!("a TCP connection in state {}", state_name(s)) };
                    return Err(cx.refuse(N, format!("{what}{ends}: dump it with --tcp-established (or --tcp-close to restore it closed)")));
                }
                s => return Err(cx.refuse(N, format!("a TCP socket in state {} ({s}): not supported", state_name(s)))),
            }
        } else {
            if si::datagram_queued(s).map_err(|e| io("peeking its receive queue", e))? {
                return Err(cx.refuse(N, format!("a UDP socket on {} with datagrams queued: queued datagrams are not carried", ip(&src))));
            }
            (if dst.is_some() { TCP_ESTABLISHED } else { TCP_CLOSE_STATE }, 0)
        };
        let v6only = family == libc::AF_INET6 && si::get_int(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).map_err(|e| io("IPV6_V6ONLY", e))? != 0;
        let freebind = if family == libc::AF_INET6 {
            si::get_int(s, libc::IPPROTO_IPV6, IPV6_FREEBIND).unwrap_or(0) != 0
        } else {
            si::get_int(s, libc::IPPROTO_IP, libc::IP_FREEBIND).map_err(|e| io("IP_FREEBIND", e))? != 0
        };
        let (opts, (nodelay, cork, keep)) = read_opts(s, proto).map_err(|e| io("socket options", e))?;
        let ino = u32::try_from(cx.meta.ino()).map_err(|_| cx.refuse(N, format!("inode {} does not fit 32 bits", cx.meta.ino())))?;
        // an established connection is held, to be locked and read in
        // repair mode once the whole tree is collected (tcp_stream::read_all)
        match (tcp && super::tcp_stream::carried(state) && tcp_established(), dst) {
            (true, Some(d)) => super::tcp_stream::hold(sk, src, d, ino),
            (true, None) => return Err(cx.refuse(N, "an established TCP connection without a peer name")),
            _ => {}
        }
        let stream = None;
        Ok(Inet { flags: cx.flags, ino, family, ty, proto, state, src, dst, backlog, v6only, freebind, nodelay, cork, keep, opts, stream })
    }

    fn write(&self, id: u32, acc: &mut ImageAcc) -> Result<pb::FileEntry, ImagesError> {
        if let Some(st) = &self.stream {
            let (e, payload) = super::tcp_stream::to_image(st);
            // tcp-stream-INO.img, the inode in hex as upstream names it
            acc.push_named(&images_proto::magic::TCP_STREAM, format!("{:x}", self.ino), &e, payload);
        }
        let n = Addr::len(self.family);
        let dst = self.dst.unwrap_or(Addr::any(self.family));
        let tcp = self.proto == libc::IPPROTO_TCP;
        let opts = self.opts.to_image();
        Ok(pb::FileEntry {
            r#type: Self::TYPE as i32,
            id,
            isk: Some(pb::InetSkEntry {
                id,
                ino: self.ino,
                family: self.family as u32,
                r#type: self.ty as u32,
                proto: self.proto as u32,
                state: self.state,
                src_port: u32::from(self.src.port),
                dst_port: u32::from(dst.port),
                flags: self.flags,
                backlog: self.backlog,
                src_addr: self.src.words[..n].to_vec(),
                dst_addr: dst.words[..n].to_vec(),
                fown: super::fown(),
                opts,
                v6only: (self.family == libc::AF_INET6).then_some(self.v6only),
                ip_opts: Some(pb::IpOptsEntry { freebind: self.freebind.then_some(true), ..Default::default() }),
                tcp_opts: (tcp && (self.nodelay || self.cork || self.keep.is_some())).then(|| pb::TcpOptsEntry {
                    nodelay: self.nodelay.then_some(true),
                    cork: self.cork.then_some(true),
                    keepidle: self.keep.map(|k| k.0),
                    keepintvl: self.keep.map(|k| k.1),
                    keepcnt: self.keep.map(|k| k.2),
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn read(e: &pb::FileEntry, cx: &mut Read<'_>) -> Result<Self, ImagesError> {
        let m = cx.member(e, "isk", &e.isk)?;
        let family = match m.family as i32 {
            f @ (libc::AF_INET | libc::AF_INET6) => f,
            f => return Err(cx.bad(e, "isk.family", format!("{f} is neither AF_INET (2) nor AF_INET6 (10)"))),
        };
        let fam = if family == libc::AF_INET6 { "AF_INET6" } else { "AF_INET" };
        let (ty, proto) = match (m.r#type as i32, m.proto as i32) {
            p @ ((libc::SOCK_STREAM, libc::IPPROTO_TCP) | (libc::SOCK_DGRAM, libc::IPPROTO_UDP)) => p,
            (t, p) => return Err(cx.bad(e, "isk.type/proto", format!("type {t}, protocol {p}: only TCP (1/6) and UDP (2/17) sockets are supported"))),
        };
        let n = Addr::len(family);
        let addr = |field: &str, words: &[u32], port: u32, opt: bool| -> Result<Addr, ImagesError> {
            if !(words.len() == n || (opt && words.is_empty())) {
                return Err(cx.bad(e, field, format!("{} words for {fam} (want {n})", words.len())));
            }
            let port = u16::try_from(port).map_err(|_| cx.bad(e, field, format!("port {port} is past 65535")))?;
            let mut a = Addr::any(family);
            a.words[..words.len()].copy_from_slice(words);
            a.port = port;
            Ok(a)
        };
        let src = addr("isk.src_addr", &m.src_addr, m.src_port, false)?;
        let dst = addr("isk.dst_addr", &m.dst_addr, m.dst_port, true)?;
        let tcp = proto == libc::IPPROTO_TCP;
        let state = m.state;
        let connected = match state {
            TCP_LISTEN | TCP_CLOSE_STATE if tcp => false,
            s if tcp && super::tcp_stream::carried(s) && tcp_established() && !tcp_close() => true,
            s if tcp && is_connection(s) => {
                if !tcp_close() {
                    return Err(cx.bad(e, "isk.state", format!("a TCP connection ({}): restored only with --tcp-established (ESTABLISHED, FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK and CLOSING ones) or --tcp-close (closed)", state_name(s))));
                }
                true
            }
            TCP_CLOSE_STATE => false,
            TCP_ESTABLISHED => true,
            s => return Err(cx.bad(e, "isk.state", format!("{s} ({}) is not a state of a {} socket we restore", state_name(s), if tcp { "TCP" } else { "UDP" }))),
        };
        if connected && !tcp && dst.port == 0 {
            return Err(cx.bad(e, "isk.dst_port", "0 for a connected UDP socket"));
        }
        let o = &m.opts;
        let opts = SkOpts::from_image(o).map_err(|(f, why)| cx.bad(e, &format!("isk.{f}"), why))?;
        let t = m.tcp_opts.as_ref();
        // the keepalive timings, from tcp_opts or (older images) sk_opts
        let keep = match (tcp && opts.keepalive, t) {
            (true, Some(TcpOptsEntry { keepidle: Some(i), keepintvl: Some(v), keepcnt: Some(c), .. })) => Some((*i, *v, *c)),
            (true, _) => match (o.tcp_keepidle, o.tcp_keepintvl, o.tcp_keepcnt) {
                (Some(i), Some(v), Some(c)) => Some((i, v, c)),
                _ => None,
            },
            _ => None,
        };
        // the kernel's bounds (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT)
        if let Some((i, v, c)) = keep {
            if !(1..=32767).contains(&i) || !(1..=32767).contains(&v) || !(1..=127).contains(&c) {
                return Err(cx.bad(e, "isk.tcp_opts", format!("keepalive idle {i} s, interval {v} s, count {c}: past the kernel's bounds")));
            }
        }
        // an established connection restored live, unless --tcp-close
        let stream = if tcp && super::tcp_stream::carried(state) && tcp_established() && !tcp_close() {
            if dst.port == 0 || src.port == 0 {
                return Err(cx.bad(e, "isk.src_port/dst_port", "0 for an established TCP connection"));
            }
            Some(Box::new(super::tcp_stream::read_image(cx.dir, m.ino, state)?))
        } else {
            None
        };
        Ok(Inet {
            stream,
            flags: m.flags,
            ino: m.ino,
            family,
            ty,
            proto,
            state,
            src,
            dst: connected.then_some(dst),
            backlog: if state == TCP_LISTEN { m.backlog } else { 0 },
            v6only: family == libc::AF_INET6 && m.v6only.unwrap_or(false),
            freebind: m.ip_opts.as_ref().and_then(|i| i.freebind).unwrap_or(false),
            nodelay: t.and_then(|t| t.nodelay).unwrap_or(false),
            cork: t.and_then(|t| t.cork).unwrap_or(false),
            keep,
            opts,
        })
    }

    fn restore(&self, _cx: &mut Restore<'_>) -> Result<OwnedFd, String> {
        let sk = si::socket(self.family, self.ty, self.proto).map_err(|e| format!("socket: {e}"))?;
        let s = sk.as_fd();
        let tcp = self.proto == libc::IPPROTO_TCP;
        let closed_conn = tcp && is_connection(self.state) && self.stream.is_none();
        if let (Some(st), Some(d)) = (&self.stream, self.dst) {
            if self.family == libc::AF_INET6 {
                si::set_int(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, self.v6only as i32).map_err(|e| format!("setsockopt IPV6_V6ONLY: {e}"))?;
            }
            self.opts.bind_to_device(s)?;
            if self.opts.reuseport {
                si::set_int(s, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).map_err(|e| format!("setsockopt SO_REUSEPORT: {e}"))?;
            }
            super::tcp_stream::restore(&sk, self.src, d, st, (self.opts.sndbuf, self.opts.rcvbuf)).map_err(|e| format!("the connection {} -> {}: {e}", ip(&self.src), ip(&d)))?;
        } else if !closed_conn {
            if self.family == libc::AF_INET6 {
                si::set_int(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, self.v6only as i32).map_err(|e| format!("setsockopt IPV6_V6ONLY: {e}"))?;
            }
            if self.opts.reuseport {
                si::set_int(s, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).map_err(|e| format!("setsockopt SO_REUSEPORT: {e}"))?;
            }
            if self.freebind {
                let (l, n) = if self.family == libc::AF_INET6 { (libc::IPPROTO_IPV6, IPV6_FREEBIND) } else { (libc::IPPROTO_IP, libc::IP_FREEBIND) };
                si::set_int(s, l, n, 1).map_err(|e| format!("setsockopt FREEBIND: {e}"))?;
            }
            self.opts.bind_to_device(s)?;
            if self.src != Addr::any(self.family) {
                si::set_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).map_err(|e| format!("setsockopt SO_REUSEADDR: {e}"))?;
                si::bind(s, self.src).map_err(|e| format!("bind to {}: {e}", ip(&self.src)))?;
            }
            if self.state == TCP_LISTEN {
                let backlog = i32::try_from(self.backlog).unwrap_or(i32::MAX);
                si::listen(s, backlog).map_err(|e| format!("listen on {} (backlog {backlog}): {e}", ip(&self.src)))?;
            }
            if let (false, Some(d)) = (tcp, self.dst) {
                si::connect(s, d).map_err(|e| format!("connect to {}: {e}", ip(&d)))?;
            }
        }
        apply_opts(s, self)?;
        if closed_conn {
            // as upstream's --tcp-close leaves it: closed, unbound, both
            // directions shut (a read sees end of file, a write EPIPE)
            match si::shutdown(s, libc::SHUT_RDWR) {
                Err(e) if e.raw_os_error() != Some(libc::ENOTCONN) => return Err(format!("shutdown of a closed connection: {e}")),
                _ => {}
            }
        }
        super::set_status_flags(&sk, self.flags)?;
        Ok(sk)
    }
}
