//! The restore child's own work, done in plain Rust right after clone3
//! while it is still a copy of the engine: file descriptors (in
//! [`super::files`]), session,
//! cwd/root, umask, personality, sigactions, rlimits, and opening the files
//! its mappings need (on "service fds" above every restored fd). It then
//! reports "ok" (or the error) on a pipe and waits to be seized.

use super::files;
use super::plan::Role;
use crate::model::Tree;
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

/// What the restore children must do, computed by the engine before
/// the root is cloned; every process of the tree inherits it.
#[derive(Debug)]
pub struct ChildPlan {
    /// Report pipe write end (engine side fd number, inherited by the root).
    pub report_fd: i32,
    /// First service fd: the report pipe (in every process), then one per
    /// entry of the process's `map_files`.
    pub svc_base: i32,
    /// (path, open flags) of the files each process (by task index) maps;
    /// fd = svc_base + 1 + index.
    pub map_files: Vec<Vec<(String, i32)>>,
    /// `--root`: every path of the image is resolved inside it.
    pub root: Option<RootDir>,
    /// `--shell-job`: terminal fds become new opens of the engine's terminal.
    pub shell_job: bool,
    /// The memfd inodes the tree's fds and mappings use, on working fds
    /// below the terminal's: one process uses it (made first by
    /// `files::restore_fds` there), or several (`shared_memfds`: made by
    /// the root before it forks, inherited by all).
    pub memfds: Vec<crate::model::Memfd>,
    /// Indices in `memfds` of those several processes use.
    pub shared_memfds: Vec<usize>,
    /// The clocks of the tree's own time namespace at dump (its timens
    /// image), when it had one: the root enters a new one in which they
    /// continue, before it forks the others.
    pub timens: Option<crate::model::TimeNs>,
    /// Who forks whom, sessions, groups, helpers, shared descriptions.
    pub plan: super::plan::Plan,
    /// Files unlinked while mapped (path, contents, open flags), one per
    /// inode of the tree: the root recreates each (as it does an fd's
    /// ghost) on `sh_base + plan.shared.len() + j`, for every process to
    /// inherit. Opened read-only unless a mapping writes it shared: a
    /// deleted executable made the exe file again (PR_SET_MM_MAP) must
    /// have no writer.
    pub map_ghosts: Vec<(String, std::sync::Arc<crate::model::Ghost>, i32)>,
    /// Per process (task index), per entry of its `map_files`: the
    /// inherited fd of that file when it is one of `map_ghosts`.
    pub map_from: Vec<Vec<Option<i32>>>,
    /// `--restore-sibling`: (engine-side fd number of a pidfd of the
    /// engine, the number the root keeps it on). The root is then not the
    /// engine's child, so no parent-death signal ties it to the engine: it
    /// watches the engine through the pidfd instead while it waits to be
    /// seized (the engine closes it right after the seize), and exits if
    /// the engine is gone.
    pub engine: Option<(i32, i32)>,
    /// Where the root puts the descriptions of `plan.shared` for every
    /// process to inherit: `sh_base + k` (above every restored fd, below
    /// the working fds).
    pub sh_base: i32,
    /// Per process (task index): where its mapped files' service fds
    /// start past `svc_base + 1` (0, but for processes that share an fd
    /// table: each after those of the ones before it in its group).
    pub map_off: Vec<i32>,
    /// The sync pipes of share group `g` (`plan.share_groups`): `up` (read
    /// end, write end) at `sync_base + 4g`, `+1`, `down` at `+2`, `+3`;
    /// above every other fd of the child.
    pub sync_base: i32,
    /// Private anonymous memory inherited copy-on-write (`cow.rs`).
    pub cow: super::cow::CowPlan,
    /// Per task: its parked memory, `(start, end, at)` (tfork's restored
    /// clones, [`crate::mem_source::MemSource::parked`]): a process keeps
    /// only the parked regions of its own subtree through its forks.
    pub parked: Vec<Vec<(u64, u64, u64)>>,
    /// `--external mnt[KEY]:PATH` of the restore (crate::mntns).
    pub ext_mnt: Vec<(String, String)>,
    /// `--inherit-fd` (crate::inherit): (key, the fd every process holds
    /// it on until its own fd table is built; above [`ChildPlan::above_all`]).
    pub inherit: Vec<(String, i32)>,
    /// The root's end of a socket to the engine (above [`ChildPlan::above_all`]),
    /// when the tree has pty slaves whose master was outside it
    /// (`kinds::pty::adopt_orphans`): the root sends the new masters on
    /// it (SCM_RIGHTS) and closes it once its shared descriptions are made.
    pub orphan_sock: Option<i32>,
}

