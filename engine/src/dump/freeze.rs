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
use crate::sys::tracer::{self, Tracer};
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
    #[error("thread {tid} is already traced by {tracer} ({comm}): a thread has one tracer at a time; detach it (end the debugger or strace) and dump again")]
    Traced { tid: Pid, tracer: Pid, comm: String },
    #[error("thread {tid} exited while being frozen ({how:?})")]
    Gone { tid: Pid, how: Wait },
    #[error("process {pid} has exited (a zombie or gone): nothing to dump")]
    Exited { pid: Pid },
    #[error("reading registers of {tid}")]
    Regs { tid: Pid, #[source] source: io::Error },
}

/// A stopped thread and what must be put back before it runs again.
#[derive(Debug, Clone)]
pub struct FrozenThread {
    pub tid: Pid,
    pub regs: Regs,
    pub sigmask: u64,
    /// Its CPU mask as seized (before the dump pins it to the engine's
    /// CPU for injected calls: what the image records).
    pub affinity: [u64; 16],
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
    /// Held by a [`FrozenTree`], which waits for the killed tree's pids
    /// to be free all at once.
    in_tree: bool,
    /// A SIGSTOP came while we held the threads (set by the injection).
    pub stop_seen: Arc<AtomicBool>,
    /// The engine thread that seized it, when not the main one (a tree
    /// dumped on several CPUs: [`FrozenTree::freeze_on`]): every ptrace
    /// request about it must come from there, its release included.
    pub tracer: Option<Tracer>,
    /// /proc/PID/mem, opened for reading and writing at its first use
    /// ([`Frozen::mem`]) and kept: the gadget search, the rseq fixup, each
    /// injection session and the page copy share it.
    mem: std::sync::OnceLock<std::fs::File>,
}

/// The stop signals (SIG_KERNEL_STOP_MASK).
pub fn is_stop_signal(sig: i32) -> bool {
    matches!(sig, libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU)
}

/// Why PTRACE_SEIZE of `tid` failed: EPERM from a thread that another
/// tracer (a debugger, strace) holds is said as such, with the tracer.
fn seize_error(tid: Pid, e: io::Error) -> FreezeError {
    if e.raw_os_error() == Some(libc::EPERM) {
        let status = std::fs::read_to_string(format!("/proc/{tid}/status")).unwrap_or_default();
        let tracer = status.lines().find_map(|l| l.strip_prefix("TracerPid:")).and_then(|v| v.trim().parse::<Pid>().ok()).unwrap_or(0);
        if tracer != 0 {
            let comm = std::fs::read_to_string(format!("/proc/{tracer}/comm")).map(|c| c.trim().to_string()).unwrap_or_else(|_| "?".into());
            return FreezeError::Traced { tid, tracer, comm };
        }
    }
    FreezeError::Seize { tid, source: e }
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
    wait_stopped(tid)
}

