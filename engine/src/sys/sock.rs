//! Socket syscalls: the sock_diag netlink socket (socket(7) of
//! AF_NETLINK/NETLINK_SOCK_DIAG, send/recv of whole messages), socket
//! options (getsockopt/setsockopt of ints, timevals, byte strings),
//! non-consuming reads of a socket's receive queue (recvmsg with MSG_PEEK,
//! any passed fds handed back owned), and the calls that rebuild unix
//! sockets (socketpair, socket, bind, connect, listen, send, sendto,
//! sendmsg with fds, shutdown). Addresses are `sockaddr_un` built here from the name bytes
//! (a path, or `\0` + an abstract name).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn check_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// A fresh socket fd from the kernel as an `OwnedFd`.
fn owned(r: libc::c_int) -> io::Result<OwnedFd> {
    let fd = check(r)?;
    // SAFETY: the kernel just returned `fd`, a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// socket(AF_NETLINK, SOCK_RAW, NETLINK_SOCK_DIAG), close-on-exec.
pub fn diag_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall, no memory passed.
    owned(unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) })
}

/// send(2) of `buf` (to the kernel, for an unconnected netlink socket).
pub fn send(fd: BorrowedFd<'_>, buf: &[u8], flags: i32) -> io::Result<usize> {
    // SAFETY: `buf` is readable for its whole length during the call.
    check_size(unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) })
}

/// recv(2) into `buf`; the count received (a netlink datagram is never
/// larger than the buffer the caller sizes for it; `MSG_TRUNC` in `flags`
/// returns the full length).
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8], flags: i32) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its whole length and exclusively
    // borrowed during the call.
    check_size(unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) })
}

/// getsockopt(2) of an `int` option.
pub fn get_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes; `len` tells the kernel
    // the size of `v`.
    check(unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (&raw mut v).cast(), &raw mut len) })?;
    Ok(v)
}

/// getsockopt(2) of a `struct timeval` option (SO_SNDTIMEO, SO_RCVTIMEO):
/// (seconds, microseconds).
pub fn get_timeval(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<(u64, u64)> {
    let mut v = libc::timeval { tv_sec: 0, tv_usec: 0 };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes; `len` is the size of `v`.
    check(unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (&raw mut v).cast(), &raw mut len) })?;
    Ok((v.tv_sec.max(0) as u64, v.tv_usec.max(0) as u64))
}

/// SO_LINGER: Some(seconds) when on.
pub fn get_linger(fd: BorrowedFd<'_>) -> io::Result<Option<u32>> {
    let mut v = libc::linger { l_onoff: 0, l_linger: 0 };
    let mut len = std::mem::size_of::<libc::linger>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes; `len` is the size of `v`.
    check(unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, (&raw mut v).cast(), &raw mut len) })?;
    Ok((v.l_onoff != 0).then_some(v.l_linger.max(0) as u32))
}

/// getsockopt(2) of an option whose value is bytes (SO_BINDTODEVICE): the
/// length the kernel wrote into `buf`.
pub fn get_bytes(fd: BorrowedFd<'_>, level: i32, name: i32, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = libc::socklen_t::try_from(buf.len()).unwrap_or(libc::socklen_t::MAX);
    // SAFETY: `buf` is writable for `len` bytes; `len` is valid for writes.
    check(unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, buf.as_mut_ptr().cast(), &raw mut len) })?;
    Ok((len as usize).min(buf.len()))
}

/// setsockopt(2) of an `int` option.
pub fn set_int(fd: BorrowedFd<'_>, level: i32, name: i32, v: i32) -> io::Result<()> {
    // SAFETY: `v` is a readable int and the length says so.
    check(unsafe {
        libc::setsockopt(fd.as_raw_fd(), level, name, (&raw const v).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t)
    })?;
    Ok(())
}