/// Per task: the offset of its mapped files' service fds (see
/// [`ChildPlan::map_off`]): the processes of one fd table get disjoint
/// ranges.
pub fn map_offsets(plan: &super::plan::Plan, map_files: &[Vec<(String, i32)>]) -> Vec<i32> {
    let mut off = vec![0i32; map_files.len()];
    for g in &plan.share_groups {
        let Role::Task(o) = plan.nodes[g.owner].role else { continue };
        let mut next = map_files[o].len() as i32;
        for &(n, s) in &g.members {
            if let (true, Role::Task(i)) = (s.files, plan.nodes[n].role) {
                off[i] = next;
                next += map_files[i].len() as i32;
            }
        }
    }
    off
}

impl ChildPlan {
    /// The sync pipe ends of share group `g`: (up read, up write, down
    /// read, down write).
    fn sync_fds(&self, g: usize) -> (i32, i32, i32, i32) {
        let b = self.sync_base + 4 * g as i32;
        (b, b + 1, b + 2, b + 3)
    }

    /// The inherited fd of each shared description.
    pub fn shared_fds(&self) -> std::collections::HashMap<u32, i32> {
        self.plan.shared.iter().enumerate().map(|(k, &d)| (d, self.sh_base + k as i32)).collect()
    }

    /// The first fd number above every fd the child places by number
    /// (restored fds, shared descriptions, working and service fds, the
    /// `--root` handle, the sync pipes): a handle the child keeps while it
    /// builds its fd table goes at or above it.
    pub fn above_all(&self) -> i32 {
        self.sync_base + 4 * self.plan.share_groups.len() as i32
    }

    /// The fd holding the inherited file of `key` (`--inherit-fd`).
    pub fn inherited(&self, key: &str) -> Option<i32> {
        self.inherit.iter().find(|(k, _)| k == key).map(|&(_, fd)| fd)
    }

    fn shared_range(&self) -> std::ops::Range<i32> {
        self.sh_base..self.sh_base + (self.plan.shared.len() + self.map_ghosts.len()) as i32
    }
}

