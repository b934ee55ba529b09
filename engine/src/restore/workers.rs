//! The processes of a tree set up on several engine threads at once, one
//! per CPU ("workers"), instead of one after the other from the engine's
//! main thread.
//!
//! A ptrace request must come from the thread that seized the tracee, and
//! a tracee whose tracer thread exits is killed (PTRACE_O_EXITKILL): so
//! each worker seizes, injects into and at the end detaches its own
//! processes, and stays alive until the main thread tells it to detach
//! them (the release of the whole tree, `release_tree`). Workers take the
//! next process from a shared queue in pstree order, so a big process and
//! many small ones even out by themselves. Processes that share anonymous
//! `MAP_SHARED` memory (the first builds it, the others map it through
//! its `/proc/PID/map_files`: `space::SharedAnon`) go to one worker, in
//! pstree order, as one item of the queue.
//!
//! Each worker is pinned to a CPU of its own (the target of each injection
//! too: `restore_process`), so the stops of one never wake the other's CPU.
//! On any failure the main thread stops the queue, joins the workers (a
//! worker ends after the process it is on) and its `RestoreGuard` kills
//! every process of the tree.

use super::{restore_process, space, Ready, RestoreError};
use crate::mem_source::MemSource;
use crate::model::Tree;
use crate::sys::process as p;
use crate::sys::ptrace;
use crate::sys::Pid;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{Scope, ScopedJoinHandle};

/// One process for a worker: what `restore_process` takes beside the task.
pub(crate) struct Job<'e> {
    /// Index in `tree.tasks`.
    pub idx: usize,
    pub pid: Pid,
    pub mem: &'e (dyn MemSource + Sync),
    pub svc_base: i32,
    pub map_files: Vec<(String, i32)>,
    pub close_first: Option<i32>,
    pub kept: Vec<(u64, u64)>,
}

/// A worker's word to the main thread.
enum Msg {
    /// Worker `w` restored the processes listed (index in `tree.tasks`,
    /// pid, threads with the main thread last), or failed.
    Done(usize, Result<Vec<(usize, Pid, Vec<Pid>)>, RestoreError>),
    /// A worker detached its processes, or failed to.
    Detached(Result<(), RestoreError>),
}

/// The running workers of one restore.
pub(crate) struct Pool<'scope> {
    cmds: Vec<mpsc::Sender<bool>>,
    msgs: mpsc::Receiver<Msg>,
    stop: Arc<AtomicBool>,
    handles: Vec<ScopedJoinHandle<'scope, ()>>,
    /// Worker of each restored process, by index in `tree.tasks`.
    owner: Vec<(usize, usize)>,
}

/// CPUs the engine may run on, when there is more than one.
pub(crate) fn cpus() -> Vec<usize> {
    let Ok(mask) = p::sched_getaffinity(0) else { return Vec::new() };
    (0..1024).filter(|&c| mask[c / 64] & (1 << (c % 64)) != 0).collect()
}

/// Whether the restore sets up several processes at once
/// (`CRIU_RS_RESTORE_WORKERS=N` caps the workers, 1 = one after the
/// other; for measurements and tests).
fn max_workers() -> usize {
    std::env::var("CRIU_RS_RESTORE_WORKERS").ok().and_then(|v| v.parse().ok()).unwrap_or(usize::MAX)
}