/// The rest of [`stop_one`] once `tid` has been interrupted: its stop.
fn wait_stopped(tid: Pid) -> Result<Option<i32>, FreezeError> {
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
            in_tree: false,
            tracer: None,
            mem: std::sync::OnceLock::new(),
        }
    }

    /// The process's /proc/PID/mem (read and write), opened once.
    pub fn mem(&self) -> io::Result<&std::fs::File> {
        if let Some(f) = self.mem.get() {
            return Ok(f);
        }
        let pid = self.pid;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .map_err(|e| io::Error::new(e.kind(), format!("opening /proc/{pid}/mem: {e}")))?;
        Ok(self.mem.get_or_init(|| f))
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
            // every new thread seized and interrupted before any stop is
            // waited for: the threads stop all at once, not each after
            // the one before it has been scheduled and seen stopped (16
            // threads one by one: 0.4-1.6 ms at load 2-5, 12-35 ms at load 7)
            for &tid in &new {
                ptrace::seize(tid, ptrace::O_TRACESYSGOOD | ptrace::O_SUSPEND_SECCOMP).map_err(|e| seize_error(tid, e))?;
                // From here Drop detaches it, stopped or not.
                self.threads.push(FrozenThread { tid, regs: Regs::default(), sigmask: 0, affinity: [0; 16] });
                ptrace::interrupt(tid).map_err(|e| FreezeError::Seize { tid, source: e })?;
            }
            for tid in new {
                let sig = wait_stopped(tid)?;
                self.note_stop(tid, sig);
                let regs = ptrace::get_regs(tid).map_err(|e| FreezeError::Regs { tid, source: e })?;
                let sigmask = ptrace::get_sigmask(tid).map_err(|e| FreezeError::Regs { tid, source: e })?;
                let affinity = crate::sys::process::sched_getaffinity(tid).map_err(|e| FreezeError::Regs { tid, source: e })?;
                let t = self.threads.iter_mut().find(|t| t.tid == tid).expect("seized above");
                t.regs = regs;
                t.sigmask = sigmask;
                t.affinity = affinity;
                pr_info!("Seized task {tid}");
            }
        }
    }

    /// Seize every thread of `pid` without stopping any (its cgroup is
    /// frozen: `--freeze-cgroup`, nothing of it can run or clone); then
    /// [`Frozen::stop_seized`] once the cgroup is thawed. Dropped before
    /// that, the seized threads (never stopped, nothing of them changed)
    /// stay traced until criu exits: PTRACE_DETACH needs a stopped tracee.
    pub fn seize_only(pid: Pid) -> Result<Frozen, FreezeError> {
        let tids = list_tids(pid).map_err(|e| FreezeError::List { pid, source: e })?;
        let mut f = Frozen::empty(pid);
        for tid in tids {
            ptrace::seize(tid, ptrace::O_TRACESYSGOOD | ptrace::O_SUSPEND_SECCOMP).map_err(|e| seize_error(tid, e))?;
            f.threads.push(FrozenThread { tid, regs: Regs::default(), sigmask: 0, affinity: [0; 16] });
        }
        Ok(f)
    }

    /// Stop the threads [`Frozen::seize_only`] seized with PTRACE_INTERRUPT
    /// as [`Frozen::freeze`] does (a thread created since is picked up by
    /// the same loop).
    pub fn stop_seized(&mut self) -> Result<(), FreezeError> {
        let mut i = 0;
        while i < self.threads.len() {
            let tid = self.threads[i].tid;
            let sig = match stop_one(tid) {
                Ok(sig) => sig,
                // a thread that ended between the thaw and its stop (its
                // exit collected by stop_one's wait): not one of the
                // process's any more, the process runs on
                Err(FreezeError::Gone { how, .. }) if tid != self.pid && state(self.pid) == State::Alive => {
                    pr_info!("thread {tid} of {} exited after the thaw ({how:?})", self.pid);
                    self.threads.remove(i);
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.note_stop(tid, sig);
            self.threads[i].regs = ptrace::get_regs(tid).map_err(|e| FreezeError::Regs { tid, source: e })?;
            self.threads[i].sigmask = ptrace::get_sigmask(tid).map_err(|e| FreezeError::Regs { tid, source: e })?;
            self.threads[i].affinity = crate::sys::process::sched_getaffinity(tid).map_err(|e| FreezeError::Regs { tid, source: e })?;
            pr_info!("Seized task {tid}");
            i += 1;
        }
        self.seize_new_threads()?;
        let pid = self.pid;
        self.threads.sort_by_key(|t| (t.tid != pid, t.tid));
        Ok(())
    }

    /// Freeze `pid` whose cgroup is frozen (`--freeze-cgroup`): seize every
    /// thread while nothing of it can run or clone, then `thaw` the cgroup
    /// and stop the seized threads.
    pub fn freeze_frozen(pid: Pid, thaw: impl FnOnce() -> io::Result<()>) -> Result<Frozen, FreezeError> {
        let mut f = Frozen::seize_only(pid)?;
        thaw().map_err(|e| FreezeError::Seize { tid: pid, source: e })?;
        f.stop_seized()?;
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
        // seized by a tracer thread: released there (moved out of `self`,
        // which is left empty)
        if let Some(t) = self.tracer.take().filter(|t| !t.is_current()) {
            let mut f = std::mem::replace(self, Frozen::empty(self.pid));
            f.tracer = None;
            let pid = f.pid;
            if let Err(e) = t.run(move || drop(f)) {
                pr_warn!("releasing {pid}: {e}");
            }
            return;
        }
        // (looked at before the kill: a dead task has no namespaces to show)
        let pid_matters = self.kill_on_release && in_our_pid_ns(self.pid);
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
                if t.regs == Regs::default() && e.raw_os_error() == Some(libc::ESRCH) {
                    // seized in a frozen cgroup and never stopped (the dump
                    // failed before the thaw): PTRACE_DETACH needs a stopped
                    // tracee; the kernel lets it go when criu exits (a
                    // signal that comes in between waits until then)
                    pr_info!("thread {} was never stopped: released when criu exits", t.tid);
                } else if !self.kill_on_release {
                    pr_warn!("can't detach {}: {e}", t.tid);
                }
            }
        }
        if self.kill_on_release {
            let tids: Vec<Pid> = self.threads.iter().map(|t| t.tid).collect();
            collect_exits(self.pid, &tids);
            if pid_matters && !self.in_tree {
                wait_gone(&[self.pid]);
            }
        }
    }
}