/// Report of one process on the shared report pipe, one line each written
/// whole (under PIPE_BUF): `NSPID HOSTPID ok` or `NSPID HOSTPID err WHAT`.
fn report(plan: &ChildPlan, ns_pid: i32, host: i32, msg: Result<(), String>) -> std::io::Result<()> {
    let mut line = match msg {
        Ok(()) => format!("{ns_pid} {host} ok{}", super::cow::report_note(plan, ns_pid)),
        Err(m) => format!("{ns_pid} {host} err {}", m.replace('\n', " ")),
    };
    if line.len() > 3000 {
        let mut cut = 3000;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    line.push('\n');
    p::write_raw(plan.svc_base, line.as_bytes()).map(drop)
}

/// The process's own ids and its children: session and group calls, a
/// child subreaper's flag (before a helper child exits), the root's time
/// namespace and the shared descriptions, then the forks.
fn setup_and_fork(plan: &ChildPlan, tree: &Tree, n: usize, terminal: Option<i32>) -> Result<(), String> {
    let node = &plan.plan.nodes[n];
    if node.setsid {
        p::setsid().map_err(|e| format!("setsid: {e}"))?;
    } else if node.own_group {
        p::setpgid_self(0).map_err(|e| format!("setpgid(0, 0): {e}"))?;
    }
    if let Role::Task(i) = node.role {
        if tree.tasks[i].child_subreaper {
            p::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0).map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
        }
    }
    if n == 0 {
        // the root's own uts and ipc namespaces, for every process to inherit
        crate::utsipc::enter(tree)?;
        // and its own network namespace, before any socket is made
        if let Some(n) = &tree.net {
            match &n.ext_key {
                // an external one (--inherit-fd fd[N]:KEY): joined
                Some(k) => crate::inherit::join_netns(plan.inherited(k).ok_or_else(|| format!("no inherited fd for the external network namespace {k}"))?, k)?,
                None => crate::netns::enter(n)?,
            }
        }
        if let Some(tn) = &plan.timens {
            enter_timens(tn)?;
        }
        // the root's own mount namespace, below --root or from tfork's source
        // (checked before the fork)
        if let Some(ns) = &tree.mnt {
            // (a pty made for a bind of its slave: kept above every fd)
            crate::kinds::pty::set_premade_floor(plan.above_all() + 64);
            crate::mntns::enter(ns, plan.root.as_ref().map(|r| (r.path.as_path(), r.fd.as_raw_fd())), &plan.ext_mnt)?;
        }
        // the memfds several processes use, for all of them to inherit
        files::create_shared_memfds(plan)?;
        if !plan.plan.shared.is_empty() || !plan.map_ghosts.is_empty() {
            files::restore_shared(plan, tree, terminal)?;
        }
        // (the new masters of orphan slaves are the engine's now)
        if let Some(s) = plan.orphan_sock {
            p::close(s);
        }
        crate::kinds::pty::drop_premade();
    }
    // a session leader's pty (the root's, inherited), before its forks
    if node.setsid {
        crate::kinds::pty::take_ctty(tree, &plan.shared_fds(), node.pid)?;
    }
    // the owner of a group of shared fd tables / fs structs: its sync pipes,
    // before the members are forked
    if let Some((g, s)) = plan.plan.share_of(n) {
        if plan.plan.share_groups[g].owner == n && s == Default::default() {
            let (ur, uw, dr, dw) = plan.sync_fds(g);
            for (r, w) in [(ur, uw), (dr, dw)] {
                let (a, b) = p::pipe().map_err(|e| format!("sync pipe: {e}"))?;
                p::dup2(a.as_raw_fd(), r).map_err(|e| format!("sync pipe -> {r}: {e}"))?;
                p::dup2(b.as_raw_fd(), w).map_err(|e| format!("sync pipe -> {w}: {e}"))?;
            }
        }
    }
    if let Role::Task(i) = node.role {
        // what the children inherit copy-on-write, before they fork
        super::cow::prepare(&plan.cow, i, &|path| files::open_image_path_own(plan, path, libc::O_RDONLY, -1))?;
    }
    // parked memory (tfork): none of another subtree's goes through a fork
    let own: Vec<(u64, u64)> = match node.role {
        Role::Task(i) => parked_of(plan, &[i]),
        Role::Helper => Vec::new(),
    };
    if plan.parked.iter().any(|v| !v.is_empty()) {
        let mut mine = own.clone();
        for &c in &node.children {
            mine.extend(parked_of(plan, &subtree_tasks(plan, c)));
        }
        for r in crate::sys::park::regions().into_iter().filter(|r| !mine.contains(r)) {
            crate::sys::park::unmap(r.0, r.1).map_err(|e| format!("unmapping parked memory {:#x}-{:#x}: {e}", r.0, r.1))?;
        }
    }
    // (`CRIU_RS_TFORK_PARK_DONTFORK=off`: every fork copies all the
    // parked memory the parent still has, for measurements)
    let parked = plan.parked.iter().any(|v| !v.is_empty()) && std::env::var("CRIU_RS_TFORK_PARK_DONTFORK").as_deref() != Ok("off");
    for &c in &node.children {
        let pid = plan.plan.nodes[c].pid;
        let under_helper = node.role == Role::Helper;
        // a member of a share group: CLONE_FILES / CLONE_FS as it was made
        let flags = plan.plan.share_of(c).map_or(0, |(_, s)| s.clone_flags());
        // (parked memory: the fork copies the page tables of the child's
        // subtree's regions only, the others MADV_DONTFORK meanwhile)
        let keep = if parked { parked_of(plan, &subtree_tasks(plan, c)) } else { Vec::new() };
        if parked {
            crate::sys::park::fork_only(&keep).map_err(|e| format!("marking parked memory for the fork of pid {pid}: {e}"))?;
        }
        let child = || {
            if parked {
                crate::sys::park::forget_others(&keep);
            }
            child_main(plan, tree, c, under_helper)
        };
        match p::fork3(flags, &[pid], libc::SIGCHLD, child) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Err(format!("pid {pid} of the image is in use")),
            Err(e) => return Err(format!("clone3 of pid {pid}: {e}")),
        }
        // (that child's subtree has its parked memory now)
        for r in parked_of(plan, &subtree_tasks(plan, c)).into_iter().filter(|r| !own.contains(r)) {
            crate::sys::park::unmap(r.0, r.1).map_err(|e| format!("unmapping parked memory {:#x}-{:#x}: {e}", r.0, r.1))?;
        }
    }
    if let Role::Task(i) = node.role {
        if !node.children.is_empty() {
            super::cow::after_forks(&plan.cow, i)?;
        }
    }
    if parked && !node.children.is_empty() {
        // (its own regions are moved into place: forked again by its forks)
        crate::sys::park::fork_all_again().map_err(|e| format!("parked memory forked again: {e}"))?;
    }
    Ok(())
}

