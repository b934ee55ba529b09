//! The restore child's own work, done in plain Rust right after clone3
//! while it is still a copy of the engine: file descriptors, session,
//! cwd/root, umask, personality, sigactions, rlimits, and opening the files
//! its mappings need (on "service fds" above every restored fd). It then
//! reports "ok" (or the error) on a pipe and waits to be seized.

use crate::model::{FileDesc, Task};
use crate::sys::process as p;
use std::ffi::CString;

/// What the child must do, computed by the engine before cloning.
#[derive(Debug, Clone)]
pub struct ChildPlan {
    /// Report pipe write end (engine side fd number, inherited).
    pub report_fd: i32,
    /// First service fd: report pipe, then one per entry of `map_files`.
    pub svc_base: i32,
    /// (path, open flags) of files to be mapped; fd = svc_base + 1 + index.
    pub map_files: Vec<(String, i32)>,
    /// Prefix for every path (`--root`).
    pub root_prefix: String,
    /// Keep inherited fds 0..2 (`--shell-job`).
    pub shell_job: bool,
}

fn path_of(plan: &ChildPlan, path: &str) -> Result<CString, String> {
    let full = format!("{}{}", plan.root_prefix, path);
    CString::new(full.clone()).map_err(|_| format!("path {full:?} has a NUL byte"))
}

fn open_at(plan: &ChildPlan, path: &str, flags: i32, target: i32) -> Result<(), String> {
    let c = path_of(plan, path)?;
    let fd = p::syscall6(libc::SYS_open, [c.as_ptr() as u64, (flags & !libc::O_CREAT & !libc::O_TRUNC) as u64, 0, 0, 0, 0])
        .map_err(|e| format!("open {path:?} for fd {target}: {e}"))? as i32;
    if fd != target {
        p::dup2(fd, target).map_err(|e| format!("dup2 {fd} -> {target}: {e}"))?;
        p::close(fd);
    }
    Ok(())
}

