//! Mount-namespace calls `crate::mntns` needs beyond `sys::ns::mount`:
//! pivot_root(2), umount2(2), and a command run with its working directory
//! on a detached copy of one mount of another mount namespace
//! (open_tree(2) with OPEN_TREE_CLONE, not recursive: the mount without
//! the mounts below it), which is how a tmpfs's own files are archived;
//! and, for tfork, such copies made in the source's namespace
//! ([`clone_mount`]) attached in a clone's ([`move_mount`]).

use super::last_err;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("NUL in {s:?}")))
}

/// pivot_root(2) (`new_root` becomes `/`, the old root goes to `put_old`).
pub fn pivot_root(new_root: &str, put_old: &str) -> io::Result<()> {
    let (n, o) = (cstr(new_root)?, cstr(put_old)?);
    // SAFETY: two NUL-terminated paths alive for the call.
    if unsafe { libc::syscall(libc::SYS_pivot_root, n.as_ptr(), o.as_ptr()) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// umount2(2) with `flags` (MNT_DETACH...).
pub fn umount2(target: &str, flags: i32) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: a NUL-terminated path alive for the call, an integer.
    if unsafe { libc::umount2(t.as_ptr(), flags) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// OPEN_TREE_CLONE (linux/mount.h).
const OPEN_TREE_CLONE: u32 = 1;

/// Make `cmd` run with its working directory on a detached copy of the
/// mount at `mountpoint` of the mount namespace `ns` (an open
/// /proc/PID/ns/mnt; `mountpoint` as that namespace's root sees it),
/// the mounts below it left out, in the caller's own mount namespace
/// (`own`: its /proc/self/ns/mnt), so the program and its paths are the
/// caller's. The forked child, before exec: setns(ns), open_tree(2) of
/// the mount point with OPEN_TREE_CLONE, setns(own), fchdir to the copy.
pub fn in_mount_copy(cmd: &mut std::process::Command, ns: &std::fs::File, own: &std::fs::File, mountpoint: &str) -> io::Result<()> {
    let (ns, own) = (ns.try_clone()?, own.try_clone()?);
    let mp = cstr(mountpoint)?;
    let (nsfd, ownfd) = (OwnedFd::from(ns), OwnedFd::from(own));
    // SAFETY: the closure runs in the forked child before exec and makes
    // only async-signal-safe system calls on fds and a string the child
    // inherited (captured by value, alive until exec).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(nsfd.as_raw_fd(), libc::CLONE_NEWNS) < 0 {
                return Err(last_err());
            }
            let fd = libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, mp.as_ptr(), OPEN_TREE_CLONE | libc::O_CLOEXEC as u32);
            if fd < 0 {
                return Err(last_err());
            }
            if libc::setns(ownfd.as_raw_fd(), libc::CLONE_NEWNS) < 0 {
                return Err(last_err());
            }
            if libc::fchdir(fd as i32) < 0 {
                return Err(last_err());
            }
            Ok(())
        });
    }
    Ok(())
}

/// open_tree(2) of `path` with OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC: a
/// detached copy of the mount there (not the mounts below it), as an fd,
/// for [`move_mount`]. The mount must be in the caller's mount namespace.
pub fn clone_mount(path: &str) -> io::Result<OwnedFd> {
    let p = cstr(path)?;
    // SAFETY: a NUL-terminated path alive for the call, integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, p.as_ptr(), OPEN_TREE_CLONE | libc::O_CLOEXEC as u32) };
    if fd < 0 {
        return Err(last_err());
    }
    // SAFETY: open_tree returned a new fd that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// MOVE_MOUNT_F_EMPTY_PATH, MOVE_MOUNT_T_EMPTY_PATH (linux/mount.h).
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 4;
const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;

/// move_mount(2) of the detached mount `from` ([`clone_mount`]) onto the
/// directory or file `to` is (an fd, O_PATH will do, of the caller's
/// mount namespace; no path is looked up).
pub fn move_mount(from: &OwnedFd, to: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: two fds we borrow, static empty strings, integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_move_mount, from.as_raw_fd(), c"".as_ptr(), to.as_raw_fd(), c"".as_ptr(), MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) };
    if r < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// An overlayfs, attached nowhere (fsopen(2), fsconfig(2) with `lowerdir+`,
/// `upperdir`, `workdir` as strings, FSCONFIG_CMD_CREATE, fsmount(2)):
/// `lower` one lower layer (a path: no `:` or `,` syntax), `upper` and
/// `work` its upper and work directories. An fd of it for [`move_mount`].
pub fn overlay_mount(lower: &str, upper: &str, work: &str) -> io::Result<OwnedFd> {
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    let own = |r: libc::c_long| -> io::Result<OwnedFd> {
        if r < 0 {
            return Err(last_err());
        }
        // SAFETY: a new fd the syscall returned, owned by nothing else.
        Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r as i32) })
    };
    // SAFETY: a static NUL-terminated name, integer flags.
    let fs = own(unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), libc::FSOPEN_CLOEXEC) })?;
    for (key, val) in [(c"lowerdir+", lower), (c"upperdir", upper), (c"workdir", work)] {
        let v = cstr(val)?;
        // SAFETY: an fd we own, a static NUL-terminated key and a
        // NUL-terminated value alive for the call, aux 0 as SET_STRING takes.
        if unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_SET_STRING, key.as_ptr(), v.as_ptr(), 0) } < 0 {
            let e = last_err();
            return Err(io::Error::new(e.kind(), format!("overlayfs {}={val}: {e}", key.to_string_lossy())));
        }
    }
    // SAFETY: integer arguments and null key/value, as FSCONFIG_CMD_CREATE takes.
    if unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_CMD_CREATE, std::ptr::null::<u8>(), std::ptr::null::<u8>(), 0) } < 0 {
        let e = last_err();
        return Err(io::Error::new(e.kind(), format!("creating the overlayfs (lower {lower}, upper {upper}, work {work}): {e}")));
    }
    // SAFETY: integer arguments.
    own(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), libc::FSMOUNT_CLOEXEC, 0) })
}

/// fchdir(2).
pub fn fchdir(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fchdir on an fd we borrow.
    if unsafe { libc::fchdir(fd.as_raw_fd()) } < 0 {
        return Err(last_err());
    }
    Ok(())
}
