//! Restore: model -> live processes, driven from outside with ptrace.
//!
//! Stages (see docs/ARCHITECTURE.md, "engine"):
//! 1. `fork3` a child (CLONE_NEWPID when the root owned its pid namespace,
//!    else set_tid = the dumped pid). The child, still a copy of the
//!    engine, sets up what plain syscalls can: fds, session, cwd/root,
//!    umask, personality, sigactions, rlimits, files to map ([`child`]).
//! 2. The engine seizes it and, injecting syscalls ([`crate::sys::inject`]):
//!    drops the engine's rseq, maps a gadget page free in both address
//!    spaces, unmaps everything else, maps the vdso where it was, maps
//!    every VMA, writes the pages through /proc/PID/mem, applies madvise,
//!    PR_SET_MM_MAP, creates the threads (clone3 + set_tid), and per thread
//!    robust list, clear_tid, sigaltstack, rseq, comm ([`space`], [`thread`]).
//! 3. Final per-thread XSAVE + registers + signal mask, gadget unmapped,
//!    detach. [`RestoreGuard`] kills everything on any failure before that.

pub mod aio;
pub mod child;
pub mod cow;
pub mod creds;
pub mod files;
pub mod plan;
mod readahead;
pub mod space;
pub mod thread;
mod workers;
pub(crate) use workers::cpus;