/// setsockopt(2) of a `struct timeval` option (seconds, microseconds:
/// clamped to what a timeval holds).
pub fn set_timeval(fd: BorrowedFd<'_>, level: i32, name: i32, sec: u64, usec: u64) -> io::Result<()> {
    let v = libc::timeval { tv_sec: sec.min(i64::MAX as u64) as libc::time_t, tv_usec: usec.min(999_999) as libc::suseconds_t };
    // SAFETY: `v` is a readable timeval and the length says so.
    check(unsafe {
        libc::setsockopt(fd.as_raw_fd(), level, name, (&raw const v).cast(), std::mem::size_of::<libc::timeval>() as libc::socklen_t)
    })?;
    Ok(())
}

/// Set SO_LINGER on with `secs`.
pub fn set_linger(fd: BorrowedFd<'_>, secs: u32) -> io::Result<()> {
    let v = libc::linger { l_onoff: 1, l_linger: i32::try_from(secs).unwrap_or(i32::MAX) };
    // SAFETY: `v` is a readable linger and the length says so.
    check(unsafe {
        libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, (&raw const v).cast(), std::mem::size_of::<libc::linger>() as libc::socklen_t)
    })?;
    Ok(())
}

/// setsockopt(2) of a byte-string option (SO_BINDTODEVICE).
pub fn set_bytes(fd: BorrowedFd<'_>, level: i32, name: i32, v: &[u8]) -> io::Result<()> {
    let len = libc::socklen_t::try_from(v.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `v` is readable for `len` bytes.
    check(unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, v.as_ptr().cast(), len) })?;
    Ok(())
}

/// What one [`peek`] found.
#[derive(Debug, Default)]
pub struct Peeked {
    /// Bytes copied into the buffer.
    pub len: usize,
    /// MSG_TRUNC: the message (datagram, record) goes on past what was copied.
    pub trunc: bool,
    /// Fds passed with the message (SCM_RIGHTS): the kernel installed
    /// duplicates in the engine (close-on-exec), owned here.
    pub rights: usize,
    pub fds: Vec<OwnedFd>,
    /// MSG_CTRUNC: ancillary data did not fit (more passed fds, perhaps).
    pub ctrunc: bool,
}

/// recvmsg(2) with MSG_PEEK | MSG_DONTWAIT into `buf`: the receive queue
/// is not consumed (with SO_PEEK_OFF set, the socket's peek offset moves
/// on). `Ok(None)` when nothing is queued (EAGAIN). Fds passed in the
/// message (which the kernel duplicates into the engine even when peeking)
/// are handed back in `fds`.
pub fn peek(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Peeked>> {
    recvmsg_rights(fd, buf, libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC)
}

/// recvmsg(2) with MSG_DONTWAIT of one message into `buf`, consuming it,
/// the fds passed with it (SCM_RIGHTS) handed back owned (close-on-exec).
/// `Ok(None)` when nothing is queued (EAGAIN).
pub fn recv_rights(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Peeked>> {
    recvmsg_rights(fd, buf, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC)
}

fn recvmsg_rights(fd: BorrowedFd<'_>, buf: &mut [u8], flags: i32) -> io::Result<Option<Peeked>> {
    // room for a few cmsgs: credentials and up to 64 fds
    let mut control = [0u64; 64];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `msg` points at `iov` (describing `buf`, writable and
    // exclusively borrowed) and at `control` (writable, its size in
    // msg_controllen), all alive during the call.
    let r = unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut msg, flags) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EAGAIN) { Ok(None) } else { Err(e) };
    }
    let mut out = Peeked {
        len: r as usize,
        trunc: msg.msg_flags & libc::MSG_TRUNC != 0,
        rights: 0,
        fds: Vec::new(),
        ctrunc: msg.msg_flags & libc::MSG_CTRUNC != 0,
    };
    // SAFETY: `msg` was filled by the kernel: its control pointer and
    // length describe `control`, which the CMSG macros walk within bounds.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
    while !c.is_null() {
        // SAFETY: CMSG_FIRSTHDR/NXTHDR only return headers inside `control`.
        let h = unsafe { &*c };
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: `c` is a valid header; CMSG_LEN(0) is the data offset.
            let data_len = h.cmsg_len.saturating_sub(unsafe { libc::CMSG_LEN(0) } as usize);
            let n = data_len / std::mem::size_of::<libc::c_int>();
            // SAFETY: the data of this SCM_RIGHTS header holds `n` ints
            // inside `control` (cmsg_len was bounded by msg_controllen).
            let data = unsafe { libc::CMSG_DATA(c) }.cast::<libc::c_int>();
            for i in 0..n {
                // SAFETY: `i < n` ints lie inside the header's data; the
                // read is unaligned-safe.
                let fd = unsafe { data.add(i).read_unaligned() };
                // SAFETY: the kernel installed `fd` in our table for this
                // message; nothing else owns it.
                out.fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            out.rights += n;
        }
        // SAFETY: `c` is a header inside `msg`'s control buffer.
        c = unsafe { libc::CMSG_NXTHDR(&raw const msg, c) };
    }
    Ok(Some(out))
}

