//! The restore child's own work, done in plain Rust right after clone3
//! while it is still a copy of the engine: file descriptors (in
//! [`super::files`]), session,
//! cwd/root, umask, personality, sigactions, rlimits, and opening the files
//! its mappings need (on "service fds" above every restored fd). It then
//! reports "ok" (or the error) on a pipe and waits to be seized.

use super::files;
use crate::model::Task;
use crate::sys::process as p;
use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// The directory given with `--root`, opened by the engine (O_PATH, on an
/// fd above every fd the child sets up). Every path of the image is
/// resolved inside it with openat2(RESOLVE_IN_ROOT), never as a string
/// prefix: a symlink inside the root that points to an absolute path (or
/// `..` past the top) stays inside the root, as it would for the restored
/// process after its chroot.
#[derive(Debug)]
pub struct RootDir {
    pub path: std::path::PathBuf,
    pub fd: OwnedFd,
}

impl RootDir {
    pub fn open(&self, path: &str, flags: i32, mode: u32) -> std::io::Result<OwnedFd> {
        crate::sys::ns::open_in_root(self.fd.as_fd(), OsStr::new(path), flags, mode)
    }

    pub fn unlink(&self, path: &str) -> std::io::Result<()> {
        crate::sys::ns::unlink_in_root(self.fd.as_fd(), OsStr::new(path))
    }
}

/// What the child must do, computed by the engine before cloning.
#[derive(Debug)]
pub struct ChildPlan {
    /// Report pipe write end (engine side fd number, inherited).
    pub report_fd: i32,
    /// First service fd: report pipe, then one per entry of `map_files`.
    pub svc_base: i32,
    /// (path, open flags) of files to be mapped; fd = svc_base + 1 + index.
    pub map_files: Vec<(String, i32)>,
    /// `--root`: every path of the image is resolved inside it.
    pub root: Option<RootDir>,
    /// `--shell-job`: terminal fds become new opens of the engine's terminal.
    pub shell_job: bool,
    /// The memfd inodes the task's fds and mappings use (made first by
    /// `files::restore_fds`, on working fds below the terminal's).
    pub memfds: Vec<crate::model::Memfd>,
    /// The clocks of the task's own time namespace at dump (its timens
    /// image), when it had one: the child enters a new one in which they
    /// continue.
    pub timens: Option<crate::model::TimeNs>,
}

fn run(plan: &ChildPlan, task: &Task) -> Result<(), String> {
    p::block_all_signals().map_err(|e| format!("blocking signals: {e}"))?;
    // die with the engine until the engine has seized us
    p::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as u64, 0, 0, 0).map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    p::dup2(plan.report_fd, plan.svc_base).map_err(|e| format!("moving the report pipe: {e}"))?;
    let terminal = files::park_terminal(plan)?;
    let mut keep = vec![plan.svc_base];
    keep.extend(terminal);
    keep.extend(plan.root.as_ref().map(|r| r.fd.as_raw_fd()));
    p::close_all_except(&keep);
    if task.sid == task.pid {
        p::setsid().map_err(|e| format!("setsid: {e}"))?;
    }
    files::restore_fds(plan, task, terminal)?;
    for (i, (path, flags)) in plan.map_files.iter().enumerate() {
        files::open_at(plan, path, *flags, plan.svc_base + 1 + i as i32)?;
    }
    files::close_memfds(plan);
    restore_loginuid(task.loginuid)?;
    if let Some(tn) = &plan.timens {
        enter_timens(tn)?;
    }
    // fs
    if let Some(r) = &plan.root {
        // the task's root, looked up inside --root, becomes the root
        let dir = r
            .open(&task.fs.root, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC, 0)
            .map_err(|e| format!("root {:?} in {}: {e}", task.fs.root, r.path.display()))?;
        crate::sys::ns::chroot_to(dir.as_fd()).map_err(|e| format!("chroot to {:?} in {}: {e}", task.fs.root, r.path.display()))?;
        drop(dir);
        // the restored process must not inherit the engine's root fd
        p::close(r.fd.as_raw_fd());
    } else if task.fs.root != "/" {
        let root = &task.fs.root;
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
    // last: no fd the child closes from here on may drop a POSIX lock
    files::take_locks(plan, task)?;
    Ok(())
}

/// The audit loginuid: only a process itself can write its
/// /proc/PID/loginuid (the kernel refuses anyone else with EPERM), so the
/// child does it, before its chroot (it needs /proc), with the engine's
/// CAP_AUDIT_CONTROL (needed to change one that is set). u32::MAX is
/// "unset"; written as its decimal value, the kernel takes it as unset.
fn restore_loginuid(want: u32) -> Result<(), String> {
    const PATH: &str = "/proc/self/loginuid";
    let now = match std::fs::read_to_string(PATH) {
        Ok(v) => v.trim().parse::<u32>().ok(),
        Err(_) if want == u32::MAX => return Ok(()), // no audit here, and none to give back
        Err(e) => return Err(format!("loginuid {want}: {PATH}: {e}")),
    };
    if now == Some(want) {
        return Ok(());
    }
    std::fs::write(PATH, want.to_string()).map_err(|e| format!("restoring loginuid {want} (was {now:?}): {e}"))
}

/// Make a new time namespace whose CLOCK_MONOTONIC and CLOCK_BOOTTIME
/// continue from the dumped values (upstream records the clocks, not the
/// offsets), and enter it before the memory is restored (the kernel zaps
/// the vvar pages on setns; they refault as the new namespace's): unshare, write
/// /proc/self/timens_offsets (the new namespace's, which can be set only
/// while no task is in it), setns into time_for_children. Offsets are
/// relative to the host's clocks, so the engine's own offsets are added
/// back. Needs /proc (before the chroot) and a single-threaded caller.
fn enter_timens(tn: &crate::model::TimeNs) -> Result<(), String> {
    const NS: i128 = 1_000_000_000;
    let (self_mono, self_boot) = crate::dump::task::timens_offsets("self");
    let offset = |clock, (s, n): (u64, u64), own: i128| -> Result<(i64, i64), String> {
        let (ns, nn) = p::clock_gettime(clock).map_err(|e| format!("clock_gettime: {e}"))?;
        let host_now = i128::from(ns) * NS + i128::from(nn) - own;
        let off = i128::from(s) * NS + i128::from(n) - host_now;
        let sec = i64::try_from(off.div_euclid(NS)).map_err(|_| format!("time namespace offset {off} ns is out of range"))?;
        Ok((sec, off.rem_euclid(NS) as i64))
    };
    let (ms, mn) = offset(libc::CLOCK_MONOTONIC, tn.monotonic, self_mono)?;
    let (bs, bn) = offset(libc::CLOCK_BOOTTIME, tn.boottime, self_boot)?;
    crate::sys::ns::unshare(crate::sys::ns::CLONE_NEWTIME).map_err(|e| format!("unshare(CLONE_NEWTIME): {e}"))?;
    let offs = format!("monotonic {ms} {mn}\nboottime {bs} {bn}\n");
    std::fs::write("/proc/self/timens_offsets", &offs).map_err(|e| format!("writing time namespace offsets {offs:?}: {e}"))?;
    let ns = std::fs::File::open("/proc/self/ns/time_for_children").map_err(|e| format!("the new time namespace: {e}"))?;
    crate::sys::ns::setns(ns.as_fd(), crate::sys::ns::CLONE_NEWTIME).map_err(|e| format!("entering the new time namespace: {e}"))?;
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
