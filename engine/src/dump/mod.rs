//! Dump: freeze a process and collect its state from /proc and ptrace into
//! the [`model`](crate::model). Writing images is `images_io`'s job; the
//! page contents are read from the still-frozen process through
//! [`ProcessMem`](crate::mem_source::ProcessMem).

pub mod cache;
pub mod cgroup_freeze;
pub mod elf;
pub mod files;
pub mod freeze;
pub mod mm;
pub mod page_pump;
pub mod parasite;
pub mod proc;
pub mod staging;
pub mod task;
pub mod unix_diag;

use crate::model::{Task, Tree, VmaKind};
use crate::sys::tracer::{self, Tracer};
use crate::sys::Pid;
use crate::pr_debug;
use freeze::{Frozen, FrozenTree};
use parasite::Parasite;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("process {0} does not exist")]
    NoProcess(Pid),
    #[error("{tid} is a thread of process {tgid}, not a process: give the process's pid ({tgid})")]
    NotAProcess { tid: Pid, tgid: Pid },
    #[error(transparent)]
    Freeze(#[from] freeze::FreezeError),
    #[error(transparent)]
    Cgroup(#[from] cgroup_freeze::CgroupError),
    #[error(transparent)]
    Mm(#[from] mm::MmError),
    #[error(transparent)]
    Task(#[from] task::TaskError),
    #[error(transparent)]
    Files(#[from] files::FilesError),
    #[error("process {pid}: {what}")]
    Namespace { pid: Pid, what: String },
    #[error("process {pid}: {what}")]
    Unsupported { pid: Pid, what: String },
    #[error("{what} of {pid}")]
    /// `loc`: where in the engine it arose, for the log.
    Io { pid: Pid, what: &'static str, #[source] source: io::Error, loc: &'static std::panic::Location<'static> },
}

impl DumpError {
    #[track_caller]
    fn io(pid: Pid, what: &'static str, source: io::Error) -> DumpError {
        DumpError::Io { pid, what, source, loc: std::panic::Location::caller() }
    }

    /// Where in the engine the error arose, when it knows.
    pub fn location(&self) -> Option<&'static std::panic::Location<'static>> {
        match self {
            DumpError::Io { loc, .. } => Some(loc),
            DumpError::Task(t) => t.location(),
            _ => None,
        }
    }
}

/// Last value of an `NS*` line of status: the id in the innermost pid ns.
fn ns_last(status: &str, key: &str) -> Option<i32> {
    proc::status_nums(status, key).last().map(|v| *v as i32)
}

/// `/proc/PID/task/TID/ns/KIND` (or `/proc/self/ns/KIND`) as `kind:[inode]`.
fn ns_link(path: &str) -> Option<String> {
    std::fs::read_link(path).ok().map(|l| l.to_string_lossy().into_owned())
}

/// Namespace kinds a dumped task must share with the engine, since restore
/// creates none of them (checked per thread: a thread can unshare some).
/// (A time namespace of its own is kept: the timens image has its clocks,
/// and restore makes a new one in which they continue.)
const SAME_NS: [&str; 6] = ["net", "ipc", "uts", "mnt", "user", "cgroup"];

/// Of [`SAME_NS`], the kinds carried when the tree's root owns one
/// (`crate::utsipc`): every thread of the tree must then be in the
/// root's ([`check_carried_namespaces`]).
const CARRIED_NS: [&str; 3] = ["uts", "ipc", "net"];

/// Refuse, by name, every namespace of thread `tid` of `pid` that the
/// restore would not give back: a net, ipc, uts, mnt, user or cgroup
/// namespace other than the engine's; a pid namespace other than the
/// engine's unless `pid` is its pid 1 and it sits directly below the
/// engine's (restore then makes one with CLONE_NEWPID); and a pending
/// `unshare` of the pid or time
/// namespace (`*_for_children` differs: the children would get one the
/// images can't carry). The pid namespace is checked so for the tree's
/// `root` only (the others must be in the root's: [`collect_tree_opts`]).
pub fn check_namespaces(pid: Pid, tid: Pid, root: bool) -> Result<(), DumpError> {
    check_namespaces_against(pid, tid, root, &OwnNs::read())
}

/// The engine's own namespaces of the kinds [`check_namespaces`] compares
/// (read once for a whole tree).
pub struct OwnNs(Vec<(&'static str, Option<String>)>);

impl OwnNs {
    pub fn read() -> OwnNs {
        OwnNs(SAME_NS.iter().map(|&k| (k, ns_link(&format!("/proc/self/ns/{k}")))).collect())
    }

    fn get(&self, kind: &str) -> Option<String> {
        self.0.iter().find(|(k, _)| *k == kind).and_then(|(_, l)| l.clone())
    }
}

/// [`check_namespaces`] against the engine's namespaces `own`.
fn check_namespaces_against(pid: Pid, tid: Pid, root: bool, own: &OwnNs) -> Result<(), DumpError> {
    let err = |what: String| DumpError::Namespace { pid, what };
    let base = format!("/proc/{pid}/task/{tid}/ns");
    let mut differ = Vec::new();
    // (mnt: carried when the root owns one, crate::mntns::root_owns)
    for kind in SAME_NS.iter().filter(|k| !CARRIED_NS.contains(k) && **k != "mnt") {
        let (Some(theirs), Some(ours)) = (ns_link(&format!("{base}/{kind}")), own.get(kind)) else {
            continue; // a kind this kernel lacks
        };
        if theirs != ours {
            differ.push(format!("{kind} ({theirs}, criu's is {ours})"));
        }
    }
    if !differ.is_empty() {
        return Err(err(format!(
            "thread {tid} is in namespaces other than criu's: {}; dumping namespaces other than pid, time, uts, ipc, net and mnt ones is not supported yet",
            differ.join(", ")
        )));
    }
    for kind in ["pid", "time"] {
        let (Some(now), Some(children)) = (ns_link(&format!("{base}/{kind}")), ns_link(&format!("{base}/{kind}_for_children"))) else {
            continue;
        };
        if now != children {
            return Err(err(format!(
                "thread {tid} has unshared a {kind} namespace for its children ({kind}_for_children is {children}, its own is {now}): not supported"
            )));
        }
    }
    if !root {
        return Ok(());
    }
    let (Some(theirs), Some(ours)) = (ns_link(&format!("{base}/pid")), ns_link("/proc/self/ns/pid")) else { return Ok(()) };
    if theirs != ours {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| DumpError::io(pid, "status", e))?;
        let me = std::fs::read_to_string("/proc/self/status").map_err(|e| DumpError::io(pid, "criu's own status", e))?;
        let (nspid, mine) = (proc::status_nums(&st, "NSpid"), proc::status_nums(&me, "NSpid"));
        if nspid.last() != Some(&1) || nspid.len() != mine.len() + 1 {
            return Err(err(format!(
                "it is in a pid namespace ({theirs}) other than criu's ({ours}) without being its pid 1 one level below criu's (NSpid {nspid:?}): only the pid 1 of a pid namespace of its own is supported"
            )));
        }
    }
    Ok(())
}

/// The uts and ipc namespaces of every thread of the tree (`members`)
/// against its root's (`pid`'s): the root's are carried when they are not
/// the engine's (`crate::utsipc`), and a thread in another one than the
/// root's (nested, or a child that unshared) is refused by name. Returns
/// which of them (uts, ipc, net) the root owns.
fn check_carried_namespaces(pid: Pid, frozen: &FrozenTree) -> Result<[bool; 3], DumpError> {
    let mut own = [false; 3];
    for (k, kind) in CARRIED_NS.iter().enumerate() {
        let root = ns_link(&format!("/proc/{pid}/ns/{kind}"));
        own[k] = root.is_some() && root != ns_link(&format!("/proc/self/ns/{kind}"));
        for f in &frozen.procs {
            for t in &f.threads {
                let theirs = ns_link(&format!("/proc/{}/task/{}/ns/{kind}", f.pid, t.tid));
                if theirs != root {
                    return Err(DumpError::Namespace {
                        pid: f.pid,
                        what: format!(
                            "thread {} is in a {kind} namespace ({}) other than its tree root {pid}'s ({}): nested {kind} namespaces are not supported yet",
                            t.tid,
                            theirs.unwrap_or_default(),
                            root.clone().unwrap_or_default()
                        ),
                    });
                }
            }
        }
    }
    Ok(own)
}

/// Freeze the tree rooted at `pid` and collect its state. The returned
/// guard keeps every process frozen until dropped (then they run on, or are
/// killed if `kill_on_release` is set).
pub fn collect(pid: Pid) -> Result<(Tree, FrozenTree), DumpError> {
    collect_tree_opts(pid, &crate::options::Options::default())
}

/// [`collect`] as `opts` asks: the cgroup at `--freeze-cgroup` frozen first
/// (every process of the tree is seized while it is frozen, and must be in
/// it; `--timeout` bounds the wait), the choices about files
/// (`--ghost-limit`, `--file-locks`, `--link-remap`), `--ext-unix-sk`,
/// `--tcp-close`.
pub fn collect_tree_opts(pid: Pid, opts: &crate::options::Options) -> Result<(Tree, FrozenTree), DumpError> {
    crate::kinds::unix::allow_external_peers(opts.ext_unix_sk);
    crate::kinds::inet::set_tcp_close(opts.tcp_close);
    crate::kinds::inet::set_tcp_established(opts.tcp_established);
    crate::mntns::set_dump_external(&opts.ext_mnt, opts.auto_ext_mnt);
    collect_tree(pid, opts.freeze_cgroup.as_deref(), opts.freeze_timeout, true, &opts.file_opts(), opts.manage_cgroups, &[])
}

/// [`collect_tree_opts`] with the tree's processes seized, stopped and
/// collected by the tracer threads `tracers` (one per CPU: [`tracers`]),
/// all at once: every process is seized by one of them
/// ([`FrozenTree::freeze_on`]), which makes every ptrace request about it,
/// its injection sessions and its release included. None: this thread.
pub fn collect_tree_on(pid: Pid, opts: &crate::options::Options, tracers: &[Tracer]) -> Result<(Tree, FrozenTree), DumpError> {
    crate::kinds::unix::allow_external_peers(opts.ext_unix_sk);
    crate::kinds::inet::set_tcp_close(opts.tcp_close);
    crate::kinds::inet::set_tcp_established(opts.tcp_established);
    crate::mntns::set_dump_external(&opts.ext_mnt, opts.auto_ext_mnt);
    collect_tree(pid, opts.freeze_cgroup.as_deref(), opts.freeze_timeout, true, &opts.file_opts(), opts.manage_cgroups, tracers)
}

/// Whether `pid` has children now (a tree to dump, not one process).
pub fn has_children(pid: Pid) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten().any(|t| {
        std::fs::read_to_string(t.path().join("children")).is_ok_and(|c| !c.trim().is_empty())
    })
}

/// Tracer threads for dumping a tree of `live` processes on several CPUs:
/// one per CPU the engine may run on, each pinned to its CPU, at most one
/// per process; none (the main thread does it all) with one CPU or one
/// process. `CRIU_RS_DUMP_WORKERS=N` asks for N instead (1: none; more
/// than the CPUs: pinned to them in turn; for measurements and tests).
pub fn tracers(live: usize) -> Vec<Tracer> {
    let want: Option<usize> = std::env::var("CRIU_RS_DUMP_WORKERS").ok().and_then(|v| v.parse().ok());
    let cpus = crate::restore::cpus();
    let n = want.unwrap_or(cpus.len()).min(live);
    if n < 2 || cpus.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for i in 0..n {
        match Tracer::spawn(i, Some(cpus[i % cpus.len()])) {
            Ok(t) => out.push(t),
            Err(e) => {
                crate::pr_warn!("can't start dump tracer thread {i}: {e}; dumping on {} thread(s)", out.len().max(1));
                break;
            }
        }
    }
    if out.len() < 2 {
        out.clear();
    }
    out
}

/// [`collect`] without the memory layout (`mm` holds only what injection
/// reads: dumpable, THP disabled, brk): for tfork, whose clones take the
/// memory by fork, so that neither smaps nor the pagemap walk (each a walk
/// of every page table) is part of the source's pause.
pub fn collect_state(pid: Pid) -> Result<(Tree, FrozenTree), DumpError> {
    // (file locks recorded, not refused: a clone is a fork, which keeps
    // the source's flock and OFD locks shared and its POSIX ones not, as
    // any fork does)
    collect_tree(pid, None, cgroup_freeze::DEFAULT_TIMEOUT, false, &files::FileOpts { file_locks: true, ..Default::default() }, crate::cgroups::Mode::Soft, &[])
}

fn collect_tree(
    pid: Pid,
    freeze_cgroup: Option<&std::path::Path>,
    timeout: std::time::Duration,
    with_memory: bool,
    file_opts: &files::FileOpts,
    cgroups: crate::cgroups::Mode,
    tracers: &[Tracer],
) -> Result<(Tree, FrozenTree), DumpError> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Err(DumpError::NoProcess(pid));
    };
    // (what an earlier dump of this engine process read is stale now)
    cache::reset();
    // /proc/TID answers for a thread too (it is only left out of /proc's
    // listing): a thread's id would be taken for a process of its own
    if let Some(tgid) = status.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse::<Pid>().ok()) {
        if tgid != pid {
            return Err(DumpError::NotAProcess { tid: pid, tgid });
        }
    }
    let io_err = |what| move |e| DumpError::io(pid, what, e);
    let mut frozen = match freeze_cgroup {
        None => FrozenTree::freeze_on(pid, tracers)?,
        Some(cg) => {
            let mut cgf = cgroup_freeze::CgroupFreeze::freeze_within(cg, timeout)?;
            cgf.check_member(pid)?;
            FrozenTree::freeze_frozen_on(pid, tracers, |pids: &[Pid]| -> Result<(), DumpError> {
                for &p in pids {
                    cgf.check_member(p)?;
                }
                cgf.thaw()?;
                Ok(())
            })?
        }
    };
    crate::fault::point("after-freeze");
    if !tracers.is_empty() {
        crate::pr_info!("{} processes seized by {} tracer threads", frozen.procs.len(), tracers.len());
    }
    // (frozen: no thread can unshare or setns any more) every thread's,
    // against the engine's namespaces read once
    let own = OwnNs::read();
    for f in &frozen.procs {
        for t in &f.threads {
            check_namespaces_against(f.pid, t.tid, f.pid == pid, &own)?;
        }
    }
    let [own_uts, own_ipc, own_net] = check_carried_namespaces(pid, &frozen)?;
    let (uts, ipc) = crate::utsipc::collect(pid, own_uts, own_ipc).map_err(|what| DumpError::Namespace { pid, what })?;
    pr_debug!("namespaces of the tree checked");
    // the root's own network namespace: locked as a whole (its
    // connections are not locked one by one), then read; its sockets are
    // listed by sock_diag from inside it (crate::netns)
    let net = if own_net {
        crate::netns::begin_dump(pid, !crate::kinds::tcp_stream::lock_skipped()).map_err(|what| DumpError::Namespace { pid, what })?;
        Some(crate::netns::collect_or_empty(pid).map_err(|what| DumpError::Namespace { pid, what })?)
    } else {
        None
    };
    // the root's own mount namespace (every thread of the tree in it)
    let threads: Vec<(Pid, Pid)> = frozen.procs.iter().flat_map(|f| f.threads.iter().map(move |t| (f.pid, t.tid))).collect();
    let own_mnt = crate::mntns::root_owns(pid, &threads).map_err(|(pid, what)| DumpError::Namespace { pid, what })?;
    let mnt = if own_mnt { Some(crate::mntns::collect_dump(pid).map_err(|what| DumpError::Namespace { pid, what })?) } else { None };
    let root_pidns = ns_link(&format!("/proc/{pid}/ns/pid"));
    for m in &frozen.members[1..] {
        let theirs = ns_link(&format!("/proc/{}/ns/pid", m.pid));
        if m.frozen.is_some() && theirs != root_pidns {
            return Err(DumpError::Namespace {
                pid: m.pid,
                what: format!(
                    "it is in a pid namespace ({}) other than its tree root's {pid} ({}): nested pid namespaces are not supported yet",
                    theirs.unwrap_or_default(),
                    root_pidns.clone().unwrap_or_default()
                ),
            });
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(io_err("status"))?;
    let nspids = proc::status_nums(&status, "NSpid");
    let own_ns = nspids.len() > 1 && nspids.last() == Some(&1);
    let zero_pfn = crate::sys::mmap::zero_page_pfn().map_err(io_err("zero page pfn"))?;
    // host pid -> pid in the tree's namespace
    let mut ns_pid: std::collections::HashMap<Pid, i32> = std::collections::HashMap::new();
    let members = frozen.members.clone();
    // every stopped process collected by the thread that seized it, all
    // at once (in order by this thread without tracers)
    let mut collected: Vec<Option<Result<Task, DumpError>>> = {
        let trs: Vec<Option<Tracer>> = frozen.procs.iter().map(|f| f.tracer.clone()).collect();
        let pids: Vec<Pid> = frozen.procs.iter().map(|f| f.pid).collect();
        let done = std::sync::atomic::AtomicUsize::new(0);
        let done = &done;
        let jobs: Vec<tracer::Work<'_, '_, Result<Task, DumpError>>> = frozen
            .procs
            .iter_mut()
            .zip(&trs)
            .map(|(f, t)| {
                let job = move || {
                    let task = collect_process(f, zero_pfn, with_memory, file_opts)?;
                    // the second process collected by a tracer thread: the
                    // engine dies (or this job fails) while the others inject
                    if t.is_some() && done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == 2 {
                        crate::fault::point("mid-tracers");
                        if crate::fault::fails("mid-tracers") {
                            return Err(DumpError::Unsupported { pid: f.pid, what: "injected failure in a dump tracer thread (CRIU_RS_FAULT_AT)".into() });
                        }
                    }
                    Ok(task)
                };
                (t.as_ref(), Box::new(job) as Box<dyn FnOnce() -> Result<Task, DumpError> + Send + '_>)
            })
            .collect();
        tracer::run_all(jobs)
            .into_iter()
            .zip(pids)
            .map(|(r, pid)| Some(r.unwrap_or_else(|e| Err(DumpError::Unsupported { pid, what: format!("collecting it: {e}") }))))
            .collect()
    };
    pr_debug!("every process of the tree collected");
    let mut tasks = Vec::with_capacity(members.len());
    for m in &members {
        let st = std::fs::read_to_string(format!("/proc/{}/status", m.pid)).map_err(|e| DumpError::io(m.pid, "status", e))?;
        ns_pid.insert(m.pid, ns_last(&st, "NSpid").unwrap_or(m.pid));
        // as upstream: the root has no parent in the tree (its restore
        // reads a nonzero ppid as a parent to find among the entries)
        // (members list parents first: a parent's pid is already known)
        let ppid = m.parent.and_then(|p| ns_pid.get(&p).copied()).unwrap_or(0);
        let mut task = match m.frozen {
            Some(i) => collected[i].take().expect("one collection per process")?,
            None => collect_zombie(m.pid)?,
        };
        task.pid = ns_pid.get(&m.pid).copied().unwrap_or(m.pid);
        task.ppid = ppid;
        task.pgid = ns_last(&st, "NSpgid").unwrap_or(0);
        task.sid = ns_last(&st, "NSsid").unwrap_or(0);
        tasks.push((m.pid, task));
    }
    check_shared_anon(&tasks)?;
    crate::utsipc::check_attachments(tasks.iter().map(|(p, t)| (*p, t)), ipc.as_ref()).map_err(|(pid, what)| DumpError::Unsupported { pid, what })?;
    {
        let mut tables: Vec<(Pid, &mut Vec<crate::model::Fd>)> =
            tasks.iter_mut().filter(|(_, t)| t.zombie_exit.is_none()).map(|(p, t)| (*p, &mut t.fds)).collect();
        files::share_descriptions(&mut tables)?;
        crate::kinds::unix::check_tree(&mut tables)?;
        crate::kinds::pty::check_tree(&mut tables, &ns_pid)?;
        crate::kinds::pidfd::check_tree(&tables, &ns_pid)?;
        // established TCP connections (--tcp-established): locked all at
        // once, then read in repair mode
        crate::kinds::tcp_stream::read_all(&mut tables)?;
    }
    files::share_locks(tasks.iter_mut().map(|(_, t)| t));
    let memfds = {
        let live: Vec<(Pid, &Task)> = tasks.iter().filter(|(_, t)| t.zombie_exit.is_none()).map(|(p, t)| (*p, t)).collect();
        let memfds = files::collect_memfds(&live)?;
        // F_SEAL_FUTURE_WRITE with a writable shared mapping made before
        // the seal: restore seals before it maps, and the kernel refuses
        // such a mapping of a sealed memfd
        for (p, t) in &live {
            for v in t.mm.vmas.iter().filter(|v| v.shared() && v.prot & libc::PROT_WRITE as u32 != 0) {
                let Some(ino) = v.file.as_ref().and_then(|f| f.memfd) else { continue };
                if memfds.iter().any(|m| m.ino == ino && m.seals & libc::F_SEAL_FUTURE_WRITE as u32 != 0) {
                    return Err(DumpError::Unsupported {
                        pid: *p,
                        what: format!(
                            "its writable MAP_SHARED mapping {:#x}-{:#x} of a memfd sealed F_SEAL_FUTURE_WRITE since: not supported yet",
                            v.start, v.end
                        ),
                    });
                }
            }
        }
        memfds
    };
    pr_debug!("files shared across the tree found");
    let alive: Vec<Pid> = tasks.iter().filter(|(_, t)| t.zombie_exit.is_none()).map(|(p, _)| *p).collect();
    let (root_ids, ids) = task::collect_ids(&alive)?;
    pr_debug!("kernel object ids of the tree found");
    let mut ids = ids.into_iter();
    for (_, t) in tasks.iter_mut().filter(|(_, t)| t.zombie_exit.is_none()) {
        t.ids = ids.next().expect("one ids per live task");
    }
    let timens = Some(task::collect_timens(pid)?);
    // the cgroups of the live processes (--manage-cgroups ignore: none)
    let cgroups = if cgroups == crate::cgroups::Mode::Ignore {
        None
    } else {
        let live: Vec<Pid> = tasks.iter().filter(|(_, t)| t.zombie_exit.is_none()).map(|(p, _)| *p).collect();
        let (cg, sets) = crate::cgroups::collect(&live).map_err(|(p, what)| DumpError::Unsupported { pid: if p == 0 { pid } else { p }, what })?;
        for ((_, t), set) in tasks.iter_mut().filter(|(_, t)| t.zombie_exit.is_none()).zip(sets) {
            t.cg_set = set;
        }
        cg
    };
    // last: the links --link-remap asked for (nothing can refuse the dump
    // after them here; the caller removes them if it fails later)
    files::make_link_remaps(tasks.iter_mut().map(|(p, t)| (*p, t)))?;
    let tasks = tasks.into_iter().map(|(_, t)| t).collect();
    Ok((Tree { root_owns_pid_ns: own_ns, tasks, root_ids, timens, memfds, uts, ipc, net, mnt, cgroups }, frozen))
}

/// A zombie: its wait status (field 52 of stat, the exit code) and comm.
fn collect_zombie(pid: Pid) -> Result<Task, DumpError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| DumpError::io(pid, "stat", e))?;
    let (comm, f) = proc::parse_stat(&stat).unwrap_or_default();
    let exit = proc::stat_field(&f, 52) as u32;
    pr_debug!("{pid} is a zombie (exit status {exit:#x})");
    Ok(Task { comm, zombie_exit: Some(exit), ..Default::default() })
}

/// `MAP_SHARED` anonymous memory mapped by several processes of the tree
/// (inherited over fork) is written once, from the first process that maps
/// it (its pages are read as the object's data, through that mapping:
/// `mm::shmem_pages`). So every later mapping must lie within the first
/// process's mappings of the object; a process mapping a part the first
/// does not is refused by name.
fn check_shared_anon(tasks: &[(Pid, Task)]) -> Result<(), DumpError> {
    // shmid -> (first mapper, its (pgoff, end) ranges)
    let mut first: std::collections::HashMap<u64, (Pid, Vec<(u64, u64)>)> = std::collections::HashMap::new();
    for (pid, t) in tasks {
        let mine: Vec<(u64, u64, u64)> =
            t.mm.vmas.iter().filter(|v| v.shmid != 0 && v.kind != VmaKind::File).map(|v| (v.shmid, v.pgoff, v.pgoff + v.len())).collect();
        for &(id, lo, hi) in &mine {
            match first.get(&id) {
                Some((owner, _)) if owner == pid => {}
                Some((owner, ranges)) => {
                    // covered by the union of the first mapper's ranges?
                    let mut at = lo;
                    let mut rs = ranges.clone();
                    rs.sort_unstable();
                    for (a, b) in rs {
                        if a <= at && at < b {
                            at = b;
                        }
                    }
                    if at < hi {
                        return Err(DumpError::Unsupported {
                            pid: *pid,
                            what: format!(
                                "it maps bytes {at:#x}..{hi:#x} of MAP_SHARED anonymous memory (shmem inode {id}) that {owner}, which maps it first, does not: shared memory mapped differently across processes is not supported yet"
                            ),
                        });
                    }
                }
                None => {
                    first.insert(id, (*pid, Vec::new()));
                }
            }
            if let Some((owner, ranges)) = first.get_mut(&id) {
                if owner == pid {
                    ranges.push((lo, hi));
                }
            }
        }
    }
    Ok(())
}

/// Everything of one stopped process but its place in the tree (pid,
/// ppid, pgid, sid) and its kernel-object ids.
fn collect_process(frozen: &mut Frozen, zero_pfn: u64, with_memory: bool, file_opts: &files::FileOpts) -> Result<Task, DumpError> {
    let pid = frozen.pid;
    let io_err = |what| move |e| DumpError::io(pid, what, e);
    // (smaps, which walks every page table, and the pagemap walk: only
    // when the memory is to be written)
    let (vmas, pages, exec) = if with_memory {
        let vmas = mm::collect_vmas(pid, file_opts.ghost_limit)?;
        let pages = mm::collect_pages(pid, &vmas, zero_pfn)?;
        pr_debug!("{pid}: {} vmas, {} page runs", vmas.len(), pages.len());
        let exec: Vec<(u64, u64)> = vmas
            .iter()
            .filter(|v| v.prot & libc::PROT_EXEC as u32 != 0 && v.kind != VmaKind::Vsyscall)
            .map(|v| (v.start, v.end))
            .collect();
        (vmas, pages, exec)
    } else {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(io_err("maps"))?;
        let exec = maps.lines().filter_map(proc::parse_maps_line).filter(|m| m.x && m.name != "[vsyscall]").map(|m| (m.start, m.end)).collect();
        (Vec::new(), Vec::new(), exec)
    };
    let gadget = frozen.mem().and_then(|mem| parasite::find_gadget_in(mem, pid, frozen.threads[0].regs.ip, &exec)).map_err(io_err("syscall gadget"))?;
    frozen.gadget = gadget;
    task::fixup_rseq_all(pid, frozen)?;
    let mut par = Parasite::start(frozen, gadget).map_err(io_err("parasite session"))?;
    let mut task = Task::default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(io_err("stat"))?;
    let (comm, f) = proc::parse_stat(&stat).unwrap_or_default();
    task.comm = comm;
    task.flags = proc::stat_field(&f, 9) as u32;
    task::collect_process(pid, &mut par, &mut task)?;
    let brk = task.mm.brk;
    for ft in &frozen.threads {
        let st = par.thread_status(ft.tid).map_err(io_err("thread status"))?;
        let ns_tid = ns_last(st, "NSpid").unwrap_or(ft.tid);
        task.threads.push(task::collect_thread(pid, ft, &mut par, ns_tid)?);
    }
    drop(par);
    crate::fault::point("after-parasite");
    task.stop_signo = frozen.stop_signo.map(|s| s as u32);
    // A SIGSTOP still queued was sent before the freeze: the process is
    // stopped (it is not a signal restore could queue again).
    let is_stop = |si: &[u8; 128]| i32::from_le_bytes([si[0], si[1], si[2], si[3]]) == libc::SIGSTOP;
    let queued_stop = task.shared_pending.iter().chain(task.threads.iter().flat_map(|t| &t.pending)).any(is_stop);
    if queued_stop {
        task.shared_pending.retain(|si| !is_stop(si));
        for t in &mut task.threads {
            t.pending.retain(|si| !is_stop(si));
        }
        task.stop_signo.get_or_insert(libc::SIGSTOP as u32);
    }
    if let Some(sig) = task.stop_signo {
        pr_debug!("{pid} is stopped (signal {sig}): dumped as TASK_STOPPED");
    }
    // the scratch page is gone again; the VMAs collected before it are the truth
    let (dumpable, thp_disabled) = (task.mm.dumpable, task.mm.thp_disabled);
    if with_memory {
        task.mm = mm::collect_mm(pid, vmas, pages, brk)?;
    } else {
        // (for a later collect_mm of a fork: tfork's image set)
        task.mm.brk = brk;
    }
    // (read by injection in collect_process)
    task.mm.dumpable = dumpable;
    task.mm.thp_disabled = thp_disabled;
    (task.fds, task.locks) = files::collect_fds(pid, file_opts)?;
    (task.fs.cwd, task.fs.root) = (files::fs_path(pid, "cwd")?, files::fs_path(pid, "root")?);
    (task.fs.cwd_mode, task.fs.root_mode) = (files::fs_mode(pid, "cwd"), files::fs_mode(pid, "root"));
    Ok(task)
}
