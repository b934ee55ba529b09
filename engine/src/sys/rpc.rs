//! The calls of the `criu swrk` service: taking the inherited socket, its
//! peer's credentials (SO_PEERCRED), one SEQPACKET message in and out, and
//! opening a directory fd of the client through `/proc/PEER/fd/N`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Take fd `n`, inherited from the process that ran us, as ours: it must be
/// open and a SOCK_SEQPACKET socket. Made close-on-exec.
pub fn take_inherited_seqpacket(n: i32) -> io::Result<OwnedFd> {
    if n < 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "a negative fd number"));
    }
    // SAFETY: F_GETFD on a number only reads the fd table.
    if unsafe { libc::fcntl(n, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `n` is open (just checked) and stays open during the call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(n) };
    let ty = super::sock::get_int(borrowed, libc::SOL_SOCKET, libc::SO_TYPE).map_err(|e| io::Error::new(e.kind(), format!("not a socket ({e})")))?;
    if ty != libc::SOCK_SEQPACKET {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("a socket of type {ty}, not SOCK_SEQPACKET")));
    }
    // SAFETY: `n` is open and was inherited for this service to own:
    // nothing else in this process refers to it.
    let fd = unsafe { OwnedFd::from_raw_fd(n) };
    // SAFETY: F_SETFD on our own open fd.
    if unsafe { libc::fcntl(n, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// (pid, uid, gid) of the peer of a connected unix socket (SO_PEERCRED).
pub fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<(i32, u32, u32)> {
    let mut c = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `c` and `len` are valid for writes; `len` is the size of `c`.
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut c).cast(), &raw mut len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((c.pid, c.uid, c.gid))
}

/// One message: `Ok(None)` at end of file (the peer closed), else the
/// message and whether it was longer than `buf` (the rest is dropped by
/// the kernel: MSG_TRUNC reports the full length).
pub fn recv_packet(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<(usize, bool)>> {
    loop {
        // SAFETY: `buf` is writable for its whole length and exclusively
        // borrowed during the call.
        let r = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC | libc::MSG_CMSG_CLOEXEC) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = r as usize;
        if n == 0 {
            return Ok(None);
        }
        return Ok(Some((n.min(buf.len()), n > buf.len())));
    }
}

/// Send one message whole (MSG_NOSIGNAL: a peer gone is an error, not SIGPIPE).
pub fn send_packet(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<()> {
    let n = super::sock::send(fd, buf, libc::MSG_NOSIGNAL)?;
    if n != buf.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, format!("sent {n} of {} bytes", buf.len())));
    }
    Ok(())
}

/// Open the directory the client `peer` has open as its fd `n`, through
/// `/proc/PEER/fd/N` (the client's fd table, as upstream does): O_PATH,
/// close-on-exec, and it must be a directory.
pub fn open_peer_dir(peer: i32, n: i32) -> io::Result<OwnedFd> {
    let path = std::ffi::CString::new(format!("/proc/{peer}/fd/{n}")).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `path` is a NUL-terminated string alive during the call.
    let r = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned `r`, a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}