use crate::mem_source::MemSource;
use crate::model::{FileDesc, Task, Tree};
use crate::sys::inject::{self, Injector};
use crate::sys::process as p;
use crate::sys::ptrace::{self, Wait};
use crate::sys::Pid;
use crate::{pr_debug, pr_info};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    Unsupported(String),
    /// `loc`: where in the engine it arose (the `ioe` call), for the log.
    #[error("{what} (pid {pid})")]
    Io { pid: Pid, what: String, #[source] source: std::io::Error, loc: &'static std::panic::Location<'static> },
    #[error("restore child {pid} failed: {msg}")]
    Child { pid: Pid, msg: String },
    #[error(transparent)]
    Mem(#[from] crate::mem_source::MemError),
}

#[track_caller]
pub(crate) fn ioe(pid: Pid, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RestoreError {
    let what = what.into();
    let loc = std::panic::Location::caller();
    move |e| RestoreError::Io { pid, what, source: e, loc }
}

impl RestoreError {
    /// Where in the engine the error arose, when it knows.
    pub fn location(&self) -> Option<&'static std::panic::Location<'static>> {
        match self {
            RestoreError::Io { loc, .. } => Some(loc),
            _ => None,
        }
    }
}

/// Kills the half-restored tree unless committed: every process of it
/// whose host pid is known (the root first: in a pid namespace of its own
/// that takes all of them), then reaps what the engine may reap.
#[derive(Debug)]
pub struct RestoreGuard {
    pub pids: Vec<Pid>,
    committed: bool,
}

impl Drop for RestoreGuard {
    fn drop(&mut self) {
        if self.committed || self.pids.is_empty() {
            return;
        }
        for &pid in &self.pids {
            let _ = p::kill(pid, libc::SIGKILL);
        }
        // Threads we trace must be reaped (with __WALL) before their
        // leader can be: waiting for the root alone hangs when the tree
        // had threads. Reap every child and tracee until none is left (the
        // engine has no other children during a restore), or, where it has
        // ([`others_waiting`]: tfork's engine restoring a clone tree
        // itself holds its stand-in inits and snapshot forks, which do not
        // exit meanwhile), until every process of the guard is dead,
        // reaping what is the engine's to reap.
        if OTHER_CHILDREN.load(std::sync::atomic::Ordering::Relaxed) {
            // (no blocking wait: a process already released and killed is
            // its parent's to reap, or its namespace init's)
            let mut left = self.pids.clone();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                while matches!(ptrace::wait_flags(-1, libc::__WALL | libc::WNOHANG), Ok(Some(_))) {}
                left.retain(|&p| proc_state(p).is_some_and(|(s, _)| s != 'Z' && s != 'X'));
                if left.is_empty() || std::time::Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            while matches!(ptrace::wait_flags(-1, libc::__WALL | libc::WNOHANG), Ok(Some(_))) {}
            return;
        }
        for _ in 0..100_000 {
            if ptrace::wait_any().is_err() {
                break; // ECHILD: nothing left
            }
        }
    }
}

/// Whether the engine has children besides the tree being restored
/// (see [`others_waiting`]).
static OTHER_CHILDREN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The engine has children of its own, besides the tree it restores, that
/// do not exit meanwhile (tfork restoring a clone tree in the engine: its
/// stand-in inits, its snapshot forks): a failed restore then reaps only
/// its own processes ([`RestoreGuard`]), not every child until none is
/// left, which would wait for those forever.
pub fn others_waiting(on: bool) {
    OTHER_CHILDREN.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// State letter and parent of `pid` from /proc/PID/stat.
fn proc_state(pid: Pid) -> Option<(char, String)> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut it = st.rsplit_once(") ")?.1.split_whitespace();
    Some((it.next()?.chars().next()?, it.next()?.to_string()))
}

/// The error for a dumped pid that clone3's set_tid found taken (EEXIST).
fn pid_in_use(pid: Pid) -> RestoreError {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim_end().to_string());
    let zombie = match proc_state(pid) {
        Some(('Z', ppid)) => format!(" (a zombie its parent {ppid} has not reaped)"),
        _ => String::new(),
    };
    RestoreError::Unsupported(match comm {
        Ok(c) => format!("pid {pid} of the image is in use by {c}{zombie}"),
        Err(_) => format!("pid {pid} of the image is in use"),
    })
}

/// Namespaces of the image that restore would not give back: a task whose
/// net, ipc, uts, mnt, user or cgroup namespace was not the dumping criu's
/// (ids against inventory's root_ids; 0 = not recorded) is refused by name
/// (our own dump refuses it already; an image from elsewhere may have it).
fn check_namespaces(tree: &Tree) -> Result<(), RestoreError> {
    let r = &tree.root_ids;
    for t in &tree.tasks {
        let i = &t.ids;
        let kinds = [("net", i.net_ns, r.net_ns), ("ipc", i.ipc_ns, r.ipc_ns), ("uts", i.uts_ns, r.uts_ns), ("mnt", i.mnt_ns, r.mnt_ns), ("user", i.user_ns, r.user_ns), ("cgroup", i.cgroup_ns, r.cgroup_ns)];
        // the root's own uts and ipc namespaces are made again
        // (crate::utsipc); another process in another one is refused
        let root = &tree.root().ids;
        for (kind, mine, roots, carried) in [("uts", i.uts_ns, root.uts_ns, tree.uts.is_some()), ("ipc", i.ipc_ns, root.ipc_ns, tree.ipc.is_some()), ("net", i.net_ns, root.net_ns, tree.net.is_some())] {
            if carried && mine != roots {
                return Err(RestoreError::Unsupported(format!(
                    "task {} of the image was in a {kind} namespace ({kind}_ns_id {mine}) other than its root's ({roots}): nested {kind} namespaces are not supported yet",
                    t.pid
                )));
            }
        }
        // (and its own mount namespace: crate::mntns)
        if tree.mnt.is_some() && i.mnt_ns != root.mnt_ns {
            return Err(RestoreError::Unsupported(format!(
                "task {} of the image was in a mount namespace (mnt_ns_id {}) other than its root's ({}): nested mount namespaces are not supported yet",
                t.pid, i.mnt_ns, root.mnt_ns
            )));
        }
        let carried = |k: &str| (k == "uts" && tree.uts.is_some()) || (k == "ipc" && tree.ipc.is_some()) || (k == "net" && tree.net.is_some()) || (k == "mnt" && tree.mnt.is_some());
        let differ: Vec<&str> = kinds.iter().filter(|(k, a, b)| *a != 0 && *b != 0 && a != b && !carried(k)).map(|(k, _, _)| *k).collect();
        if !differ.is_empty() {
            return Err(RestoreError::Unsupported(format!(
                "task {} of the image was in {} namespaces of its own (ids differ from inventory's root_ids): restoring namespaces is not supported yet",
                t.pid,
                differ.join(", ")
            )));
        }
        if i.pid_ns != 0 && r.pid_ns != 0 && i.pid_ns != r.pid_ns && !tree.root_owns_pid_ns {
            return Err(RestoreError::Unsupported(format!(
                "task {} of the image was in a pid namespace of its own without being its pid 1: not supported",
                t.pid
            )));
        }
    }
    Ok(())
}

/// The clocks to continue in a new time namespace, when the task had one
/// of its own (its time ns id is not root_ids'); upstream restores it the
/// same way from timens-0.img.
fn own_timens(tree: &Tree) -> Result<Option<crate::model::TimeNs>, RestoreError> {
    let (mine, root) = (tree.root().ids.time_ns, tree.root_ids.time_ns);
    if mine == 0 || root == 0 || mine == root {
        return Ok(None);
    }
    match tree.timens {
        Some(tn) => Ok(Some(tn)),
        None => Err(RestoreError::Unsupported("the task had a time namespace of its own, but its timens image is missing".into())),
    }
}

/// The files process `task` maps (one service fd per path, opened O_RDWR
/// if any mapping needs it), its executable, and (`pages`) the pages files
/// it reads its memory from itself.
fn map_files_of(task: &Task, pages: &[PathBuf]) -> Vec<(String, i32)> {
    let mut map_files: Vec<(String, i32)> = Vec::new();
    for v in &task.mm.vmas {
        if let Some(f) = &v.file {
            // (a memfd by its inode: `map_key`)
            let key = crate::images_io::map_key(f);
            match map_files.iter_mut().find(|(p, _)| p == &key) {
                Some(m) if f.flags as i32 & libc::O_ACCMODE == libc::O_RDWR => m.1 = f.flags as i32,
                Some(_) => {}
                None => map_files.push((key, f.flags as i32)),
            }
        }
    }
    if let Some(exe) = &task.mm.exe {
        let key = crate::images_io::map_key(exe);
        if !map_files.iter().any(|(p, _)| p == &key) {
            map_files.push((key, libc::O_RDONLY));
        }
    }
    for p in pages {
        let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        map_files.push((p.to_string_lossy().to_string(), libc::O_RDONLY));
    }
    map_files
}

/// The memfds the tree's live processes use (by fd or mapping), and the
/// indices of those several processes use (the root makes them before it
/// forks, for all to inherit: one inode again).
fn memfds_of(tree: &Tree) -> Result<(Vec<crate::model::Memfd>, Vec<usize>), RestoreError> {
    let (mut out, mut shared) = (Vec::new(), Vec::new());
    for m in &tree.memfds {
        let users: Vec<i32> = tree
            .tasks
            .iter()
            .filter(|t| t.zombie_exit.is_none())
            .filter(|t| {
                t.fds.iter().any(|f| matches!(&f.file, FileDesc::Kind(crate::kinds::Kind::Memfd(x)) if x.ino == m.ino))
                    || t.mm.vmas.iter().any(|v| v.file.as_ref().is_some_and(|f| f.memfd == Some(m.ino)))
            })
            .map(|t| t.pid)
            .collect();
        if !users.is_empty() {
            if users.len() > 1 {
                shared.push(out.len());
            }
            out.push(m.clone());
        }
    }
    Ok((out, shared))
}

/// Whether most of the pages the live processes read from their pages
/// files are in the page cache (mincore of the sources' mappings, of the
/// first 64 KiB of each page run: a sample, as mincore costs per page).
fn pages_cached(tree: &Tree, mems: &[&dyn MemSource], live: &[usize]) -> bool {
    let mut pieces: Vec<(u64, &[u8])> = Vec::new();
    for &i in live {
        for r in &tree.tasks[i].mm.pages {
            let Ok(len) = usize::try_from(r.nr_pages.min(16) * 4096) else { return false };
            match mems[i].slice(r.vaddr, len) {
                Some(s) => pieces.push((r.vaddr, s)),
                None => return false,
            }
        }
    }
    !crate::sys::uffd::mostly_cold(&pieces)
}

/// A restored process, ready for its release.
struct Ready<'a> {
    task: &'a Task,
    pid: Pid,
    /// Threads, main thread last.
    tids: Vec<Pid>,
}

/// How many new pty pairs the restore makes for slaves whose master was
/// outside the tree.
fn orphan_pairs(tree: &Tree) -> usize {
    let mut seen = Vec::new();
    for f in tree.tasks.iter().flat_map(|t| &t.fds) {
        if let crate::model::FileDesc::Kind(crate::kinds::Kind::Pty(p)) = &f.file {
            if p.orphan.as_ref().is_some_and(|o| o.inherit.is_none()) && !seen.contains(&p.index) {
                seen.push(p.index);
            }
        }
    }
    seen.len()
}

/// Restore `tree`, process `i` with page contents from `mems[i]`. Returns
/// the host pid of the root.
pub fn restore(tree: &Tree, mems: &[&dyn MemSource], opts: &crate::options::Options) -> Result<Pid, RestoreError> {
    restore_in(tree, mems, opts, None)
}

/// The engine's pid namespace for children set to another one for one
/// fork, back to its own on drop: a process whose `pid_for_children` is
/// not its own pid namespace can't make threads (EINVAL), which the fill
/// of the restore does.
struct PidNsForFork(Option<std::fs::File>);

