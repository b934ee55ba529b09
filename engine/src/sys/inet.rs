//! Syscall wrappers for inet (AF_INET/AF_INET6) sockets: socket, bind,
//! listen, connect, int socket options, names, TCP_INFO, a peek of the
//! receive queue. Addresses as the images hold them: the address in
//! network-order 32-bit words (1 for IPv4, 4 for IPv6) and the port in
//! host order.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// An inet socket name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    pub family: i32,
    /// Network-order words as they sit in memory (`s_addr`, `s6_addr32`).
    pub words: [u32; 4],
    pub port: u16,
    /// IPv6 flow info and scope id (0 for IPv4).
    pub scope_id: u32,
}

impl Addr {
    /// The unspecified address of `family`, port 0.
    pub fn any(family: i32) -> Addr {
        Addr { family, words: [0; 4], port: 0, scope_id: 0 }
    }

    /// How many words the family's address has.
    pub fn len(family: i32) -> usize {
        if family == libc::AF_INET6 { 4 } else { 1 }
    }

    fn to_raw(self) -> (libc::sockaddr_storage, libc::socklen_t) {
        // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        if self.family == libc::AF_INET6 {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            let s = unsafe { &mut *(&mut ss as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6) };
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_port = self.port.to_be();
            for (i, w) in self.words.iter().enumerate() {
                s.sin6_addr.s6_addr[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            s.sin6_scope_id = self.scope_id;
            (ss, std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        } else {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let s = unsafe { &mut *(&mut ss as *mut libc::sockaddr_storage as *mut libc::sockaddr_in) };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_port = self.port.to_be();
            s.sin_addr.s_addr = self.words[0];
            (ss, std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
    }

    fn from_raw(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<Addr> {
        match ss.ss_family as i32 {
            libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let s = unsafe { &*(ss as *const libc::sockaddr_storage as *const libc::sockaddr_in) };
                Some(Addr { family: libc::AF_INET, words: [s.sin_addr.s_addr, 0, 0, 0], port: u16::from_be(s.sin_port), scope_id: 0 })
            }
            libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let s = unsafe { &*(ss as *const libc::sockaddr_storage as *const libc::sockaddr_in6) };
                let mut words = [0u32; 4];
                for (i, w) in words.iter_mut().enumerate() {
                    *w = u32::from_ne_bytes(s.sin6_addr.s6_addr[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
                }
                Some(Addr { family: libc::AF_INET6, words, port: u16::from_be(s.sin6_port), scope_id: s.sin6_scope_id })
            }
            _ => None,
        }
    }
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// socket(2), close-on-exec.
pub fn socket(family: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; a returned fd is ours alone.
    let fd = check(unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

// The socket options' calls are sys/sock.rs's (one wrapper for every
// family), named here too for the inet kinds.
pub use super::sock::{get_bytes, get_int, get_linger, get_timeval, set_bytes, set_int, set_linger, set_timeval};

/// getsockname(2) (`peer`: getpeername(2)); None when not connected or of
/// another family.
pub fn name(fd: BorrowedFd<'_>, peer: bool) -> io::Result<Option<Addr>> {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut l = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = &mut ss as *mut libc::sockaddr_storage as *mut libc::sockaddr;
    // SAFETY: ss and l are valid for writing for the sizes given.
    let r = unsafe { if peer { libc::getpeername(fd.as_raw_fd(), p, &mut l) } else { libc::getsockname(fd.as_raw_fd(), p, &mut l) } };
    match check(r) {
        Ok(_) => Ok(Addr::from_raw(&ss, l)),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(None),
        Err(e) => Err(e),
    }
}

/// bind(2).
pub fn bind(fd: BorrowedFd<'_>, a: Addr) -> io::Result<()> {
    let (ss, l) = a.to_raw();
    // SAFETY: ss holds a valid sockaddr of length l.
    check(unsafe { libc::bind(fd.as_raw_fd(), &ss as *const _ as *const libc::sockaddr, l) }).map(drop)
}

/// connect(2).
pub fn connect(fd: BorrowedFd<'_>, a: Addr) -> io::Result<()> {
    let (ss, l) = a.to_raw();
    // SAFETY: ss holds a valid sockaddr of length l.
    check(unsafe { libc::connect(fd.as_raw_fd(), &ss as *const _ as *const libc::sockaddr, l) }).map(drop)
}

/// listen(2).
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(drop)
}

/// What TCP_INFO says of a TCP socket: its state, and for a listener the
/// connections in its accept queue (`tcpi_unacked`) and its backlog
/// (`tcpi_sacked`), as the kernel reports them for TCP_LISTEN.
pub struct TcpInfo {
    pub state: u8,
    pub unacked: u32,
    pub sacked: u32,
}

/// getsockopt(TCP_INFO).
pub fn tcp_info(fd: BorrowedFd<'_>) -> io::Result<TcpInfo> {
    // SAFETY: tcp_info is plain data; all zeroes is a valid value.
    let mut ti: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut l = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: ti and l are valid for writing for the sizes given.
    check(unsafe { libc::getsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, &mut ti as *mut _ as *mut libc::c_void, &mut l) })?;
    Ok(TcpInfo { state: ti.tcpi_state, unacked: ti.tcpi_unacked, sacked: ti.tcpi_sacked })
}

/// Whether a datagram waits in the receive queue (a zero-length one too):
/// recv of nothing with MSG_PEEK|MSG_DONTWAIT|MSG_TRUNC, which consumes
/// nothing.
pub fn datagram_queued(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut b = [0u8; 1];
    // SAFETY: b is valid for writing 0 bytes (a length of 0 is passed).
    let r = unsafe { libc::recv(fd.as_raw_fd(), b.as_mut_ptr() as *mut libc::c_void, 0, libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC) };
    if r >= 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EAGAIN) { Ok(false) } else { Err(e) }
}

/// The protocol name of the socket behind `path` (`/proc/PID/fd/N`), as
/// sockfs reports it in the `system.sockprotoname` xattr: "TCP", "UDPv6",
/// "UNIX", "NETLINK", ...
pub fn sock_proto_name(path: &std::path::Path) -> io::Result<String> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = [0u8; 64];
    // SAFETY: p is NUL-terminated, buf is valid for writing buf.len() bytes.
    let r = unsafe { libc::getxattr(p.as_ptr(), c"system.sockprotoname".as_ptr(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let b = &buf[..r as usize];
    let b = b.split(|&c| c == 0).next().unwrap_or(b);
    Ok(String::from_utf8_lossy(b).into_owned())
}

/// shutdown(2); on a TCP socket that is not connected it still marks both
/// directions shut (reads see end of file, writes EPIPE) and says
/// ENOTCONN, which is returned as is.
pub fn shutdown(fd: BorrowedFd<'_>, how: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::shutdown(fd.as_raw_fd(), how) }).map(drop)
}

// TCP repair (linux/tcp.h): options, queues, repair option codes.
pub const TCP_REPAIR: i32 = 19;
pub const TCP_REPAIR_QUEUE: i32 = 20;
pub const TCP_QUEUE_SEQ: i32 = 21;
pub const TCP_REPAIR_OPTIONS: i32 = 22;
pub const TCP_TIMESTAMP: i32 = 24;
pub const TCP_REPAIR_WINDOW: i32 = 29;
pub const TCP_RECV_QUEUE: i32 = 1;
pub const TCP_SEND_QUEUE: i32 = 2;
/// TCP_REPAIR values: on, off (a window probe is sent).
pub const REPAIR_ON: i32 = 1;
pub const REPAIR_OFF: i32 = 0;
/// TCP_REPAIR off without the window probe the kernel otherwise sends
/// (TCP_REPAIR_OFF_NO_WP).
pub const REPAIR_OFF_NO_WP: i32 = -1;
/// TCPOPT_* codes of TCP_REPAIR_OPTIONS.
pub const TCPOPT_MSS: u32 = 2;
pub const TCPOPT_WINDOW: u32 = 3;
pub const TCPOPT_SACK_PERM: u32 = 4;
pub const TCPOPT_TIMESTAMP: u32 = 8;
/// TCP_INFO `tcpi_options` bits.
pub const TCPI_OPT_TIMESTAMPS: u32 = 1;
pub const TCPI_OPT_SACK: u32 = 2;
pub const TCPI_OPT_WSCALE: u32 = 4;

/// What a connection's TCP_INFO says for its repair: state, `tcpi_options`
/// and the two window scales.
pub struct TcpConnInfo {
    pub state: u8,
    pub options: u32,
    pub snd_wscale: u32,
    pub rcv_wscale: u32,
}

/// getsockopt(TCP_INFO) of a connection.
pub fn tcp_conn_info(fd: BorrowedFd<'_>) -> io::Result<TcpConnInfo> {
    // SAFETY: tcp_info is plain data; all zeroes is a valid value.
    let mut ti: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut l = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: ti and l are valid for writing for the sizes given.
    check(unsafe { libc::getsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, &mut ti as *mut _ as *mut libc::c_void, &mut l) })?;
    // (`__u8 tcpi_snd_wscale : 4, tcpi_rcv_wscale : 4`: the low nibble first)
    let w = u32::from(ti.tcpi_snd_rcv_wscale);
    Ok(TcpConnInfo { state: ti.tcpi_state, options: u32::from(ti.tcpi_options), snd_wscale: w & 0xf, rcv_wscale: w >> 4 })
}

/// `struct tcp_repair_window` (TCP_REPAIR_WINDOW).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct RepairWindow {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

/// getsockopt(TCP_REPAIR_WINDOW) (the socket in repair mode).
pub fn get_repair_window(fd: BorrowedFd<'_>) -> io::Result<RepairWindow> {
    let mut w = RepairWindow::default();
    let mut l = std::mem::size_of::<RepairWindow>() as libc::socklen_t;
    // SAFETY: w and l are valid for writing for the sizes given.
    check(unsafe { libc::getsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, &mut w as *mut _ as *mut libc::c_void, &mut l) })?;
    Ok(w)
}

/// setsockopt(TCP_REPAIR_WINDOW).
pub fn set_repair_window(fd: BorrowedFd<'_>, w: &RepairWindow) -> io::Result<()> {
    // SAFETY: w is valid for reading for its size.
    check(unsafe { libc::setsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, w as *const _ as *const libc::c_void, std::mem::size_of::<RepairWindow>() as libc::socklen_t) })
        .map(drop)
}

/// setsockopt(TCP_REPAIR_OPTIONS) with `(code, value)` pairs
/// (`struct tcp_repair_opt`).
pub fn set_repair_options(fd: BorrowedFd<'_>, opts: &[(u32, u32)]) -> io::Result<()> {
    let words: Vec<u32> = opts.iter().flat_map(|&(c, v)| [c, v]).collect();
    // SAFETY: words is valid for reading for its length in bytes.
    check(unsafe { libc::setsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, TCP_REPAIR_OPTIONS, words.as_ptr() as *const libc::c_void, (words.len() * 4) as libc::socklen_t) }).map(drop)
}

/// An int ioctl of a socket (SIOCINQ, SIOCOUTQ, SIOCOUTQNSD).
pub fn ioctl_int(fd: BorrowedFd<'_>, req: libc::c_ulong) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: these requests write one int through the pointer.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, &mut v as *mut libc::c_int) })?;
    Ok(v)
}

/// SIOCINQ, SIOCOUTQ, SIOCOUTQNSD.
pub const SIOCINQ: libc::c_ulong = 0x541B;
pub const SIOCOUTQ: libc::c_ulong = 0x5411;
pub const SIOCOUTQNSD: libc::c_ulong = 0x894B;

/// recv(MSG_PEEK | MSG_DONTWAIT) into `buf`: the bytes copied. In repair
/// mode it reads the queue TCP_REPAIR_QUEUE selects, consuming nothing.
pub fn peek(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writing buf.len() bytes.
    let r = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

/// send(2) of `data` (no SIGPIPE): the bytes taken. In repair mode it
/// fills the queue TCP_REPAIR_QUEUE selects.
pub fn send(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    // SAFETY: data is valid for reading for its length.
    let r = unsafe { libc::send(fd.as_raw_fd(), data.as_ptr() as *const libc::c_void, data.len(), libc::MSG_NOSIGNAL) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

/// sendto(2) of one datagram `data` to `to` (no SIGPIPE): for a raw
/// socket (IPPROTO_RAW, the IP header in `data`), the bytes sent.
pub fn send_to(fd: BorrowedFd<'_>, data: &[u8], to: Addr) -> io::Result<usize> {
    let (ss, len) = to.to_raw();
    // SAFETY: data is valid for reading for its length, ss for len bytes.
    let r = unsafe { libc::sendto(fd.as_raw_fd(), data.as_ptr() as *const libc::c_void, data.len(), libc::MSG_NOSIGNAL, &ss as *const libc::sockaddr_storage as *const libc::sockaddr, len) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}
