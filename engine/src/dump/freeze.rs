//! Freezing a process: PTRACE_SEIZE + PTRACE_INTERRUPT of every thread,
//! repeated until the thread list is stable. [`Frozen`] is the guard: its
//! `Drop` puts back each thread's registers and signal mask and detaches,
//! so the tree runs on unchanged after `--leave-running` or any failure.

use crate::sys::ptrace::{self, Regs, Wait};
use crate::sys::Pid;
use crate::{pr_debug, pr_info, pr_warn};
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("listing threads of {pid}")]
    List { pid: Pid, #[source] source: io::Error },
    #[error("seizing thread {tid}")]
    Seize { tid: Pid, #[source] source: io::Error },
    #[error("thread {tid} exited while being frozen ({how:?})")]
    Gone { tid: Pid, how: Wait },
    #[error("reading registers of {tid}")]
    Regs { tid: Pid, #[source] source: io::Error },
}

/// A stopped thread and what must be put back before it runs again.
#[derive(Debug, Clone)]
pub struct FrozenThread {
    pub tid: Pid,
    pub regs: Regs,
    pub sigmask: u64,
}

/// Every thread of one process stopped under ptrace.
#[derive(Debug)]
pub struct Frozen {
    pub pid: Pid,
    /// Main thread first.
    pub threads: Vec<FrozenThread>,
    /// Kill the process instead of letting it run when dropped.
    pub kill_on_release: bool,
    /// A `syscall` instruction in the process's text, for starting
    /// injection sessions ([`super::parasite::find_gadget`]); 0 until found.
    pub gadget: u64,
}

fn list_tids(pid: Pid) -> io::Result<Vec<Pid>> {
    let mut v: Vec<Pid> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

fn stop_one(tid: Pid) -> Result<(), FreezeError> {
    ptrace::interrupt(tid).map_err(|e| FreezeError::Seize { tid, source: e })?;
    loop {
        match ptrace::wait(tid).map_err(|e| FreezeError::Seize { tid, source: e })? {
            Wait::Stopped { event: ptrace::EVENT_STOP, .. } => return Ok(()),
            Wait::Stopped { sig, event: 0 } => {
                // A signal arrived first: let it be delivered as it would have
                // been; the pending interrupt stops the thread right after.
                pr_debug!("thread {tid}: passing signal {sig} on while stopping");
                ptrace::cont(tid, sig).map_err(|e| FreezeError::Seize { tid, source: e })?;
            }
            Wait::Stopped { .. } => {
                ptrace::cont(tid, 0).map_err(|e| FreezeError::Seize { tid, source: e })?;
            }
            how => return Err(FreezeError::Gone { tid, how }),
        }
    }
}

impl Frozen {
    /// Seize and stop every thread of `pid`.
    pub fn freeze(pid: Pid) -> Result<Frozen, FreezeError> {
        let mut f = Frozen { pid, threads: Vec::new(), kill_on_release: false, gadget: 0 };
        f.seize_new_threads()?;
        f.threads.sort_by_key(|t| (t.tid != pid, t.tid));
        Ok(f)
    }

    /// Seize and stop every thread of the process not yet held, until the
    /// thread list is stable.
    fn seize_new_threads(&mut self) -> Result<(), FreezeError> {
        let pid = self.pid;
        loop {
            let tids = list_tids(pid).map_err(|e| FreezeError::List { pid, source: e })?;
            let new: Vec<Pid> = tids.into_iter().filter(|t| !self.threads.iter().any(|x| x.tid == *t)).collect();
            if new.is_empty() {
                return Ok(());
            }
            for tid in new {
                ptrace::seize(tid, ptrace::O_TRACESYSGOOD | ptrace::O_SUSPEND_SECCOMP)
                    .map_err(|e| FreezeError::Seize { tid, source: e })?;
                // From here Drop detaches it, stopped or not.
                self.threads.push(FrozenThread { tid, regs: Regs::default(), sigmask: 0 });
                stop_one(tid)?;
                let regs = ptrace::get_regs(tid).map_err(|e| FreezeError::Regs { tid, source: e })?;
                let sigmask = ptrace::get_sigmask(tid).map_err(|e| FreezeError::Regs { tid, source: e })?;
                let t = self.threads.last_mut().expect("just pushed");
                t.regs = regs;
                t.sigmask = sigmask;
                pr_info!("Seized task {tid}");
            }
        }
    }

    /// Freeze `pid` whose cgroup is frozen (`--freeze-cgroup`): seize every
    /// thread while nothing of it can run or clone, then `thaw` the cgroup
    /// and stop the seized threads with PTRACE_INTERRUPT as [`Frozen::freeze`]
    /// does (a thread created in between is picked up by the same loop).
    pub fn freeze_frozen(pid: Pid, thaw: impl FnOnce() -> io::Result<()>) -> Result<Frozen, FreezeError> {
        let tids = list_tids(pid).map_err(|e| FreezeError::List { pid, source: e })?;
        let mut seized = Vec::with_capacity(tids.len());
        for &tid in &tids {
            if let Err(e) = ptrace::seize(tid, ptrace::O_TRACESYSGOOD | ptrace::O_SUSPEND_SECCOMP) {
                for &t in &seized {
                    let _ = ptrace::detach(t, 0);
                }
                return Err(FreezeError::Seize { tid, source: e });
            }
            seized.push(tid);
        }
        let mut f = Frozen { pid, threads: Vec::new(), kill_on_release: false, gadget: 0 };
        for &tid in &seized {
            f.threads.push(FrozenThread { tid, regs: Regs::default(), sigmask: 0 });
        }
        thaw().map_err(|e| FreezeError::Seize { tid: pid, source: e })?;
        for i in 0..f.threads.len() {
            let tid = f.threads[i].tid;
            stop_one(tid)?;
            f.threads[i].regs = ptrace::get_regs(tid).map_err(|e| FreezeError::Regs { tid, source: e })?;
            f.threads[i].sigmask = ptrace::get_sigmask(tid).map_err(|e| FreezeError::Regs { tid, source: e })?;
            pr_info!("Seized task {tid}");
        }
        f.seize_new_threads()?;
        f.threads.sort_by_key(|t| (t.tid != pid, t.tid));
        Ok(f)
    }

    /// Block every signal in every thread (for syscall injection); the
    /// original masks come back on release.
    pub fn block_signals(&self) -> io::Result<()> {
        for t in &self.threads {
            ptrace::set_sigmask(t.tid, !0)?;
        }
        Ok(())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // (looked at before the kill: a dead task has no namespaces to show)
        let pid_matters = self.kill_on_release && in_our_pid_ns(self.pid);
        if self.kill_on_release {
            let _ = crate::sys::process::kill(self.pid, libc::SIGKILL);
        }
        for t in &self.threads {
            if !self.kill_on_release && t.regs != Regs::default() {
                if let Err(e) = ptrace::set_regs(t.tid, &t.regs) {
                    pr_warn!("can't put back registers of {}: {e}", t.tid);
                }
                if let Err(e) = ptrace::set_sigmask(t.tid, t.sigmask) {
                    pr_warn!("can't put back the signal mask of {}: {e}", t.tid);
                }
            }
            if let Err(e) = ptrace::detach(t.tid, 0) {
                if !self.kill_on_release {
                    pr_warn!("can't detach {}: {e}", t.tid);
                }
            }
        }
        if self.kill_on_release {
            let tids: Vec<Pid> = self.threads.iter().map(|t| t.tid).collect();
            wait_pids_free(self.pid, &tids, pid_matters);
        }
    }
}

/// `pid` is in the engine's own pid namespace (not pid 1 of one of its own).
fn in_our_pid_ns(pid: Pid) -> bool {
    let ns = |p: &str| std::fs::read_link(p).ok();
    let theirs = ns(&format!("/proc/{pid}/ns/pid"));
    theirs.is_none() || theirs == ns("/proc/self/ns/pid")
}

/// After the SIGKILL of a dump: return only once the killed process's pids
/// are free again, so that a restore right after the dump can have them.
/// As its tracer the engine must collect each thread's exit (until then
/// the kernel keeps it, and its parent can't reap the leader); then, if
/// the pids are the engine's namespace's (`pid_matters`: a restore of a
/// pid namespace's init gets a new namespace and needs no host pid), the
/// parent reaps the leader. A parent that doesn't within a few seconds
/// gets a warning: the pid stays in use by its zombie.
fn wait_pids_free(pid: Pid, tids: &[Pid], pid_matters: bool) {
    use std::time::{Duration, Instant};
    // all at once: the leader's exit is reported only after every other
    // thread's has been collected
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut left: Vec<Pid> = tids.to_vec();
    while !left.is_empty() {
        left.retain(|&tid| {
            // kept while still running; dropped once collected, or when not our tracee any more
            matches!(ptrace::wait_flags(tid, libc::__WALL | libc::WNOHANG), Ok(None | Some(ptrace::Wait::Stopped { .. })))
        });
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            pr_warn!("threads {left:?} of the killed {pid} have not exited yet");
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if !pid_matters {
        return;
    }
    let proc_dir = format!("/proc/{pid}");
    let deadline = Instant::now() + Duration::from_secs(3);
    while std::path::Path::new(&proc_dir).exists() {
        if Instant::now() > deadline {
            let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").and_then(|(_, r)| r.split_whitespace().nth(1).map(str::to_string)))
                .unwrap_or_else(|| "?".into());
            pr_warn!("the killed {pid} is a zombie its parent {ppid} has not reaped: a restore with this pid will find it in use");
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
