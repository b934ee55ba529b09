//! Event objects behind fds: eventfd, timerfd, signalfd, epoll (their
//! creation and setup for the restore, `kcmp(KCMP_EPOLL_TFD)` for the
//! dump). Every wrapper returns or takes owned/borrowed fds; none writes
//! memory the caller did not hand over as a typed value.

use super::{last_err, Pid};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// An fd number a syscall just returned, owned.
fn owned(r: i64) -> io::Result<OwnedFd> {
    if r < 0 {
        return Err(last_err());
    }
    let fd = i32::try_from(r).map_err(|_| io::Error::other(format!("fd {r} out of range")))?;
    // SAFETY: the kernel just created fd `fd` for this process; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// eventfd2(2): a new eventfd with counter `init` and `flags`
/// (EFD_SEMAPHORE, EFD_NONBLOCK, EFD_CLOEXEC).
pub fn eventfd(init: u32, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: integer-only syscall creating a new fd.
    owned(unsafe { libc::syscall(libc::SYS_eventfd2, init, flags) })
}

/// timerfd_create(2) on `clock` with `flags` (TFD_NONBLOCK, TFD_CLOEXEC).
pub fn timerfd_create(clock: i32, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: integer-only syscall creating a new fd.
    owned(unsafe { libc::syscall(libc::SYS_timerfd_create, clock, flags) })
}

fn timespec((sec, nsec): (u64, u64)) -> io::Result<libc::timespec> {
    let tv_sec = i64::try_from(sec).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{sec} seconds is out of range")))?;
    if nsec >= 1_000_000_000 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{nsec} nanoseconds is not below one second")));
    }
    Ok(libc::timespec { tv_sec, tv_nsec: nsec as i64 })
}