/// A `sockaddr_un` for `name` (a path without its NUL, or `\0` + an
/// abstract name) and its length; EINVAL when the name does not fit.
fn sockaddr_un(name: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() > a.sun_path.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in a.sun_path.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + name.len();
    Ok((a, len as libc::socklen_t))
}

/// socketpair(AF_UNIX, `ty`) (`ty` may carry SOCK_NONBLOCK/SOCK_CLOEXEC).
pub fn socketpair(ty: i32) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` is writable room for two ints.
    check(unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) })?;
    // SAFETY: the kernel just returned two new descriptors nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// socket(AF_UNIX, `ty`, 0).
pub fn unix_socket(ty: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall, no memory passed.
    owned(unsafe { libc::socket(libc::AF_UNIX, ty, 0) })
}

/// bind(2) to a unix name.
pub fn bind_unix(fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let (a, len) = sockaddr_un(name)?;
    // SAFETY: `a` is a valid sockaddr_un of `len` meaningful bytes.
    check(unsafe { libc::bind(fd.as_raw_fd(), (&raw const a).cast(), len) })?;
    Ok(())
}

/// connect(2) to a unix name.
pub fn connect_unix(fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let (a, len) = sockaddr_un(name)?;
    // SAFETY: `a` is a valid sockaddr_un of `len` meaningful bytes.
    check(unsafe { libc::connect(fd.as_raw_fd(), (&raw const a).cast(), len) })?;
    Ok(())
}

/// sendto(2) of `buf` to a unix name.
pub fn sendto_unix(fd: BorrowedFd<'_>, buf: &[u8], flags: i32, name: &[u8]) -> io::Result<usize> {
    let (a, len) = sockaddr_un(name)?;
    // SAFETY: `buf` is readable for its length; `a` is a valid sockaddr_un
    // of `len` meaningful bytes.
    check_size(unsafe { libc::sendto(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags, (&raw const a).cast(), len) })
}

/// sendmsg(2) of `buf` with `fds` passed along (SCM_RIGHTS; none: a
/// plain send), to the connected peer or to unix name `to`.
pub fn send_fds(fd: BorrowedFd<'_>, buf: &[u8], flags: i32, to: Option<&[u8]>, fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    // SCM_MAX_FD is 253: the control buffer holds that many ints
    let mut control = [0u64; 160];
    if fds.len() > 253 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let addr = to.map(sockaddr_un).transpose()?;
    let mut iov = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if let Some((a, len)) = &addr {
        msg.msg_name = (a as *const libc::sockaddr_un).cast_mut().cast();
        msg.msg_namelen = *len;
    }
    if !fds.is_empty() {
        let data_len = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: `msg` describes `control`, which is at least `space`
        // bytes (253 ints fit): the first header lies inside it.
        let c = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
        // SAFETY: `c` is the first header inside `control` (non-null: the
        // control length covers one header); its data holds `fds.len()` ints.
        unsafe {
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(data_len) as usize;
            let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
            for (i, f) in fds.iter().enumerate() {
                data.add(i).write_unaligned(f.as_raw_fd());
            }
        }
    }
    // SAFETY: `msg` points at `iov` (describing `buf`, readable), at the
    // address when given and at `control`, all alive during the call.
    check_size(unsafe { libc::sendmsg(fd.as_raw_fd(), &raw const msg, flags) })
}

/// listen(2).
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: plain syscall, no memory passed.
    check(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(())
}

/// shutdown(2) with SHUT_RD / SHUT_WR / SHUT_RDWR.
pub fn shutdown(fd: BorrowedFd<'_>, how: i32) -> io::Result<()> {
    // SAFETY: plain syscall, no memory passed.
    check(unsafe { libc::shutdown(fd.as_raw_fd(), how) })?;
    Ok(())
}

/// A close-on-exec duplicate of `fd` on the lowest free number at or
/// above `min` (fcntl F_DUPFD_CLOEXEC).
pub fn dup_above(fd: BorrowedFd<'_>, min: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain fcntl on a borrowed fd; no memory passed.
    owned(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) })
}

/// A netlink address: (port id, the first 32 multicast groups).
fn nl_addr(portid: u32, groups: u32) -> libc::sockaddr_nl {
    // SAFETY: an all-zero sockaddr_nl is valid.
    let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    a.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    a.nl_pid = portid;
    a.nl_groups = groups;
    a
}

/// getsockname (`peer`: getpeername) of a netlink socket: (port id, groups).
pub fn nl_name(fd: BorrowedFd<'_>, peer: bool) -> io::Result<(u32, u32)> {
    let mut a = nl_addr(0, 0);
    let mut l = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: `a` is writable for `l` bytes, `l` is writable.
    let r = unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), (&raw mut a).cast(), &mut l)
        } else {
            libc::getsockname(fd.as_raw_fd(), (&raw mut a).cast(), &mut l)
        }
    };
    check(r)?;
    Ok((a.nl_pid, a.nl_groups))
}

/// bind(2) (`connect`: connect(2)) of a netlink socket to (port id, groups).
pub fn nl_bind(fd: BorrowedFd<'_>, portid: u32, groups: u32, connect: bool) -> io::Result<()> {
    let a = nl_addr(portid, groups);
    let l = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: `a` is a valid sockaddr_nl of `l` bytes.
    let r = unsafe {
        if connect {
            libc::connect(fd.as_raw_fd(), (&raw const a).cast(), l)
        } else {
            libc::bind(fd.as_raw_fd(), (&raw const a).cast(), l)
        }
    };
    check(r).map(drop)
}

/// bind(2) of a packet socket to interface `ifindex` for `proto`
/// (network order).
pub fn packet_bind(fd: BorrowedFd<'_>, proto: u16, ifindex: i32) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr_ll is valid.
    let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    a.sll_family = libc::AF_PACKET as u16;
    a.sll_protocol = proto;
    a.sll_ifindex = ifindex;
    let l = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `a` is a valid sockaddr_ll of `l` bytes.
    check(unsafe { libc::bind(fd.as_raw_fd(), (&raw const a).cast(), l) }).map(drop)
}

/// setsockopt(SOL_PACKET, `opt`) of a `packet_mreq` (PACKET_ADD_MEMBERSHIP).
pub fn packet_membership(fd: BorrowedFd<'_>, opt: i32, ifindex: i32, ty: u16, addr: &[u8]) -> io::Result<()> {
    // SAFETY: an all-zero packet_mreq is valid.
    let mut m: libc::packet_mreq = unsafe { std::mem::zeroed() };
    if addr.len() > m.mr_address.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    m.mr_ifindex = ifindex;
    m.mr_type = ty;
    m.mr_alen = addr.len() as u16;
    m.mr_address[..addr.len()].copy_from_slice(addr);
    let l = std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t;
    // SAFETY: `m` is a valid packet_mreq of `l` bytes.
    check(unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, opt, (&raw const m).cast(), l) }).map(drop)
}
