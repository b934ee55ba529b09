//! The restore child's own work, done in plain Rust right after clone3
//! while it is still a copy of the engine: file descriptors (in
//! [`super::files`]), session,
//! cwd/root, umask, personality, sigactions, rlimits, and opening the files
//! its mappings need (on "service fds" above every restored fd). It then
//! reports "ok" (or the error) on a pipe and waits to be seized.

use super::files;
use crate::model::Task;
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
    /// `--shell-job`: terminal fds become new opens of the engine's terminal.
    pub shell_job: bool,
}

fn run(plan: &ChildPlan, task: &Task) -> Result<(), String> {
    p::block_all_signals().map_err(|e| format!("blocking signals: {e}"))?;
    // die with the engine until the engine has seized us
    p::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as u64, 0, 0, 0).map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    p::dup2(plan.report_fd, plan.svc_base).map_err(|e| format!("moving the report pipe: {e}"))?;
    let terminal = files::park_terminal(plan)?;
    let mut keep = vec![plan.svc_base];
    keep.extend(terminal);
    p::close_all_except(&keep);
    if task.sid == task.pid {
        p::setsid().map_err(|e| format!("setsid: {e}"))?;
    }
    files::restore_fds(plan, task, terminal)?;
    for (i, (path, flags)) in plan.map_files.iter().enumerate() {
        files::open_at(plan, path, *flags, plan.svc_base + 1 + i as i32)?;
    }
    // fs
    let root = if plan.root_prefix.is_empty() { task.fs.root.clone() } else { format!("{}{}", plan.root_prefix, task.fs.root) };
    if root != "/" {
        let c = CString::new(root.clone()).map_err(|_| "root path has a NUL".to_string())?;
        p::chroot(&c).map_err(|e| format!("chroot {root:?}: {e}"))?;
    }
    let cwd = CString::new(task.fs.cwd.clone()).map_err(|_| "cwd has a NUL".to_string())?;
    p::chdir(&cwd).map_err(|e| format!("chdir {:?}: {e}", task.fs.cwd))?;
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
    p::set_comm(&comm).map_err(|e| format!("PR_SET_NAME: {e}"))?;
    if task.child_subreaper {
        p::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0).map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
    }
    Ok(())
}

/// Entry point of the forked child. Never returns.
pub fn child_main(plan: &ChildPlan, task: &Task) -> ! {
    match run(plan, task) {
        Ok(()) => {
            // EPIPE: the engine died before PR_SET_PDEATHSIG was set; go too
            let ok = b"ok";
            if p::write_raw(plan.svc_base, ok).is_err() {
                p::exit_now(1)
            }
            p::close(plan.svc_base);
            p::pause_forever()
        }
        Err(msg) => {
            let fd = if plan.svc_base > 0 && p::fcntl_int(plan.svc_base, libc::F_GETFD, 0).is_ok() {
                plan.svc_base
            } else {
                plan.report_fd
            };
            p::write_fd(fd, msg.as_bytes());
            p::exit_now(1)
        }
    }
}
