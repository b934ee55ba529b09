//! File descriptors, restore half (the dump half is `dump/files.rs`). Runs
//! in the restore child (a fork of the engine, before it is seized), in
//! plain syscalls:
//!
//! - regular files, directories, devices: opened by path with the dumped
//!   flags, checked as upstream does (mode, and size when it was recorded),
//!   seeked to the dumped offset;
//! - ghosts (unlinked while open): recreated next to the original path as
//!   `<path>.cr.<n>.ghost` with the saved contents, mode, owner and times,
//!   opened, and unlinked once every fd is in place;
//! - pipes: one new pipe per dumped pipe, its queued bytes written back,
//!   its buffer size set;
//! - terminals (`--shell-job` only): a new open of the restoring shell's
//!   terminal (found on fds 0..2 of the engine);
//! - fds that shared an open file description are dup'ed from the first.
//!
//! Working fds live just below the service fds: the terminal at
//! `svc_base - 1`, pipe ends from `svc_base - 2` down.

use super::child::{ChildPlan, RootDir};
use crate::model::{FileDesc, Ghost, Task};
use crate::sys::process as p;
use std::ffi::CString;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

fn cpath(path: &str) -> Result<CString, String> {
    CString::new(path).map_err(|_| format!("path {path:?} has a NUL byte"))
}

/// open(2) `path` with the dumped `flags` (never O_CREAT/O_TRUNC) onto fd `target`.
fn open_onto(path: &str, flags: i32, target: i32) -> Result<(), String> {
    let c = cpath(path)?;
    let fd = p::syscall6(libc::SYS_open, [c.as_ptr() as u64, (flags & !libc::O_CREAT & !libc::O_TRUNC) as u64, 0, 0, 0, 0])
        .map_err(|e| format!("open {path:?} for fd {target}: {e}"))? as i32;
    if fd != target {
        p::dup2(fd, target).map_err(|e| format!("dup2 {fd} -> {target}: {e}"))?;
        p::close(fd);
    }
    Ok(())
}

/// Open a path of the image (never one of the engine's own) onto fd
/// `target`: with `--root`, resolved inside the root (RESOLVE_IN_ROOT: an
/// absolute symlink or `..` in the root stays in it), else as it is.
fn open_image_path(plan: &ChildPlan, path: &str, flags: i32, target: i32) -> Result<(), String> {
    let Some(root) = &plan.root else { return open_onto(path, flags, target) };
    let fd = root.open(path, flags & !libc::O_CREAT & !libc::O_TRUNC, 0).map_err(|e| format!("open {path:?} in root {} for fd {target}: {e}", root.path.display()))?;
    if fd.as_raw_fd() == target {
        let _ = fd.into_raw_fd(); // it is the restored fd now
    } else {
        p::dup2(fd.as_raw_fd(), target).map_err(|e| format!("dup2 {} -> {target}: {e}", fd.as_raw_fd()))?;
    }
    Ok(())
}

/// Open `path` for the child's own use (service fds, mapped files).
pub fn open_at(plan: &ChildPlan, path: &str, flags: i32, target: i32) -> Result<(), String> {
    open_image_path(plan, path, flags, target)
}

fn is_terminal(fd: i32) -> bool {
    std::fs::metadata(format!("/proc/self/fd/{fd}")).is_ok_and(|m| {
        let major = crate::dump::files::dev_major(m.rdev());
        m.file_type().is_char_device() && (major == 4 || major == 5 || (136..=143).contains(&major))
    })
}

/// With `--shell-job`: move the engine's terminal (the first of fds 0..2
/// that is one) to `svc_base - 1` before the fd table is cleared. Returns
/// the fds to keep.
pub fn park_terminal(plan: &ChildPlan) -> Result<Option<i32>, String> {
    if !plan.shell_job {
        return Ok(None);
    }
    let Some(t) = (0..3).find(|&fd| is_terminal(fd)) else { return Ok(None) };
    let slot = plan.svc_base - 1;
    p::dup2(t, slot).map_err(|e| format!("keeping the terminal (fd {t}): {e}"))?;
    Ok(Some(slot))
}

/// Ghost files created by this restore (paths of the image, inside
/// `--root` if given); unlinked when dropped (after the fds are open, or on
/// failure).
struct Ghosts<'a> {
    list: Vec<(u64, u64, String)>,
    root: Option<&'a RootDir>,
}

impl Drop for Ghosts<'_> {
    fn drop(&mut self) {
        for (_, _, path) in &self.list {
            let _ = match self.root {
                Some(r) => r.unlink(path),
                None => std::fs::remove_file(path),
            };
        }
    }
}