impl PidNsForFork {
    fn enter(ns: Option<&std::path::Path>) -> Result<PidNsForFork, RestoreError> {
        let Some(ns) = ns else { return Ok(PidNsForFork(None)) };
        let own = std::fs::File::open("/proc/self/ns/pid").map_err(ioe(0, "opening /proc/self/ns/pid"))?;
        let target = std::fs::File::open(ns).map_err(ioe(0, format!("opening {}", ns.display())))?;
        crate::sys::ns::setns(target.as_fd(), libc::CLONE_NEWPID).map_err(ioe(0, format!("setns to the pid namespace {}", ns.display())))?;
        Ok(PidNsForFork(Some(own)))
    }
}

impl Drop for PidNsForFork {
    fn drop(&mut self) {
        if let Some(own) = &self.0 {
            // (back to the caller's own pid namespace: always allowed)
            let _ = crate::sys::ns::setns(own.as_fd(), libc::CLONE_NEWPID);
        }
    }
}

/// The memory sources' own mappings kept out of the processes forked
/// while it lives ([`MemSource::out_of_forks`]).
struct OutOfForks<'a>(&'a [&'a dyn MemSource]);

impl<'a> OutOfForks<'a> {
    fn new(mems: &'a [&'a dyn MemSource]) -> Self {
        for m in mems {
            m.out_of_forks(true);
        }
        OutOfForks(mems)
    }
}

impl Drop for OutOfForks<'_> {
    fn drop(&mut self) {
        for m in self.0 {
            m.out_of_forks(false);
        }
    }
}

/// [`restore`], the root forked into the pid namespace `root_pid_ns`
/// (a path of one, e.g. /proc/PID/ns/pid, whose pid 1 exists) when given,
/// with the image's pid there (tfork of a tree in the host's pid
/// namespace: each clone tree in a new one beside a stand-in init).
pub fn restore_in(tree: &Tree, mems: &[&dyn MemSource], opts: &crate::options::Options, root_pid_ns: Option<&std::path::Path>) -> Result<Pid, RestoreError> {
    // the processes of a tree are set up on threads of this scope (workers.rs)
    std::thread::scope(|scope| restore_in_scope(scope, tree, mems, opts, root_pid_ns))
}

