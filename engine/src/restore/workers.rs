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
//!
//! The queue is a channel: all items are sent at once ([`Pool::start`]),
//! or one by one as the processes report while the tree is still being
//! forked ([`Pool::start_fed`], [`Pool::offer`]: a queue item once every
//! process of it has reported), so that the workers set up the first
//! processes while the root still forks the others.

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
    /// The report pipe's fd when the process may still hold it (seized
    /// right after its report: `Pool::start_fed`).
    pub report_fd: Option<i32>,
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
pub(crate) struct Pool<'scope, 'e> {
    /// The queue's sending end while items may still come ([`Pool::offer`]).
    feed: Option<Feed<'e>>,
    cmds: Vec<mpsc::Sender<bool>>,
    msgs: mpsc::Receiver<Msg>,
    stop: Arc<AtomicBool>,
    handles: Vec<ScopedJoinHandle<'scope, ()>>,
    /// Worker of each restored process, by index in `tree.tasks`.
    owner: Vec<(usize, usize)>,
}

/// Items sent as their processes report: the queue item of each task (by
/// index in `tree.tasks`), the jobs of each item so far and how many it
/// takes.
struct Feed<'e> {
    tx: mpsc::Sender<Vec<Job<'e>>>,
    item_of: std::collections::HashMap<usize, usize>,
    pending: Vec<Vec<Job<'e>>>,
    size: Vec<usize>,
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

/// The queue item of each of the tasks `idx` (indices in `tree.tasks`, in
/// pstree order), as [`items`] groups them: item numbers in pstree order
/// of their first task.
fn item_numbers(tree: &Tree, idx: &[usize]) -> Vec<usize> {
    let mut slot: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(idx.len());
    for r in groups(tree, idx) {
        let next = slot.len();
        out.push(*slot.entry(r).or_insert(next));
    }
    out
}

/// For each of the tasks `idx`, the position in `idx` of the first task of
/// its group: tasks sharing anonymous shared memory (transitively).
fn groups(tree: &Tree, idx: &[usize]) -> Vec<usize> {
    let n = idx.len();
    let mut group: Vec<usize> = (0..n).collect();
    fn root(g: &mut [usize], mut i: usize) -> usize {
        while g[i] != i {
            g[i] = g[g[i]];
            i = g[i];
        }
        i
    }
    let mut first: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    for (k, &i) in idx.iter().enumerate() {
        for v in tree.tasks[i].mm.vmas.iter().filter(|v| v.shmid != 0) {
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
    (0..n).map(|k| root(&mut group, k)).collect()
}

/// The jobs in queue items: processes sharing anonymous shared memory
/// (transitively) in one item, items and each item's jobs in pstree order.
fn items<'e>(tree: &Tree, jobs: Vec<Job<'e>>) -> Vec<Vec<Job<'e>>> {
    let idx: Vec<usize> = jobs.iter().map(|j| j.idx).collect();
    let mut out: Vec<Vec<Job<'e>>> = Vec::new();
    for (j, k) in jobs.into_iter().zip(item_numbers(tree, &idx)) {
        if k == out.len() {
            out.push(Vec::new());
        }
        out[k].push(j);
    }
    out
}

/// How many workers for `jobs` processes: one per CPU, at most one per
/// queue item; `None` when one thread does it all (one process, one CPU).
pub(crate) fn count(live: usize) -> Option<usize> {
    let n = cpus().len().min(live).min(max_workers());
    (n >= 2).then_some(n)
}