/// timerfd_settime(2): arm (or disarm, `value` zero) the timer `fd` with
/// `value` (relative, or absolute with TFD_TIMER_ABSTIME in `flags`) and
/// `interval`, as (seconds, nanoseconds).
pub fn timerfd_settime(fd: BorrowedFd<'_>, flags: i32, value: (u64, u64), interval: (u64, u64)) -> io::Result<()> {
    let its = libc::itimerspec { it_interval: timespec(interval)?, it_value: timespec(value)? };
    // SAFETY: `its` is a valid itimerspec for the call's duration; the old
    // value pointer is null (not wanted).
    let r = unsafe { libc::syscall(libc::SYS_timerfd_settime, fd.as_raw_fd(), flags, &its as *const libc::itimerspec, std::ptr::null_mut::<libc::itimerspec>()) };
    if r < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// timerfd_gettime(2): (time left, interval) of the timer `fd`.
pub fn timerfd_gettime(fd: BorrowedFd<'_>) -> io::Result<((u64, u64), (u64, u64))> {
    let mut its = libc::itimerspec {
        it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
        it_value: libc::timespec { tv_sec: 0, tv_nsec: 0 },
    };
    // SAFETY: `its` is a writable itimerspec the kernel fills.
    let r = unsafe { libc::syscall(libc::SYS_timerfd_gettime, fd.as_raw_fd(), &mut its as *mut libc::itimerspec) };
    if r < 0 {
        return Err(last_err());
    }
    let t = |t: libc::timespec| (t.tv_sec as u64, t.tv_nsec as u64);
    Ok((t(its.it_value), t(its.it_interval)))
}

/// ioctl(TFD_IOC_SET_TICKS): add `ticks` pending expirations to the timer
/// `fd` (readable at once, and a wakeup for its pollers).
pub fn timerfd_set_ticks(fd: BorrowedFd<'_>, ticks: u64) -> io::Result<()> {
    // _IOW('T', 0, u64)
    const TFD_IOC_SET_TICKS: libc::c_ulong = (1 << 30) | (8 << 16) | ((b'T' as libc::c_ulong) << 8);
    // SAFETY: the ioctl reads one u64 from the pointer, which points at `ticks`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &ticks as *const u64) };
    if r < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// signalfd4(2): a new signalfd accepting the signals of `mask` (bit
/// `signo - 1`), with `flags` (SFD_NONBLOCK, SFD_CLOEXEC).
pub fn signalfd(mask: u64, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: the kernel reads 8 bytes (the size passed) from `mask`.
    owned(unsafe { libc::syscall(libc::SYS_signalfd4, -1, &mask as *const u64, 8usize, flags) })
}

/// epoll_create1(2).
pub fn epoll_create(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: integer-only syscall creating a new fd.
    owned(unsafe { libc::syscall(libc::SYS_epoll_create1, flags) })
}

/// epoll_ctl(EPOLL_CTL_ADD) of fd number `target` to `ep`, with `events`
/// and `data`.
pub fn epoll_add(ep: BorrowedFd<'_>, target: i32, events: u32, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is a valid epoll_event for the call's duration.
    let r = unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, target, &mut ev) };
    if r < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// kcmp(KCMP_EPOLL_TFD): is fd `fd` of `pid` the file the epoll instance
/// fd `epfd` of `pid` watches under target fd number `tfd` (the `toff`-th
/// registration of that number)? `Ok(false)` also when `fd` is not open.
pub fn kcmp_epoll_tfd(pid: Pid, fd: i32, epfd: i32, tfd: i32, toff: u32) -> io::Result<bool> {
    const KCMP_EPOLL_TFD: i32 = 7;
    #[repr(C)]
    struct Slot {
        efd: u32,
        tfd: u32,
        toff: u32,
    }
    let slot = Slot { efd: epfd as u32, tfd: tfd as u32, toff };
    // SAFETY: the kernel reads one kcmp_epoll_slot from the pointer, which
    // points at `slot` (repr(C), three u32 as the ABI has it).
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_EPOLL_TFD, fd as usize, &slot as *const Slot) };
    match r {
        0 => Ok(true),
        r if r > 0 => Ok(false),
        _ => {
            let e = last_err();
            if e.raw_os_error() == Some(libc::EBADF) {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// inotify_init1(2) with `flags` (IN_NONBLOCK, IN_CLOEXEC).
pub fn inotify_init(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: integer-only syscall creating a new fd.
    owned(unsafe { libc::syscall(libc::SYS_inotify_init1, flags) })
}

/// inotify_add_watch(2) of `path` with `mask`: the watch descriptor.
pub fn inotify_add_watch(fd: BorrowedFd<'_>, path: &std::ffi::CStr, mask: u32) -> io::Result<i32> {
    // SAFETY: `path` is a NUL-terminated string living for the call.
    let r = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
    if r < 0 {
        return Err(last_err());
    }
    Ok(r)
}

/// inotify_rm_watch(2).
pub fn inotify_rm_watch(fd: BorrowedFd<'_>, wd: i32) -> io::Result<()> {
    // SAFETY: integer-only call.
    if unsafe { libc::inotify_rm_watch(fd.as_raw_fd(), wd) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// ioctl(FIONREAD): bytes ready to be read from `fd`.
pub fn bytes_queued(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points at `n`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n as *mut libc::c_int) } < 0 {
        return Err(last_err());
    }
    Ok(n as u32)
}

/// open_by_handle_at(2): open the inode of file handle (`htype`, `handle`)
/// on the file system `mount` is on, with `flags` (O_PATH, ...). Needs
/// CAP_DAC_READ_SEARCH.
pub fn open_by_handle(mount: BorrowedFd<'_>, htype: i32, handle: &[u8], flags: i32) -> io::Result<OwnedFd> {
    const MAX_HANDLE_SZ: usize = 128;
    if handle.len() > MAX_HANDLE_SZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("a file handle of {} bytes is past {MAX_HANDLE_SZ}", handle.len())));
    }
    // struct file_handle: u32 handle_bytes, int handle_type, the bytes
    let mut buf = vec![0u8; 8 + handle.len()];
    buf[..4].copy_from_slice(&(handle.len() as u32).to_ne_bytes());
    buf[4..8].copy_from_slice(&htype.to_ne_bytes());
    buf[8..].copy_from_slice(handle);
    // SAFETY: `buf` holds a struct file_handle whose handle_bytes is the
    // length of the bytes after its header; the kernel reads only those.
    owned(unsafe { libc::syscall(libc::SYS_open_by_handle_at, mount.as_raw_fd(), buf.as_ptr(), flags) })
}

/// fanotify_init(2) with `flags` (FAN_CLASS_*, FAN_REPORT_*, FAN_NONBLOCK,
/// ...) and the status flags of the event fds `event_flags`.
pub fn fanotify_init(flags: u32, event_flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: integer-only syscall creating a new fd.
    owned(unsafe { libc::syscall(libc::SYS_fanotify_init, flags, event_flags) })
}

/// fanotify_mark(2) of `path` (relative to the cwd) with `flags` and `mask`.
pub fn fanotify_mark(fd: BorrowedFd<'_>, flags: u32, mask: u64, path: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: `path` is a NUL-terminated string living for the call.
    if unsafe { libc::fanotify_mark(fd.as_raw_fd(), flags, mask, libc::AT_FDCWD, path.as_ptr()) } < 0 {
        return Err(last_err());
    }
    Ok(())
}