/// [`restore_in`], its worker threads in `scope`.
fn restore_in_scope<'scope, 'e: 'scope>(
    scope: &'scope std::thread::Scope<'scope, 'e>,
    tree: &'e Tree,
    mems: &[&'e dyn MemSource],
    opts: &crate::options::Options,
    root_pid_ns: Option<&std::path::Path>,
) -> Result<Pid, RestoreError> {
    if mems.len() != tree.tasks.len() {
        return Err(RestoreError::Unsupported(format!("{} processes but {} memory sources", tree.tasks.len(), mems.len())));
    }
    if !p::single_threaded_soon() {
        return Err(RestoreError::Unsupported("the engine must be single-threaded to fork restore children".into()));
    }
    check_namespaces(tree)?;
    // --inherit-fd: criu's fds open, and what the image makes of them
    crate::inherit::check_open(&opts.inherit_fds).map_err(RestoreError::Unsupported)?;
    let inherit_fds = crate::inherit::check_tree(tree, &opts.inherit_fds).map_err(RestoreError::Unsupported)?;
    let ext_mnt = crate::mntns::with_auto_paths(tree, &opts.ext_mnt, opts.auto_ext_mnt);
    crate::mntns::check_restore(tree, opts.root.as_deref(), &ext_mnt).map_err(RestoreError::Unsupported)?;
    let plan = plan::make(tree)?;
    let live: Vec<usize> = (0..tree.tasks.len()).filter(|&i| tree.tasks[i].zombie_exit.is_none()).collect();
    // pages files, so each process reads its memory itself (paths of the
    // engine's file system: not under a --root prefix)
    let map_files: Vec<Vec<(String, i32)>> = tree
        .tasks
        .iter()
        .zip(mems)
        .map(|(t, m)| if t.zombie_exit.is_some() { Vec::new() } else { map_files_of(t, &if opts.root.is_none() { m.files() } else { Vec::new() }) })
        .collect();
    const CHILD_REPORT_TIMEOUT_MS: u64 = 30_000;
    let all_fds = || tree.tasks.iter().flat_map(|t| &t.fds);
    let max_fd = all_fds().map(|f| f.fd).max().unwrap_or(2).max(2);
    // the descriptions the root makes for all, then the working fds of one
    // process's fd setup (two per pipe fd, one per FIFO fd at most)
    let sh_base = max_fd + 1;
    let working: i32 = all_fds()
        .map(|f| match &f.file {
            FileDesc::Kind(k) => k.working_fds(),
        })
        .sum();
    // files unlinked while mapped: one recreation per inode for the tree
    let mut map_ghosts: Vec<(String, std::sync::Arc<crate::model::Ghost>, i32)> = Vec::new();
    for f in live.iter().flat_map(|&i| tree.tasks[i].mm.vmas.iter().filter_map(|v| v.file.as_ref())) {
        if let Some(g) = &f.ghost {
            let rw = f.flags as i32 & libc::O_ACCMODE == libc::O_RDWR;
            match map_ghosts.iter_mut().find(|(_, x, _)| (x.dev, x.ino) == (g.dev, g.ino)) {
                Some(m) if rw => m.2 = libc::O_RDWR,
                Some(_) => {}
                None => map_ghosts.push((f.path.clone(), g.clone(), if rw { libc::O_RDWR } else { libc::O_RDONLY })),
            }
        }
    }
    let map_from: Vec<Vec<Option<i32>>> = tree
        .tasks
        .iter()
        .zip(&map_files)
        .map(|(t, mf)| {
            mf.iter()
                .map(|(key, _)| {
                    let g = t.mm.vmas.iter().filter_map(|v| v.file.as_ref()).find(|f| &crate::images_io::map_key(f) == key)?.ghost.as_ref()?;
                    let j = map_ghosts.iter().position(|(_, x, _)| (x.dev, x.ino) == (g.dev, g.ino))?;
                    Some(sh_base + (plan.shared.len() + j) as i32)
                })
                .collect()
        })
        .collect();
    let (memfds, mut shared_memfds) = memfds_of(tree)?;
    // a process sharing its parent's fd table makes no fds of its own: the
    // memfds it maps are the root's to make, as shared ones
    for (n, _) in plan.share_groups.iter().flat_map(|g| g.members.iter()).filter(|(_, s)| s.files) {
        let plan::Role::Task(i) = plan.nodes[*n].role else { continue };
        for (k, m) in memfds.iter().enumerate() {
            if !shared_memfds.contains(&k) && tree.tasks[i].mm.vmas.iter().any(|v| v.file.as_ref().is_some_and(|f| f.memfd == Some(m.ino))) {
                shared_memfds.push(k);
            }
        }
    }
    let svc_base = (sh_base + (plan.shared.len() + map_ghosts.len()) as i32 + working + memfds.len() as i32 + 16).max(64);
    // processes of one fd table get disjoint service fd ranges
    let map_off = child::map_offsets(&plan, &map_files);
    let max_map = map_files.iter().zip(&map_off).map(|(m, o)| m.len() as i32 + o).max().unwrap_or(0);
    let sync_base = svc_base + 3 + max_map;
    // the inherited fds, above every fd the children place by number
    let inherit = crate::inherit::Held::hold(&inherit_fds, sync_base + 4 * plan.share_groups.len() as i32 + 8).map_err(RestoreError::Unsupported)?;
    // pty slaves whose master was outside the tree: the root hands their
    // new masters to the engine on a socket (kinds::pty::Orphan)
    let orphans = orphan_pairs(tree);
    let orphan_sock = if orphans > 0 {
        let (mine, theirs) = crate::sys::sock::socketpair(libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC).map_err(ioe(0, "the socket for the new pty masters"))?;
        let theirs = p::dup_number_above(theirs.as_raw_fd(), sync_base + 4 * plan.share_groups.len() as i32 + 4).map_err(ioe(0, "the socket for the new pty masters"))?;
        Some((mine, theirs))
    } else {
        None
    };
    let (rd, wr): (OwnedFd, OwnedFd) = p::pipe().map_err(ioe(0, "report pipe"))?;
    let engine_fd = if opts.sibling { Some(p::pidfd_open(std::process::id() as Pid).map_err(ioe(0, "a pidfd of the engine"))?) } else { None };
    // --root: opened once, above the service fds; paths are resolved in it
    let root = match &opts.root {
        None => None,
        Some(r) => {
            let fd = crate::sys::ns::open_root_dir(r, svc_base + 1 + max_map)
                .map_err(|e| RestoreError::Unsupported(format!("--root {}: {e}", r.display())))?;
            Some(child::RootDir { path: r.clone(), fd })
        }
    };
    let cow = cow::CowPlan::new(tree, &plan, mems);
    let parked = mems.iter().map(|m| m.parked().to_vec()).collect();
    let cplan = child::ChildPlan {
        report_fd: wr.as_raw_fd(),
        svc_base,
        map_files: map_files.clone(),
        root,
        shell_job: opts.shell_job,
        memfds,
        shared_memfds,
        timens: own_timens(tree)?,
        plan,
        map_ghosts,
        map_from,
        sh_base,
        engine: engine_fd.as_ref().map(|f| (f.as_raw_fd(), svc_base + 2 + max_map)),
        map_off,
        sync_base,
        cow,
        parked,
        ext_mnt,
        inherit: inherit.slots(),
        orphan_sock: orphan_sock.as_ref().map(|(_, t)| t.as_raw_fd()),
    };
    for &i in &live {
        creds::check_rlimits(&tree.tasks[i])?;
        files::check_mapped_files(&tree.tasks[i], cplan.root.as_ref()).map_err(RestoreError::Unsupported)?;
    }
    // the cgroups the processes go into, made or checked before anything
    // is forked (removed again if the restore fails: dropped after the
    // guard, which kills the processes first)
    let cg_sets: Vec<(usize, u32)> = live.iter().map(|&i| (i, tree.tasks[i].cg_set)).collect();
    let mut cgroups = crate::cgroups::Prepared::prepare(tree.cgroups.as_ref(), &cg_sets, opts.manage_cgroups, &opts.cgroup_root, tree.root().cg_set).map_err(|e| RestoreError::Unsupported(format!("cgroups: {e}")))?;
    let task = tree.root();
    let (mut flags, set_tid): (u64, Vec<Pid>) =
        if tree.root_owns_pid_ns { (libc::CLONE_NEWPID as u64, vec![]) } else { (0, vec![task.pid]) };
    if opts.sibling {
        flags |= libc::CLONE_PARENT as u64;
    }
    pr_info!("Forking task with {} pid (flags {:#x}); {} processes, {} helpers", task.pid, flags, tree.tasks.len(), cplan.plan.nodes.len() - tree.tasks.len());
    // a zombie holding the pid (a source killed by a dump its parent has
    // not reaped yet) is given a moment to go
    let zombie_deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let in_ns = PidNsForFork::enter(root_pid_ns)?;
    // the pages files' mappings are the engine's alone: not copied into
    // the tree (its processes would each unmap them), only for this fork
    // (a later fork, e.g. tfork's next restoring helper, reads them)
    let out_of_forks = OutOfForks::new(mems);
    let child = loop {
        // clone3 takes no exit signal with CLONE_PARENT: the child gets the
        // engine's own (SIGCHLD to the engine's parent)
        let exit_signal = if opts.sibling { 0 } else { libc::SIGCHLD };
        match p::fork3(flags, &set_tid, exit_signal, || child::child_main(&cplan, tree, 0, false)) {
            Ok(c) => break c,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                // (or just freed: gone by the time it is looked at)
                if proc_state(task.pid).is_none_or(|(s, _)| s == 'Z' || s == 'X') && std::time::Instant::now() < zombie_deadline {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                }
                return Err(pid_in_use(task.pid));
            }
            Err(e) => return Err(ioe(task.pid, "clone3")(e)),
        }
    };
    drop(in_ns);
    drop(out_of_forks);
    // parked memory (tfork): the root has its copy; a restoring helper's
    // own goes now, beside the children's setup, not at its exit
    if cplan.parked.iter().any(|v| !v.is_empty()) {
        crate::sys::park::drop_inherited();
    }
    let mut guard = RestoreGuard { pids: vec![child], committed: false };
    crate::fault::point("after-clone");
    drop(wr);
    crate::notify::script("setup-namespaces", Some(child)).map_err(RestoreError::Unsupported)?;
    let mut notes = std::collections::HashMap::new();
    let workers = workers::count(live.len()).filter(|_| live.iter().all(|&i| mems[i].as_sync().is_some()));
    // Pipelined: the workers set up each process as soon as it has
    // reported, while the root still forks the others. Only where nothing
    // must happen between the last report and the first seize: no notify
    // stage to answer (post-setup-namespaces), no cgroups to join, no
    // mount namespace (host pids resolved after all reports), no shared
    // fd tables or fs structs (their members work on after their
    // report), and pages files in the page cache (a cold restore reads
    // them ahead once all have reported, so the forked children's own
    // reads don't wait behind the fill's).
    let pipelined = workers.is_some()
        && !crate::notify::active()
        && !cgroups.any()
        && tree.mnt.is_none()
        && cplan.plan.share_groups.is_empty()
        && std::env::var("CRIU_RS_RESTORE_PIPELINE").as_deref() != Ok("off")
        && pages_cached(tree, mems, &live);
    let mut pool = None;
    if let Some(n) = workers.filter(|_| pipelined) {
        pr_debug!("{} processes set up by {n} engine threads as they report", live.len());
        pool = Some(workers::Pool::start_fed(scope, tree, &live, n));
    }
    let mut on_ok = |ns: i32, host: Pid, note: &str| {
        let Some(pl) = pool.as_mut() else { return };
        let Some(i) = live.iter().copied().find(|&i| tree.tasks[i].pid == ns) else { return };
        let Some(mem) = mems[i].as_sync() else { return };
        pl.offer(workers::Job {
            idx: i,
            pid: if i == 0 { child } else { host },
            mem,
            svc_base: svc_base + cplan.map_off[i],
            map_files: map_files[i].clone(),
            close_first: if i == 0 { cplan.engine.map(|(_, fd)| fd) } else { None },
            kept: cplan.cow.kept(i, note),
            report_fd: Some(cplan.svc_base),
        });
    };
    let hosts = collect_reports(&cplan, tree, rd, child, CHILD_REPORT_TIMEOUT_MS, &mut guard, &mut notes, &mut on_ok)?;
    // the pages files read ahead of the fill, in the order the processes
    // are filled; only now: the forked children's own reads (cow.rs) would
    // wait behind it (the engine forks nothing more: a thread may run)
    let _readahead = readahead::Readahead::start(readahead::files(tree, mems, &live));
    pr_debug!("{} processes prepared their fds and process state", hosts.len());
    crate::fault::point("after-reports");
    crate::notify::script("post-setup-namespaces", None).map_err(RestoreError::Unsupported)?;
    // the new masters of orphan slaves, to the client (as upstream, right
    // after post-setup-namespaces)
    if let Some((mine, theirs)) = orphan_sock.as_ref() {
        let _ = theirs;
        for k in 0..orphans {
            let mut buf = [0u8; 4];
            let got = crate::sys::sock::recv_rights(mine.as_fd(), &mut buf).map_err(ioe(child, "receiving a new pty master"))?;
            let Some(mut got) = got.filter(|g| g.fds.len() == 1) else {
                return Err(RestoreError::Child { pid: child, msg: format!("the root handed {k} of the {orphans} new pty masters") });
            };
            let m = got.fds.remove(0);
            pr_info!("orphan-pts-master: the new master of /dev/pts/{}", u32::from_le_bytes(buf));
            crate::notify::script_fd("orphan-pts-master", m.as_fd()).map_err(RestoreError::Unsupported)?;
        }
    }
    drop(orphan_sock);
    // CLONE_NEWPID: set_tid can't name the root's host pid; the others are
    // known from their reports
    let host_of = |i: usize| if i == 0 { Some(child) } else { hosts.get(&tree.tasks[i].pid).copied() };
    // every process into its cgroups before it is seized (its threads,
    // made by injection, follow it)
    if cgroups.any() {
        cgroups.join(host_of).map_err(|e| RestoreError::Unsupported(format!("cgroups: {e}")))?;
    }
    let mut shm = space::SharedAnon::default();
    let mut ready = Vec::with_capacity(live.len());
    // several processes at once on threads of their own, one per CPU
    // (dropped before the guard: its workers end before it kills)
    if let Some(pl) = pool.as_mut() {
        ready = pl.wait_ready(tree)?;
    } else if let Some(n) = workers {
        let mut jobs = Vec::with_capacity(live.len());
        for &i in &live {
            let pid = host_of(i).ok_or_else(|| RestoreError::Child { pid: child, msg: format!("process {} did not report", tree.tasks[i].pid) })?;
            let mem = mems[i].as_sync().ok_or_else(|| RestoreError::Unsupported("memory source not shareable between threads".into()))?;
            jobs.push(workers::Job {
                idx: i,
                pid,
                mem,
                svc_base: svc_base + cplan.map_off[i],
                map_files: map_files[i].clone(),
                close_first: if i == 0 { cplan.engine.map(|(_, fd)| fd) } else { None },
                kept: cplan.cow.kept(i, notes.get(&tree.tasks[i].pid).map_or("", String::as_str)),
                report_fd: None,
            });
        }
        pr_debug!("{} processes set up by {n} engine threads", jobs.len());
        let mut pl = workers::Pool::start(scope, tree, jobs, n);
        ready = pl.wait_ready(tree)?;
        pool = Some(pl);
    }
    for &i in live.iter().filter(|_| workers.is_none()) {
        let pid = host_of(i).ok_or_else(|| RestoreError::Child { pid: child, msg: format!("process {} did not report", tree.tasks[i].pid) })?;
        let close_first = if i == 0 { cplan.engine.map(|(_, fd)| fd) } else { None };
        // the memory it inherited copy-on-write and kept (cow.rs)
        let kept = cplan.cow.kept(i, notes.get(&tree.tasks[i].pid).map_or("", String::as_str));
        ready.push(restore_process(&tree.tasks[i], pid, mems[i], svc_base + cplan.map_off[i], &map_files[i], &mut shm, close_first, &kept, None)?);
        mems[i].filled();
    }
    for (stage, pid) in [("post-restore", Some(child)), ("network-unlock", None), ("pre-resume", None)] {
        crate::notify::script(stage, pid).map_err(RestoreError::Unsupported)?;
    }
    crate::fault::point("before-detach");
    // as upstream: the pidfile is created (never overwritten: O_EXCL, 0600)
    // while the tree is still ours, so failing to write it kills the tree
    if let Some(pf) = &opts.pidfile {
        write_pidfile(pf, child)?;
    }
    // established TCP connections out of repair mode just before they run
    for r in &ready {
        crate::kinds::tcp_stream::finish_restore(r.pid, &r.task.fds).map_err(|msg| RestoreError::Child { pid: r.pid, msg })?;
    }
    if let Err(e) = release_tree(tree, &ready, pool.as_mut()) {
        if let Some(pf) = &opts.pidfile {
            let _ = std::fs::remove_file(pf);
        }
        return Err(e);
    }
    guard.committed = true;
    crate::kinds::tcp_stream::unlock_restored(tree);
    // a network namespace of its own came back locked (its ruleset holds
    // the dump's lock): lifted now that the tree runs
    if tree.net.as_ref().is_some_and(|n| !n.empty) {
        crate::netns::unlock_in(child);
    }
    cgroups.keep();
    pr_info!("Restore finished successfully. Tasks resumed.");
    // the tree runs: a refusal now is reported, as upstream reports a
    // failed post-resume script, and changes nothing
    if let Err(e) = crate::notify::script("post-resume", None) {
        crate::pr_err!("{e}");
    }
    Ok(child)
}