/// The tasks of the plan's subtree from node `n` (`n` included).
fn subtree_tasks(plan: &ChildPlan, n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut todo = vec![n];
    while let Some(k) = todo.pop() {
        let node = &plan.plan.nodes[k];
        if let Role::Task(i) = node.role {
            out.push(i);
        }
        todo.extend(&node.children);
    }
    out
}

/// The parked regions `(at, at + len)` of `tasks`.
fn parked_of(plan: &ChildPlan, tasks: &[usize]) -> Vec<(u64, u64)> {
    tasks.iter().flat_map(|&i| plan.parked.get(i).into_iter().flatten().map(|&(s, e, at)| (at, at + (e - s)))).collect()
}

/// Join group `g` of this session once some process has made it (its
/// leader does so before its own forks, a helper before it forks; the
/// wait is bounded).
fn join_group(g: i32) -> Result<(), String> {
    let t0 = std::time::Instant::now();
    loop {
        match p::setpgid_self(g) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && t0.elapsed() < std::time::Duration::from_secs(10) => {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            Err(e) => return Err(format!("joining process group {g}: {e}")),
        }
    }
}

/// A live process of the tree, after its forks: its helpers collected and
/// its zombie children dead (and the SIGCHLDs they sent taken: the image
/// has the signals it had), its group joined, then its own state.
fn run(plan: &ChildPlan, tree: &Tree, n: usize, i: usize, terminal: Option<i32>) -> Result<(), String> {
    let node = &plan.plan.nodes[n];
    let task = &tree.tasks[i];
    let mut waited = false;
    for &c in &node.children {
        let cn = &plan.plan.nodes[c];
        match cn.role {
            Role::Helper => {
                p::reap_child(cn.pid).map_err(|e| format!("collecting helper {}: {e}", cn.pid))?;
                waited = true;
            }
            Role::Task(ci) if tree.tasks[ci].zombie_exit.is_some() => {
                p::wait_exited_unreaped(cn.pid).map_err(|e| format!("waiting for zombie {} to exit: {e}", cn.pid))?;
                waited = true;
            }
            Role::Task(_) => {}
        }
    }
    if waited {
        p::drain_signal(libc::SIGCHLD);
    }
    if let Some(g) = node.join_group {
        join_group(g)?;
    }
    // one fd table or fs struct with other processes (share_groups): the
    // owner sets them up once all members have forked, then lets each
    // member do its own part in turn; a member never touches the shared one
    let group = plan.plan.share_of(n);
    let member = group.filter(|&(g, _)| plan.plan.share_groups[g].owner != n);
    let owner_of = group.filter(|&(g, _)| plan.plan.share_groups[g].owner == n).map(|(g, _)| g);
    let share = member.map(|(_, s)| s).unwrap_or_default();
    if let Some((g, _)) = member {
        let (_, uw, dr, _) = plan.sync_fds(g);
        sync_send(uw, b'f')?;
        sync_wait(dr, b'g')?;
    }
    if let Some(g) = owner_of {
        let (ur, ..) = plan.sync_fds(g);
        for _ in &plan.plan.share_groups[g].members {
            sync_wait(ur, b'f')?;
        }
    }
    let shared = plan.shared_fds();
    if !share.files {
        files::restore_fds(plan, task, terminal, &shared)?;
    }
    if node.setsid {
        crate::kinds::pty::set_foreground(tree, node.pid)?;
    }
    for (k, (path, flags)) in plan.map_files[i].iter().enumerate() {
        let at = plan.svc_base + plan.map_off[i] + 1 + k as i32;
        match plan.map_from[i].get(k).copied().flatten() {
            // a file unlinked while mapped: the root's recreation of it
            Some(from) => p::dup2(from, at).map_err(|e| format!("the unlinked mapped file {path} (fd {from} -> {at}): {e}"))?,
            None => files::open_at(plan, path, *flags, at)?,
        }
    }
    if !share.files {
        for fd in plan.shared_range() {
            p::close(fd);
        }
        // (--inherit-fd: this table is built, its children have forked)
        for &(_, fd) in &plan.inherit {
            p::close(fd);
        }
    }
    if let Some(g) = owner_of {
        // each member in turn: its mapped files opened, its own state set,
        // its report written (before this one's fs changes: they are the
        // members' too, and their paths are looked up as dumped)
        let (ur, uw, dr, dw) = plan.sync_fds(g);
        for _ in &plan.plan.share_groups[g].members {
            sync_send(dw, b'g')?;
            sync_wait(ur, b'd')?;
        }
        for fd in [ur, uw, dr, dw] {
            p::close(fd);
        }
    }
    if !share.files {
        files::close_memfds(plan, task);
    }
    restore_loginuid(task.loginuid)?;
    // fs (a member sharing it leaves it to the owner)
    if share.fs {
        if let Some(r) = plan.root.as_ref().filter(|_| !share.files) {
            p::close(r.fd.as_raw_fd());
        }
    } else if let Some(r) = &plan.root {
        // the task's root, looked up inside --root, becomes the root
        let dir = r
            .open(&task.fs.root, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC, 0)
            .map_err(|e| format!("root {:?} in {}: {e}", task.fs.root, r.path.display()))?;
        crate::sys::ns::chroot_to(dir.as_fd()).map_err(|e| format!("chroot to {:?} in {}: {e}", task.fs.root, r.path.display()))?;
        drop(dir);
        // the restored process must not inherit the engine's root fd (in
        // a shared fd table, the owner closes it last)
        if !share.files {
            p::close(r.fd.as_raw_fd());
        }
    } else if task.fs.root != "/" {
        let root = &task.fs.root;
        let c = CString::new(root.clone()).map_err(|_| "root path has a NUL".to_string())?;
        p::chroot(&c).map_err(|e| format!("chroot {root:?}: {e}"))?;
    }
    if !share.fs {
        let cwd = CString::new(task.fs.cwd.clone()).map_err(|_| "cwd has a NUL".to_string())?;
        p::chdir(&cwd).map_err(|e| format!("chdir {:?}: {e}", task.fs.cwd))?;
        p::umask(task.fs.umask);
    }
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
    // last: no fd the process closes from here on may drop a POSIX lock
    files::take_locks(plan, task, i)?;
    Ok(())
}

