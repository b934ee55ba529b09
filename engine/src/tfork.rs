//! tfork: live clones of a running process, without copying its memory
//! while it is paused (docs/ARCHITECTURE.md, "tfork").
//!
//! 1. Freeze and collect the source as a dump does, without its memory
//!    layout ([`dump::collect_state`]): registers, XSAVE, masks and
//!    per-thread state of every thread.
//! 2. Inject one `clone3(CLONE_PARENT)` into the frozen main thread
//!    ([`Parasite::fork_call`]): the kernel's fork gives the new process S
//!    a copy-on-write copy of the address space and a copy of the fd table
//!    (sharing the open file descriptions, as fork does). S is a sibling of
//!    the source. The source is released right after: its pause is the
//!    freeze, the collect and one fork.
//! 3. In S (traced, PTRACE_O_EXITKILL): a gadget area is mapped, the dump's
//!    scratch mapping (S's copy) unmapped; then each further clone is a
//!    `clone3(CLONE_PARENT)` injected into S (or into one of a few other
//!    unfinished forks of S, forking at the same time: one per CPU),
//!    finished and released at once; the forkers are finished last, S the
//!    very last. Finishing a clone: the other
//!    threads are made again (injected clone3 CLONE_THREAD, new tids), each
//!    thread's state is set (robust list, clear_tid, sigaltstack, TLS,
//!    comm, rseq, pending signals), process-wide state (itimers, POSIX
//!    timers, shared pending signals), every thread's dumped registers,
//!    XSAVE and mask loaded, the gadget unmapped, and the clone released
//!    as a restore releases ([`restore::release`]).
//!
//! 4. With `--persist=sync|async`, one more fork of S made before the
//!    clones and never run is the frozen moment: once the clones run, the
//!    image set is written from it ([`write_image_set`]) and it is killed.
//!
//! A namespace init (pid 1 of its own pid namespace) can't be forked into
//! clones (no CLONE_PARENT for an init; its forks stay in its namespace),
//! nor can a process tree (a fork of a source child is that child's
//! child, never the root clone's): each clone (tree) is restored from the
//! frozen source into a new pid namespace with the source's pids instead
//! ([`tfork_restored`]; a tree of the host's pid namespace beside a
//! stand-in pid 1, [`ns_init_main`]). Its memory: the frozen tree pumped
//! once into a tmpfs image set, the source released, each clone restored
//! from the set ([`TmpSet`]), its private anonymous memory parked once in
//! the engine and inherited copy-on-write by every clone ([`Parking`]);
//! with the `kmod/` device, private anonymous
//! memory taken copy-on-write from the still frozen source instead
//! ([`cherry_pick_vmas`]).
//!
//! A clone's tids are new (a fork's): where a thread's clear_tid word
//! still holds its old tid (glibc keeps the thread's tid there), the new
//! one is written there, as fork() does for the caller's.
//!
//! Fault safety: the source is only ever touched through the dump's
//! parasite (parked threads fall into `rt_sigreturn` if the engine dies)
//! and the fork call's fall-through sends the child, until the engine has
//! marked it PTRACE_O_EXITKILL, into `exit_group(0)`. From then on S and
//! every clone made from it are killed with the engine until released.

use crate::dump::parasite::{self, Parasite};
use crate::dump::{self, DumpError};
use crate::model::{Task, Thread};
use crate::restore::space::Space;
use crate::restore::{self, thread, RestoreError};
use crate::sys::inject::Injector;
use crate::sys::process as p;
use crate::sys::ptrace;
use crate::sys::Pid;
use crate::{pr_debug, pr_info};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

mod copy;
mod iso;
mod net;