/// Read the report of every process of the plan (`NSPID HOSTPID ok`, or
/// `... err WHAT`) from the shared pipe: the host pid of each, by pid in
/// the tree's namespace. A process that failed is named with its reason;
/// one that died without a word, or did not report within `timeout_ms`
/// (stuck in a syscall: named with its wchan), fails the restore.
/// `notes`: what follows `ok` in a line, by pid in the tree's namespace;
/// `on_ok` is told of each process that reported ok (pid in the tree's
/// namespace, host pid, note) as its line comes.
#[allow(clippy::too_many_arguments)]
fn collect_reports(
    cplan: &child::ChildPlan,
    tree: &Tree,
    rd: OwnedFd,
    root: Pid,
    timeout_ms: u64,
    guard: &mut RestoreGuard,
    notes: &mut std::collections::HashMap<i32, String>,
    on_ok: &mut dyn FnMut(i32, Pid, &str),
) -> Result<std::collections::HashMap<i32, Pid>, RestoreError> {
    use std::collections::HashMap;
    let want = cplan.plan.nodes.len();
    let mut hosts: HashMap<i32, Pid> = HashMap::new();
    let mut ok = 0;
    let mut buf = Vec::new();
    let mut rdf = std::fs::File::from(rd);
    let t0 = std::time::Instant::now();
    while ok < want {
        let left = timeout_ms.saturating_sub(t0.elapsed().as_millis() as u64);
        if left == 0 || !p::poll_readable(rdf.as_fd(), left.min(i32::MAX as u64) as i32).map_err(ioe(root, "waiting for the restore children's reports"))? {
            let missing: Vec<i32> = cplan.plan.nodes.iter().map(|n| n.pid).filter(|p| !hosts.contains_key(p)).collect();
            let stack = std::fs::read_to_string(format!("/proc/{root}/wchan")).unwrap_or_default();
            return Err(RestoreError::Child {
                pid: root,
                msg: format!(
                    "no report after {} s from {missing:?}: stuck setting up fds or process state (root's wchan {stack:?})",
                    timeout_ms / 1000
                ),
            });
        }
        let mut chunk = [0u8; 4096];
        let n = rdf.read(&mut chunk).map_err(ioe(root, "reading the restore children's reports"))?;
        if n == 0 {
            let missing: Vec<i32> = cplan.plan.nodes.iter().map(|n| n.pid).filter(|p| !hosts.contains_key(p)).collect();
            return Err(RestoreError::Child { pid: root, msg: format!("processes {missing:?} of the image died before reporting") });
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line[..nl]).to_string();
            let mut it = line.splitn(4, ' ');
            let (ns, host, word, rest) = (it.next().unwrap_or(""), it.next().unwrap_or(""), it.next().unwrap_or(""), it.next().unwrap_or(""));
            let (ns, host): (i32, Pid) = (ns.parse().unwrap_or(0), host.parse().unwrap_or(0));
            // (a tree with a mount namespace of its own: the pid a process
            // forked after the root's pivot_root read from its /proc is one
            // of the namespace's proc, resolved below; the root's kill ends
            // its pid namespace meanwhile)
            if host > 0 && ns != tree.root().pid && tree.mnt.is_none() {
                guard.pids.push(host);
            }
            if word != "ok" {
                return Err(RestoreError::Child { pid: host, msg: format!("(pid {ns} of the image) {rest}") });
            }
            hosts.insert(ns, host);
            on_ok(ns, host, rest);
            if !rest.is_empty() {
                notes.insert(ns, rest.to_string());
            }
            ok += 1;
        }
    }
    // every process closes its end of the pipe after its report (a live
    // one then pauses, to be seized): the end of the pipe says all did
    let left = timeout_ms.saturating_sub(t0.elapsed().as_millis() as u64);
    if left == 0 || !p::poll_readable(rdf.as_fd(), left.min(i32::MAX as u64) as i32).map_err(ioe(root, "waiting for the restore children"))? {
        return Err(RestoreError::Child { pid: root, msg: format!("the restore children reported but did not close their report pipe within {} s", timeout_ms / 1000) });
    }
    if tree.mnt.is_some() {
        let found = host_pids_below(root);
        for (ns, h) in hosts.iter_mut().filter(|(ns, _)| **ns != tree.root().pid) {
            if let Some(&host) = found.get(ns) {
                *h = host;
                guard.pids.push(host);
            }
        }
    }
    let mut chunk = [0u8; 256];
    match rdf.read(&mut chunk).map_err(ioe(root, "reading the restore children's reports"))? {
        0 => Ok(hosts),
        n => Err(RestoreError::Child { pid: root, msg: format!("unexpected report after all reported: {:?}", String::from_utf8_lossy(&chunk[..n])) }),
    }
}