/// One byte on a share group's sync pipe.
fn sync_send(fd: i32, b: u8) -> Result<(), String> {
    p::write_raw(fd, &[b]).map(drop).map_err(|e| format!("share group sync pipe {fd}: {e}"))
}

/// Wait for byte `want` on a share group's sync pipe (the engine's report
/// timeout bounds the wait: it kills the tree).
fn sync_wait(fd: i32, want: u8) -> Result<(), String> {
    let mut b = [0u8; 1];
    loop {
        match p::read_raw(fd, &mut b) {
            Ok(1) if b[0] == want => return Ok(()),
            Ok(1) => return Err(format!("share group sync pipe {fd}: {:?} instead of {:?}", b[0] as char, want as char)),
            Ok(_) => return Err(format!("share group sync pipe {fd}: closed")),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(format!("share group sync pipe {fd}: {e}")),
        }
    }
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

/// Entry point of every forked process of the tree (node `n` of the
/// plan; `under_helper`: forked by a helper, which exits: no parent-death
/// signal then). Never returns: a live process reports and waits to be
/// seized, a helper exits, a zombie dies with its status.
pub fn child_main(plan: &ChildPlan, tree: &Tree, n: usize, under_helper: bool) -> ! {
    let node = &plan.plan.nodes[n];
    let ns_pid = node.pid;
    // our pid as the engine sees it (the engine's /proc; read before any
    // chroot)
    let host = std::fs::read_link("/proc/self").ok().and_then(|l| l.to_str()?.parse::<i32>().ok()).unwrap_or(0);
    let mut terminal = None;
    let prep = (|| -> Result<(), String> {
        p::block_all_signals().map_err(|e| format!("blocking signals: {e}"))?;
        // die with the parent (the engine, for the root) until the engine
        // has seized us
        if !under_helper {
            p::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as u64, 0, 0, 0).map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
        }
        if n == 0 {
            p::dup2(plan.report_fd, plan.svc_base).map_err(|e| format!("moving the report pipe: {e}"))?;
            if let Some((from, to)) = plan.engine {
                p::dup2(from, to).map_err(|e| format!("keeping the engine's pidfd: {e}"))?;
            }
            terminal = files::park_terminal(plan)?;
        } else if plan.shell_job && p::fcntl_int(plan.svc_base - 1, libc::F_GETFD, 0).is_ok() {
            terminal = Some(plan.svc_base - 1);
        }
        let mut keep = vec![plan.svc_base];
        keep.extend(terminal);
        keep.extend(plan.root.as_ref().map(|r| r.fd.as_raw_fd()));
        keep.extend(plan.shared_range());
        keep.extend(plan.inherit.iter().map(|&(_, fd)| fd));
        if n != 0 {
            keep.extend(files::shared_memfd_slots(plan));
        }
        if n == 0 {
            keep.extend(plan.engine.map(|(_, to)| to));
            keep.extend(plan.orphan_sock);
        }
        match plan.plan.share_of(n) {
            // one fd table with its parent, already set as the owner left it
            Some((_, s)) if s.files => {}
            Some((g, s)) if s.fs => {
                let (a, b, c, d) = plan.sync_fds(g);
                keep.extend([a, b, c, d]);
                p::close_all_except(&keep);
            }
            _ => p::close_all_except(&keep),
        }
        setup_and_fork(plan, tree, n, terminal)
    })();
    let result = prep.and_then(|()| match node.role {
        Role::Helper => Ok(()),
        Role::Task(i) => match tree.tasks[i].zombie_exit {
            Some(_) => {
                let comm = CString::new(tree.tasks[i].comm.clone()).unwrap_or_default();
                p::set_comm(&comm).map_err(|e| format!("PR_SET_NAME: {e}"))?;
                node.join_group.map_or(Ok(()), join_group)
            }
            None => run(plan, tree, n, i, terminal),
        },
    });
    let failed = result.is_err();
    // EPIPE: the engine died; go too
    if report(plan, ns_pid, host, result).is_err() || failed {
        p::exit_now(1)
    }
    // a member of a share group: done, the owner goes on (a shared fd
    // table's report pipe is closed by the owner, after all)
    let member = plan.plan.share_of(n).filter(|&(g, _)| plan.plan.share_groups[g].owner != n);
    if let Some((g, s)) = member {
        let (ur, uw, dr, dw) = plan.sync_fds(g);
        if sync_send(uw, b'd').is_err() {
            p::exit_now(1)
        }
        if s.files {
            p::pause_forever()
        }
        for fd in [ur, uw, dr, dw] {
            p::close(fd);
        }
    }
    match node.role {
        Role::Helper => p::exit_now(0),
        Role::Task(i) => {
            if let Some(status) = tree.tasks[i].zombie_exit {
                p::die_with_status(status)
            }
        }
    }
    // (`report-pipe-held:fail`, for tests: the process keeps its end, as
    // one seized between its report and this close does; a pipelined
    // restore closes it by injection)
    if !crate::fault::fails("report-pipe-held") {
        p::close(plan.svc_base);
    }
    match plan.engine.filter(|_| n == 0) {
        // readable once the engine has exited (a seize stops this wait
        // for good: the memory it runs in is replaced)
        Some((_, fd)) => {
            p::wait_readable(fd);
            p::exit_now(1)
        }
        None => p::pause_forever(),
    }
}
