//! Pseudo-terminals: the ioctls of a pty pair (index, lock, packet mode,
//! termios in the kernel's own layout, window size, session, foreground
//! group, controlling terminal), opening `/dev/ptmx` and a master's peer.
//! Every wrapper passes the kernel a typed value of ours, of the size the
//! ioctl reads or writes.

use super::last_err;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The kernel's `struct termios` (asm-generic/termbits.h, x86): what
/// TCGETS/TCSETS and the locked-termios ioctls read and write (36 bytes;
/// glibc's own struct is larger).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Termios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    pub cc: [u8; 19],
}

/// `struct winsize`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Winsize {
    pub row: u16,
    pub col: u16,
    pub xpixel: u16,
    pub ypixel: u16,
}

/// An ioctl that writes a `T` through its pointer argument.
fn get<T: Copy + Default>(fd: BorrowedFd<'_>, req: u64) -> io::Result<T> {
    let mut v = T::default();
    // SAFETY: every request this module passes writes exactly one `T`
    // (the callers below pair each request with its type), into `v`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req as _, &mut v as *mut T) } < 0 {
        return Err(last_err());
    }
    Ok(v)
}

/// An ioctl that reads a `T` through its pointer argument.
fn set<T: Copy>(fd: BorrowedFd<'_>, req: u64, v: &T) -> io::Result<()> {
    // SAFETY: every request this module passes reads exactly one `T` from
    // the pointer, which points at `v`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req as _, v as *const T) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// An ioctl that takes an integer argument (not a pointer).
fn arg(fd: BorrowedFd<'_>, req: u64, a: libc::c_ulong) -> io::Result<i32> {
    // SAFETY: the requests passed here take their argument by value.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, a) };
    if r < 0 {
        return Err(last_err());
    }
    Ok(r)
}

pub fn get_termios(fd: BorrowedFd<'_>) -> io::Result<Termios> {
    get(fd, libc::TCGETS)
}

pub fn set_termios(fd: BorrowedFd<'_>, t: &Termios) -> io::Result<()> {
    set(fd, libc::TCSETS, t)
}

pub fn get_locked_termios(fd: BorrowedFd<'_>) -> io::Result<Termios> {
    get(fd, libc::TIOCGLCKTRMIOS)
}

/// Needs CAP_SYS_ADMIN.
pub fn set_locked_termios(fd: BorrowedFd<'_>, t: &Termios) -> io::Result<()> {
    set(fd, libc::TIOCSLCKTRMIOS, t)
}

pub fn get_winsize(fd: BorrowedFd<'_>) -> io::Result<Winsize> {
    get(fd, libc::TIOCGWINSZ)
}

pub fn set_winsize(fd: BorrowedFd<'_>, w: &Winsize) -> io::Result<()> {
    set(fd, libc::TIOCSWINSZ, w)
}

/// The pts index of a master (TIOCGPTN).
pub fn index(fd: BorrowedFd<'_>) -> io::Result<u32> {
    get::<u32>(fd, libc::TIOCGPTN)
}

pub fn locked(fd: BorrowedFd<'_>) -> io::Result<bool> {
    get::<i32>(fd, libc::TIOCGPTLCK).map(|v| v != 0)
}

pub fn set_locked(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    set(fd, libc::TIOCSPTLCK, &i32::from(on))
}

pub fn packet_mode(fd: BorrowedFd<'_>) -> io::Result<bool> {
    get::<i32>(fd, libc::TIOCGPKT).map(|v| v != 0)
}

pub fn set_packet_mode(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    set(fd, libc::TIOCPKT, &i32::from(on))
}

pub fn exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    get::<i32>(fd, libc::TIOCGEXCL).map(|v| v != 0)
}

pub fn set_exclusive(fd: BorrowedFd<'_>) -> io::Result<()> {
    arg(fd, libc::TIOCEXCL, 0).map(drop)
}

/// The session of the terminal (asked through its master: no need to be
/// in it); `None` when it has none.
pub fn session(fd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    match get::<i32>(fd, libc::TIOCGSID) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.raw_os_error() == Some(libc::ENOTTY) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The foreground process group (0: none).
pub fn foreground(fd: BorrowedFd<'_>) -> io::Result<i32> {
    get::<i32>(fd, libc::TIOCGPGRP)
}

pub fn set_foreground(fd: BorrowedFd<'_>, pgrp: i32) -> io::Result<()> {
    set(fd, libc::TIOCSPGRP, &pgrp)
}

/// Make the terminal the caller's controlling terminal (a session leader
/// without one).
pub fn make_controlling(fd: BorrowedFd<'_>) -> io::Result<()> {
    arg(fd, libc::TIOCSCTTY, 0).map(drop)
}

/// A new open of a master's slave (TIOCGPTPEER), whatever its path.
pub fn open_peer(master: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    let r = arg(master, libc::TIOCGPTPEER, flags as libc::c_ulong)?;
    // SAFETY: the kernel just created fd `r` for this process; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Bytes waiting to be read (FIONREAD; complete lines only on a
/// canonical slave).
pub fn queued(fd: BorrowedFd<'_>) -> io::Result<u32> {
    get::<i32>(fd, libc::FIONREAD).map(|v| v as u32)
}

/// Put one byte in the terminal's input as if it had been typed
/// (TIOCSTI: the line discipline takes it at once, with the terminal's
/// termios of this moment). Needs CAP_SYS_ADMIN unless it is the
/// caller's controlling terminal.
pub fn push_input(fd: BorrowedFd<'_>, byte: u8) -> io::Result<()> {
    set(fd, libc::TIOCSTI, &byte)
}

/// A new fd (close-on-exec) for the file open on fd number `n` of this
/// process (F_DUPFD_CLOEXEC), for a file the caller knows only by number
/// (inherited across a fork).
pub fn dup_number(n: i32) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes an integer; `n` is not assumed owned.
    let r = unsafe { libc::fcntl(n, libc::F_DUPFD_CLOEXEC, 0) };
    if r < 0 {
        return Err(last_err());
    }
    // SAFETY: the kernel just created fd `r` for this process; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// open(2) of a terminal device with `flags`, owned.
pub fn open(path: &std::ffi::CStr, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated and lives across the call; no file is created.
    let r = unsafe { libc::open(path.as_ptr(), flags & !libc::O_CREAT & !libc::O_TMPFILE) };
    if r < 0 {
        return Err(last_err());
    }
    // SAFETY: the kernel just created fd `r` for this process; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Whether the master reads as hung up (POLLHUP: its slave was opened
/// and every open of it closed since).
pub fn hung_up(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd, writable, for the call; no wait.
    if unsafe { libc::poll(&mut p, 1, 0) } < 0 {
        return Err(last_err());
    }
    Ok(p.revents & libc::POLLHUP != 0)
}