impl<'scope, 'e: 'scope> Pool<'scope, 'e> {
    /// Start `n` workers on `jobs` (in pstree order; the root's first).
    pub(crate) fn start(scope: &'scope Scope<'scope, 'e>, tree: &'e Tree, jobs: Vec<Job<'e>>, n: usize) -> Pool<'scope, 'e> {
        let (tx, rx) = mpsc::channel();
        for item in items(tree, jobs) {
            let _ = tx.send(item);
        }
        drop(tx);
        Self::spawn(scope, tree, rx, n, None)
    }

    /// Start `n` workers on an empty queue, for the processes `live`
    /// (indices in `tree.tasks`, pstree order) to be given one by one with
    /// [`Pool::offer`] as they report.
    pub(crate) fn start_fed(scope: &'scope Scope<'scope, 'e>, tree: &'e Tree, live: &[usize], n: usize) -> Pool<'scope, 'e> {
        let (tx, rx) = mpsc::channel();
        let nums = item_numbers(tree, live);
        let items = nums.iter().max().map_or(0, |m| m + 1);
        let mut size = vec![0; items];
        for &k in &nums {
            size[k] += 1;
        }
        let item_of = live.iter().copied().zip(nums).collect();
        let feed = Feed { tx, item_of, pending: (0..items).map(|_| Vec::new()).collect(), size };
        Self::spawn(scope, tree, rx, n, Some(feed))
    }

    /// A process that has reported: queued once every process of its item
    /// has (in pstree order within the item).
    pub(crate) fn offer(&mut self, job: Job<'e>) {
        let Some(f) = self.feed.as_mut() else { return };
        let Some(&k) = f.item_of.get(&job.idx) else { return };
        f.pending[k].push(job);
        if f.pending[k].len() == f.size[k] {
            let mut item = std::mem::take(&mut f.pending[k]);
            item.sort_by_key(|j| j.idx);
            // (no worker left to take it: the failure comes with wait_ready)
            let _ = f.tx.send(item);
        }
    }

    fn spawn(scope: &'scope Scope<'scope, 'e>, tree: &'e Tree, rx: mpsc::Receiver<Vec<Job<'e>>>, n: usize, feed: Option<Feed<'e>>) -> Pool<'scope, 'e> {
        let queue = Arc::new(Mutex::new(rx));
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
        Pool { feed, cmds, msgs, stop, handles, owner: Vec::new() }
    }

    /// Wait until every worker has restored its processes: the ready
    /// processes in pstree order, or the first failure.
    pub(crate) fn wait_ready(&mut self, tree: &'e Tree) -> Result<Vec<Ready<'e>>, RestoreError> {
        // (nothing more comes: the workers end once the queue is empty)
        if let Some(f) = self.feed.take() {
            if f.pending.iter().any(|p| !p.is_empty()) {
                return Err(RestoreError::Unsupported("a process of the tree was not set up: another process of its shared memory did not report".into()));
            }
        }
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

}

impl Pool<'_, '_> {
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

impl Drop for Pool<'_, '_> {
    /// Stop the queue and join the workers: a worker ends after the
    /// process it is on, or at once when it waits for its detach (its
    /// processes, not detached, are killed as its thread ends: EXITKILL).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // (a worker waiting for the next item: the closed queue ends it)
        self.feed = None;
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
    queue: &Mutex<mpsc::Receiver<Vec<Job<'e>>>>,
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
            // (waits for the next item while the processes still report;
            // a closed and empty queue is the end)
            let item = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
            let Ok(item) = item else { return Ok(()) };
            for j in item {
                let task = &tree.tasks[j.idx];
                ready.push(restore_process(task, j.pid, j.mem, j.svc_base, &j.map_files, &mut shm, j.close_first, &j.kept, j.report_fd)?);
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
        // children before parents, the reverse of pstree order, so the
        // root last (fed as they report, the root came last, not first)
        let mut order: Vec<usize> = (0..ready.len()).collect();
        order.sort_by_key(|&k| std::cmp::Reverse(idxs[k]));
        for (&k, last) in order.iter().zip((0..order.len()).map(|j| j + 1 == order.len())) {
            let r = &ready[k];
            for (i, &tid) in r.tids.iter().enumerate() {
                if root_last && last && i + 1 == r.tids.len() {
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