impl<'a> Ghosts<'a> {
    fn new(plan: &'a ChildPlan) -> Self {
        Ghosts { list: Vec::new(), root: plan.root.as_ref() }
    }

    /// The path of the recreated ghost for `g`, creating it the first time.
    fn path(&mut self, orig: &str, g: &Ghost) -> Result<String, String> {
        if let Some((_, _, path)) = self.list.iter().find(|(d, i, _)| *d == g.dev && *i == g.ino) {
            return Ok(path.clone());
        }
        let path = format!("{orig}.cr.{:x}.ghost", self.list.len() + 1);
        let err = |what: &str, e: std::io::Error| format!("ghost file {path} for {orig}: {what}: {e}");
        let created = match self.root {
            Some(r) => r.open(&path, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC, g.mode & 0o7777).map(std::fs::File::from),
            None => std::fs::OpenOptions::new().write(true).create_new(true).mode(g.mode & 0o7777).open(&path),
        };
        let mut f = created.map_err(|e| err("create", e))?;
        self.list.push((g.dev, g.ino, path.clone()));
        std::io::Write::write_all(&mut f, &g.contents).map_err(|e| err("write", e))?;
        std::os::unix::fs::fchown(&f, Some(g.uid), Some(g.gid)).map_err(|e| err("fchown", e))?;
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(g.mode & 0o7777)).map_err(|e| err("chmod", e))?;
        let t = |(s, us): (u64, u64)| std::time::UNIX_EPOCH + std::time::Duration::new(s, (us * 1000) as u32);
        f.set_times(std::fs::FileTimes::new().set_accessed(t(g.atime)).set_modified(t(g.mtime)))
            .map_err(|e| err("utimes", e))?;
        Ok(path)
    }
}

/// Upstream's checks of a reopened regular file: same mode, same size
/// when the size was recorded.
fn validate(fd: i32, path: &str, mode: u32, size: Option<u64>) -> Result<(), String> {
    let m = std::fs::metadata(format!("/proc/self/fd/{fd}")).map_err(|e| format!("fstat fd {fd} ({path}): {e}"))?;
    if mode != 0 && m.mode() != mode {
        return Err(format!("File {path} has bad mode 0{:o} (expect 0{mode:o})", m.mode()));
    }
    if let Some(size) = size {
        if m.size() != size {
            return Err(format!("File {path} has bad size {} (expect {size})", m.size()));
        }
    }
    Ok(())
}

fn fcntl(fd: i32, cmd: i32, arg: u64) -> std::io::Result<u64> {
    p::syscall6(libc::SYS_fcntl, [fd as u64, cmd as u64, arg, 0, 0, 0])
}

/// Write all of `data` into the write end `fd` of a fresh pipe.
fn fill_pipe(fd: i32, data: &[u8]) -> Result<(), String> {
    let mut off = 0;
    while off < data.len() {
        let rest = &data[off..];
        let n = p::syscall6(libc::SYS_write, [fd as u64, rest.as_ptr() as u64, rest.len() as u64, 0, 0, 0])
            .map_err(|e| format!("writing {} queued bytes into a pipe: {e}", data.len()))?;
        off += n as usize;
    }
    Ok(())
}