fn run(plan: &ChildPlan, task: &Task) -> Result<(), String> {
    p::block_all_signals().map_err(|e| format!("blocking signals: {e}"))?;
    // die with the engine until the engine has seized us
    p::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as u64, 0, 0, 0).map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    p::dup2(plan.report_fd, plan.svc_base).map_err(|e| format!("moving the report pipe: {e}"))?;
    let mut keep = vec![plan.svc_base];
    if plan.shell_job {
        keep.extend([0, 1, 2]);
    }
    p::close_all_except(&keep);
    if task.sid == task.pid {
        p::setsid().map_err(|e| format!("setsid: {e}"))?;
    }
    // fds
    let mut pipes: Vec<(u32, [i32; 2])> = Vec::new();
    for fd in &task.fds {
        if plan.shell_job && fd.fd <= 2 {
            continue;
        }
        match &fd.file {
            FileDesc::Reg { path, flags, pos, .. } => {
                open_at(plan, path, *flags as i32, fd.fd)?;
                if *pos != 0 {
                    p::syscall6(libc::SYS_lseek, [fd.fd as u64, *pos, libc::SEEK_SET as u64, 0, 0, 0])
                        .map_err(|e| format!("lseek fd {} to {pos}: {e}", fd.fd))?;
                }
            }
            FileDesc::Pipe { pipe_id, flags } => {
                let ends = match pipes.iter().find(|(id, _)| id == pipe_id) {
                    Some((_, e)) => *e,
                    None => {
                        let e = p::pipe_raw().map_err(|e| format!("pipe for fd {}: {e}", fd.fd))?;
                        // keep the pipe's two ends out of the way of later fds
                        let hi = [plan.svc_base - 2 - 2 * pipes.len() as i32, plan.svc_base - 3 - 2 * pipes.len() as i32];
                        p::dup2(e[0], hi[0]).map_err(|e| format!("pipe: {e}"))?;
                        p::dup2(e[1], hi[1]).map_err(|e| format!("pipe: {e}"))?;
                        p::close(e[0]);
                        p::close(e[1]);
                        pipes.push((*pipe_id, hi));
                        hi
                    }
                };
                let end = if *flags as i32 & libc::O_ACCMODE == libc::O_WRONLY { ends[1] } else { ends[0] };
                p::dup2(end, fd.fd).map_err(|e| format!("dup2 pipe to fd {}: {e}", fd.fd))?;
                let fl = *flags as i32 & (libc::O_NONBLOCK | libc::O_ASYNC | libc::O_DIRECT);
                if fl != 0 {
                    p::syscall6(libc::SYS_fcntl, [fd.fd as u64, libc::F_SETFL as u64, fl as u64, 0, 0, 0])
                        .map_err(|e| format!("F_SETFL fd {}: {e}", fd.fd))?;
                }
            }
        }
        p::set_cloexec(fd.fd, fd.cloexec).map_err(|e| format!("FD_CLOEXEC fd {}: {e}", fd.fd))?;
    }
    for (_, e) in &pipes {
        if !task.fds.iter().any(|f| f.fd == e[0]) {
            p::close(e[0]);
        }
        if !task.fds.iter().any(|f| f.fd == e[1]) {
            p::close(e[1]);
        }
    }
    for (i, (path, flags)) in plan.map_files.iter().enumerate() {
        open_at(plan, path, *flags, plan.svc_base + 1 + i as i32)?;
    }
    // fs
    let root = if plan.root_prefix.is_empty() { task.fs.root.clone() } else { format!("{}{}", plan.root_prefix, task.fs.root) };
    if root != "/" {
        let c = CString::new(root.clone()).map_err(|_| "root path has a NUL".to_string())?;
        p::syscall6(libc::SYS_chroot, [c.as_ptr() as u64, 0, 0, 0, 0, 0]).map_err(|e| format!("chroot {root:?}: {e}"))?;
    }
    let cwd = CString::new(task.fs.cwd.clone()).map_err(|_| "cwd has a NUL".to_string())?;
    p::syscall6(libc::SYS_chdir, [cwd.as_ptr() as u64, 0, 0, 0, 0, 0]).map_err(|e| format!("chdir {:?}: {e}", task.fs.cwd))?;
    p::umask(task.fs.umask);
    p::personality(u64::from(task.personality)).map_err(|e| format!("personality {:#x}: {e}", task.personality))?;
    for (i, a) in task.sigactions.iter().enumerate() {
        let sig = i as i32 + 1;
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        p::set_sigaction_raw(sig, a).map_err(|e| format!("rt_sigaction {sig}: {e}"))?;
    }
    for (res, &(cur, max)) in task.rlimits.iter().enumerate() {
        let res = res as u32;
        if p::get_rlimit(res).ok() == Some((cur, max)) {
            continue;
        }
        // Raising a hard limit needs CAP_SYS_RESOURCE: keep the current one then.
        if p::set_rlimit(res, cur, max).is_err() {
            let (_, hmax) = p::get_rlimit(res).unwrap_or((0, 0));
            let _ = p::set_rlimit(res, cur.min(hmax), hmax.min(max));
        }
    }
    let comm = CString::new(task.comm.clone()).unwrap_or_default();
    p::prctl(libc::PR_SET_NAME, comm.as_ptr() as u64, 0, 0, 0).map_err(|e| format!("PR_SET_NAME: {e}"))?;
    if task.child_subreaper {
        p::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0).map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
    }
    Ok(())
}

/// Entry point of the forked child. Never returns.
pub fn child_main(plan: &ChildPlan, task: &Task) -> ! {
    match run(plan, task) {
        Ok(()) => {
            p::write_fd(plan.svc_base, b"ok");
            p::close(plan.svc_base);
            p::pause_forever()
        }
        Err(msg) => {
            let fd = if plan.svc_base > 0 && p::syscall6(libc::SYS_fcntl, [plan.svc_base as u64, libc::F_GETFD as u64, 0, 0, 0, 0]).is_ok() {
                plan.svc_base
            } else {
                plan.report_fd
            };
            p::write_fd(fd, msg.as_bytes());
            p::exit_now(1)
        }
    }
}