/// The jobs in queue items: processes sharing anonymous shared memory
/// (transitively) in one item, items and each item's jobs in pstree order.
fn items<'e>(tree: &Tree, jobs: Vec<Job<'e>>) -> Vec<Vec<Job<'e>>> {
    let n = jobs.len();
    let mut group: Vec<usize> = (0..n).collect();
    fn root(g: &mut [usize], mut i: usize) -> usize {
        while g[i] != i {
            g[i] = g[g[i]];
            i = g[i];
        }
        i
    }
    let mut first: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    for (k, j) in jobs.iter().enumerate() {
        for v in tree.tasks[j.idx].mm.vmas.iter().filter(|v| v.shmid != 0) {
            match first.get(&v.shmid) {
                None => {
                    first.insert(v.shmid, k);
                }
                Some(&o) => {
                    let (a, b) = (root(&mut group, o), root(&mut group, k));
                    group[a.max(b)] = a.min(b);
                }
            }
        }
    }
    let mut out: Vec<Vec<Job<'e>>> = Vec::new();
    let mut slot: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    for (k, j) in jobs.into_iter().enumerate() {
        let r = root(&mut group, k);
        match slot.get(&r) {
            Some(&s) => out[s].push(j),
            None => {
                slot.insert(r, out.len());
                out.push(vec![j]);
            }
        }
    }
    out
}

/// How many workers for `jobs` processes: one per CPU, at most one per
/// queue item; `None` when one thread does it all (one process, one CPU).
pub(crate) fn count(live: usize) -> Option<usize> {
    let n = cpus().len().min(live).min(max_workers());
    (n >= 2).then_some(n)
}

impl<'scope> Pool<'scope> {
    /// Start `n` workers on `jobs` (in pstree order; the root's first).
    pub(crate) fn start<'e: 'scope>(scope: &'scope Scope<'scope, 'e>, tree: &'e Tree, jobs: Vec<Job<'e>>, n: usize) -> Pool<'scope> {
        let queue = Arc::new(Mutex::new(items(tree, jobs).into_iter()));
        let stop = Arc::new(AtomicBool::new(false));
        let restored = Arc::new(AtomicUsize::new(0));
        let cpus = cpus();
        let (mtx, msgs) = mpsc::channel();
        let mut cmds = Vec::new();
        let mut handles = Vec::new();
        for w in 0..n {
            let (ctx, crx) = mpsc::channel::<bool>();
            cmds.push(ctx);
            let mtx = mtx.clone();
            let cpu = cpus.get(w).copied();
            let (queue, stop, restored) = (queue.clone(), stop.clone(), restored.clone());
            handles.push(scope.spawn(move || work(w, cpu, tree, &queue, &stop, &restored, mtx, crx)));
        }
        Pool { cmds, msgs, stop, handles, owner: Vec::new() }
    }

    /// Wait until every worker has restored its processes: the ready
    /// processes in pstree order, or the first failure.
    pub(crate) fn wait_ready<'e>(&mut self, tree: &'e Tree) -> Result<Vec<Ready<'e>>, RestoreError> {
        let mut out: Vec<(usize, Ready<'e>)> = Vec::new();
        for _ in 0..self.cmds.len() {
            match self.msgs.recv() {
                Ok(Msg::Done(w, Ok(list))) => {
                    for (idx, pid, tids) in list {
                        self.owner.push((idx, w));
                        out.push((idx, Ready { task: &tree.tasks[idx], pid, tids }));
                    }
                }
                Ok(Msg::Done(_, Err(e))) => return Err(e),
                Ok(Msg::Detached(_)) | Err(_) => return Err(RestoreError::Unsupported("a restore worker thread ended early".into())),
            }
        }
        out.sort_by_key(|(idx, _)| *idx);
        Ok(out.into_iter().map(|(_, r)| r).collect())
    }

    /// Detach every restored process from its worker: the workers that do
    /// not hold the root first, then the root's, which detaches the root
    /// last (until then the engine's death takes it, and in a pid
    /// namespace of its own every process with it).
    pub(crate) fn detach_all(&mut self) -> Result<(), RestoreError> {
        let root_w = self.owner.iter().find(|(idx, _)| *idx == 0).map(|(_, w)| *w);
        let others: Vec<usize> = (0..self.cmds.len()).filter(|&w| Some(w) != root_w).collect();
        for &w in &others {
            let _ = self.cmds[w].send(false);
        }
        self.collect_detached(others.len())?;
        if let Some(w) = root_w {
            let _ = self.cmds[w].send(true);
            self.collect_detached(1)?;
        }
        Ok(())
    }