/// Recreate every fd of `task` (the fd table holds only the report pipe,
/// the service fds and the parked terminal).
pub fn restore_fds(plan: &ChildPlan, task: &Task, terminal: Option<i32>) -> Result<(), String> {
    let mut ghosts = Ghosts::new(plan);
    let mut pipes: Vec<(u32, [i32; 2])> = Vec::new();
    let mut descs: Vec<(u32, i32)> = Vec::new(); // (desc, first fd)
    for fd in &task.fds {
        let n = fd.fd;
        if let Some(&(_, first)) = descs.iter().find(|(d, _)| *d == fd.desc) {
            p::dup2(first, n).map_err(|e| format!("dup2 fd {first} -> {n} (shared file): {e}"))?;
            p::set_cloexec(n, fd.cloexec).map_err(|e| format!("FD_CLOEXEC fd {n}: {e}"))?;
            continue;
        }
        match &fd.file {
            FileDesc::Reg { path, flags, mode, size, ghost: None, .. } => {
                open_image_path(plan, path, *flags as i32, n)?;
                validate(n, path, *mode, *size)?;
            }
            FileDesc::Reg { path, flags, ghost: Some(g), .. } => {
                let gp = ghosts.path(path, g)?;
                open_image_path(plan, &gp, *flags as i32, n)?;
            }
            FileDesc::Pipe { pipe_id, flags } => {
                let ends = match pipes.iter().find(|(id, _)| id == pipe_id) {
                    Some((_, e)) => *e,
                    None => {
                        let e = p::pipe_raw().map_err(|e| format!("pipe for fd {n}: {e}"))?;
                        // keep the pipe's two ends out of the way of later fds
                        let k = 2 * pipes.len() as i32;
                        let hi = [plan.svc_base - 2 - k, plan.svc_base - 3 - k];
                        p::dup2(e[0], hi[0]).map_err(|e| format!("pipe: {e}"))?;
                        p::dup2(e[1], hi[1]).map_err(|e| format!("pipe: {e}"))?;
                        p::close(e[0]);
                        p::close(e[1]);
                        if let Some(d) = task.pipe_data.iter().find(|d| d.pipe_id == *pipe_id) {
                            let cur = fcntl(hi[1], libc::F_GETPIPE_SZ, 0).unwrap_or(0);
                            if d.size != 0 && u64::from(d.size) != cur {
                                fcntl(hi[1], libc::F_SETPIPE_SZ, u64::from(d.size))
                                    .map_err(|e| format!("F_SETPIPE_SZ {} on pipe {pipe_id:#x}: {e}", d.size))?;
                            }
                            fill_pipe(hi[1], &d.data)?;
                        }
                        pipes.push((*pipe_id, hi));
                        hi
                    }
                };
                let end = if *flags as i32 & libc::O_ACCMODE == libc::O_WRONLY { ends[1] } else { ends[0] };
                p::dup2(end, n).map_err(|e| format!("dup2 pipe to fd {n}: {e}"))?;
                let fl = *flags as i32 & (libc::O_NONBLOCK | libc::O_ASYNC | libc::O_DIRECT);
                if fl != 0 {
                    fcntl(n, libc::F_SETFL, fl as u64).map_err(|e| format!("F_SETFL fd {n}: {e}"))?;
                }
            }
            FileDesc::Tty { path, flags, .. } => {
                let Some(t) = terminal else {
                    return Err(if plan.shell_job {
                        format!("fd {n} was a terminal ({path}) but the restoring criu has none on fds 0..2")
                    } else {
                        format!("fd {n} is a terminal ({path}): restore with --shell-job")
                    });
                };
                // a new open file description of our terminal, with the dumped flags
                open_onto(&format!("/proc/self/fd/{t}"), (*flags as i32) | libc::O_NOCTTY, n)?;
            }
        }
        if let FileDesc::Reg { pos, .. } = &fd.file {
            if *pos != 0 {
                p::syscall6(libc::SYS_lseek, [n as u64, *pos, libc::SEEK_SET as u64, 0, 0, 0])
                    .map_err(|e| format!("lseek fd {n} to {pos}: {e}"))?;
            }
        }
        p::set_cloexec(n, fd.cloexec).map_err(|e| format!("FD_CLOEXEC fd {n}: {e}"))?;
        descs.push((fd.desc, n));
    }
    let used = |x: i32| task.fds.iter().any(|f| f.fd == x);
    for (_, e) in &pipes {
        for x in e {
            if !used(*x) {
                p::close(*x);
            }
        }
    }
    if let Some(t) = terminal {
        if !used(t) {
            p::close(t);
        }
    }
    drop(ghosts);
    Ok(())
}

/// The files the image maps (executable, libraries, data files) must be the
/// ones that were dumped: an ELF file whose GNU build-id was recorded must
/// still have it (upstream's build-id validation). Checked in the engine
/// before anything is forked.
pub fn check_mapped_files(task: &Task, root: Option<&RootDir>) -> Result<(), String> {
    let files = task.mm.exe.iter().chain(task.mm.vmas.iter().filter_map(|v| v.file.as_ref()));
    let mut seen: Vec<&str> = Vec::new();
    for f in files {
        if f.build_id.is_empty() || seen.contains(&f.path.as_str()) {
            continue;
        }
        seen.push(&f.path);
        let (full, id) = match root {
            None => (f.path.clone(), crate::dump::elf::build_id_of(std::path::Path::new(&f.path))),
            Some(r) => {
                let file = r.open(&f.path, libc::O_RDONLY | libc::O_CLOEXEC, 0).map(std::fs::File::from);
                (format!("{} in root {}", f.path, r.path.display()), file.ok().and_then(|file| crate::dump::elf::build_id(&file)))
            }
        };
        match id {
            Some(id) if id == f.build_id => {}
            Some(_) => return Err(format!("File {full} has bad build-ID: it is not the file that was dumped")),
            None => return Err(format!("File {full} has no build-ID (missing, unreadable or rebuilt without one)")),
        }
    }
    Ok(())
}