/// `pid` is in the engine's own pid namespace (not pid 1 of one of its own).
fn in_our_pid_ns(pid: Pid) -> bool {
    let ns = |p: &str| std::fs::read_link(p).ok();
    let theirs = ns(&format!("/proc/{pid}/ns/pid"));
    theirs.is_none() || theirs == ns("/proc/self/ns/pid")
}

/// What a process of the tree is at freeze.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Alive,
    /// Exited, not yet reaped by its parent.
    Zombie,
    /// Reaped (or never was).
    Gone,
}

/// State letter of /proc/PID/stat: Z and X are a process that has exited.
fn state(pid: Pid) -> State {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => State::Gone,
        Ok(s) => match super::proc::parse_stat(&s).and_then(|(_, f)| f.first().map(|v| v.to_string())).as_deref() {
            Some("Z") | Some("X") => State::Zombie,
            Some(_) => State::Alive,
            None => State::Gone,
        },
    }
}

/// One process of a frozen tree, in the order the images list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub pid: Pid,
    /// Host pid of its parent in the tree; `None` for the root.
    pub parent: Option<Pid>,
    /// Index into [`FrozenTree::procs`]; `None` for a zombie (a zombie
    /// can't be seized, nor does it need to be: it can't change any more
    /// while its parent is stopped).
    pub frozen: Option<usize>,
}

/// Every process of a tree stopped under ptrace (zombies recorded), found
/// from the root through `/proc/PID/task/TID/children`. A process's
/// children are read only once it is stopped, so no new child of it can
/// appear; a child that exits between being listed and being seized is
/// taken as the zombie it became (or dropped once reaped). Once every
/// process found is stopped the children of all are read again, until
/// nothing new shows up. Dropping the guard releases every process as
/// [`Frozen`] does for one (children first, so with `kill_on_release` the
/// tracer collects each exit before its parent's).
#[derive(Debug, Default)]
pub struct FrozenTree {
    /// Stopped processes, the root first.
    pub procs: Vec<Frozen>,
    /// Every process, depth first from the root (parents before children,
    /// children in the order their parent's `children` files list them),
    /// as upstream's pstree.img lists them.
    pub members: Vec<Member>,
    /// Kill every process instead of letting it run when dropped.
    pub kill_on_release: bool,
}

/// `freeze` of `pid`; when it fails because the process exited meanwhile,
/// its exit collected by the thread that seized it (it is its tracer until
/// then: the parent gets it back).
fn freeze_or_reap(pid: Pid, freeze: fn(Pid) -> Result<Frozen, FreezeError>) -> Result<Frozen, FreezeError> {
    freeze(pid).inspect_err(|_| {
        if state(pid) != State::Alive {
            let _ = ptrace::wait_flags(pid, libc::__WALL | libc::WNOHANG);
        }
    })
}

/// `pids` frozen (with `freeze`) one after the other by this thread.
fn freeze_here(pids: &[Pid], freeze: fn(Pid) -> Result<Frozen, FreezeError>) -> Vec<Result<Frozen, FreezeError>> {
    pids.iter()
        .map(|&pid| {
            let r = freeze_or_reap(pid, freeze);
            if r.is_ok() {
                crate::fault::point("mid-freeze");
            }
            r
        })
        .collect()
}

