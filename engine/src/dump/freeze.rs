//! Freezing a process: PTRACE_SEIZE + PTRACE_INTERRUPT of every thread,
//! repeated until the thread list is stable. [`Frozen`] is the guard: its
//! `Drop` puts back each thread's registers and signal mask and detaches,
//! so the tree runs on unchanged after `--leave-running` or any failure.
//!
//! A process in group-stop (SIGSTOP'ed, `^Z`) reports its stop signal in
//! the PTRACE_EVENT_STOP of the seize ([`Frozen::stop_signo`]: the dump
//! records it, as upstream's TASK_STOPPED + `stop_signo`); a SIGSTOP that
//! arrives while we inject is taken off and recorded
//! ([`Frozen::stop_seen`]). Either way the process is sent SIGSTOP before
//! it is released, so it is stopped again afterwards (upstream does the
//! same: a ptrace'd thread runs on from a group-stop when resumed).

use crate::sys::ptrace::{self, Regs, Wait};
use crate::sys::Pid;
use crate::{pr_debug, pr_info, pr_warn};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
    /// The stop signal when the process was in group-stop at freeze.
    pub stop_signo: Option<i32>,
    /// A SIGSTOP came while we held the threads (set by the injection).
    pub stop_seen: Arc<AtomicBool>,
}

/// The stop signals (SIG_KERNEL_STOP_MASK).
pub fn is_stop_signal(sig: i32) -> bool {
    matches!(sig, libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU)
}

fn list_tids(pid: Pid) -> io::Result<Vec<Pid>> {
    let mut v: Vec<Pid> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// How long a seized thread may take to stop (it is in an uninterruptible
/// wait: a vfork parent, a hung file system): then the freeze gives up.
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The next stop of `tid`, or an error once [`STOP_TIMEOUT`] has passed
/// (polled: waitpid has no timeout).
fn wait_stop(tid: Pid) -> Result<Wait, FreezeError> {
    let t0 = std::time::Instant::now();
    let mut nap = std::time::Duration::from_micros(20);
    loop {
        if let Some(w) = ptrace::wait_flags(tid, libc::__WALL | libc::WNOHANG).map_err(|e| FreezeError::Seize { tid, source: e })? {
            return Ok(w);
        }
        if t0.elapsed() > STOP_TIMEOUT {
            return Err(FreezeError::Seize {
                tid,
                source: io::Error::new(io::ErrorKind::TimedOut, format!("thread {tid} did not stop within {STOP_TIMEOUT:?}")),
            });
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(std::time::Duration::from_millis(10));
    }
}

/// Stop a seized thread; the stop signal when it is in group-stop (the
/// trap of a group-stop carries it, an interrupt's carries SIGTRAP).
fn stop_one(tid: Pid) -> Result<Option<i32>, FreezeError> {
    ptrace::interrupt(tid).map_err(|e| FreezeError::Seize { tid, source: e })?;
    loop {
        match wait_stop(tid)? {
            Wait::Stopped { event: ptrace::EVENT_STOP, sig } => return Ok(is_stop_signal(sig).then_some(sig)),
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
    fn empty(pid: Pid) -> Frozen {
        Frozen {
            pid,
            threads: Vec::new(),
            kill_on_release: false,
            gadget: 0,
            stop_signo: None,
            stop_seen: Arc::new(AtomicBool::new(false)),
        }
    }

    fn note_stop(&mut self, tid: Pid, sig: Option<i32>) {
        if let Some(sig) = sig {
            pr_info!("thread {tid} is in group-stop (signal {sig})");
            self.stop_signo.get_or_insert(sig);
        }
    }

    /// Seize and stop every thread of `pid`.
    pub fn freeze(pid: Pid) -> Result<Frozen, FreezeError> {
        let mut f = Frozen::empty(pid);
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
                let sig = stop_one(tid)?;
                self.note_stop(tid, sig);
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
        let mut f = Frozen::empty(pid);
        for &tid in &seized {
            f.threads.push(FrozenThread { tid, regs: Regs::default(), sigmask: 0 });
        }
        thaw().map_err(|e| FreezeError::Seize { tid: pid, source: e })?;
        for i in 0..f.threads.len() {
            let tid = f.threads[i].tid;
            let sig = stop_one(tid)?;
            f.note_stop(tid, sig);
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
        if self.kill_on_release {
            let _ = crate::sys::process::kill(self.pid, libc::SIGKILL);
        } else if self.stop_signo.is_some() || self.stop_seen.load(Ordering::Relaxed) {
            // queued while every thread is still in a ptrace stop: each one
            // takes it (or joins the group-stop it starts) on its way out
            // of the detach, before it runs any code of its own
            pr_info!("{} was stopped: stopping it again on release", self.pid);
            if let Err(e) = crate::sys::process::kill(self.pid, libc::SIGSTOP) {
                pr_warn!("can't stop {} again: {e}", self.pid);
            }
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
            wait_pids_free(self.pid, &tids);
        }
    }
}

/// After the SIGKILL of a dump: return only once the killed process's pids
/// are free again, so that a restore right after the dump can have them.
/// As its tracer the engine must collect each thread's exit (until then
/// the kernel keeps it, and its parent can't reap the leader); then the
/// parent reaps the leader. A parent that doesn't within a few seconds
/// gets a warning: the pid stays in use by its zombie.
fn wait_pids_free(pid: Pid, tids: &[Pid]) {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(3);
    // the leader last: the kernel reports its exit only once every other
    // thread of the group has been collected
    let order = tids.iter().filter(|&&t| t != pid).chain(tids.iter().filter(|&&t| t == pid));
    for &tid in order {
        loop {
            match ptrace::wait_flags(tid, libc::__WALL | libc::WNOHANG) {
                Ok(Some(ptrace::Wait::Exited(_) | ptrace::Wait::Signaled(_))) | Err(_) => break, // gone, or not our tracee
                Ok(_) if Instant::now() > deadline => {
                    pr_warn!("thread {tid} of the killed {pid} has not exited yet");
                    break;
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
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
