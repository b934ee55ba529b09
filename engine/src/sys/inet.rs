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

/// getsockopt(2) of an int option.
pub fn get_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and l are valid for writing for the sizes given.
    check(unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, &mut v as *mut _ as *mut libc::c_void, &mut l) })?;
    Ok(v)
}

/// setsockopt(2) of an int option.
pub fn set_int(fd: BorrowedFd<'_>, level: i32, name: i32, v: i32) -> io::Result<()> {
    // SAFETY: v is valid for reading for its size.
    check(unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, &v as *const _ as *const libc::c_void, std::mem::size_of::<libc::c_int>() as libc::socklen_t) })
        .map(drop)
}

/// A timeval option (SO_SNDTIMEO/SO_RCVTIMEO): (seconds, microseconds).
pub fn get_timeval(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<(u64, u64)> {
    let mut tv = libc::timeval { tv_sec: 0, tv_usec: 0 };
    let mut l = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: tv and l are valid for writing for the sizes given.
    check(unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, &mut tv as *mut _ as *mut libc::c_void, &mut l) })?;
    Ok((tv.tv_sec.max(0) as u64, tv.tv_usec.max(0) as u64))
}

/// Set a timeval option.
pub fn set_timeval(fd: BorrowedFd<'_>, level: i32, name: i32, sec: u64, usec: u64) -> io::Result<()> {
    let tv = libc::timeval { tv_sec: sec.min(i64::MAX as u64) as libc::time_t, tv_usec: usec.min(999_999) as libc::suseconds_t };
    // SAFETY: tv is valid for reading for its size.
    check(unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, &tv as *const _ as *const libc::c_void, std::mem::size_of::<libc::timeval>() as libc::socklen_t) })
        .map(drop)
}

/// SO_LINGER: Some(seconds) when on.
pub fn get_linger(fd: BorrowedFd<'_>) -> io::Result<Option<u32>> {
    let mut lg = libc::linger { l_onoff: 0, l_linger: 0 };
    let mut l = std::mem::size_of::<libc::linger>() as libc::socklen_t;
    // SAFETY: lg and l are valid for writing for the sizes given.
    check(unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &mut lg as *mut _ as *mut libc::c_void, &mut l) })?;
    Ok((lg.l_onoff != 0).then_some(lg.l_linger.max(0) as u32))
}

/// Set SO_LINGER on with `secs`.
pub fn set_linger(fd: BorrowedFd<'_>, secs: u32) -> io::Result<()> {
    let lg = libc::linger { l_onoff: 1, l_linger: secs.min(i32::MAX as u32) as i32 };
    // SAFETY: lg is valid for reading for its size.
    check(unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &lg as *const _ as *const libc::c_void, std::mem::size_of::<libc::linger>() as libc::socklen_t) })
        .map(drop)
}

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

/// getsockopt(2) of a byte option into `buf`: the length written.
pub fn get_bytes(fd: BorrowedFd<'_>, level: i32, name: i32, buf: &mut [u8]) -> io::Result<usize> {
    let mut l = buf.len() as libc::socklen_t;
    // SAFETY: buf and l are valid for writing for the sizes given.
    check(unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, buf.as_mut_ptr() as *mut libc::c_void, &mut l) })?;
    Ok(l as usize)
}

/// setsockopt(2) of a byte option.
pub fn set_bytes(fd: BorrowedFd<'_>, level: i32, name: i32, v: &[u8]) -> io::Result<()> {
    // SAFETY: v is valid for reading for its length.
    check(unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, v.as_ptr() as *const libc::c_void, v.len() as libc::socklen_t) }).map(drop)
}

/// shutdown(2); on a TCP socket that is not connected it still marks both
/// directions shut (reads see end of file, writes EPIPE) and says
/// ENOTCONN, which is returned as is.
pub fn shutdown(fd: BorrowedFd<'_>, how: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::shutdown(fd.as_raw_fd(), how) }).map(drop)
}