#[derive(Debug, thiserror::Error)]
pub enum TforkError {
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Dump(#[from] DumpError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("writing the image set: {0}")]
    Images(String),
    /// `loc`: where in the engine it arose (the `ioe` call), for the log.
    #[error("{what} (pid {pid})")]
    Io { pid: Pid, what: String, #[source] source: std::io::Error, loc: &'static std::panic::Location<'static> },
}

#[track_caller]
fn ioe(pid: Pid, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TforkError {
    let what = what.into();
    let loc = std::panic::Location::caller();
    move |e| TforkError::Io { pid, what, source: e, loc }
}

impl TforkError {
    /// Where in the engine the error arose, when it knows.
    pub fn location(&self) -> Option<&'static std::panic::Location<'static>> {
        match self {
            TforkError::Io { loc, .. } => Some(loc),
            TforkError::Restore(r) => r.location(),
            TforkError::Dump(d) => d.location(),
            _ => None,
        }
    }
}

/// What `--persist` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Persist {
    /// Nothing is written.
    #[default]
    None,
    /// The image set of the frozen moment is written into `images_dir`
    /// after the clones run, and durable when tfork returns.
    Sync,
    /// As `Sync`, but the caller is told the clones run (`on_running`)
    /// before the set is written (the CLI returns there, the writing
    /// engine goes on in the background).
    Async,
}

#[derive(Debug, Clone, Default)]
pub struct TforkOpts {
    /// Number of clones (at least 1).
    pub copies: usize,
    pub persist: Persist,
    /// Processes forking clones at the same time (default: the CPUs this
    /// engine may run on, at most 8).
    pub forkers: Option<usize>,
    /// Where `Persist::Sync` writes the image set.
    pub images_dir: std::path::PathBuf,
    /// Write the image set with plain writes and fsync(2), not io_uring
    /// (the CLI's `CRIU_RS_IO_URING=off`; io_uring refused by the kernel
    /// falls back to them by itself).
    pub plain_writes: bool,
    /// `--root-snapshot`: each clone's own copy of the source's directory
    /// ([`crate::root_snapshot`]), its upper directory in
    /// `images_dir/tfork-root/<clone pid>`.
    pub root_snapshot: Option<crate::root_snapshot::Mode>,
    /// `--tcp-close`: the source's TCP connections to peers outside the
    /// tree are closed in the clones ([`net`]); without it they are
    /// refused by name.
    pub tcp_close: bool,
}

/// What a tfork did, with its timings (all from the start of the freeze).
#[derive(Debug, Clone)]
pub struct TforkReport {
    pub source: Pid,
    /// Clone pids, in the order they were released.
    pub clones: Vec<Pid>,
    /// Freeze to the source's release.
    pub pause: Duration,
    /// Until the first clone was released.
    pub first: Duration,
    /// Until the last clone was released.
    pub all: Duration,
    /// Until the image set was durable (`Persist::Sync`).
    pub persisted: Option<Duration>,
}

/// Processes made by a tfork not yet finished: killed (and, for those
/// still traced, their exits collected) on any error, released clones
/// included (a failed tfork leaves no clone). PTRACE_O_EXITKILL does the
/// same for the unreleased ones when the engine itself dies.
#[derive(Debug, Default)]
struct Unreleased(Vec<Pid>);

impl Unreleased {
    /// The tfork succeeded: nothing to kill.
    fn commit(&mut self) {
        self.0.clear();
    }
}

impl Drop for Unreleased {
    fn drop(&mut self) {
        self.kill_all();
    }
}

impl Unreleased {
    fn kill_all(&mut self) {
        // As their tracer the engine collects every thread's exit (the
        // kernel reports a traced leader's only after its other threads'),
        // by pid and without blocking; the parent (the source's) reaps.
        let mut tids = Vec::new();
        for &pid in &self.0 {
            let mut t: Vec<Pid> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).filter(|&t| t != pid).collect())
                .unwrap_or_default();
            t.push(pid);
            tids.push(t);
            let _ = p::kill(pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for tid in tids.into_iter().flatten() {
            loop {
                match ptrace::wait_flags(tid, libc::__WALL | libc::WNOHANG) {
                    Ok(Some(ptrace::Wait::Exited(_) | ptrace::Wait::Signaled(_))) | Err(_) => break,
                    Ok(_) if Instant::now() > deadline => break,
                    Ok(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        }
        self.0.clear();
    }
}

/// Upper directories of `--root-snapshot` made so far: removed when the
/// tfork fails (its clones are killed), kept once they all run.
#[derive(Debug, Default)]
struct SnapDirs(Vec<std::path::PathBuf>);

impl Drop for SnapDirs {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Options S and every clone are traced with until released.
const CLONE_TRACE: u64 =
    ptrace::O_TRACESYSGOOD | ptrace::O_TRACECLONE | ptrace::O_TRACEFORK | ptrace::O_EXITKILL | ptrace::O_SUSPEND_SECCOMP;

/// `struct clone_args` of a fork that makes a sibling of the caller. The
/// exit signal must be 0 with CLONE_PARENT (the kernel then gives the
/// child the caller's own exit signal, as its parent expects of it).
fn sibling_fork_args() -> Vec<u8> {
    p::clone_args_bytes(libc::CLONE_PARENT as u64, 0, 0)
}

/// CPUs this engine may run on.
fn cpu_count() -> usize {
    p::sched_getaffinity(0).map(|m| m.iter().map(|w| w.count_ones() as usize).sum()).unwrap_or(1)
}

/// Refuse, by name, what this version cannot clone correctly.
fn check_supported(pid: Pid, tree: &crate::model::Tree) -> Result<(), TforkError> {
    if tree.root_owns_pid_ns {
        return Err(TforkError::Unsupported(format!(
            "process {pid} became pid 1 of its own pid namespace while it was frozen for a fork-made clone"
        )));
    }
    // (uts and ipc namespaces of its own send it down the restore path
    // before this: iso::check_process)
    let task = tree.root();
    let main = &task.threads[0];
    for t in &task.threads[1..] {
        let same = t.creds == main.creds
            && t.seccomp_mode == main.seccomp_mode
            && t.seccomp == main.seccomp
            && (t.sched_policy, t.sched_prio, t.sched_nice) == (main.sched_policy, main.sched_prio, main.sched_nice);
        if !same {
            return Err(TforkError::Unsupported(format!(
                "thread {} of {pid} has credentials, seccomp filters or a scheduling policy other than its main thread's: not supported by tfork yet",
                t.tid
            )));
        }
    }
    Ok(())
}

/// Make `opts.copies` live clones of process `pid`.
pub fn tfork(pid: Pid, opts: &TforkOpts) -> Result<TforkReport, TforkError> {
    tfork_with(pid, opts, &mut |_| {})
}

/// [`tfork`], calling `on_running` with the clones' pids once they all
/// run, before the image set (if any) is written.
pub fn tfork_with(pid: Pid, opts: &TforkOpts, on_running: &mut dyn FnMut(&[Pid])) -> Result<TforkReport, TforkError> {
    // (zombies of snapshot forks a killed engine left are no children of the program)
    reap_dead_snapshots(pid);
    if opts.copies == 0 {
        return Err(TforkError::Unsupported("--copies must be at least 1".into()));
    }
    if owns_pid_ns(pid) || has_children(pid) {
        return tfork_restored(pid, opts, on_running, None);
    }
    // a kernel object of the process's own a fork would share with the
    // clones (docs/ARCHITECTURE.md, "tfork", "Isolation"): restored instead
    if let Some(why) = iso::look_process(pid).or_else(|| iso::look(pid)) {
        pr_info!("process {pid} is cloned by restore, not by fork: {why}");
        return tfork_restored(pid, opts, on_running, Some(why));
    }
    let t0 = Instant::now();
    pr_debug!("freezing {pid}");
    // connections recorded (not refused by the collection): [`net::plan`] decides
    set_net_opts(true);
    let collected = dump::collect_state(pid);
    set_net_opts(opts.tcp_close);
    let (tree, frozen) = collected?;
    if frozen.members.len() > 1 || frozen.procs.len() != 1 {
        // a child forked between the look and the freeze: a tree after all
        drop(frozen);
        pr_info!("process {pid} forked while it was being frozen: cloned as a tree");
        return tfork_restored(pid, opts, on_running, None);
    }
    if let Some(why) = iso::check_process(&tree) {
        // (since the look: the source goes, and is frozen again)
        drop(frozen);
        pr_info!("process {pid} is cloned by restore, not by fork: {why}");
        return tfork_restored(pid, opts, on_running, Some(why));
    }
    check_supported(pid, &tree)?;
    let copies = match iso::check(tree.root()) {
        Ok(c) => c,
        Err(why) => {
            // (made since the look: the source goes, and is frozen again)
            drop(frozen);
            pr_info!("process {pid} is cloned by restore, not by fork: {why}");
            return tfork_restored(pid, opts, on_running, Some(why));
        }
    };
    let net = net::plan(&tree, opts.tcp_close, true)?;
    let task = tree.root();
    let plan = match &opts.root_snapshot {
        None => None,
        Some(m) => Some(crate::root_snapshot::Plan::new(m, pid, task, &opts.images_dir.join("tfork-root")).map_err(TforkError::Unsupported)?),
    };
    let mut snap_dirs = SnapDirs::default();
    pr_debug!("collected {pid} in {:?}", t0.elapsed());
    let mut unreleased = Unreleased::default();
    let (s, scratch, dontfork) = {
        let root = &frozen.procs[0];
        let mut par = Parasite::start_main(root, root.gadget).map_err(ioe(pid, "injection session for the fork"))?;
        pr_debug!("fork session of {pid} ready at {:.2} ms", t0.elapsed().as_secs_f64() * 1e3);
        // (forked again where the fork lacks MADV_DONTFORK memory: V8's
        // heap in node, for one; every clone gets the marks back in `finish`)
        let (s, dontfork) = fork_whole(
            pid,
            &mut par,
            &mut unreleased,
            |unreleased, par| {
                let (ret, child) = par
                    .fork_call(&sibling_fork_args(), ptrace::O_TRACEFORK | ptrace::O_TRACECLONE)
                    .map_err(ioe(pid, "injected clone3"))?;
                if let Some(c) = child {
                    unreleased.0.push(c);
                }
                let s = crate::sys::check_raw(ret).map_err(ioe(pid, "injected clone3(CLONE_PARENT) in the source"))? as Pid;
                if child != Some(s) {
                    return Err(TforkError::Unsupported(format!("clone3 in {pid} made {s}, but the fork event named {child:?}")));
                }
                pr_debug!("{pid} forked {s} at {:.2} ms", t0.elapsed().as_secs_f64() * 1e3);
                Ok(s)
            },
            |unreleased, _, s| {
                // this fork goes (its parent, the source's, sees it exit)
                let mut gone = Unreleased(vec![s]);
                gone.kill_all();
                gone.commit();
                unreleased.0.retain(|&c| c != s);
                Ok(())
            },
            |_| None,
            "forked again with them",
        )?;
        ptrace::set_options(s, CLONE_TRACE).map_err(ioe(s, "tracing the source's fork with PTRACE_O_EXITKILL"))?;
        pr_debug!("{s}'s mappings checked at {:.2} ms", t0.elapsed().as_secs_f64() * 1e3);
        (s, par.mapping(), dontfork)
        // the parasite session ends: the source's registers and masks back
    };
    pr_debug!("fork session of {pid} ended at {:.2} ms", t0.elapsed().as_secs_f64() * 1e3);
    drop(frozen);
    let pause = t0.elapsed();
    pr_info!("source {pid} paused {:.2} ms, forked {s}", pause.as_secs_f64() * 1e3);
    crate::fault::point("tfork-source-released");
    let sp = prepare(s, scratch)?;
    let gadget_page = sp.gadget_page;
    crate::fault::point("tfork-prepared");
    // the image set's copy: one more fork of S, never run, read from
    // while the clones run
    let snapshot = match opts.persist {
        Persist::None => None,
        Persist::Sync | Persist::Async => {
            let mut inj = Injector::new(s, sp.gadget).map_err(ioe(s, "registers"))?;
            let args = sibling_fork_args();
            let a = sp.write(0, &args)?;
            inj.cloned.clear();
            let r = inj.raw(libc::SYS_clone3, &[a, args.len() as u64]).map_err(ioe(s, "forking the image set's copy"))?;
            if let Some(&d) = inj.cloned.last() {
                unreleased.0.push(d);
                parasite::wait_first_stop(d).map_err(ioe(d, "waiting for the image set's copy"))?;
            }
            crate::sys::check_raw(r).map_err(ioe(s, "injected clone3 for the image set's copy"))?;
            Some(*inj.cloned.last().ok_or_else(|| TforkError::Unsupported(format!("no fork event from {s}")))?)
        }
    };
    let mut clones = Vec::with_capacity(opts.copies);
    let mut first = None;
    // Forkers: S and, once the first clone runs, up to one more unfinished
    // fork of S per CPU. Every forker always has a fork in flight while
    // more clones are wanted (a fork's time is its page-table copy, in the
    // forker's own context: forks of different processes run in parallel
    // on different CPUs): as soon as one ends, the forker starts the next
    // and only then is the new clone finished, by this thread, while the
    // forks run. Forkers are finished last, S the very last.
    let max_forkers = opts.forkers.unwrap_or_else(|| cpu_count().clamp(1, 8)).max(1);
    let mut forkers: Vec<(Injector, Space)> = vec![(Injector::new(s, sp.gadget).map_err(ioe(s, "registers"))?, sp)];
    let mut fan = Fan::default();
    let r = (|| -> Result<(), TforkError> {
        let args = sibling_fork_args();
        let mut made = 1;
        if opts.copies > 1 {
            fan.begin(&mut forkers, 0, &args)?;
        }
        while let Some(k) = fan.next() {
            let (c, csp) = fan.end(&mut forkers, k, &mut unreleased)?;
            made += 1;
            if made + fan.inflight() < opts.copies {
                fan.begin(&mut forkers, k, &args)?;
            }
            crate::fault::point("tfork-clone-forked");
            if first.is_some() && forkers.len() < max_forkers && made + fan.inflight() < opts.copies {
                forkers.push((Injector::new(c, csp.gadget).map_err(ioe(c, "registers"))?, csp));
                let last = forkers.len() - 1;
                fan.begin(&mut forkers, last, &args)?;
                continue;
            }
            finish(c, task, &csp, plan.as_ref(), &mut snap_dirs, &net, &dontfork, &copies)?;
            clones.push(c);
            first.get_or_insert_with(|| t0.elapsed());
        }
        Ok(())
    })();
    if let Err(e) = r {
        // (the forks still running end first: their clones are killed with the rest)
        fan.drain(&mut forkers, &mut unreleased);
        return Err(e);
    }
    // the forkers, S last
    for (inj, fsp) in forkers.into_iter().rev() {
        let c = inj.tid;
        finish(c, task, &fsp, plan.as_ref(), &mut snap_dirs, &net, &dontfork, &copies)?;
        clones.push(c);
        first.get_or_insert_with(|| t0.elapsed());
    }
    let all = t0.elapsed();
    snap_dirs.0.clear();
    on_running(&clones);
    if opts.persist == Persist::Async {
        // the caller has been told they run: a failed write leaves them
        // running (and is reported); only the image set's copy goes
        unreleased.0.retain(|&p| Some(p) == snapshot);
    }
    let persisted = match snapshot {
        None => None,
        Some(d) => {
            write_image_set(&tree, d, gadget_page, &dontfork, &opts.images_dir, !opts.plain_writes)?;
            Some(t0.elapsed())
        }
    };
    unreleased.commit();
    if let Some(d) = snapshot {
        Unreleased(vec![d]).kill_all();
    }
    Ok(TforkReport { source: pid, clones, pause, first: first.unwrap_or(all), all, persisted })
}

/// The forks in flight of tfork's forkers (by index into the forkers),
/// oldest first: each forker has at most one.
#[derive(Debug, Default)]
struct Fan(std::collections::VecDeque<usize>);

impl Fan {
    fn inflight(&self) -> usize {
        self.0.len()
    }

    /// The forker whose fork began first, if any is in flight.
    fn next(&self) -> Option<usize> {
        self.0.front().copied()
    }

    /// Start forker `k`'s next fork (`args`: its clone_args).
    fn begin(&mut self, forkers: &mut [(Injector, Space)], k: usize, args: &[u8]) -> Result<(), TforkError> {
        let (inj, fsp) = &mut forkers[k];
        inj.cloned.clear();
        let a = fsp.write(0, args)?;
        inj.begin(libc::SYS_clone3, &[a, args.len() as u64]).map_err(ioe(inj.tid, "forking a clone"))?;
        self.0.push_back(k);
        Ok(())
    }

    /// Wait for forker `k`'s fork (the oldest in flight): the new clone,
    /// stopped at its first stop, in `unreleased`.
    fn end(&mut self, forkers: &mut [(Injector, Space)], k: usize, unreleased: &mut Unreleased) -> Result<(Pid, Space), TforkError> {
        self.0.retain(|&i| i != k);
        let (inj, fsp) = &mut forkers[k];
        let f = inj.tid;
        let r = inj.end(libc::SYS_clone3).map_err(ioe(f, "forking a clone"));
        let c = inj.cloned.last().copied();
        if let Some(c) = c {
            unreleased.0.push(c);
        }
        let r = r?;
        let Some(c) = c else {
            crate::sys::check_raw(r).map_err(ioe(f, "injected clone3(CLONE_PARENT)"))?;
            return Err(TforkError::Unsupported(format!("no fork event from {f}")));
        };
        parasite::wait_first_stop(c).map_err(ioe(c, "waiting for a new clone"))?;
        crate::sys::check_raw(r).map_err(ioe(f, "injected clone3(CLONE_PARENT)"))?;
        Ok((c, fsp.for_fork(c, c)?))
    }

    /// On an error: end every fork still in flight, its clone (if made)
    /// put in `unreleased` to be killed with the others.
    fn drain(&mut self, forkers: &mut [(Injector, Space)], unreleased: &mut Unreleased) {
        while let Some(k) = self.next() {
            let _ = self.end(forkers, k, unreleased);
        }
    }
}

/// The socket choices of the collection and of the restores (global to
/// the inet kind): connections recorded and restored closed with
/// `tcp_close`, never carried live (`--tcp-established` is refused by
/// tfork: a connection can't be in the source and in a clone).
fn set_net_opts(tcp_close: bool) {
    crate::kinds::inet::set_tcp_close(tcp_close);
    crate::kinds::inet::set_tcp_established(false);
}

/// `vmas` with the ranges of `dontfork` marked MADV_DONTFORK, a VMA cut
/// where a range begins or ends inside it (the marks kept the source's
/// VMAs apart; unmarked for the fork, a range may have merged with a
/// neighbour).
fn mark_dontfork(vmas: Vec<crate::model::Vma>, dontfork: &[(u64, u64)]) -> Vec<crate::model::Vma> {
    if dontfork.is_empty() {
        return vmas;
    }
    let mut out = Vec::with_capacity(vmas.len() + dontfork.len());
    for v in vmas {
        let mut cuts: Vec<u64> = dontfork.iter().flat_map(|&(a, b)| [a, b]).filter(|&x| x > v.start && x < v.end).collect();
        cuts.sort_unstable();
        cuts.dedup();
        cuts.push(v.end);
        let mut from = v.start;
        for to in cuts {
            let mut piece = v.clone();
            piece.start = from;
            piece.end = to;
            if v.pgoff != 0 || v.file.is_some() || v.shmid != 0 {
                piece.pgoff = v.pgoff + (from - v.start);
            }
            if dontfork.iter().any(|&(a, b)| from >= a && to <= b) {
                piece.madv |= 1 << libc::MADV_DONTFORK;
            }
            out.push(piece);
            from = to;
        }
    }
    out
}

/// A fork of the process `pid` frozen in session `par`, with every VMA of
/// the process: `fork` makes one (into `st`'s keeping). VMAs marked
/// MADV_DONTFORK (VM_DONTCOPY) are left out of a fork; smaps, the only
/// place the mark shows, costs a page-table walk (~50-75 ms per GiB here)
/// that a pause can't afford, so the fork's maps are compared with the
/// process's (0.1 ms, [`vmas_not_in`]). Where VMAs are missing, `refuse`
/// may say why they can't be had (an error), else `discard` ends that
/// fork, the ranges are marked MADV_DOFORK in the process, and `fork`
/// runs once more (`again` in the log); the marks are put back in the
/// process whatever happens. The fork, and the ranges that were marked
/// (to be marked again in whatever runs from the fork).
fn fork_whole<S>(
    pid: Pid,
    par: &mut Parasite,
    st: &mut S,
    fork: impl Fn(&mut S, &mut Parasite) -> Result<Pid, TforkError>,
    discard: impl Fn(&mut S, &mut Parasite, Pid) -> Result<(), TforkError>,
    refuse: impl Fn(&[(u64, u64)]) -> Option<&'static str>,
    again: &str,
) -> Result<(Pid, Vec<(u64, u64)>), TforkError> {
    let main = par.main_tid();
    let mut marked: Vec<(u64, u64)> = Vec::new();
    let r = (|| loop {
        let f = fork(st, par)?;
        let missing = vmas_not_in(pid, f).map_err(ioe(f, format!("comparing the fork's mappings with {pid}'s")))?;
        let Some(&(a, b)) = missing.first() else { return Ok(f) };
        let why = refuse(&missing).or((!marked.is_empty()).then_some("still, after MADV_DOFORK"));
        if let Some(why) = why {
            return Err(TforkError::Unsupported(format!("{pid} has {} mappings a fork leaves out ({why}; first {a:#x}-{b:#x})", missing.len())));
        }
        discard(st, par, f)?;
        for &(a, b) in &missing {
            par.call(main, "madvise(MADV_DOFORK)", libc::SYS_madvise, &[a, b - a, libc::MADV_DOFORK as u64])
                .map_err(ioe(pid, format!("marking {a:#x}-{b:#x} MADV_DOFORK for the fork")))?;
            marked.push((a, b));
        }
        pr_info!("{pid} has {} mappings marked MADV_DONTFORK (first {a:#x}-{b:#x}): {again}", missing.len());
    })();
    let mut r = r;
    for &(a, b) in &marked {
        if let Err(e) = par.call(main, "madvise(MADV_DONTFORK)", libc::SYS_madvise, &[a, b - a, libc::MADV_DONTFORK as u64]) {
            r = Err(ioe(pid, format!("marking {a:#x}-{b:#x} MADV_DONTFORK again"))(e));
        }
    }
    r.map(|f| (f, marked))
}

/// The VMAs of `source` that `fork` lacks (start, end), from their
/// /proc/PID/maps: what a fork left out (VM_DONTCOPY). Reading maps walks
/// no page table.
fn vmas_not_in(source: Pid, fork: Pid) -> std::io::Result<Vec<(u64, u64)>> {
    fn ranges(pid: Pid) -> std::io::Result<Vec<(u64, u64)>> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
        text.lines()
            .map(|line| {
                dump::proc::parse_maps_line(line)
                    .map(|m| (m.start, m.end))
                    .ok_or_else(|| std::io::Error::other(format!("/proc/{pid}/maps: bad line {line:?}")))
            })
            .collect()
    }
    let theirs = ranges(fork)?;
    Ok(ranges(source)?.into_iter().filter(|r| theirs.binary_search(r).is_err()).collect())
}

/// Whether `pid` has children (any of its threads: /proc/PID/task/TID/children).
fn has_children(pid: Pid) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().any(|e| std::fs::read_to_string(e.path().join("children")).is_ok_and(|c| !c.trim().is_empty())))
        .unwrap_or(false)
}

/// Whether `pid` is pid 1 of a pid namespace of its own (its NSpid ends
/// in 1 at a level below the engine's).
fn owns_pid_ns(pid: Pid) -> bool {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let ns: Vec<&str> = st.lines().find_map(|l| l.strip_prefix("NSpid:")).map(|v| v.split_whitespace().collect()).unwrap_or_default();
    ns.len() > 1 && ns.last() == Some(&"1")
}

/// tfork by restore: of a namespace init (pid 1 of its own pid namespace)
/// or of a process tree (a source with children). The kernel refuses
/// CLONE_PARENT to an init, and every fork of the source lands in its pid
/// namespace or one nested in it (dying with it); a fork injected into a
/// child of the source gives a child of that source process, never a
/// child of the root's clone. So each clone tree is instead restored from
/// the frozen source tree ([`restore::restore`] of the collected state,
/// each process's memory read from its source process through
/// /proc/PID/mem, or cherry-picked through the `kmod/` device) into a new
/// pid namespace of the host's, where every process has the source's pid
/// and tids again (set_tid). A source root that owns its pid namespace is
/// pid 1 of the clone's; one in the host's namespace gets a stand-in pid 1
/// ([`NsInit`]) and keeps its own pid beside it. The source stays frozen
/// until the last clone is made (and, with `--persist`, until the image
/// set is written from it): its pause is one restore per clone tree
/// (docs/ARCHITECTURE.md, "tfork").
///
/// `isolated`: a single process of the host's pid namespace routed here
/// because a fork would share `isolated` (an fd or mapping, [`iso`]) with
/// its clones; its clones are restored as a one-process tree's are, and
/// whatever the restore path refuses says why it was taken.
fn tfork_restored(pid: Pid, opts: &TforkOpts, on_running: &mut dyn FnMut(&[Pid]), isolated: Option<String>) -> Result<TforkReport, TforkError> {
    let because = |e: TforkError| match (&isolated, e) {
        (Some(why), TforkError::Unsupported(m)) => TforkError::Unsupported(format!("{m} (cloned by restore, not by fork, because {why})")),
        (_, e) => e,
    };
    tfork_restored_in(pid, opts, on_running, isolated.is_some()).map_err(because)
}

fn tfork_restored_in(pid: Pid, opts: &TforkOpts, on_running: &mut dyn FnMut(&[Pid]), single_ok: bool) -> Result<TforkReport, TforkError> {
    let t0 = Instant::now();
    // connections recorded (not refused by the collection): [`net::plan`]
    // decides; the restores then bring them back closed (`--tcp-close`)
    // (a tree in a network namespace of its own: its connections within
    // the tree are carried live, each clone in a new namespace holding its
    // copy of both ends: crate::netns)
    let own_net = crate::netns::owns(pid);
    // (a mount namespace of its own: each clone gets a new one, its root
    // and host mounts copies of the source's, crate::mntns)
    crate::mntns::set_from_source(true);
    let collected = dump::collect_tree_opts(pid, &crate::options::Options { tcp_close: true, tcp_established: own_net, ..Default::default() });
    crate::mntns::set_from_source(false);
    set_net_opts(opts.tcp_close);
    let (tree, frozen) = collected?;
    if tree.net.is_some() {
        crate::kinds::inet::set_tcp_established(true);
    }
    net::plan(&tree, opts.tcp_close, false)?;
    refuse_live_fifo_data(&tree)?;
    let own_ns = tree.root_owns_pid_ns;
    if !own_ns && frozen.members.len() == 1 && !single_ok {
        return Err(TforkError::Unsupported(format!("process {pid} lost its children and is not pid 1 of its own pid namespace: tfork it again")));
    }
    let plan = match &opts.root_snapshot {
        None => None,
        // (a mount namespace of its own: an overlay of its root mount per clone)
        Some(m) if tree.mnt.is_some() => Some(crate::root_snapshot::Plan::new_for_mount_ns(m, pid, &opts.images_dir.join("tfork-root")).map_err(TforkError::Unsupported)?),
        Some(m) => Some(crate::root_snapshot::Plan::new_restored(m, pid, tree.root(), &opts.images_dir.join("tfork-root")).map_err(TforkError::Unsupported)?),
    };
    pr_debug!("collected {pid} ({} processes{}) in {:?}", tree.tasks.len(), if own_ns { ", a namespace init" } else { "" }, t0.elapsed());
    let hosts: Vec<Option<Pid>> = frozen.members.iter().zip(&tree.tasks).map(|(m, t)| t.zombie_exit.is_none().then_some(m.pid)).collect();
    // Where the clones' memory comes from (docs/ARCHITECTURE.md, "tfork",
    // "Trees"): with the kmod device, the frozen source itself (its
    // private anonymous VMAs cherry-picked copy-on-write into each clone);
    // without it, one copy of the frozen moment into a tmpfs image set,
    // after which the source is released and every clone tree is restored
    // from that set (its pause is one copy, whatever N).
    let from_source = match std::env::var("CRIU_RS_TFORK_TREE_MEM").as_deref() {
        Ok("source") => true,
        Ok("snapshot") => false,
        _ => crate::sys::kmod::is_available(),
    };
    let mut pause = None;
    // Without the kmod device: a fork injected into every frozen process
    // of the tree, never run ([`Snapshots`]), the kernel's copy-on-write
    // snapshot of the frozen moment; the source is released right after,
    // and the clones' memory is parked from the snapshots (no tmpfs set)
    // while it runs. Where a snapshot can't stand for its process, the
    // copy into tmpfs in the pause instead.
    let snaps = if from_source || std::env::var("CRIU_RS_TFORK_SNAPSHOT").as_deref() == Ok("off") { None } else { Snapshots::take(&tree, &frozen, pid) };
    let (tmp, frozen) = if let Some(s) = &snaps {
        crate::fault::point("tforktree-snapshot-forked");
        drop(frozen);
        // (no tmpfs set of its own: those of engines killed mid-tfork go)
        TmpSet::remove_dead(&std::env::var_os("CRIU_RS_TFORK_SNAPSHOT_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| "/dev/shm".into()));
        let p = t0.elapsed();
        pr_info!("source {pid} paused {:.2} ms: {} snapshot forks taken ({})", p.as_secs_f64() * 1e3, s.reap.len(), s.reap.iter().map(|r| r.1.to_string()).collect::<Vec<_>>().join(" "));
        pause = Some(p);
        (None, None)
    } else {
    let tmp = if from_source {
        None
    } else {
        // (where the set can't be written, e.g. tmpfs full, the clones
        // are made from the still frozen source instead)
        match TmpSet::write(&tree, &frozen, pid) {
            Ok(t) => Some(t),
            Err(e) => {
                crate::pr_warn!("the frozen tree of {pid} could not be copied into tmpfs ({}): the clones are restored from the frozen source", crate::log::error_chain(&e));
                None
            }
        }
    };
    let frozen = match &tmp {
        None => Some(frozen),
        Some(t) => {
            crate::fault::point("tforktree-snapshot");
            drop(frozen);
            let p = t0.elapsed();
            pr_info!("source {pid} paused {:.2} ms: the frozen tree copied into {}", p.as_secs_f64() * 1e3, t.0.display());
            pause = Some(p);
            None
        }
    };
    (tmp, frozen)
    };
    // the processes the memory is read from (without the tmpfs set): the
    // snapshots, or the frozen source
    let mem_pids: Vec<Option<Pid>> = snaps.as_ref().map(|s| s.pids.clone()).unwrap_or_else(|| hosts.clone());
    // one memory source per process: its frozen source process, read
    // through /proc/PID/mem (private anonymous VMAs cherry-picked where the
    // kmod device is present), or the pages of the tmpfs set. (A zombie has
    // no memory: its entry is the root's, never read.)
    let mut own_mems: Vec<Option<crate::mem_source::ProcessMem>> = Vec::with_capacity(tree.tasks.len());
    let (set_tree, pages) = match &tmp {
        None => {
            for h in &mem_pids {
                own_mems.push(match *h {
                    Some(h) => Some(crate::mem_source::ProcessMem::open_mem_only(h).map_err(ioe(h, "opening /proc/PID/mem of a source process"))?.with_cherry_pick(true)),
                    None => None,
                });
            }
            (None, Vec::new())
        }
        Some(t) => {
            let (mut tr, pages) = crate::images_io::read_images(&t.0).map_err(|e| TforkError::Images(format!("reading back {}: {}", t.0.display(), crate::log::error_chain(&e))))?;
            // (its mount namespace's root and host mounts still come from
            // the live source, which images do not record)
            if let (Some(m), Some(src)) = (tr.mnt.as_mut(), tree.mnt.as_ref()) {
                m.source = src.source;
            }
            (Some(tr), pages)
        }
    };
    let rtree = set_tree.as_ref().unwrap_or(&tree);
    // with parked memory, the stand-in inits are made by the engine first
    // (a fork of the restoring helper would copy the page tables of all the
    // parked memory, for an exec to drop them)
    let mut inits = NsInits::default();
    let mut pre_inits: std::collections::VecDeque<Pid> = std::collections::VecDeque::new();
    if (tmp.is_some() || snaps.is_some()) && !own_ns && std::env::var("CRIU_RS_TFORK_PARK").as_deref() != Ok("off") {
        for _ in 0..opts.copies {
            let (rd, wr) = p::pipe().map_err(ioe(pid, "a pipe for the stand-in init"))?;
            let i = spawn_ns_init(&rd, false).map_err(|e| TforkError::Unsupported(format!("tfork of {pid}: {e}")))?;
            drop(rd);
            inits.0.push((i, wr));
            pre_inits.push_back(i);
        }
    }
    // (from the tmpfs set, or the snapshots: the memory parked once in the
    // engine, inherited copy-on-write by every clone)
    let mut plain: Vec<&dyn crate::mem_source::MemSource> = pages.iter().map(|m| m as &dyn crate::mem_source::MemSource).collect();
    let snap_pages: Vec<SnapPages> = mem_pids.iter().map(|s| SnapPages(s.map(|s| format!("/proc/{s}/mem").into()))).collect();
    let mut fill_from = plain.clone();
    if let (Some(_), None) = (&snaps, &tmp) {
        let root_mem = own_mems[0].as_ref().ok_or_else(|| TforkError::Unsupported(format!("the root {pid} of the tree is a zombie")))?;
        plain = own_mems.iter().map(|m| m.as_ref().unwrap_or(root_mem) as &dyn crate::mem_source::MemSource).collect();
        fill_from = snap_pages.iter().map(|m| m as &dyn crate::mem_source::MemSource).collect();
    }
    // (the snapshots copy their own memory into the parked regions where they can)
    let snap_from: Vec<Option<crate::sys::park::Snap>> = match &snaps {
        Some(s) if tmp.is_none() => s.pids.iter().map(|p| p.and_then(|p| s.scratch.iter().find(|x| x.0 == p)).map(|&(pid, scratch)| crate::sys::park::Snap { pid, scratch })).collect(),
        _ => Vec::new(),
    };
    let parking = match (tmp.is_some() || snaps.is_some()).then(|| Parking::make(rtree, &fill_from, &snap_from, pid)) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(pk))) => Some(pk),
        Some(Err(e)) => {
            // (each clone then fills its own copy, as without parking)
            crate::sys::park::unmap_all();
            crate::pr_warn!("the memory of {pid}'s clones could not be parked ({}): each clone fills its own copy", crate::log::error_chain(&e));
            None
        }
    };
    let parked_mems: Vec<ParkedMem> = match &parking {
        Some(pk) => plain.iter().zip(&pk.0).map(|(m, r)| ParkedMem { inner: *m, parked: r }).collect(),
        None => Vec::new(),
    };
    let mems: Vec<&dyn crate::mem_source::MemSource> = if !parked_mems.is_empty() {
        parked_mems.iter().map(|m| m as &dyn crate::mem_source::MemSource).collect()
    } else if tmp.is_some() {
        plain.clone()
    } else {
        let root_mem = own_mems[0].as_ref().ok_or_else(|| TforkError::Unsupported(format!("the root {pid} of the tree is a zombie")))?;
        own_mems.iter().map(|m| m.as_ref().unwrap_or(root_mem) as &dyn crate::mem_source::MemSource).collect()
    };
    let mut unreleased = Unreleased::default();
    let mut snap_dirs = SnapDirs::default();
    let mut clones = Vec::with_capacity(opts.copies);
    let mut first = None;
    // Clone trees after the first are restored up to one per CPU at once:
    // each by its own helper process (the engine only forks it and reads
    // its report), so their restores run on every CPU; the first alone
    // (it runs soonest that way).
    let width = std::env::var("CRIU_RS_TFORK_RESTORERS").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| cpu_count().clamp(1, 8)).max(1);
    let mut inflight: std::collections::VecDeque<(usize, Option<std::path::PathBuf>, Restoring)> = std::collections::VecDeque::new();
    let mut next = 0;
    // (not with --root-snapshot: the helper mounts the clone tree's
    // snapshot in a mount namespace of its own, which the engine must not
    // enter; `CRIU_RS_TFORK_FIRST_HERE=off` for measurements)
    let here = plan.is_none() && std::env::var("CRIU_RS_TFORK_FIRST_HERE").as_deref() != Ok("off");
    let r = (|| -> Result<(), TforkError> {
        while next < opts.copies || !inflight.is_empty() {
            let room = if clones.is_empty() { 1 } else { width };
            // the first clone tree restored by the engine itself where it
            // can be ([`restore_here`]): no helper fork (a copy of the page
            // tables of all the parked memory) before it
            let made = if next == 0 && here {
                next += 1;
                Some((restore_here(pid, rtree, &mems, !own_ns, &mut inits, pre_inits.pop_front())?, None))
            } else {
                None
            };
            if made.is_none() && next < opts.copies && inflight.len() < room {
                // the clone's snapshot directory is named by its pid once known
                let top = plan.as_ref().map(|p| p.base.join(format!(".ns-{}-{next}", std::process::id())));
                if let Some(t) = &top {
                    snap_dirs.0.push(t.clone());
                }
                let pending: Vec<i32> = inflight.iter().filter_map(|(_, _, h)| h.ctl_fd()).collect();
                let h = restore_in_new_pid_ns(pid, rtree, &mems, plan.as_ref().zip(top.as_deref()), !own_ns, &inits, &pending, pre_inits.pop_front())?;
                inflight.push_back((next, top, h));
                next += 1;
                continue;
            }
            let ((c, init), top) = match made {
                Some(m) => m,
                None => {
                    let Some((_, top, h)) = inflight.pop_front() else { break };
                    (h.finish(&mut inits)?, top)
                }
            };
            unreleased.0.push(c);
            if let (Some(p), Some(t)) = (&plan, &top) {
                let dest = p.made(c);
                std::fs::rename(t, &dest).map_err(ioe(c, format!("renaming {} to {}", t.display(), dest.display())))?;
                if let Some(d) = snap_dirs.0.iter_mut().find(|d| *d == t) {
                    *d = dest;
                }
            }
            match init {
                None => pr_info!("clone {c} of {pid}: pid 1 of a new pid namespace ({} processes)", tree.tasks.len()),
                Some(i) => pr_info!("clone {c} of {pid}: pid {} of a new pid namespace whose pid 1 is {i} ({} processes)", tree.root().pid, tree.tasks.len()),
            }
            clones.push(c);
            first.get_or_insert_with(|| t0.elapsed());
            crate::fault::point("tforktree-clone-made");
        }
        Ok(())
    })();
    if let Err(e) = r {
        // (the helpers still at work report first: what they made is killed with the rest)
        for (_, _, h) in inflight.drain(..) {
            if let Ok((c, _)) = h.finish(&mut inits) {
                unreleased.0.push(c);
            }
        }
        return Err(e);
    }
    let all = t0.elapsed();
    // (the clones hold their own copy-on-write copies now)
    if parking.is_some() {
        crate::sys::park::unmap_all();
    }
    crate::fault::point("tforktree-before-go");
    snap_dirs.0.clear();
    // the stand-in inits stop watching the engine: the clones are theirs
    inits.go()?;
    on_running(&clones);
    if opts.persist == Persist::Async {
        unreleased.0.clear();
        inits.0.clear();
    }
    // the image set: the tmpfs set copied, or written from the source itself, still frozen
    let persisted = match (opts.persist, &tmp) {
        (Persist::None, _) => None,
        (_, Some(t)) => {
            t.copy_to(&opts.images_dir, !opts.plain_writes)?;
            Some(t0.elapsed())
        }
        (_, None) => {
            write_tree_set(&tree, &mem_pids, mem_pids.first().copied().flatten().unwrap_or(pid), &opts.images_dir, !opts.plain_writes)?;
            Some(t0.elapsed())
        }
    };
    // (the clones and the image set hold the frozen moment now)
    let snaps_taken = snaps.is_some();
    if let Some(mut s) = snaps {
        s.end();
    }
    unreleased.commit();
    inits.0.clear();
    drop(mems);
    drop(own_mems);
    drop(frozen);
    let pause = pause.unwrap_or_else(|| t0.elapsed());
    pr_info!("source {pid} paused {:.2} ms ({} clones restored {})", pause.as_secs_f64() * 1e3, clones.len(), if tmp.is_some() { "from its tmpfs copy" } else if snaps_taken { "from its snapshot forks" } else { "from it" });
    Ok(TforkReport { source: pid, clones, pause, first: first.unwrap_or(all), all, persisted })
}

/// A FIFO holding bytes is refused for clones made by restore: the FIFO
/// is the source's (its path opens the same pipe), and the restore would
/// write the frozen bytes into it once more per clone, under the source's
/// feet.
fn refuse_live_fifo_data(tree: &crate::model::Tree) -> Result<(), TforkError> {
    for t in &tree.tasks {
        for f in &t.fds {
            if let crate::model::FileDesc::Kind(crate::kinds::Kind::Fifo(x)) = &f.file {
                if x.data.as_ref().is_some_and(|d| !d.data.is_empty()) {
                    return Err(TforkError::Unsupported(format!(
                        "fd {} of {}: the FIFO {} holds {} unread bytes: a clone restored beside the source would queue them into the source's FIFO again (not supported)",
                        f.fd,
                        t.pid,
                        x.path,
                        x.data.as_ref().map_or(0, |d| d.data.len())
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The frozen moment of a source tree as an image set in tmpfs
/// (`$CRIU_RS_TFORK_SNAPSHOT_DIR`, default /dev/shm), which its clone
/// trees are restored from once the source runs again; removed on drop.
#[derive(Debug)]
struct TmpSet(std::path::PathBuf);

impl TmpSet {
    /// Write `tree` (process `i`'s memory from the frozen process of
    /// `frozen.members[i]`; none for a zombie) into a new directory.
    fn write(tree: &crate::model::Tree, frozen: &dump::freeze::FrozenTree, pid: Pid) -> Result<TmpSet, TforkError> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::var_os("CRIU_RS_TFORK_SNAPSHOT_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| "/dev/shm".into());
        let dir = base.join(format!("criu-rs-tfork-{}-{pid}", std::process::id()));
        TmpSet::remove_dead(&base);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(ioe(pid, format!("creating {}", dir.display())))?;
        let set = TmpSet(dir);
        // each process's pages by the dump's page pump (the process
        // vmsplices them, the engine splices them into the file: one copy),
        // the engine pinned to its CPU while it drives them (as `criu
        // dump` is while its root's pump lives): each injected call a
        // local switch
        let _pinned = p::PinnedHere::new();
        let mut mems = Vec::with_capacity(frozen.members.len());
        for m in &frozen.members {
            mems.push(match m.frozen {
                None => None,
                Some(k) => Some(dump::page_pump::PumpOnDemand::new(&frozen.procs[k]).map_err(ioe(m.pid, "the page pump"))?),
            });
        }
        let refs: Vec<Option<&dyn crate::mem_source::MemSource>> = mems.iter().map(|m| m.as_ref().map(|m| m as &dyn crate::mem_source::MemSource)).collect();
        let run_id = format!("criu-rs-tfork-{}-{}", std::process::id(), pid);
        crate::images_io::write_images(tree, &set.0, &refs, &run_id)
            .map_err(|e| TforkError::Images(format!("the frozen tree into {}: {}", set.0.display(), crate::log::error_chain(&e))))?;
        Ok(set)
    }

    /// Remove the sets in `base` left by an engine killed mid-tfork (its pid gone).
    fn remove_dead(base: &std::path::Path) {
        for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let owner = name.strip_prefix("criu-rs-tfork-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<Pid>().ok());
            if owner.is_some_and(|o| !std::path::Path::new(&format!("/proc/{o}")).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// The set copied into `dir` as the persisted image set: staged,
    /// every file fsynced (through io_uring where `uring` and the kernel
    /// allow), published (inventory last).
    fn copy_to(&self, dir: &std::path::Path, uring: bool) -> Result<(), TforkError> {
        let img = |e: &dyn std::error::Error| TforkError::Images(crate::log::error_chain(e));
        let staging = dump::staging::Staging::new(dir).map_err(|e| img(&e))?;
        crate::fault::point("tfork-mid-persist");
        if crate::fault::fails("tfork-mid-persist") {
            return Err(TforkError::Images("injected failure before the images were written (CRIU_RS_FAULT_AT)".into()));
        }
        for e in std::fs::read_dir(&self.0).map_err(|e| TforkError::Images(format!("{}: {e}", self.0.display())))? {
            let e = e.map_err(|e| TforkError::Images(format!("{}: {e}", self.0.display())))?;
            let to = staging.path().join(e.file_name());
            // (copy_file_range: in the kernel, no user buffer)
            std::fs::copy(e.path(), &to).map_err(|err| TforkError::Images(format!("copying {} to {}: {err}", e.path().display(), to.display())))?;
        }
        let synced = staging.sync_files(uring).map_err(|e| img(&e))?;
        staging.publish().map_err(|e| img(&e))?;
        pr_info!("image set of the frozen source copied from {} to {}: files synced by {synced}", self.0.display(), dir.display());
        Ok(())
    }
}

impl Drop for TmpSet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Snapshot forks of a frozen source tree (docs/ARCHITECTURE.md, "tfork",
/// "Snapshots"): in every live process of the tree, a `clone3` without
/// CLONE_PARENT and with exit signal 0 injected from its main thread
/// (`Parasite::fork_call`), never run: the kernel's copy-on-write copy of
/// the process's memory as at the freeze, read through /proc/SNAP/mem
/// once the source runs again. A snapshot is a child of its source
/// process, a "clone" child (exit signal 0) that its wait(), waitpid(-1)
/// and waitid without __WALL/__WCLONE do not see; it is traced by the
/// engine with PTRACE_O_EXITKILL (an engine death kills it). [`end`]
/// (also on drop) kills each, collects its exit as its tracer, and has
/// its source process reap the zombie (the kernel gives a traced child's
/// zombie back to its real parent): the source process frozen again for
/// one injected `waitid(P_PID, SNAP, WEXITED|__WCLONE|WNOHANG)`.
#[derive(Debug, Default)]
struct Snapshots {
    /// Per member of the tree: its snapshot's host pid (none for a zombie).
    pids: Vec<Option<Pid>>,
    /// (source process, snapshot, snapshot's pid in the source's pid
    /// namespace, the source's syscall gadget), still to end.
    reap: Vec<(Pid, Pid, Pid, u64)>,
    /// (snapshot, its copy of the scratch mapping): calls can be injected
    /// into it there ([`mark_snapshot`]'s gadget), e.g. the parking copy's.
    scratch: Vec<(Pid, u64)>,
}

impl Snapshots {
    /// Fork a snapshot in every live process of `frozen` (still frozen).
    /// `None`, with a warning and nothing left behind, where one can't
    /// stand for its process: its fork lacks VMAs of the source (marked
    /// MADV_DONTFORK, or an AIO ring), or an injection fails.
    fn take(tree: &crate::model::Tree, frozen: &dump::freeze::FrozenTree, pid: Pid) -> Option<Snapshots> {
        // MAP_SHARED memory whose pages the images hold (shared anonymous,
        // memfd, SysV shm) is the same pages in a fork: a snapshot would
        // show the running source's later writes
        let shared = tree.tasks.iter().find_map(|t| {
            t.mm.vmas.iter().find(|v| v.flags & libc::MAP_SHARED as u32 != 0 && t.mm.pages.iter().any(|r| r.vaddr < v.end && r.vaddr + r.nr_pages * 4096 > v.start)).map(|v| (t.pid, v.start, v.end))
        });
        if let Some((p, a, b)) = shared {
            crate::pr_warn!("no snapshot of {pid}'s frozen tree (process {p} has shared memory at {a:#x}-{b:#x}, which a fork shares with the running source): its memory is copied while it is frozen");
            return None;
        }
        let mut s = Snapshots::default();
        let why = match s.fork_all(tree, frozen) {
            Ok(()) => return Some(s),
            Err(why) => why,
        };
        crate::pr_warn!("no snapshot of {pid}'s frozen tree ({why}): its memory is copied while it is frozen");
        s.end_frozen(frozen);
        None
    }

    fn fork_all(&mut self, tree: &crate::model::Tree, frozen: &dump::freeze::FrozenTree) -> Result<(), String> {
        // an injection session in every live process, all open at once
        let mut sess: Vec<Option<(Pid, u64, Parasite)>> = Vec::with_capacity(frozen.members.len());
        for (m, t) in frozen.members.iter().zip(&tree.tasks) {
            let Some(k) = m.frozen.filter(|_| t.zombie_exit.is_none()) else {
                sess.push(None);
                continue;
            };
            let f = &frozen.procs[k];
            let par = Parasite::start_main(f, f.gadget).map_err(|e| format!("injection session in {}: {e}", m.pid))?;
            sess.push(Some((m.pid, f.gadget, par)));
        }
        // Every fork started, then each waited for: a fork's time is its
        // page-table copy, made in the forking process's own context, so
        // the processes copy theirs on every CPU at once.
        let args = p::clone_args_bytes(0, 0, 0);
        let mut began = Vec::with_capacity(sess.len());
        let mut err = None;
        for (i, s) in sess.iter_mut().enumerate() {
            let Some((pid, _, par)) = s else { continue };
            match par.fork_call_begin(&args, ptrace::O_TRACEFORK | ptrace::O_TRACECLONE) {
                Ok(()) => began.push(i),
                Err(e) => {
                    err = Some(format!("injected clone3 in {pid}: {e}"));
                    break;
                }
            }
        }
        let mut made: Vec<Option<Pid>> = vec![None; sess.len()];
        for &i in &began {
            let Some((pid, gadget, par)) = &mut sess[i] else { continue };
            let r = par.fork_call_end().map_err(|e| format!("injected clone3 in {pid}: {e}"));
            match r.and_then(|(ret, child)| self.adopt(*pid, *gadget, par, ret, child)) {
                Ok(snap) => made[i] = Some(snap),
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = err {
            // (the sessions end here, before the snapshots made are reaped)
            return Err(e);
        }
        for (s, first) in sess.iter_mut().zip(made) {
            let Some((pid, gadget, par)) = s else {
                self.pids.push(None);
                continue;
            };
            let (pid, gadget) = (*pid, *gadget);
            let main = par.main_tid();
            // VMAs marked MADV_DONTFORK (node's V8 heap) are not in a fork:
            // forked again with them, as for the fork-made clones; an AIO
            // ring (also left out) can't be: the copy then
            let first = std::cell::Cell::new(first);
            let r = fork_whole(
                pid,
                par,
                self,
                |snaps, par| match first.take() {
                    Some(snap) => Ok(snap),
                    None => snaps.fork_one(pid, gadget, par).map_err(TforkError::Unsupported),
                },
                |snaps, par, snap| {
                    // this snapshot goes, reaped by its source in this session
                    let ns = snaps.reap.iter().find(|r| r.1 == snap).map_or(snap, |r| r.2);
                    snaps.reap.retain(|r| r.1 != snap);
                    kill_collect(snap);
                    let flags = (libc::WEXITED | libc::__WCLONE | libc::WNOHANG) as u32 as u64;
                    par.raw(main, libc::SYS_waitid, &[libc::P_PID as u64, ns as u64, 0, flags, 0]).map_err(ioe(pid, "injected waitid"))?;
                    Ok(())
                },
                |missing| {
                    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
                    missing
                        .iter()
                        .any(|&(a, b)| maps.lines().any(|l| l.starts_with(&format!("{a:x}-{b:x} ")) && l.contains("[aio]")))
                        .then_some("an AIO ring")
                },
                "its snapshot forked again with them",
            )
            .map(|(snap, _)| snap)
            .map_err(|e| crate::log::error_chain(&e));
            self.pids.push(Some(r?));
        }
        // (the sessions end: each source process's registers and masks back)
        drop(sess);
        Ok(())
    }

    /// One snapshot fork of the process in session `par` (traced with
    /// PTRACE_O_EXITKILL, named, its fds closed); its host pid.
    fn fork_one(&mut self, pid: Pid, gadget: u64, par: &mut Parasite) -> Result<Pid, String> {
        let args = p::clone_args_bytes(0, 0, 0);
        let (ret, child) = par.fork_call(&args, ptrace::O_TRACEFORK | ptrace::O_TRACECLONE).map_err(|e| format!("injected clone3 in {pid}: {e}"))?;
        self.adopt(pid, gadget, par, ret, child)
    }

    /// The snapshot `child` that clone3 (result `ret`) made in the process
    /// `pid` (syscall gadget `gadget`) of session `par`: recorded to be
    /// reaped, traced with PTRACE_O_EXITKILL, named, its fds closed; its
    /// host pid.
    fn adopt(&mut self, pid: Pid, gadget: u64, par: &Parasite, ret: i64, child: Option<Pid>) -> Result<Pid, String> {
        let (code, scratch_len) = par.mapping();
        // (clone3 returns the snapshot's pid in the source's pid namespace)
        let mut ns = None;
        if let Some(c) = child {
            ns = std::fs::read_to_string(format!("/proc/{c}/status"))
                .ok()
                .and_then(|st| st.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|v| v.split_whitespace().last()?.parse::<Pid>().ok()));
            self.reap.push((pid, c, ns.unwrap_or(c), gadget));
            ptrace::set_options(c, CLONE_TRACE).map_err(|e| format!("tracing the snapshot {c} of {pid} with PTRACE_O_EXITKILL: {e}"))?;
        }
        let made = crate::sys::check_raw(ret).map_err(|e| format!("injected clone3 in {pid}: {e}"))? as Pid;
        let (Some(snap), true) = (child, ns == Some(made)) else {
            return Err(format!("clone3 in {pid} made {made}, but the fork event named {child:?} (pid {ns:?} in its namespace)"));
        };
        mark_snapshot(snap, code).map_err(|e| format!("naming the snapshot {snap} of {pid}: {e}"))?;
        // (room for the parking copy's calls: `park::Snap`)
        if scratch_len >= 0x2000 {
            self.scratch.push((snap, code));
        }
        Ok(snap)
    }

    /// Kill every snapshot and have its source process (running) reap it.
    fn end(&mut self) {
        if self.reap.is_empty() {
            return;
        }
        let t0 = Instant::now();
        for (src, snap, ns, gadget) in std::mem::take(&mut self.reap) {
            kill_collect(snap);
            let reaped = dump::freeze::Frozen::freeze(src).map_err(|e| std::io::Error::other(e.to_string())).and_then(|f| reap_in(&f, gadget, ns));
            if let Err(e) = reaped {
                crate::pr_warn!("the snapshot {snap} of {src} was killed, but {src} could not be made to reap it: {e}");
            }
        }
        pr_debug!("snapshots ended in {:.2} ms", t0.elapsed().as_secs_f64() * 1e3);
    }

    /// [`end`](Self::end) while the source tree is still frozen.
    fn end_frozen(&mut self, frozen: &dump::freeze::FrozenTree) {
        for (src, snap, ns, gadget) in std::mem::take(&mut self.reap) {
            kill_collect(snap);
            let f = frozen.members.iter().find(|m| m.pid == src).and_then(|m| m.frozen).map(|k| &frozen.procs[k]);
            if let Some(Err(e)) = f.map(|f| reap_in(f, gadget, ns)) {
                crate::pr_warn!("the snapshot {snap} of {src} was killed, but {src} could not be made to reap it: {e}");
            }
        }
    }
}

impl Drop for Snapshots {
    fn drop(&mut self) {
        self.end();
    }
}

/// The pages of a snapshot for [`Parking::make`]: /proc/SNAP/mem, where
/// a page's offset is its address (read, never pinned: a pin would
/// unshare the page). Never handed to a restore.
struct SnapPages(Option<std::path::PathBuf>);

impl crate::mem_source::MemSource for SnapPages {
    fn read(&self, vaddr: u64, _buf: &mut [u8]) -> Result<(), crate::mem_source::MemError> {
        Err(crate::mem_source::MemError::Missing { what: "a snapshot's pages (parking only)".into(), vaddr })
    }
    fn files(&self) -> Vec<std::path::PathBuf> {
        self.0.iter().cloned().collect()
    }
    fn file_range(&self, vaddr: u64, _len: u64) -> Option<(usize, u64)> {
        self.0.as_ref().map(|_| (0, vaddr))
    }
}

/// comm of a snapshot fork ([`Snapshots`]), by which a later tfork finds
/// the zombies of snapshots a killed engine left ([`reap_dead_snapshots`]).
const SNAP_COMM: &str = "criu-rs-snap";

/// Name snapshot `snap` [`SNAP_COMM`] (prctl(PR_SET_NAME)) and close
/// every fd it got with the fork (close_range): calls injected into it
/// (never run otherwise), the gadget and the name written into its own
/// copy of the scratch page at `code` (copy-on-write: the source's is
/// untouched).
fn mark_snapshot(snap: Pid, code: u64) -> std::io::Result<()> {
    let mem = std::fs::OpenOptions::new().read(true).write(true).open(format!("/proc/{snap}/mem"))?;
    let (g, name) = (code + 0x800, code + 0x810);
    mem.write_all_at(&[0x0f, 0x05, 0xcc], g)?;
    mem.write_all_at(format!("{SNAP_COMM}\0").as_bytes(), name)?;
    ptrace::set_sigmask(snap, !0)?;
    let mut inj = Injector::new(snap, g)?;
    inj.call("prctl(PR_SET_NAME)", libc::SYS_prctl, &[libc::PR_SET_NAME as u64, name])?;
    // its copy of the fd table goes: a pipe's or socket's end held by it
    // would keep the source's peers from seeing it closed
    inj.call("close_range", libc::SYS_close_range, &[0, u64::from(u32::MAX), 0])?;
    Ok(())
}

/// Have the processes of the tree at `root` reap the zombies of snapshot
/// forks ([`Snapshots`]) that an engine killed mid-tfork left in them
/// (comm [`SNAP_COMM`], exit signal 0): each parent frozen for a moment
/// and one `waitid` injected. Failures are warnings.
fn reap_dead_snapshots(root: Pid) {
    let stat = |p: Pid| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
    let mut queue = vec![root];
    let mut seen = std::collections::HashSet::new();
    let mut dead: Vec<(Pid, Pid)> = Vec::new();
    while let Some(p) = queue.pop() {
        if !seen.insert(p) {
            continue;
        }
        for t in std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten() {
            for c in std::fs::read_to_string(t.path().join("children")).unwrap_or_default().split_whitespace().filter_map(|c| c.parse::<Pid>().ok()) {
                let st = stat(c);
                let (comm, rest) = match (st.find('('), st.rfind(')')) {
                    (Some(a), Some(b)) if a < b => (&st[a + 1..b], &st[b + 1..]),
                    _ => continue,
                };
                let f: Vec<&str> = rest.split_whitespace().collect();
                if comm == SNAP_COMM && f.first() == Some(&"Z") && f.get(35) == Some(&"0") {
                    dead.push((p, c));
                } else {
                    queue.push(c);
                }
            }
        }
    }
    for (parent, z) in dead {
        let ns = std::fs::read_to_string(format!("/proc/{z}/status"))
            .ok()
            .and_then(|st| st.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|v| v.split_whitespace().last()?.parse::<Pid>().ok()))
            .unwrap_or(z);
        let reaped = dump::freeze::Frozen::freeze(parent).map_err(|e| std::io::Error::other(e.to_string())).and_then(|f| {
            let maps = std::fs::read_to_string(format!("/proc/{parent}/maps"))?;
            let exec: Vec<(u64, u64)> = maps.lines().filter_map(dump::proc::parse_maps_line).filter(|m| m.x && m.name != "[vsyscall]").map(|m| (m.start, m.end)).collect();
            let gadget = parasite::find_gadget(parent, f.threads[0].regs.ip, &exec)?;
            reap_in(&f, gadget, ns)
        });
        match reaped {
            Ok(()) => pr_info!("{parent} reaped {z}, a snapshot fork left by a killed engine"),
            Err(e) => crate::pr_warn!("{parent} could not be made to reap {z}, a snapshot fork left by a killed engine: {e}"),
        }
    }
}

/// SIGKILL `pid` (traced by the engine, one thread) and collect its exit
/// as its tracer.
fn kill_collect(pid: Pid) {
    let _ = p::kill(pid, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match ptrace::wait_flags(pid, libc::__WALL | libc::WNOHANG) {
            Ok(Some(ptrace::Wait::Exited(_) | ptrace::Wait::Signaled(_))) | Err(_) => break,
            Ok(_) if Instant::now() > deadline => break,
            Ok(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Have frozen process `f` reap its dead "clone" child `ns` (its pid in
/// `f`'s pid namespace): one injected waitid. ECHILD (already reaped,
/// e.g. by a wait with __WALL of its own) is fine.
fn reap_in(f: &dump::freeze::Frozen, gadget: u64, ns: Pid) -> std::io::Result<()> {
    let mut par = Parasite::start(f, gadget)?;
    let main = par.main_tid();
    let flags = (libc::WEXITED | libc::__WCLONE | libc::WNOHANG) as u32 as u64;
    let r = par.raw(main, libc::SYS_waitid, &[libc::P_PID as u64, ns as u64, 0, flags, 0])?;
    if r != 0 && r != -(libc::ECHILD as i64) {
        return Err(std::io::Error::other(format!("injected waitid({ns}) in {}: {}", f.pid, std::io::Error::from_raw_os_error(-r as i32))));
    }
    Ok(())
}

/// Parked memory of the restored clones (docs/ARCHITECTURE.md, "tfork",
/// "Memory of a clone tree"; `sys/park.rs`): every parkable VMA of every
/// live process of the frozen tree mapped by the engine at an address no
/// process of the tree (nor the engine) uses and filled once from the
/// tmpfs set, so that every restoring helper, clone root and child
/// inherits it copy-on-write; the restore moves each process's own into
/// place. By task index, `(start, end, at)`. Unmapped on drop (the clones
/// keep their inherited copies).
#[derive(Debug, Default)]
struct Parking(Vec<Vec<(u64, u64, u64)>>);

/// Whether a VMA is parked: private anonymous memory (`Anon` or `Heap`,
/// MAP_NORESERVE allowed) with pages, not MAP_GROWSDOWN (the flag would
/// not follow the move) nor locked (mlock of copy-on-write memory
/// unshares it).
fn parkable(v: &crate::model::Vma, task: &Task) -> bool {
    let base = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
    let flags_ok = v.flags & base == base && v.flags & !(base | libc::MAP_NORESERVE as u32) == 0;
    let has_pages = task.mm.pages.iter().any(|r| r.vaddr < v.end && r.vaddr + r.nr_pages * 4096 > v.start);
    v.file.is_none() && v.shmid == 0 && matches!(v.kind, crate::model::VmaKind::Anon | crate::model::VmaKind::Heap) && flags_ok && !v.is_empty() && has_pages
}

impl Parking {
    /// Park the memory of `tree` (pages from `mems`, pages files of the
    /// tmpfs set). `None` when `CRIU_RS_TFORK_PARK=off` (measurements:
    /// each clone then fills its own copy, as before).
    fn make(tree: &crate::model::Tree, mems: &[&dyn crate::mem_source::MemSource], snaps: &[Option<crate::sys::park::Snap>], src: Pid) -> Result<Option<Parking>, TforkError> {
        const HUGE: u64 = 2 << 20;
        const PAGE: u64 = 4096;
        if std::env::var("CRIU_RS_TFORK_PARK").as_deref() == Ok("off") {
            return Ok(None);
        }
        let t0 = Instant::now();
        // what to park: per task, (vma, its pieces: (vaddr, len, file, off))
        type Pieces = Vec<(u64, u64, usize, u64)>;
        let mut want: Vec<Vec<(&crate::model::Vma, Pieces)>> = Vec::with_capacity(tree.tasks.len());
        for (t, m) in tree.tasks.iter().zip(mems) {
            let mut mine = Vec::new();
            if t.zombie_exit.is_none() {
                for v in t.mm.vmas.iter().filter(|v| parkable(v, t)) {
                    let mut pieces = Vec::new();
                    let mut ok = true;
                    for r in t.mm.pages.iter().filter(|r| r.vaddr < v.end && r.vaddr + r.nr_pages * PAGE > v.start) {
                        let (a, b) = (r.vaddr.max(v.start), (r.vaddr + r.nr_pages * PAGE).min(v.end));
                        match m.file_range(a, b - a) {
                            Some((fi, off)) => pieces.push((a, b - a, fi, off)),
                            None => ok = false,
                        }
                    }
                    if ok {
                        mine.push((v, pieces));
                    }
                }
            }
            want.push(mine);
        }
        let total: u64 = want.iter().flatten().map(|(v, _)| v.len() + HUGE + PAGE).sum();
        if total == 0 {
            return Ok(None);
        }
        // the largest gap of every process's address space and the engine's
        let mut used: Vec<(u64, u64)> = tree.tasks.iter().flat_map(|t| t.mm.vmas.iter().map(|v| (v.start, v.end))).collect();
        let own = std::fs::read_to_string("/proc/self/maps").map_err(ioe(src, "reading the engine's /proc/self/maps"))?;
        for l in own.lines() {
            let r = l.split_whitespace().next().and_then(|r| r.split_once('-'));
            if let Some((a, b)) = r.and_then(|(a, b)| Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))) {
                used.push((a, b));
            }
        }
        used.push((0, 1 << 32));
        used.push((0x7fff_0000_0000, u64::MAX));
        used.sort_unstable();
        let (mut best, mut end) = ((0u64, 0u64), 0u64);
        for &(a, b) in &used {
            if a > end && a - end > best.1 - best.0 {
                best = (end, a);
            }
            end = end.max(b);
        }
        if best.1 - best.0 < total + 2 * HUGE {
            crate::pr_warn!("no free address range of {} MiB to park the memory of {src}'s clones in: each clone fills its own copy", total >> 20);
            return Ok(None);
        }
        // in the middle of the gap, far from what the engine maps next
        let mut at = (best.0 + (best.1 - best.0 - total) / 2) & !(HUGE - 1);
        let mut paths: Vec<(std::path::PathBuf, std::fs::File)> = Vec::new();
        let mut park = Parking(Vec::with_capacity(want.len()));
        let mut bytes = 0u64;
        // (region address, length, file index in `paths`, offset, by
        // UFFDIO_COPY: a region of 4 KiB pages, `park::small_pages`; the
        // snapshot that can copy it itself: the VMA readable)
        let mut fills: Vec<(u64, u64, usize, u64, bool, Option<crate::sys::park::Snap>)> = Vec::new();
        for (ti, (mine, m)) in want.iter().zip(mems).enumerate() {
            let files = m.files();
            let mut out = Vec::with_capacity(mine.len());
            for (v, pieces) in mine {
                // (the same offset in a huge page as the VMA: huge pages move whole)
                at += (v.start.wrapping_sub(at)) & (HUGE - 1);
                let thp = if v.madv & (1 << libc::MADV_HUGEPAGE) != 0 {
                    Some(libc::MADV_HUGEPAGE)
                } else if v.madv & (1 << libc::MADV_NOHUGEPAGE) != 0 {
                    Some(libc::MADV_NOHUGEPAGE)
                } else {
                    None
                };
                crate::sys::park::map(at, v.len(), v.flags & libc::MAP_NORESERVE as u32 != 0, thp)
                    .map_err(ioe(src, format!("parking {:#x}-{:#x} at {at:#x}", v.start, v.end)))?;
                for &(a, len, fi, off) in pieces {
                    let path = files.get(fi).ok_or_else(|| TforkError::Images(format!("no pages file {fi} for {a:#x}")))?;
                    let k = match paths.iter().position(|(p, _)| p == path) {
                        Some(k) => k,
                        None => {
                            let f = std::fs::File::open(path).map_err(ioe(src, format!("opening {}", path.display())))?;
                            paths.push((path.clone(), f));
                            paths.len() - 1
                        }
                    };
                    let snap = snaps.get(ti).copied().flatten().filter(|_| v.prot & libc::PROT_READ as u32 != 0);
                    fills.push((at + (a - v.start), len, k, off, crate::sys::park::small_pages(thp), snap));
                    bytes += len;
                }
                out.push((v.start, v.end, at));
                at += v.len() + PAGE;
            }
            park.0.push(out);
        }
        // the copy, on every CPU of the engine at once
        // (`CRIU_RS_TFORK_PARK_THREADS=N` for measurements)
        let threads = std::env::var("CRIU_RS_TFORK_PARK_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| cpu_count().clamp(1, 8));
        let jobs: Vec<(u64, u64, &std::fs::File, u64, bool)> = fills.iter().map(|&(a, len, k, off, c, _)| (a, len, &paths[k].1, off, c)).collect();
        let from: Vec<Option<crate::sys::park::Snap>> = fills.iter().map(|f| f.5).collect();
        let filled = crate::sys::park::fill_all(&jobs, threads, &from).map_err(ioe(src, format!("filling the parked memory ({} KiB) from {} files", bytes / 1024, paths.len())))?;
        let n: usize = park.0.iter().map(Vec::len).sum();
        let why = filled.why_not_copied.map(|w| format!(" (not by UFFDIO_COPY: {w})")).unwrap_or_default();
        pr_info!(
            "memory of {src}'s clones parked: {n} VMAs, {} KiB of pages ({} KiB by UFFDIO_COPY in the snapshots, {} KiB by UFFDIO_COPY, {} KiB read in place{why}), by {threads} threads, in {:.2} ms",
            bytes / 1024,
            filled.by_snapshots / 1024,
            filled.copied / 1024,
            filled.read / 1024,
            t0.elapsed().as_secs_f64() * 1e3
        );
        Ok(Some(park))
    }
}

impl Drop for Parking {
    fn drop(&mut self) {
        crate::sys::park::unmap_all();
    }
}

/// A memory source with the parked regions of its process
/// ([`crate::mem_source::MemSource::parked`]).
struct ParkedMem<'a> {
    inner: &'a dyn crate::mem_source::MemSource,
    parked: &'a [(u64, u64, u64)],
}

impl crate::mem_source::MemSource for ParkedMem<'_> {
    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), crate::mem_source::MemError> {
        self.inner.read(vaddr, buf)
    }
    fn slice(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        self.inner.slice(vaddr, len)
    }
    fn copy_to(&self, ranges: &[(u64, u64)], out: &std::fs::File, off: u64) -> Result<(), crate::mem_source::MemError> {
        self.inner.copy_to(ranges, out, off)
    }
    fn files(&self) -> Vec<std::path::PathBuf> {
        self.inner.files()
    }
    fn file_range(&self, vaddr: u64, len: u64) -> Option<(usize, u64)> {
        self.inner.file_range(vaddr, len)
    }
    fn cherry_pick_source(&self) -> Option<i32> {
        self.inner.cherry_pick_source()
    }
    fn parked(&self) -> &[(u64, u64, u64)] {
        self.parked
    }
}

/// The argument `criu` is executed with as the stand-in pid 1 of a clone
/// tree's pid namespace ([`ns_init_main`]); not a command of its own.
pub const NS_INIT_ARG: &str = "__criu-rs-tfork-ns-init";

/// Stand-in inits of the clone trees made so far (host pid, the write end
/// of the pipe each reads): until told to go, each exits when its pipe
/// ends (the engine died or dropped it), which kills its pid namespace and
/// the clone tree in it. Dropped without [`NsInits::go`], they are killed.
#[derive(Debug, Default)]
struct NsInits(Vec<(Pid, std::os::fd::OwnedFd)>);

impl NsInits {
    /// Tell every init its clone tree is whole: from now on it is an init
    /// like any (it reaps orphans, and exits once its namespace is empty).
    fn go(&mut self) -> Result<(), TforkError> {
        for (pid, fd) in &self.0 {
            use std::io::Write;
            let mut f = std::fs::File::from(fd.try_clone().map_err(ioe(*pid, "the stand-in init's pipe"))?);
            f.write_all(b"g").map_err(ioe(*pid, "telling the stand-in init to go on"))?;
        }
        Ok(())
    }
}

impl Drop for NsInits {
    fn drop(&mut self) {
        for (pid, _) in &self.0 {
            // (its pid namespace, and the clone tree in it, go with it)
            let _ = p::kill(*pid, libc::SIGKILL);
        }
        for (pid, _) in std::mem::take(&mut self.0) {
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(ptrace::wait_flags(pid, libc::__WALL | libc::WNOHANG), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// The stand-in pid 1 of a clone tree's pid namespace (`criu
/// __criu-rs-tfork-ns-init`, its stdin the engine's pipe): until the engine
/// says go (one byte), it reaps what is reparented to it and exits when
/// the pipe ends without a word (the engine died or failed: the kernel
/// then kills every process of the namespace). After that it reaps
/// orphans as an init does, and exits once no other process is left in
/// its namespace.
pub fn ns_init_main() -> ! {
    use std::io::Read;
    use std::os::fd::AsFd;
    let _ = p::set_comm(c"criu-tfork-init");
    let reap = || while matches!(ptrace::wait_flags(-1, libc::WNOHANG), Ok(Some(_))) {};
    let stdin = std::io::stdin();
    loop {
        reap();
        match p::poll_readable(stdin.as_fd(), 200) {
            Ok(false) => continue,
            Ok(true) => {
                let mut b = [0u8; 1];
                match stdin.lock().read(&mut b) {
                    Ok(1) if b[0] == b'g' => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    _ => p::exit_now(1),
                }
            }
            Err(_) => p::exit_now(1),
        }
    }
    loop {
        match ptrace::wait_flags(-1, 0) {
            Ok(_) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                // kill(-1, 0): ESRCH once no other process is left in the namespace
                if p::kill(-1, 0).is_err_and(|e| e.raw_os_error() == Some(libc::ESRCH)) {
                    p::exit_now(0);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// One clone tree of the frozen source `src` (`tree`, memory `mems`):
/// restored by a helper process forked for it (with `snap`, in a mount
/// namespace of its own with the snapshot `(plan, dir)` mounted; for a
/// source owning its mount namespace, the overlay's directories made and
/// handed to the clone's root, `crate::mntns::set_root_snapshot`), its root
/// a child of this engine (`--restore-sibling` of the helper), in a new
/// pid namespace: made by the restore when the root owned its namespace
/// (the root is its pid 1), else (`stand_in`) by the helper, whose first
/// child there, the stand-in init ([`ns_init_main`], a child of the engine
/// too), is recorded in `inits`. The helper dies with the engine
/// (PDEATHSIG), and the clone it was making with it (PTRACE_O_EXITKILL);
/// the init with the engine's end of its pipe. Returns the root's host
/// pid and the init's.
///
/// The helper is started here; [`Restoring::finish`] waits for its
/// report. `pending`: the stand-in inits' pipes of helpers started and not
/// yet finished (closed in this one, as those of `inits`).
#[allow(clippy::too_many_arguments)]
fn restore_in_new_pid_ns(
    src: Pid,
    tree: &crate::model::Tree,
    mems: &[&dyn crate::mem_source::MemSource],
    snap: Option<(&crate::root_snapshot::Plan, &std::path::Path)>,
    stand_in: bool,
    inits: &NsInits,
    pending: &[i32],
    made: Option<Pid>,
) -> Result<Restoring, TforkError> {
    use std::os::fd::AsRawFd;
    let (rd, wr) = p::pipe().map_err(ioe(src, "a pipe for the restoring helper"))?;
    // (an init made already by the engine is in `inits`, its pipe closed
    // in the helper with the others')
    let ctl = if stand_in && made.is_none() { Some(p::pipe().map_err(ioe(src, "a pipe for the stand-in init"))?) } else { None };
    let engine = std::process::id() as Pid;
    let others: Vec<i32> = inits.0.iter().map(|(_, f)| f.as_raw_fd()).chain(pending.iter().copied()).chain(ctl.as_ref().map(|(_, w)| w.as_raw_fd())).collect();
    let helper = p::fork3(0, &[], libc::SIGCHLD, || {
        let res = (|| -> Result<(Pid, Option<Pid>), String> {
            p::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as u64, 0, 0, 0).map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
            if std::os::unix::process::parent_id() as Pid != engine {
                return Err("the engine is gone".into());
            }
            // only the engine holds the inits' pipes: each ends with it
            for &fd in &others {
                p::close(fd);
            }
            if let Some((plan, top)) = snap {
                if tree.mnt.is_some() {
                    // (its own mount namespace: the overlay is its root mount, crate::mntns)
                    crate::mntns::set_root_snapshot(Some(plan.root_snapshot(top).map_err(|e| format!("--root-snapshot: {e}"))?));
                } else {
                    plan.mount_here(top).map_err(|e| format!("--root-snapshot: {e}"))?;
                }
            }
            let init = match &ctl {
                None => made,
                Some((ctl_rd, _)) => Some(start_ns_init(ctl_rd)?),
            };
            crate::fault::point("tforktree-ns-made");
            // (a mount namespace of its own: the image's paths are the
            // source's, seen through its root; crate::mntns copies its mounts)
            let root = tree.mnt.as_ref().and_then(|m| m.source).map(|src| std::path::PathBuf::from(format!("/proc/{src}/root")));
            let o = crate::options::Options { sibling: true, root, ..Default::default() };
            let ns = init.map(|i| std::path::PathBuf::from(format!("/proc/{i}/ns/pid")));
            let c = restore::restore_in(tree, mems, &o, ns.as_deref()).map_err(|e| crate::log::error_chain(&e))?;
            Ok((c, init))
        })();
        let msg = match res {
            Ok((c, i)) => format!("ok {c} {}\n", i.unwrap_or(0)),
            Err(e) => format!("err {}\n", e.replace('\n', " ")),
        };
        p::write_fd(wr.as_raw_fd(), msg.as_bytes());
        p::exit_now(0)
    })
    .map_err(ioe(src, "forking the restoring helper"))?;
    drop(wr);
    Ok(Restoring { src, helper, rd, ctl_wr: ctl.map(|(_, w)| w), made })
}

/// The first clone tree of `src` restored by the engine itself, as a
/// restoring helper restores the others ([`restore_in_new_pid_ns`]), into
/// a new pid namespace (beside the stand-in init `made`, or one made now,
/// with `stand_in`). Chosen for the first: a helper is a fork of the
/// engine, which copies the page tables of all the parked memory (~9 ms
/// for 256 MiB of 4 KiB pages on a quiet machine, more under load) and
/// later unmaps them, all before the first clone tree's root is forked;
/// the engine only waited for its report meanwhile. The restore's root is
/// then the engine's own child (not a sibling of a helper: the same
/// parent), dying with it until seized (PR_SET_PDEATHSIG), then traced
/// with PTRACE_O_EXITKILL until released, as a `criu restore`'s; the
/// stand-in init's pipe is held by the engine alone (the restore's
/// processes close every fd they do not restore); a failed restore reaps
/// only its own processes (the engine's other children, the inits and
/// snapshots, do not exit: [`restore::others_waiting`]). The later clone
/// trees' helpers are forked once the restore's threads are gone.
fn restore_here(
    src: Pid,
    tree: &crate::model::Tree,
    mems: &[&dyn crate::mem_source::MemSource],
    stand_in: bool,
    inits: &mut NsInits,
    made: Option<Pid>,
) -> Result<(Pid, Option<Pid>), TforkError> {
    let init = match (stand_in, made) {
        (false, _) => None,
        (true, Some(i)) => Some(i),
        (true, None) => {
            let (rd, wr) = p::pipe().map_err(ioe(src, "a pipe for the stand-in init"))?;
            let i = spawn_ns_init(&rd, false).map_err(|e| TforkError::Unsupported(format!("tfork of {src}: {e}")))?;
            drop(rd);
            inits.0.push((i, wr));
            Some(i)
        }
    };
    let root = tree.mnt.as_ref().and_then(|m| m.source).map(|s| std::path::PathBuf::from(format!("/proc/{s}/root")));
    let o = crate::options::Options { root, ..Default::default() };
    let ns = init.map(|i| std::path::PathBuf::from(format!("/proc/{i}/ns/pid")));
    restore::others_waiting(true);
    let c = restore::restore_in(tree, mems, &o, ns.as_deref());
    restore::others_waiting(false);
    let c = c.map_err(|e| TforkError::Unsupported(format!("restoring a clone of {src} in a new pid namespace: {}", crate::log::error_chain(&e))))?;
    // (its worker threads may still be counted a moment: the next helper's fork needs one)
    p::single_threaded_soon();
    pr_info!("clone tree {c} of {src} restored by the engine itself (no restoring helper)");
    Ok((c, init))
}

/// A clone tree's restoring helper started by [`restore_in_new_pid_ns`]
/// (its report pipe, its stand-in init's pipe when the helper makes the
/// init, the init the engine made for it).
struct Restoring {
    src: Pid,
    helper: Pid,
    rd: std::os::fd::OwnedFd,
    ctl_wr: Option<std::os::fd::OwnedFd>,
    made: Option<Pid>,
}

impl Restoring {
    /// The write end of the pipe of the stand-in init this helper makes.
    fn ctl_fd(&self) -> Option<i32> {
        use std::os::fd::AsRawFd;
        self.ctl_wr.as_ref().map(|w| w.as_raw_fd())
    }

    /// Wait for the helper's report: the clone root's host pid and the
    /// init's (recorded in `inits`).
    fn finish(self, inits: &mut NsInits) -> Result<(Pid, Option<Pid>), TforkError> {
    use std::io::Read;
    let Restoring { src, helper, rd, ctl_wr, made } = self;
    // one line (not to the end of the pipe: nothing but the helper holds it, but a line is enough)
    let mut out = Vec::new();
    let mut f = std::fs::File::from(rd);
    let read = loop {
        let mut b = [0u8; 512];
        match f.read(&mut b) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                out.extend_from_slice(&b[..n]);
                if out.contains(&b'\n') {
                    break Ok(());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    let _ = ptrace::wait_flags(helper, 0);
    read.map_err(ioe(helper, "reading the restoring helper's report"))?;
    let out = String::from_utf8_lossy(&out).trim_end().to_string();
    match out.split_once(' ') {
        Some(("ok", rest)) => {
            let mut w = rest.split_whitespace().map(str::parse::<Pid>);
            let (Some(Ok(c)), Some(Ok(i))) = (w.next(), w.next()) else {
                return Err(TforkError::Unsupported(format!("restoring helper {helper}: bad report {out:?}")));
            };
            let init = (i > 0).then_some(i);
            if let (Some(i), Some(w)) = (init.filter(|i| Some(*i) != made), ctl_wr) {
                inits.0.push((i, w));
            }
            Ok((c, init))
        }
        Some(("err", e)) => Err(TforkError::Unsupported(format!("restoring a clone of {src} in a new pid namespace: {e}"))),
        _ => Err(TforkError::Unsupported(format!("restoring helper {helper} of {src} ended without a report"))),
    }
    }
}

/// In the restoring helper: a new pid namespace and its pid 1, the
/// stand-in init (`criu __criu-rs-tfork-ns-init` with `ctl` as its stdin
/// and no other fd), a child of the engine (CLONE_PARENT). Its host pid.
fn start_ns_init(ctl: &std::os::fd::OwnedFd) -> Result<Pid, String> {
    spawn_ns_init(ctl, true)
}

/// The stand-in init of a new pid namespace (see [`start_ns_init`]), a
/// child of the calling process, or with `sibling` of its parent.
fn spawn_ns_init(ctl: &std::os::fd::OwnedFd, sibling: bool) -> Result<Pid, String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let exe = std::fs::read_link("/proc/self/exe").map_err(|e| format!("/proc/self/exe: {e}"))?;
    let fd = ctl.as_raw_fd();
    let (flags, sig) = if sibling { ((libc::CLONE_PARENT | libc::CLONE_NEWPID) as u64, 0) } else { (libc::CLONE_NEWPID as u64, libc::SIGCHLD) };
    p::fork3(flags, &[], sig, || {
        p::dup2(fd, 0).ok();
        p::close_all_except(&[0]);
        let e = std::process::Command::new(&exe).arg(NS_INIT_ARG).exec();
        drop(e);
        p::exit_now(127)
    })
    .map_err(|e| format!("forking the stand-in init of a new pid namespace: {e}"))
}

/// Write `tree` (the frozen source tree, process `i`'s memory `mems[i]`,
/// none for a zombie) as an image set into `dir`, as [`write_set`] writes
/// one process's.
fn write_tree_set(tree: &crate::model::Tree, hosts: &[Option<Pid>], pid: Pid, dir: &std::path::Path, uring: bool) -> Result<(), TforkError> {
    if hosts.len() == 1 {
        return write_set(tree, pid, dir, uring);
    }
    let img = |e: &dyn std::error::Error| TforkError::Images(crate::log::error_chain(e));
    let mut out = Vec::with_capacity(hosts.len());
    for h in hosts {
        out.push(match *h {
            None => None,
            Some(host) => Some(crate::mem_source::ProcessMem::open_mem_only(host).map_err(ioe(host, "opening /proc/PID/mem"))?.with_io_uring(uring).with_direct(true)),
        });
    }
    let run_id = format!("criu-rs-tfork-{}-{}", std::process::id(), pid);
    let staging = dump::staging::Staging::new(dir).map_err(|e| img(&e))?;
    crate::fault::point("tfork-mid-persist");
    if crate::fault::fails("tfork-mid-persist") {
        return Err(TforkError::Images("injected failure before the images were written (CRIU_RS_FAULT_AT)".into()));
    }
    let refs: Vec<Option<&dyn crate::mem_source::MemSource>> = out.iter().map(|m| m.as_ref().map(|m| m as &dyn crate::mem_source::MemSource)).collect();
    crate::images_io::write_images(tree, staging.path(), &refs, &run_id).map_err(|e| img(&e))?;
    let synced = staging.sync_files(uring).map_err(|e| img(&e))?;
    staging.publish().map_err(|e| img(&e))?;
    pr_info!("image set of the frozen source tree written to {}: {} processes, files synced by {synced}", dir.display(), tree.tasks.len());
    Ok(())
}

/// MADV_WIPEONFORK: a VMA picked with it comes out empty (as after fork),
/// where a restored clone must have its contents.
const MADV_WIPEONFORK_BIT: u64 = 1 << 18;

/// The kmod path of a restored clone (tfork of a namespace init): in the
/// target `main` (its address space emptied but for the gadget area and
/// the vdso; `scratch` in the gadget area, written through `memf`), take
/// each private anonymous VMA of the stopped source `src` copy-on-write by
/// the `kmod/` device (`VMA_CP_IOC_PICK`), as fork would copy it: no page
/// is copied. The pick maps into its caller, so the target makes the
/// ioctl, with a pidfd of the source it is given by SCM_RIGHTS (it can't
/// open one: its new pid namespace can't name the source). Returns the
/// ranges picked; the others (and every VMA where the device is absent or
/// refuses) are mapped and filled as in any restore.
pub(crate) fn cherry_pick_vmas(main: &mut Injector, memf: &std::fs::File, task: &Task, src: Pid, scratch: u64) -> Result<Vec<(u64, u64)>, RestoreError> {
    use crate::sys::kmod;
    use std::os::fd::AsFd;
    let pid = main.tid;
    let want: Vec<&crate::model::Vma> = task
        .mm
        .vmas
        .iter()
        .filter(|v| v.file.is_none() && !v.shared() && v.shmid == 0 && !matches!(v.kind, crate::model::VmaKind::Vdso | crate::model::VmaKind::Vvar | crate::model::VmaKind::Vsyscall))
        .filter(|v| v.madv & MADV_WIPEONFORK_BIT == 0)
        .collect();
    if want.is_empty() || !std::path::Path::new(kmod::DEVICE_PATH).exists() {
        return Ok(Vec::new());
    }
    let put = |off: u64, b: &[u8]| memf.write_all_at(b, scratch + off).map_err(restore::ioe(pid, "writing into the scratch area"));
    put(0, format!("{}\0", kmod::DEVICE_PATH).as_bytes())?;
    let dev = match main.call("openat(/dev/vma_cherrypick)", libc::SYS_openat, &[libc::AT_FDCWD as u64, scratch, (libc::O_RDWR | libc::O_CLOEXEC) as u64, 0]) {
        Ok(fd) => fd,
        Err(e) => {
            pr_info!("{}: {e}: the memory of {pid} is copied", kmod::DEVICE_PATH);
            return Ok(Vec::new());
        }
    };
    // the source's pidfd, into the target through an abstract unix socket
    let name = format!("criu-rs-tfork-pick-{}-{pid}", std::process::id());
    let (addr, addr_len) = p::abstract_addr(name.as_bytes()).map_err(restore::ioe(pid, "socket address"))?;
    // the address as the target's bind takes it: family, then the name
    let addr_bytes: Vec<u8> = {
        let mut v = Vec::with_capacity(addr_len as usize);
        v.extend(addr.sun_family.to_le_bytes());
        v.extend(addr.sun_path.iter().take(addr_len as usize - 2).map(|&c| c as u8));
        v
    };
    let sock = main
        .call("socket(AF_UNIX, SOCK_DGRAM)", libc::SYS_socket, &[libc::AF_UNIX as u64, (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as u64, 0])
        .map_err(restore::ioe(pid, "a socket for the source's pidfd"))?;
    put(256, &addr_bytes)?;
    main.call("bind(abstract)", libc::SYS_bind, &[sock, scratch + 256, u64::from(addr_len)]).map_err(restore::ioe(pid, format!("binding @{name}")))?;
    let pidfd = p::pidfd_open(src).map_err(restore::ioe(src, "pidfd of the source"))?;
    p::send_fd_abstract(name.as_bytes(), pidfd.as_fd()).map_err(restore::ioe(pid, format!("sending the source's pidfd to @{name}")))?;
    // recvmsg: one byte at +1024, control (32 bytes) at +1040, iovec at
    // +512, msghdr at +1088
    let (iov, ctl, hdr) = (scratch + 512, scratch + 1040, scratch + 1088);
    let mut iovb = (scratch + 1024).to_le_bytes().to_vec();
    iovb.extend(1u64.to_le_bytes());
    put(512, &iovb)?;
    put(1040, &[0u8; 32])?;
    let mut h = Vec::with_capacity(56);
    h.extend(0u64.to_le_bytes()); // msg_name
    h.extend(0u64.to_le_bytes()); // msg_namelen + padding
    h.extend(iov.to_le_bytes());
    h.extend(1u64.to_le_bytes()); // msg_iovlen
    h.extend(ctl.to_le_bytes());
    h.extend(32u64.to_le_bytes()); // msg_controllen
    h.extend(0u64.to_le_bytes()); // msg_flags + padding
    put(1088, &h)?;
    let got = main.call("recvmsg", libc::SYS_recvmsg, &[sock, hdr, (libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) as u64]);
    let _ = main.call("close(socket)", libc::SYS_close, &[sock]);
    got.map_err(restore::ioe(pid, "receiving the source's pidfd"))?;
    let mut c = [0u8; 20];
    memf.read_exact_at(&mut c, ctl).map_err(restore::ioe(pid, "reading the received control message"))?;
    let (level, kind) = (i32::from_le_bytes(c[8..12].try_into().unwrap_or_default()), i32::from_le_bytes(c[12..16].try_into().unwrap_or_default()));
    if (level, kind) != (libc::SOL_SOCKET, libc::SCM_RIGHTS) {
        return Err(RestoreError::Unsupported(format!("process {pid} received no pidfd of {src} (control message level {level}, type {kind})")));
    }
    let src_fd = i32::from_le_bytes(c[16..20].try_into().unwrap_or_default());
    let mut picked = Vec::new();
    let mut bytes = 0u64;
    for v in &want {
        let mut a = Vec::with_capacity(56);
        a.extend(56u32.to_le_bytes());
        a.extend(kmod::FLAG_ALLOW_DONTCOPY.to_le_bytes());
        a.extend(src_fd.to_le_bytes());
        a.extend((-1i32).to_le_bytes());
        a.extend(v.start.to_le_bytes());
        a.extend(v.start.to_le_bytes());
        a.extend([0u8; 24]);
        put(2048, &a)?;
        match main.call("ioctl(VMA_CP_IOC_PICK)", libc::SYS_ioctl, &[dev, kmod::IOC_PICK, scratch + 2048]) {
            Ok(_) => {
                picked.push((v.start, v.end));
                bytes += v.end - v.start;
            }
            Err(e) => pr_info!("VMA {:#x}-{:#x} of {src} not cherry-picked ({e}): copied", v.start, v.end),
        }
    }
    let _ = main.call("close(pidfd)", libc::SYS_close, &[src_fd as u64]);
    let _ = main.call("close(device)", libc::SYS_close, &[dev]);
    pr_info!("{} of {} private anonymous VMAs ({} KiB) cherry-picked from {src} into {pid} through {}", picked.len(), want.len(), bytes / 1024, kmod::DEVICE_PATH);
    Ok(picked)
}

/// `task` with its page runs cut out of `ranges` (VMAs that got their
/// pages otherwise: cherry-picked).
pub(crate) fn without_ranges(task: &Task, ranges: &[(u64, u64)]) -> Task {
    let mut t = task.clone();
    let mut out = Vec::with_capacity(task.mm.pages.len());
    for r in &task.mm.pages {
        let mut pieces = vec![(r.vaddr, r.vaddr + r.nr_pages * 4096)];
        for &(s, e) in ranges {
            pieces = pieces.into_iter().flat_map(|(a, b)| [(a, b.min(s)), (a.max(e), b)]).filter(|(a, b)| a < b).collect();
        }
        out.extend(pieces.into_iter().map(|(a, b)| crate::model::PageRun { vaddr: a, nr_pages: (b - a) / 4096, lazy: r.lazy }));
    }
    t.mm.pages = out;
    t
}

/// Write the image set of the frozen moment from `d`, a never-run fork of
/// S (the source's memory as at the freeze, copy-on-write; the engine's
/// gadget area at `gadget_page` left out), with the state `tree` collected from the source:
/// into a staging directory of `dir`, published (inventory last, synced)
/// only when complete, as a dump's, after every file is fsynced. `uring`:
/// the pages and the fsyncs through io_uring where the kernel allows it
/// (the log says what was used). `dontfork`: the source's MADV_DONTFORK
/// ranges, unmarked in `d` for its fork: marked in the images.
fn write_image_set(
    tree: &crate::model::Tree,
    d: Pid,
    gadget_page: u64,
    dontfork: &[(u64, u64)],
    dir: &std::path::Path,
    uring: bool,
) -> Result<(), TforkError> {
    let img = |e: &dyn std::error::Error| {
        let mut m = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            m.push_str(&format!(": {s}"));
            src = s.source();
        }
        TforkError::Images(m)
    };
    let gadget = (gadget_page, gadget_page + restore::space::GADGET_LEN);
    let vmas: Vec<_> = dump::mm::collect_vmas(d, dump::files::GHOST_LIMIT).map_err(|e| img(&e))?.into_iter().filter(|v| v.end <= gadget.0 || v.start >= gadget.1).collect();
    let vmas = mark_dontfork(vmas, dontfork);
    let zero_pfn = crate::sys::mmap::zero_page_pfn().map_err(ioe(d, "zero page pfn"))?;
    let mut pages = dump::mm::collect_pages(d, &vmas, zero_pfn).map_err(|e| img(&e))?;
    // A fork copies no page table entries of the vdso (a special mapping,
    // faulted in on use), so D, which never ran, has none present: the
    // whole vdso goes in (read through /proc/PID/mem, which faults it in),
    // as a dump of a running process has it (upstream's restorer reads the
    // dumped vdso's ELF).
    for v in vmas.iter().filter(|v| v.kind == crate::model::VmaKind::Vdso) {
        if !pages.iter().any(|r| r.vaddr < v.end && r.vaddr + r.nr_pages * 4096 > v.start) {
            pages.push(crate::model::PageRun { vaddr: v.start, nr_pages: (v.end - v.start) / 4096, lazy: false });
        }
    }
    pages.sort_by_key(|r| r.vaddr);
    let mut tree = tree.clone();
    let task = &mut tree.tasks[0];
    // the root of the set has no parent in it: 0, as upstream writes it
    // (upstream's restore refuses a root whose ppid it can't find)
    task.ppid = 0;
    let (dumpable, thp_disabled, brk) = (task.mm.dumpable, task.mm.thp_disabled, task.mm.brk);
    task.mm = dump::mm::collect_mm(d, vmas, pages, brk).map_err(|e| img(&e))?;
    task.mm.dumpable = dumpable;
    task.mm.thp_disabled = thp_disabled;
    write_set(&tree, d, dir, uring)
}

/// Write `tree` (one process) as an image set into `dir`, its pages read
/// from `from` through /proc/PID/mem: staged, every file fsynced (through
/// io_uring where `uring` and the kernel allow), published.
fn write_set(tree: &crate::model::Tree, from: Pid, dir: &std::path::Path, uring: bool) -> Result<(), TforkError> {
    let img = |e: &dyn std::error::Error| TforkError::Images(crate::log::error_chain(e));
    let mem = crate::mem_source::ProcessMem::open_mem_only(from).map_err(ioe(from, "opening /proc/PID/mem"))?.with_io_uring(uring).with_direct(true);
    let run_id = format!("criu-rs-tfork-{}-{}", std::process::id(), from);
    let staging = dump::staging::Staging::new(dir).map_err(|e| img(&e))?;
    crate::fault::point("tfork-mid-persist");
    if crate::fault::fails("tfork-mid-persist") {
        return Err(TforkError::Images("injected failure before the images were written (CRIU_RS_FAULT_AT)".into()));
    }
    crate::images_io::write_images(tree, staging.path(), &[Some(&mem)], &run_id).map_err(|e| img(&e))?;
    let synced = staging.sync_files(uring).map_err(|e| img(&e))?;
    staging.publish().map_err(|e| img(&e))?;
    let pages = match mem.pages_write() {
        crate::mem_source::PagesWrite::IoUring => "io_uring".to_string(),
        crate::mem_source::PagesWrite::Plain { refused: Some(why) } => format!("plain writes (io_uring refused: {why})"),
        crate::mem_source::PagesWrite::Plain { refused: None } if uring => "plain writes".to_string(),
        crate::mem_source::PagesWrite::Plain { refused: None } => "plain writes (io_uring off: CRIU_RS_IO_URING=off)".to_string(),
        crate::mem_source::PagesWrite::None => "no pages".to_string(),
    };
    pr_info!("image set of the frozen source written to {}: pages by {pages}, files synced by {synced}", dir.display());
    Ok(())
}

/// S right after the fork: a `syscall; int3` in its copy of the scratch
/// code page, rseq unregistered (the clone's threads register theirs
/// again), a gadget area mapped, the scratch mapping unmapped.
fn prepare(s: Pid, (code, len): (u64, u64)) -> Result<Space, TforkError> {
    let mem = std::fs::OpenOptions::new().read(true).write(true).open(format!("/proc/{s}/mem")).map_err(ioe(s, "opening /proc/PID/mem"))?;
    // after the parasite's code (S's own copy of the page: copy-on-write)
    let g0 = code + 0x800;
    mem.write_all_at(&[0x0f, 0x05, 0xcc], g0).map_err(ioe(s, "writing a gadget into the scratch page"))?;
    let mut inj = Injector::new(s, g0).map_err(ioe(s, "registers"))?;
    // nothing of S runs before its release
    ptrace::set_sigmask(s, !0).map_err(ioe(s, "blocking signals"))?;
    let rc = ptrace::rseq_config(s).map_err(ioe(s, "rseq configuration"))?;
    if rc.rseq_abi_pointer != 0 {
        inj.call("rseq(unregister)", libc::SYS_rseq, &[rc.rseq_abi_pointer, u64::from(rc.rseq_abi_size), 1, u64::from(rc.signature)])
            .map_err(ioe(s, "unregistering rseq"))?;
    }
    let sp = Space::map_gadget(&mut inj, s)?;
    inj.call("munmap(scratch)", libc::SYS_munmap, &[code, len]).map_err(ioe(s, "unmapping the dump's scratch mapping"))?;
    Ok(sp)
}

/// The task as clone `pid` has it: its own pid, thread ids `tids` (main
/// first), and POSIX timers aimed at the new tids.
fn task_for_clone(task: &Task, tids: &[Pid]) -> Task {
    let mut t = task.clone();
    let map: Vec<(i32, i32)> = task.threads.iter().map(|x| x.tid).zip(tids.iter().copied()).collect();
    t.pid = tids[0];
    for (th, &tid) in t.threads.iter_mut().zip(tids) {
        th.tid = tid;
    }
    for pt in &mut t.posix_timers {
        if let Some(&(_, new)) = map.iter().find(|(old, _)| *old == pt.notify_tid) {
            pt.notify_tid = new;
        }
    }
    t
}

/// Where a thread's clear_tid word still holds its old tid (glibc's
/// cached tid in its thread descriptor), put the new one there.
fn fix_cached_tid(sp: &Space, old: &Thread, new_tid: Pid) -> Result<(), TforkError> {
    if old.clear_tid == 0 {
        return Ok(());
    }
    let mut b = [0u8; 4];
    if sp.mem.read_exact_at(&mut b, old.clear_tid).is_err() {
        return Ok(());
    }
    if i32::from_le_bytes(b) == old.tid {
        sp.mem.write_all_at(&new_tid.to_le_bytes(), old.clear_tid).map_err(ioe(sp.pid, format!("writing tid {new_tid} at clear_tid {:#x}", old.clear_tid)))?;
    }
    Ok(())
}

/// Turn the stopped fork `pid` (single-threaded, gadget mapped, signals
/// blocked) into a clone of `task` and release it; with `snap`, in its own
/// mount namespace with its own overlay (first: while it has one thread).
///
/// `dontfork`: the ranges the source has marked MADV_DONTFORK, unmarked
/// for the forks that made the clone: marked again here. `copies`: the
/// kernel objects of the source's own each clone gets a copy of
/// ([`copy`]).
#[allow(clippy::too_many_arguments)]
fn finish(
    pid: Pid,
    task: &Task,
    sp: &Space,
    snap: Option<&crate::root_snapshot::Plan>,
    dirs: &mut SnapDirs,
    net: &net::Plan,
    dontfork: &[(u64, u64)],
    copies: &copy::Plan,
) -> Result<(), TforkError> {
    let mut main = Injector::new(pid, sp.gadget).map_err(ioe(pid, "registers"))?;
    for &(a, b) in dontfork {
        main.call("madvise(MADV_DONTFORK)", libc::SYS_madvise, &[a, b - a, libc::MADV_DONTFORK as u64])
            .map_err(ioe(pid, format!("marking {a:#x}-{b:#x} MADV_DONTFORK as in the source")))?;
    }
    if let Some(plan) = snap {
        dirs.0.push(plan.made(pid));
        plan.apply(pid, &mut main, sp, task).map_err(|e| TforkError::Unsupported(format!("--root-snapshot: {e}")))?;
    }
    if !net.is_empty() {
        net.apply(pid, &mut main)?;
        crate::fault::point("tforktcp-closed");
    }
    // the kernel objects of the source's own a fork may copy ("Isolation")
    if !copies.is_empty() {
        copies.apply(pid, &mut main, sp)?;
    }
    // The clone beside the engine on one CPU while it is set up (each stop
    // a local switch, as in a restore); its threads inherit the pin, and
    // all get the mask the fork gave it (the source main thread's) back.
    let mask = p::sched_getaffinity(pid).map_err(ioe(pid, "reading the CPU mask"))?;
    let pinned = p::PinnedHere::new();
    if let Some(c) = pinned.cpu() {
        if let Err(e) = p::sched_setaffinity(pid, &p::one_cpu(c)) {
            pr_debug!("can't move {pid} to CPU {c}: {e}");
        }
    }
    let mut tids = vec![pid];
    let mut injs = Vec::new();
    for _ in task.threads.iter().skip(1) {
        let tid = thread::create_with(&mut main, sp, None)?;
        crate::fault::point("tfork-mid-clone");
        if crate::fault::fails("tfork-mid-clone") {
            return Err(TforkError::Unsupported(format!("injected failure in clone {pid} after its first thread (CRIU_RS_FAULT_AT)")));
        }
        let mut ti = Injector::new(tid, sp.gadget).map_err(ioe(tid, "registers"))?;
        ti.base = main.base;
        tids.push(tid);
        injs.push(ti);
    }
    let tc = task_for_clone(task, &tids);
    thread::setup(&mut main, sp, &tc.threads[0])?;
    for (ti, t) in injs.iter_mut().zip(&tc.threads[1..]) {
        thread::setup(ti, sp, t)?;
    }
    for (old, &new) in task.threads.iter().zip(&tids) {
        fix_cached_tid(sp, old, new)?;
    }
    restore::space::finish_process(&mut main, sp, &tc, 0, 0)?;
    for (ti, t) in injs.iter().zip(&tc.threads[1..]) {
        thread::load_final(ti.tid, t)?;
    }
    // the traps reset SIGTRAP's action: the source's again, stepped
    if let Some(act) = tc.sigactions.get(libc::SIGTRAP as usize - 1) {
        let b: Vec<u8> = [act.handler, act.flags, act.restorer, act.mask].iter().flat_map(|w| w.to_le_bytes()).collect();
        let ptr = sp.write(0, &b)?;
        main.call_stepped("rt_sigaction(SIGTRAP)", libc::SYS_rt_sigaction, &[libc::SIGTRAP as u64, ptr, 0, 8])
            .map_err(ioe(pid, "restoring the SIGTRAP action"))?;
    }
    main.call_stepped("munmap(gadget)", libc::SYS_munmap, &[sp.gadget_page, restore::space::GADGET_LEN]).map_err(ioe(pid, "unmapping the gadget"))?;
    thread::load_final(pid, &tc.threads[0])?;
    for (&t, th) in tids.iter().zip(&tc.threads) {
        p::sched_setaffinity(t, &restore::creds::final_cpu_mask(th, &mask)).map_err(ioe(t, "giving back the CPU mask"))?;
    }
    drop(pinned);
    crate::fault::point("tfork-before-release");
    restore::release(&tc, pid, &{
        let mut order: Vec<Pid> = tids[1..].to_vec();
        order.push(pid);
        order
    })?;
    pr_debug!("clone {pid} released ({} threads)", tids.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PageRun;

    #[test]
    fn dontfork_ranges_are_marked_and_cut_out_of_merged_vmas() {
        let vma = |start: u64, end: u64| crate::model::Vma {
            start,
            end,
            pgoff: 0,
            prot: 3,
            flags: (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32,
            kind: crate::model::VmaKind::Anon,
            madv: 0,
            file: None,
            shmid: 0,
        };
        let dc = 1u64 << libc::MADV_DONTFORK;
        // one range merged into the middle of a VMA, one a whole VMA
        let out = mark_dontfork(vec![vma(0x1000, 0x9000), vma(0x10000, 0x12000)], &[(0x3000, 0x5000), (0x10000, 0x12000)]);
        let got: Vec<(u64, u64, bool)> = out.iter().map(|v| (v.start, v.end, v.madv & dc != 0)).collect();
        assert_eq!(got, vec![(0x1000, 0x3000, false), (0x3000, 0x5000, true), (0x5000, 0x9000, false), (0x10000, 0x12000, true)]);
        assert_eq!(mark_dontfork(vec![vma(0x1000, 0x2000)], &[]).len(), 1);
    }

    #[test]
    fn page_runs_are_cut_around_picked_ranges() {
        let mut t = Task::default();
        let run = |vaddr: u64, nr_pages: u64| PageRun { vaddr, nr_pages, lazy: false };
        t.mm.pages = vec![run(0x1000, 4), run(0x10000, 2), run(0x20000, 1)];
        // a range inside the first run, one covering the second, none on the third
        let out = without_ranges(&t, &[(0x2000, 0x3000), (0x10000, 0x12000)]);
        let got: Vec<(u64, u64)> = out.mm.pages.iter().map(|r| (r.vaddr, r.nr_pages)).collect();
        assert_eq!(got, vec![(0x1000, 1), (0x3000, 2), (0x20000, 1)]);
        assert_eq!(without_ranges(&t, &[]).mm.pages.len(), 3);
    }
}