/// The processes below `root` (itself included) by their pid in their
/// own pid namespace (NSpid's last field), read from the engine's /proc.
fn host_pids_below(root: Pid) -> std::collections::HashMap<i32, Pid> {
    let mut out = std::collections::HashMap::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) else { continue };
        if let Some(ns) = status.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|v| v.split_whitespace().last()?.parse::<i32>().ok()) {
            if out.insert(ns, p).is_some() {
                continue;
            }
        }
        for t in std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten() {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            stack.extend(kids.split_whitespace().filter_map(|k| k.parse::<Pid>().ok()));
        }
    }
    out
}

/// Seize process `pid` (waiting to be seized, its fds and process state
/// set) and inject the rest: address space, threads, process-wide state,
/// credentials, final registers. Not released. `report_fd`: the report
/// pipe's fd, which the process may not have closed yet when it is seized
/// right after its report (pipelined).
#[allow(clippy::too_many_arguments)]
fn restore_process<'a>(task: &'a Task, child: Pid, mem: &dyn MemSource, svc_base: i32, map_files: &[(String, i32)], shm: &mut space::SharedAnon, close_first: Option<i32>, kept: &[(u64, u64)], report_fd: Option<i32>) -> Result<Ready<'a>, RestoreError> {
    // O_SUSPEND_SECCOMP: filters installed near the end must not hit the engine's injected syscalls
    let opts_ = ptrace::O_TRACESYSGOOD | ptrace::O_TRACECLONE | ptrace::O_EXITKILL | ptrace::O_SUSPEND_SECCOMP;
    ptrace::seize(child, opts_).map_err(ioe(child, "seize"))?;
    ptrace::interrupt(child).map_err(ioe(child, "interrupt"))?;
    loop {
        match ptrace::wait(child).map_err(ioe(child, "wait"))? {
            Wait::Stopped { event: ptrace::EVENT_STOP, .. } => break,
            Wait::Stopped { .. } => ptrace::cont(child, 0).map_err(ioe(child, "cont"))?,
            other => return Err(RestoreError::Child { pid: child, msg: format!("died before restore: {other:?}") }),
        }
    }
    let mut main = Injector::new(child, inject::engine_gadget()).map_err(ioe(child, "registers"))?;
    if let Some(fd) = close_first {
        // the engine's pidfd the root watched until now (--restore-sibling)
        main.call("close", libc::SYS_close, &[fd as u64]).map_err(ioe(child, "closing the engine's pidfd"))?;
    }
    // (stopped between its report and closing the pipe: closed here, so
    // the pipe's end still tells the engine that every process let go)
    if let Some(fd) = report_fd.filter(|fd| std::fs::symlink_metadata(format!("/proc/{child}/fd/{fd}")).is_ok()) {
        main.call("close", libc::SYS_close, &[fd as u64]).map_err(ioe(child, "closing the report pipe"))?;
    }
    // The restore is injected calls but for the memory fill: the engine and
    // the target on one CPU, so each call is a local switch, not a wakeup
    // of the other vCPU (16 threads: ~2 ms less each). The fill runs on the
    // engine's own CPUs (`PinnedHere::released`). Threads the target
    // creates inherit the pin; every thread gets the mask it was forked
    // with (the engine's, as upstream's restored tasks get criu's) before
    // it is released.
    let target_mask = p::sched_getaffinity(child).map_err(ioe(child, "reading the CPU mask"))?;
    let pinned = p::PinnedHere::new();
    if let Some(c) = pinned.cpu() {
        if let Err(e) = p::sched_setaffinity(child, &p::one_cpu(c)) {
            pr_debug!("can't move {child} to CPU {c}: {e}");
        }
    }
    let (sp, mut last) = space::build(&mut main, task, mem, svc_base, map_files, &pinned, shm, kept)?;
    let t0 = &task.threads[0];
    // A process of one thread without pending signals, POSIX timers or
    // seccomp: the rest (thread state, process state, the service fds
    // closed, sched, creds, dumpable) joins the address space's last batch,
    // one stop for what took six. Else that batch runs now and the rest
    // comes step by step as it needs.
    if task.threads.len() == 1 && t0.pending.is_empty() && task.posix_timers.is_empty() && !creds::has_seccomp(t0) {
        thread::setup_calls(&mut last, t0);
        space::finish_calls(&mut last, task, svc_base, map_files.len())?;
        creds::apply_proc(child, task);
        let check = creds::finish_thread_calls(&mut last, t0);
        creds::finish_process_calls(&mut last, task);
        let out = sp.run(&mut main, &last, "final protections, PR_SET_MM_MAP, thread state, creds")?;
        creds::check_fsuid(child, t0, out[check])?;
        return finish_main(task, child, main, &sp, Vec::new(), target_mask, pinned);
    }
    sp.run(&mut main, &last, "final protections, locks and PR_SET_MM_MAP")?;
    // threads
    let mut injs = vec![];
    for t in task.threads.iter().skip(1) {
        let tid = thread::create(&mut main, &sp, t.tid)?;
        crate::fault::point("mid-threads");
        if crate::fault::fails("mid-threads") {
            return Err(RestoreError::Unsupported("injected failure after the first thread (CRIU_RS_FAULT_AT)".into()));
        }
        let mut ti = Injector::new(tid, sp.gadget).map_err(ioe(tid, "registers"))?;
        ti.base = main.base;
        injs.push((tid, ti, t));
    }
    thread::setup(&mut main, &sp, &task.threads[0])?;
    for (_, ti, t) in injs.iter_mut() {
        thread::setup(ti, &sp, t)?;
    }
    space::finish_process(&mut main, &sp, task, svc_base, map_files.len())?;
    // privileges last: sched, seccomp, creds per thread, then dumpable
    creds::apply_proc(child, task);
    for (_, ti, t) in injs.iter_mut() {
        creds::finish_thread(ti, &sp, t)?;
    }
    creds::finish_thread(&mut main, &sp, &task.threads[0])?;
    creds::finish_process(&mut main, task)?;
    for (tid, _, t) in &injs {
        thread::load_final(*tid, t)?;
    }
    let tids: Vec<Pid> = injs.iter().map(|(tid, _, _)| *tid).collect();
    finish_main(task, child, main, &sp, tids, target_mask, pinned)
}

