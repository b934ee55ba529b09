//! Paths inside a restore root (`--root`): openat2(2) with
//! RESOLVE_IN_ROOT, so that `..` and absolute symlinks inside the root stay
//! inside it; chroot(2) to a directory fd; unlinkat(2) in the root.

use super::last_err;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// RESOLVE_IN_ROOT (linux/openat2.h): resolve as if the directory fd were
/// the root: `..` stops there, absolute symlinks start there.
const RESOLVE_IN_ROOT: u64 = 0x10;

/// The flags open(2) takes (the kernel's VALID_OPEN_FLAGS).
const VALID_OPEN_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_CREAT
    | libc::O_EXCL
    | libc::O_NOCTTY
    | libc::O_TRUNC
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_DSYNC
    | libc::O_ASYNC
    | libc::O_DIRECT
    | libc::O_LARGEFILE
    | libc::O_DIRECTORY
    | libc::O_NOFOLLOW
    | libc::O_NOATIME
    | libc::O_CLOEXEC
    | libc::O_SYNC
    | libc::O_PATH
    | libc::O_TMPFILE;

fn cstr(path: &OsStr) -> io::Result<CString> {
    CString::new(path.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))
}

/// openat2(2) of `path` (absolute or relative) resolved inside the
/// directory `root` as if it were `/` (RESOLVE_IN_ROOT). The new fd is
/// close-on-exec only if `flags` says so. EAGAIN (a rename raced the
/// lookup) is retried a few times.
pub fn open_in_root(root: BorrowedFd<'_>, path: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // open(2) ignores flag bits it doesn't know (an fdinfo's flags may carry
    // kernel-internal ones); openat2 refuses them: keep the open(2) ones
    let flags = flags & VALID_OPEN_FLAGS;
    let mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 { mode } else { 0 };
    let how = OpenHow { flags: flags as u32 as u64, mode: u64::from(mode), resolve: RESOLVE_IN_ROOT };
    for _ in 0..16 {
        // SAFETY: `c` is a NUL-terminated string and `how` a valid open_how
        // of the size passed, both alive for the duration of the call.
        let r = unsafe {
            libc::syscall(libc::SYS_openat2, root.as_raw_fd(), c.as_ptr(), &how as *const OpenHow, std::mem::size_of::<OpenHow>())
        };
        if r >= 0 {
            // SAFETY: openat2 returned a new fd that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as i32) });
        }
        let e = last_err();
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

/// open(2) of a directory (O_PATH) as the root for [`open_in_root`],
/// moved to an fd number of at least `min` (above every fd a restore child
/// sets up) and close-on-exec.
pub fn open_root_dir(path: &std::path::Path, min: i32) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: `c` is a NUL-terminated path alive for the call.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(last_err());
    }
    // SAFETY: open returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an fd we own, integer arguments.
    let hi = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if hi < 0 {
        return Err(last_err());
    }
    // SAFETY: fcntl returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(hi) })
}

/// Remove `path` resolved inside `root` (the parent directory is looked
/// up with RESOLVE_IN_ROOT, the last component is unlinked there).
pub fn unlink_in_root(root: BorrowedFd<'_>, path: &OsStr) -> io::Result<()> {
    let p = std::path::Path::new(path);
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no file name to unlink"));
    };
    let parent = if parent.as_os_str().is_empty() { OsStr::new(".") } else { parent.as_os_str() };
    let dir = open_in_root(root, parent, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC, 0)?;
    let n = cstr(name)?;
    // SAFETY: `dir` is an fd we own, `n` a NUL-terminated name alive for the call.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), n.as_ptr(), 0) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// Make the directory `dir` the calling process's root (fchdir + chroot(".")),
/// so a root found with [`open_in_root`] is not looked up again by path.
pub fn chroot_to(dir: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fchdir on a borrowed fd, integer argument.
    if unsafe { libc::fchdir(dir.as_raw_fd()) } < 0 {
        return Err(last_err());
    }
    // SAFETY: a static NUL-terminated path.
    if unsafe { libc::chroot(c".".as_ptr()) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// CLONE_NEWTIME (linux/sched.h); libc does not export it.
pub const CLONE_NEWTIME: i32 = 0x80;

/// unshare(2) with namespace flags.
pub fn unshare(flags: i32) -> io::Result<()> {
    // SAFETY: integer-only syscall.
    if unsafe { libc::unshare(flags) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// setns(2) into the namespace `fd` refers to (`nstype` CLONE_NEW*).
pub fn setns(fd: BorrowedFd<'_>, nstype: i32) -> io::Result<()> {
    // SAFETY: setns on a borrowed fd, integer arguments.
    if unsafe { libc::setns(fd.as_raw_fd(), nstype) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// mount(2): `source` and `fstype` may be absent (a propagation change
/// names neither), `data` the file system's option string.
pub fn mount(source: Option<&str>, target: &str, fstype: Option<&str>, flags: u64, data: Option<&str>) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("NUL in {s:?}")));
    let (source, target, fstype, data) =
        (source.map(c).transpose()?, c(target)?, fstype.map(c).transpose()?, data.map(c).transpose()?);
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string alive for the call,
    // or null where mount(2) takes null.
    let r = unsafe { libc::mount(ptr(&source), target.as_ptr(), ptr(&fstype), flags as libc::c_ulong, ptr(&data).cast()) };
    if r < 0 {
        return Err(last_err());
    }
    Ok(())
}