/// `pids` frozen (with `freeze`) by the tracer threads `tracers`, all at
/// once: the k-th process seized so far in the tree (`*count`) by tracer
/// k mod n, which is its tracer from then on.
fn freeze_on_tracers(
    pids: &[Pid],
    tracers: &[Tracer],
    count: &mut usize,
    freeze: fn(Pid) -> Result<Frozen, FreezeError>,
) -> Vec<Result<Frozen, FreezeError>> {
    let n = tracers.len();
    let mut mine: Vec<Vec<(usize, Pid)>> = vec![Vec::new(); n];
    for (k, &pid) in pids.iter().enumerate() {
        mine[*count % n].push((k, pid));
        *count += 1;
    }
    type Seized = Vec<(usize, Result<Frozen, FreezeError>)>;
    let jobs: Vec<tracer::Work<'_, '_, Seized>> = tracers
        .iter()
        .zip(&mine)
        .filter(|(_, m)| !m.is_empty())
        .map(|(t, m)| {
            let job = move || {
                m.iter()
                    .map(|&(k, pid)| {
                        let r = freeze_or_reap(pid, freeze).map(|mut f| {
                            f.tracer = Some(t.clone());
                            f
                        });
                        if r.is_ok() {
                            crate::fault::point("mid-freeze");
                        }
                        (k, r)
                    })
                    .collect()
            };
            (Some(t), Box::new(job) as Box<dyn FnOnce() -> Seized + Send + '_>)
        })
        .collect();
    let mut out: Vec<Option<Result<Frozen, FreezeError>>> = pids.iter().map(|_| None).collect();
    for r in tracer::run_all(jobs) {
        match r {
            Ok(list) => {
                for (k, f) in list {
                    out[k] = Some(f);
                }
            }
            // (the processes it held are released as its job unwound)
            Err(e) => pr_warn!("freezing a tree: {e}"),
        }
    }
    out.into_iter()
        .zip(pids)
        .map(|(r, &tid)| r.unwrap_or_else(|| Err(FreezeError::Seize { tid, source: io::Error::other("its tracer thread failed") })))
        .collect()
}

impl FrozenTree {
    /// Seize and stop the tree rooted at `root` (see [`FrozenTree`]).
    pub fn freeze(root: Pid) -> Result<FrozenTree, FreezeError> {
        Self::freeze_on(root, &[])
    }

    /// [`FrozenTree::freeze`] by the tracer threads `tracers` (none: this
    /// thread): each process is seized by one of them, round robin in the
    /// order they are found, and every ptrace request about it must come
    /// from that thread ([`Frozen::tracer`]). The processes found in one
    /// walk of the tree's `children` files are seized all at once.
    pub fn freeze_on(root: Pid, tracers: &[Tracer]) -> Result<FrozenTree, FreezeError> {
        let mut t = FrozenTree::default();
        let mut count = 0;
        t.grow(root, |pids| match tracers {
            [] => freeze_here(pids, Frozen::freeze),
            _ => freeze_on_tracers(pids, tracers, &mut count, Frozen::freeze),
        })?;
        Ok(t)
    }

    /// The tree rooted at `root`, whose cgroup is frozen (`--freeze-cgroup`):
    /// every process found is seized (not stopped) while nothing can run,
    /// fork or exit; `thaw` is called with the pids seized (it checks they
    /// are members and thaws), then every thread is stopped and the tree is
    /// walked again for a child forked after the thaw.
    pub fn freeze_frozen<E: From<FreezeError>>(root: Pid, thaw: impl FnOnce(&[Pid]) -> Result<(), E>) -> Result<FrozenTree, E> {
        Self::freeze_frozen_on(root, &[], thaw)
    }

    /// [`FrozenTree::freeze_frozen`] by the tracer threads `tracers` (as
    /// [`FrozenTree::freeze_on`]).
    pub fn freeze_frozen_on<E: From<FreezeError>>(
        root: Pid,
        tracers: &[Tracer],
        thaw: impl FnOnce(&[Pid]) -> Result<(), E>,
    ) -> Result<FrozenTree, E> {
        let mut t = FrozenTree::default();
        let mut count = 0;
        t.grow(root, |pids| match tracers {
            [] => freeze_here(pids, Frozen::seize_only),
            _ => freeze_on_tracers(pids, tracers, &mut count, Frozen::seize_only),
        })?;
        let pids: Vec<Pid> = t.procs.iter().map(|f| f.pid).collect();
        thaw(&pids)?;
        // each process stopped by its tracer; one (not the root) that
        // exits between the thaw and its stop (a shell's `sleep` ending)
        // is no member any more: its threads' exits collected (its parent
        // reaps it, or it is found a zombie by the walk below)
        let stop = |f: &mut Frozen| -> Result<bool, FreezeError> {
            match f.stop_seized() {
                Ok(()) => Ok(false),
                Err(e) if f.pid != root && state(f.pid) != State::Alive => {
                    pr_info!("{} exited after the thaw ({e})", f.pid);
                    let tids: Vec<Pid> = f.threads.iter().map(|t| t.tid).collect();
                    collect_exits(f.pid, &tids);
                    // (nothing to detach, and no SIGSTOP for a pid that may be reused)
                    f.threads.clear();
                    f.stop_signo = None;
                    f.stop_seen.store(false, Ordering::Relaxed);
                    Ok(true)
                }
                Err(e) => Err(e),
            }
        };
        let stop = &stop;
        let jobs: Vec<tracer::Work<'_, '_, Result<bool, FreezeError>>> = t
            .procs
            .iter_mut()
            .map(|f| {
                let tr = f.tracer.clone();
                (None, Box::new(move || match tr {
                    None => stop(f),
                    Some(tr) => tr.run(|| stop(f)).unwrap_or_else(|e| Err(FreezeError::Seize { tid: f.pid, source: io::Error::other(e.to_string()) })),
                }) as Box<dyn FnOnce() -> Result<bool, FreezeError> + Send + '_>)
            })
            .collect();
        let mut exited = Vec::new();
        for (k, r) in tracer::run_all(jobs).into_iter().enumerate() {
            if r.map_err(|e| FreezeError::Seize { tid: root, source: io::Error::other(e.to_string()) })?? {
                exited.push(k);
            }
        }
        // (their Frozen hold no thread: nothing to detach)
        for k in exited.into_iter().rev() {
            drop(t.procs.remove(k));
        }
        t.grow(root, |pids| match tracers {
            [] => freeze_here(pids, Frozen::freeze),
            _ => freeze_on_tracers(pids, tracers, &mut count, Frozen::freeze),
        })?;
        Ok(t)
    }

    /// Freeze (with `freeze`, which takes every process of one walk of
    /// the tree not yet held) every process reachable from `root`, until a
    /// walk finds nothing new; then order `members`.
    fn grow(&mut self, root: Pid, mut freeze: impl FnMut(&[Pid]) -> Vec<Result<Frozen, FreezeError>>) -> Result<(), FreezeError> {
        let mut zombies: Vec<Pid> = self.members.iter().filter(|m| m.frozen.is_none()).map(|m| m.pid).collect();
        let mut children: std::collections::HashMap<Pid, Vec<Pid>>;
        loop {
            let mut wave = vec![root];
            let mut fresh = false;
            children = std::collections::HashMap::new();
            let mut seen: std::collections::HashSet<Pid> = std::collections::HashSet::new();
            while !wave.is_empty() {
                let cur: Vec<Pid> = wave.into_iter().filter(|&pid| seen.insert(pid) && !zombies.contains(&pid)).collect();
                // the wave's processes not held yet, seized at once
                let mut new = Vec::new();
                for &pid in &cur {
                    if self.procs.iter().any(|f| f.pid == pid) {
                        continue;
                    }
                    fresh = true;
                    match state(pid) {
                        State::Zombie | State::Gone if pid == root => return Err(FreezeError::Exited { pid }),
                        State::Zombie => zombies.push(pid),
                        State::Gone => {}
                        State::Alive => new.push(pid),
                    }
                }
                let mut failed = None;
                for (&pid, r) in new.iter().zip(freeze(&new)) {
                    match r {
                        Ok(f) => self.procs.push(f),
                        Err(e) if pid != root => {
                            // exited while being seized: its tracer has let
                            // its parent have it again (freeze_or_reap)
                            match state(pid) {
                                State::Alive => {
                                    failed.get_or_insert(e);
                                }
                                st => {
                                    pr_info!("{pid} exited while the tree was frozen ({e}): {st:?}");
                                    if st == State::Zombie {
                                        zombies.push(pid);
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            failed.get_or_insert(e);
                        }
                    }
                }
                if let Some(e) = failed {
                    return Err(e);
                }
                // the children of every process of the wave now held
                // (stopped: no new child of it can appear)
                wave = Vec::new();
                for &pid in &cur {
                    let Some(idx) = self.procs.iter().position(|f| f.pid == pid) else { continue };
                    let mut kids = Vec::new();
                    for t in &self.procs[idx].threads {
                        let c = std::fs::read_to_string(format!("/proc/{pid}/task/{}/children", t.tid))
                            .map_err(|e| FreezeError::List { pid, source: e })?;
                        kids.extend(c.split_whitespace().filter_map(|v| v.parse::<Pid>().ok()));
                    }
                    wave.extend(kids.iter().copied());
                    children.insert(pid, kids);
                }
            }
            if !fresh {
                break;
            }
        }
        // members depth first from the root
        self.members.clear();
        let mut stack = vec![(root, None)];
        while let Some((pid, parent)) = stack.pop() {
            let frozen = self.procs.iter().position(|f| f.pid == pid);
            if frozen.is_none() && !zombies.contains(&pid) {
                continue;
            }
            self.members.push(Member { pid, parent, frozen });
            if let Some(kids) = children.get(&pid) {
                stack.extend(kids.iter().rev().map(|&k| (k, Some(pid))));
            }
        }
        pr_info!("tree of {root}: {} processes ({} zombies)", self.members.len(), zombies.len());
        Ok(())
    }
}

impl Drop for FrozenTree {
    fn drop(&mut self) {
        // TCP connections the dump put in repair mode: out of it again
        // before the processes run on; left in it for a kill
        crate::kinds::tcp_stream::release_dump(!self.kill_on_release);
        // the tree's own network namespace: its lock lifted if it runs on
        crate::netns::end_dump(!self.kill_on_release);
        // (looked at before the kill: a dead task has no namespaces to show;
        // a tree whose root is pid 1 of its own namespace is all in it, and
        // its restore makes a new one: no pid of it is needed again)
        let pid_matters = self.kill_on_release && self.procs.first().is_some_and(|f| in_our_pid_ns(f.pid));
        if self.kill_on_release {
            for f in &self.procs {
                let _ = crate::sys::process::kill(f.pid, libc::SIGKILL);
            }
        }
        // children first: with kill_on_release each Frozen collects its
        // process's exits (it is the tracer), then the pids must be free,
        // which needs each parent (or the reaper of an orphan) to have
        // reaped them: waited for all at once
        let pids: Vec<Pid> = self.procs.iter().map(|f| f.pid).collect();
        // each tracer thread releases its own processes (children first),
        // all threads at once
        let mut by_tracer: Vec<(Option<Tracer>, Vec<Frozen>)> = Vec::new();
        while let Some(mut f) = self.procs.pop() {
            f.kill_on_release = self.kill_on_release;
            f.in_tree = true;
            let key = f.tracer.as_ref().map(|t| t.idx());
            match by_tracer.iter_mut().find(|(t, _)| t.as_ref().map(|t| t.idx()) == key) {
                Some((_, list)) => list.push(f),
                None => by_tracer.push((f.tracer.clone(), vec![f])),
            }
        }
        let jobs: Vec<tracer::Work<'_, 'static, ()>> = by_tracer
            .iter_mut()
            .map(|(t, list)| {
                let list = std::mem::take(list);
                (t.as_ref(), Box::new(move || drop(list)) as Box<dyn FnOnce() + Send>)
            })
            .collect();
        for r in tracer::run_all(jobs) {
            if let Err(e) = r {
                pr_warn!("releasing the tree: {e}");
            }
        }
        if pid_matters {
            wait_gone(&pids);
        }
    }
}

/// After the SIGKILL of a dump the killed processes' pids must be free
/// again before the dump returns, so that a restore right after it can
/// have them. First, as its tracer, the engine collects each thread's exit
/// (until then the kernel keeps it, and its parent can't reap the leader);
/// then, if the pids are the engine's namespace's (a restore of a pid
/// namespace's init gets a new namespace and needs no host pid),
/// ([`wait_gone`]) the parent reaps the leader. A parent that doesn't
/// within a few seconds gets a warning: the pid stays in use by its zombie.
fn collect_exits(pid: Pid, tids: &[Pid]) {
    use std::time::{Duration, Instant};
    // All threads polled together, not one after the other: the kernel
    // reports the leader only once the rest of its group is collected, and
    // in a pid namespace's init the last thread to exit waits (in
    // zap_pid_ns_processes) until every other task of the namespace, its
    // own traced zombie threads included, has been reaped: waiting for any
    // one thread alone can wait for the timeout.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut left: Vec<Pid> = tids.to_vec();
    while !left.is_empty() {
        // kept while still running; dropped once collected, or when not our tracee any more
        left.retain(|&tid| matches!(ptrace::wait_flags(tid, libc::__WALL | libc::WNOHANG), Ok(None | Some(ptrace::Wait::Stopped { .. }))));
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            pr_warn!("threads {left:?} of the killed {pid} have not exited yet");
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Then the parents reap the killed processes `pids` (all at once: an
/// orphan's reaper may take its time): return once every pid is free, or
/// after 3 s with a warning naming each that is still a zombie.
fn wait_gone(pids: &[Pid]) {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut left: Vec<Pid> = pids.to_vec();
    loop {
        left.retain(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for pid in left {
                let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| s.rsplit_once(") ").and_then(|(_, r)| r.split_whitespace().nth(1).map(str::to_string)))
                    .unwrap_or_else(|| "?".into());
                pr_warn!("the killed {pid} is a zombie its parent {ppid} has not reaped: a restore with this pid will find it in use");
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