    fn collect_detached(&mut self, n: usize) -> Result<(), RestoreError> {
        let mut first_err = None;
        for _ in 0..n {
            match self.msgs.recv() {
                Ok(Msg::Detached(Ok(()))) => {}
                Ok(Msg::Detached(Err(e))) | Ok(Msg::Done(_, Err(e))) => {
                    first_err.get_or_insert(e);
                }
                Ok(Msg::Done(_, Ok(_))) | Err(_) => {
                    first_err.get_or_insert(RestoreError::Unsupported("a restore worker thread ended before its detach".into()));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Pool<'_> {
    /// Stop the queue and join the workers: a worker ends after the
    /// process it is on, or at once when it waits for its detach (its
    /// processes, not detached, are killed as its thread ends: EXITKILL).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cmds.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Worker `w`: pinned to `cpu`, it takes queue items until the queue is
/// empty or stopped, restores their processes (`restored` counts them
/// over all workers), reports, then waits for the word to detach them
/// (`true`: it holds the root, detached last).
#[allow(clippy::too_many_arguments)]
fn work<'e>(
    w: usize,
    cpu: Option<usize>,
    tree: &'e Tree,
    queue: &Mutex<std::vec::IntoIter<Vec<Job<'e>>>>,
    stop: &AtomicBool,
    restored: &AtomicUsize,
    msgs: mpsc::Sender<Msg>,
    cmds: mpsc::Receiver<bool>,
) {
    if let Some(c) = cpu {
        let _ = p::sched_setaffinity(0, &p::one_cpu(c));
    }
    let mut ready: Vec<Ready<'e>> = Vec::new();
    let mut idxs: Vec<usize> = Vec::new();
    let mut shm = space::SharedAnon::default();
    // (a panic is reported as a failure: the main thread waits for every
    // worker's word)
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<(), RestoreError> {
        loop {
            if stop.load(Ordering::SeqCst) {
                return Err(RestoreError::Unsupported("stopped".into()));
            }
            let item = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
            let Some(item) = item else { return Ok(()) };
            for j in item {
                let task = &tree.tasks[j.idx];
                ready.push(restore_process(task, j.pid, j.mem, j.svc_base, &j.map_files, &mut shm, j.close_first, &j.kept)?);
                j.mem.filled();
                idxs.push(j.idx);
                // the second process of the tree restored (by whichever
                // worker): the engine dies (or fails) while its threads
                // trace the tree
                if restored.fetch_add(1, Ordering::SeqCst) + 1 == 2 {
                    crate::fault::point("mid-workers");
                    if crate::fault::fails("mid-workers") {
                        return Err(RestoreError::Unsupported("injected failure in a restore worker (CRIU_RS_FAULT_AT)".into()));
                    }
                }
            }
        }
    }))
    .unwrap_or_else(|_| Err(RestoreError::Unsupported("a restore worker thread panicked".into())));
    let list = res.map(|()| ready.iter().zip(&idxs).map(|(r, &idx)| (idx, r.pid, r.tids.clone())).collect());
    let failed = list.is_err();
    if msgs.send(Msg::Done(w, list)).is_err() || failed {
        return;
    }
    let Ok(root_last) = cmds.recv() else { return };
    let res = (|| -> Result<(), RestoreError> {
        let n = ready.len();
        for (k, r) in ready.iter().enumerate().rev() {
            for (i, &tid) in r.tids.iter().enumerate() {
                if root_last && k == 0 && i + 1 == r.tids.len() && n > 0 {
                    crate::fault::point("mid-detach");
                    if crate::fault::fails("mid-detach") {
                        std::thread::sleep(std::time::Duration::from_millis(300));
                        return Err(RestoreError::Unsupported("injected failure before the last detach (CRIU_RS_FAULT_AT)".into()));
                    }
                }
                ptrace::detach(tid, 0).map_err(super::ioe(tid, "detach"))?;
            }
        }
        Ok(())
    })();
    let _ = msgs.send(Msg::Detached(res));
}