/// The main thread's last steps (SIGTRAP's action, the gadget unmapped,
/// its registers), then every thread's CPU mask given back: `tids` are
/// the other threads, already loaded.
fn finish_main<'a>(task: &'a Task, child: Pid, mut main: Injector, sp: &space::Space, tids: Vec<Pid>, target_mask: [u64; 16], pinned: p::PinnedHere) -> Result<Ready<'a>, RestoreError> {
    // The int3 after each injected syscall made the kernel reset SIGTRAP's
    // action to SIG_DFL (a forced SIGTRAP that is blocked or ignored does
    // that): the dumped action again, from a stepped call that runs no int3.
    // (Only the handler is reset: a dumped SIG_DFL one is as it was, two
    // stops saved.)
    if let Some(act) = task.sigactions.get(libc::SIGTRAP as usize - 1).filter(|a| a.handler != libc::SIG_DFL as u64) {
        let b: Vec<u8> = [act.handler, act.flags, act.restorer, act.mask].iter().flat_map(|w| w.to_le_bytes()).collect();
        let ptr = sp.write(0, &b)?;
        main.call_stepped("rt_sigaction(SIGTRAP)", libc::SYS_rt_sigaction, &[libc::SIGTRAP as u64, ptr, 0, 8])
            .map_err(ioe(child, "restoring the SIGTRAP action"))?;
    }
    // last syscall of the main thread: unmap the gadget page
    main.call_stepped("munmap(gadget)", libc::SYS_munmap, &[sp.gadget_page, space::GADGET_LEN]).map_err(ioe(child, "unmapping the gadget"))?;
    thread::load_final(child, &task.threads[0])?;
    // (each its dumped pinning, if it had one; else the mask it came with)
    for (&tid, t) in tids.iter().zip(&task.threads[1..]).chain([(&child, &task.threads[0])]) {
        p::sched_setaffinity(tid, &creds::final_cpu_mask(t, &target_mask)).map_err(ioe(tid, "giving back the CPU mask"))?;
    }
    let tids: Vec<Pid> = tids.into_iter().chain([child]).collect();
    drop(pinned);
    Ok(Ready { task, pid: child, tids })
}

/// Release every restored process of the tree, once all are ready: the
/// SIGSTOP barrier of [`release`] queued in all of them first, then every
/// thread detached, then SIGCONT to all, so no process runs while another
/// is still held.
fn release_tree(tree: &Tree, ready: &[Ready], pool: Option<&mut workers::Pool>) -> Result<(), RestoreError> {
    // a parent that catches SIGCHLD without SA_NOCLDSTOP would see a
    // child's stop and continue: such children go thread by thread
    let parent_sees = |t: &Task| {
        tree.tasks.iter().find(|p| p.pid == t.ppid && t.pid != tree.root().pid).is_some_and(|p| {
            p.sigactions.get(libc::SIGCHLD as usize - 1).is_some_and(|a| a.handler > 1 && a.flags & libc::SA_NOCLDSTOP as u64 == 0)
        })
    };
    let barrier: Vec<bool> = ready.iter().map(|r| r.task.stop_signo.is_some() || (stop_barrier_is_unseen(r.task) && !parent_sees(r.task))).collect();
    for (r, &b) in ready.iter().zip(&barrier) {
        if b {
            p::kill(r.pid, libc::SIGSTOP).map_err(ioe(r.pid, "stopping the restored process for its release"))?;
        } else {
            pr_info!("{} has a SIGCONT handler, queued SIGCONT or stop signals, or a parent that sees its stops: released thread by thread", r.pid);
        }
    }
    // The root last: until it is detached, the engine's death takes it
    // (PTRACE_O_EXITKILL), and with it, in a pid namespace of its own,
    // every process already let go (stopped, waiting for the SIGCONT).
    // In the host's pid namespace those would stay stopped: the window is
    // the few detach calls of this loop.
    // (set up by worker threads: each detaches its own, the root last)
    let own: &[Ready] = if pool.is_some() { &[] } else { ready };
    if let Some(pool) = pool {
        pool.detach_all()?;
    }
    let last = 0;
    for (k, r) in own.iter().enumerate().rev() {
        for (i, &tid) in r.tids.iter().enumerate() {
            if k == last && i + 1 == r.tids.len() {
                crate::fault::point("mid-detach");
                if crate::fault::fails("mid-detach") {
                    // what was released so far gets time to show itself
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    return Err(RestoreError::Unsupported("injected failure before the last detach (CRIU_RS_FAULT_AT)".into()));
                }
            }
            ptrace::detach(tid, 0).map_err(ioe(tid, "detach"))?;
        }
    }
    for (r, &b) in ready.iter().zip(&barrier) {
        if !b {
            continue;
        }
        if r.task.stop_signo.is_some() {
            wait_group_stop(r.pid, &r.tids);
            continue;
        }
        p::kill(r.pid, libc::SIGCONT).map_err(ioe(r.pid, "continuing the restored process"))?;
    }
    Ok(())
}

/// A process restored stopped: wait (bounded) until every thread is in
/// the group-stop, so whoever looks next sees it stopped.
fn wait_group_stop(pid: Pid, tids: &[Pid]) {
    let t0 = std::time::Instant::now();
    while !tids.iter().all(|&t| thread_state(pid, t) == Some('T')) {
        if t0.elapsed() > std::time::Duration::from_secs(10) {
            crate::pr_warn!("restored process {pid} did not reach its group-stop within 10 s");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    pr_info!("{pid} restored stopped (it was dumped in group-stop)");
}

/// Whether the release can go through a group-stop unseen: the SIGSTOP
/// and SIGCONT it takes must not meet a SIGCONT handler, a SIGCONT the
/// main thread blocks (it would stay queued), or queued SIGCONT or stop
/// signals of the image (a stop signal flushes queued SIGCONTs and a
/// SIGCONT flushes queued stop signals).
fn stop_barrier_is_unseen(task: &crate::model::Task) -> bool {
    let cont = libc::SIGCONT as usize;
    let handler = task.sigactions.get(cont - 1).map_or(0, |a| a.handler);
    let blocked = task.threads.first().is_some_and(|t| t.blocked & (1 << (cont - 1)) != 0);
    let signo = |si: &[u8; 128]| i32::from_le_bytes([si[0], si[1], si[2], si[3]]);
    let queued = task.shared_pending.iter().chain(task.threads.iter().flat_map(|t| &t.pending)).map(signo);
    let touchy = queued.into_iter().any(|s| s == libc::SIGCONT || crate::dump::freeze::is_stop_signal(s));
    handler <= 1 && !blocked && !touchy
}

/// Release the restored process `pid` (threads `tids`, main thread last),
/// only once all of it is ready: SIGSTOP is queued while every thread is
/// still in a ptrace stop, so each detached thread takes it (or joins the
/// group-stop it began) on its way out of the detach, before it runs a
/// single instruction of its own. A detach that fails then leaves nothing
/// that ran: the caller's guard kills the process. Once every thread is
/// detached, SIGCONT lets them all go together, or, for a task dumped
/// stopped (TASK_STOPPED), nothing does: it stays stopped as it was
/// (upstream also stops such a task before its detach).
///
/// Always SIGSTOP, whatever stop signal was recorded: SIGTSTP, SIGTTIN
/// and SIGTTOU can be caught or blocked, and the kernel drops them for an
/// orphaned process group; the stop signal only shows to a waiting parent,
/// which here is this engine. When the stop and continue could be seen by
/// the program ([`stop_barrier_is_unseen`]), a running task is released
/// thread by thread instead, the main thread last.
pub(crate) fn release(task: &crate::model::Task, pid: Pid, tids: &[Pid]) -> Result<(), RestoreError> {
    let stopped = task.stop_signo.is_some();
    let barrier = stopped || stop_barrier_is_unseen(task);
    if barrier {
        p::kill(pid, libc::SIGSTOP).map_err(ioe(pid, "stopping the restored process for its release"))?;
    } else {
        pr_info!("{pid} has a SIGCONT handler, or queued SIGCONT or stop signals: released thread by thread");
    }
    for (i, &tid) in tids.iter().enumerate() {
        if i + 1 == tids.len() {
            crate::fault::point("mid-detach");
            if crate::fault::fails("mid-detach") {
                // what was released so far gets time to show itself
                std::thread::sleep(std::time::Duration::from_millis(300));
                return Err(RestoreError::Unsupported("injected failure before the last detach (CRIU_RS_FAULT_AT)".into()));
            }
        }
        ptrace::detach(tid, 0).map_err(ioe(tid, "detach"))?;
    }
    if !barrier {
        return Ok(());
    }
    if stopped {
        // stopped as it was: wait (bounded) until every thread is in the
        // group-stop, so whoever looks next sees it stopped
        let t0 = std::time::Instant::now();
        while !tids.iter().all(|&t| thread_state(pid, t) == Some('T')) {
            if t0.elapsed() > std::time::Duration::from_secs(10) {
                crate::pr_warn!("restored process {pid} did not reach its group-stop within 10 s");
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        pr_info!("{pid} restored stopped (it was dumped in group-stop)");
        return Ok(());
    }
    p::kill(pid, libc::SIGCONT).map_err(ioe(pid, "continuing the restored process"))
}

/// State letter of thread `tid` of `pid` (/proc/PID/task/TID/stat).
fn thread_state(pid: Pid, tid: Pid) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    s.rsplit_once(") ")?.1.chars().next()
}

/// Create `path` with the restored root's pid, failing if it exists.
fn write_pidfile(path: &std::path::Path, pid: Pid) -> Result<(), RestoreError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(ioe(pid, format!("Can't open pidfile {}", path.display())))?;
    f.write_all(pid.to_string().as_bytes()).map_err(ioe(pid, format!("writing pidfile {}", path.display())))
}
