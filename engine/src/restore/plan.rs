//! The restore plan of a tree, made before anything is forked: who forks
//! whom (a process's dumped parent, or a helper standing in for a session
//! or group leader that is gone), which session and group calls each
//! process makes, and which open file descriptions more than one process
//! holds (those are made once, by the root, and inherited).
//!
//! Sessions and groups can only be had by inheritance or by the process
//! itself: `setsid()` makes a new session (and group) led by the caller,
//! `setpgid(0, 0)` a new group, `setpgid(0, G)` joins group G of the
//! caller's own session. So each process is forked by a process of its
//! session: its parent when they share one, else a helper whose pid is
//! the session id (the leader exited; its children were reparented to
//! the reaper): the helper calls `setsid()`, forks them, and exits, and
//! the reaper (the tree's pid-namespace init, or a child subreaper)
//! collects it, as upstream restores such trees. A group whose leader is
//! gone gets a helper the same way; a group whose leader is in the tree is
//! joined once the leader has made it.

use super::RestoreError;
use crate::model::{FileDesc, Tree};
use std::collections::HashMap;

/// What one forked process of the plan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `tree.tasks[i]`: a live process, or a zombie that exits with its
    /// status once its ids are set.
    Task(usize),
    /// Stands in for a gone session or group leader: sets the ids up,
    /// forks its children and exits; its parent (a reaper) collects it.
    Helper,
}

#[derive(Debug, Clone)]
pub struct Node {
    /// Pid in the tree's pid namespace (clone3 set_tid).
    pub pid: i32,
    pub role: Role,
    /// Calls `setsid()` before it forks.
    pub setsid: bool,
    /// Calls `setpgid(0, 0)` before it forks.
    pub own_group: bool,
    /// Joins this group (`setpgid(0, G)`) after it forked its children,
    /// once the group exists.
    pub join_group: Option<i32>,
    /// Nodes it forks, in order.
    pub children: Vec<usize>,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Node 0 is the root.
    pub nodes: Vec<Node>,
    /// Open file descriptions (`Fd::desc`) the root makes for the whole
    /// tree, in order: those held by more than one process, and every
    /// description of a pipe, FIFO or ghost file that more than one process
    /// holds a part of.
    pub shared: Vec<u32>,
    /// Processes that share an fd table or fs struct with their parent
    /// (forked with CLONE_FILES / CLONE_FS), grouped by the first process
    /// of each chain (the owner, which sets the shared state up once).
    pub share_groups: Vec<ShareGroup>,
}

/// What a process shares with the parent that forks it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Share {
    /// CLONE_FILES: one fd table.
    pub files: bool,
    /// CLONE_FS: one cwd, root and umask.
    pub fs: bool,
}

impl Share {
    /// The clone flags of the fork.
    pub fn clone_flags(self) -> u64 {
        (if self.files { libc::CLONE_FILES as u64 } else { 0 }) | (if self.fs { libc::CLONE_FS as u64 } else { 0 })
    }
}

/// An owner and the processes forked sharing its fd table or fs struct
/// (directly or down a chain of such forks). The owner sets the fd table
/// and the fs up; the members wait for it (see `child.rs`).
#[derive(Debug, Clone)]
pub struct ShareGroup {
    /// Node of the owner.
    pub owner: usize,
    /// (node, what it shares with its parent, which shares the same with
    /// the owner), in fork order.
    pub members: Vec<(usize, Share)>,
}

impl Plan {
    /// The group node `n` owns or is a member of: (group index, what it
    /// shares with its parent; default for the owner).
    pub fn share_of(&self, n: usize) -> Option<(usize, Share)> {
        self.share_groups.iter().enumerate().find_map(|(g, sg)| {
            if sg.owner == n {
                return Some((g, Share::default()));
            }
            sg.members.iter().find(|(m, _)| *m == n).map(|&(_, s)| (g, s))
        })
    }

    /// Node of `tree.tasks[i]`.
    pub fn node_of(&self, i: usize) -> Option<usize> {
        self.nodes.iter().position(|n| n.role == Role::Task(i))
    }
}

fn refuse(what: String) -> RestoreError {
    RestoreError::Unsupported(what)
}

/// Make the plan of `tree` (pstree order was checked when it was read:
/// parents before children, pids unique, zombies childless).
pub fn make(tree: &Tree) -> Result<Plan, RestoreError> {
    let tasks = &tree.tasks;
    check_unshared(tree)?;
    crate::kinds::pty::check_sessions(tree).map_err(refuse)?;
    crate::kinds::pidfd::check_image(tree).map_err(refuse)?;
    let index: HashMap<i32, usize> = tasks.iter().enumerate().map(|(i, t)| (t.pid, i)).collect();
    let mut nodes: Vec<Node> = Vec::with_capacity(tasks.len());
    // per node: (sid, pgid) its children inherit (the ids at the time it
    // forks: a group it joins is joined after its forks)
    let mut at_fork: Vec<(i32, i32)> = Vec::with_capacity(tasks.len());
    let mut node_of_task: Vec<usize> = vec![0; tasks.len()];
    let root = &tasks[0];
    let root_setsid = root.sid == root.pid;
    nodes.push(Node { pid: root.pid, role: Role::Task(0), setsid: root_setsid, own_group: !root_setsid && root.pgid == root.pid, join_group: None, children: vec![] });
    // the root's ids as the image has them (when not its own, they are
    // the restoring criu's: a shell job's session and group)
    at_fork.push((root.sid, root.pgid));
    let is_reaper = |i: usize| (i == 0 && tree.root_owns_pid_ns) || tasks[i].child_subreaper;
    for (i, t) in tasks.iter().enumerate().skip(1) {
        // (validate::pstree saw to it for images; a tree made otherwise is
        // refused, not a panic)
        let parent_task = *index.get(&t.ppid).filter(|&&p| p < i).ok_or_else(|| refuse(format!("process {}: its parent {} is not an earlier process of the tree", t.pid, t.ppid)))?;
        let parent = node_of_task[parent_task];
        let mut forker = parent;
        let (mut sid, mut pgid) = at_fork[parent];
        let mut node = Node { pid: t.pid, role: Role::Task(i), setsid: false, own_group: false, join_group: None, children: vec![] };
        let helper = |nodes: &mut Vec<Node>, at_fork: &mut Vec<(i32, i32)>, under: usize, pid: i32, setsid: bool, ids: (i32, i32)| -> Result<usize, RestoreError> {
            if let Some(&h) = nodes[under].children.iter().find(|&&c| nodes[c].role == Role::Helper && nodes[c].pid == pid) {
                return Ok(h);
            }
            if nodes.iter().any(|n| n.pid == pid) {
                return Err(refuse(format!("pid {pid} is wanted for two helpers of the tree")));
            }
            nodes.push(Node { pid, role: Role::Helper, setsid, own_group: !setsid, join_group: None, children: vec![] });
            at_fork.push(ids);
            let h = nodes.len() - 1;
            nodes[under].children.push(h);
            Ok(h)
        };
        if t.sid == t.pid {
            node.setsid = true;
        } else if t.sid != sid {
            if index.contains_key(&t.sid) {
                return Err(refuse(format!(
                    "process {} is in session {} of process {}, which is not its parent {}'s session: such a tree is not supported yet",
                    t.pid, t.sid, t.sid, t.ppid
                )));
            }
            if !is_reaper(parent_task) {
                return Err(refuse(format!(
                    "process {} is in session {} whose leader is gone, but its parent {} is neither the pid namespace's init nor a child subreaper: the tree can't be rebuilt with that shape",
                    t.pid, t.sid, t.ppid
                )));
            }
            if t.sid <= 0 {
                return Err(refuse(format!("process {} is in session {} (outside the tree's pid namespace), not its parent's", t.pid, t.sid)));
            }
            forker = helper(&mut nodes, &mut at_fork, forker, t.sid, true, (t.sid, t.sid))?;
            (sid, pgid) = (t.sid, t.sid);
        }
        if node.setsid {
            // a session leader leads its group (checked when read)
        } else if t.pgid == pgid {
            // inherited
        } else if t.pgid == t.pid {
            node.own_group = true;
        } else if let Some(&l) = index.get(&t.pgid).filter(|&&l| tasks[l].pgid == t.pgid) {
            if tasks[l].sid != t.sid {
                return Err(refuse(format!("process {} is in group {} of another session ({}, not {})", t.pid, t.pgid, tasks[l].sid, t.sid)));
            }
            node.join_group = Some(t.pgid);
        } else {
            // the group's leader is gone: a helper makes the group
            if !is_reaper(parent_task) {
                return Err(refuse(format!(
                    "process {} is in group {} whose leader is gone, but its parent {} is neither the pid namespace's init nor a child subreaper: the tree can't be rebuilt with that shape",
                    t.pid, t.pgid, t.ppid
                )));
            }
            if t.pgid <= 0 || index.contains_key(&t.pgid) {
                return Err(refuse(format!("process {} is in group {} that no process of the tree can make", t.pid, t.pgid)));
            }
            forker = helper(&mut nodes, &mut at_fork, forker, t.pgid, false, (sid, t.pgid))?;
        }
        let ids = if node.setsid {
            (t.pid, t.pid)
        } else if node.own_group {
            (sid, t.pid)
        } else {
            (sid, pgid) // a group joined later is not inherited
        };
        nodes.push(node);
        at_fork.push(ids);
        let n = nodes.len() - 1;
        nodes[forker].children.push(n);
        node_of_task[i] = n;
    }
    let share_groups = share_groups(tree, &nodes, &node_of_task)?;
    Ok(Plan { nodes, shared: shared_descriptions(tree), share_groups })
}

/// The fd tables and fs structs processes share (equal `files`/`fs` ids of
/// the image, as kcmp found them at dump): each process that shares one
/// with its parent is forked by that parent with CLONE_FILES / CLONE_FS.
/// What can't be had that way is refused by name: sharing with a process
/// that is not the parent (or is not on the chain of such forks), or a
/// process forked by a helper.
fn share_groups(tree: &Tree, nodes: &[Node], node_of_task: &[usize]) -> Result<Vec<ShareGroup>, RestoreError> {
    let tasks = &tree.tasks;
    let live = |i: usize| tasks[i].zombie_exit.is_none();
    let index: HashMap<i32, usize> = tasks.iter().enumerate().map(|(i, t)| (t.pid, i)).collect();
    // per task: what it shares with its parent, and its group's owner (a task)
    let mut share = vec![Share::default(); tasks.len()];
    let mut owner: Vec<usize> = (0..tasks.len()).collect();
    for i in 1..tasks.len() {
        let t = &tasks[i];
        let Some(&p) = index.get(&t.ppid) else { continue };
        if !live(i) || !live(p) {
            continue;
        }
        let s = Share { files: t.ids.files != 0 && t.ids.files == tasks[p].ids.files, fs: t.ids.fs != 0 && t.ids.fs == tasks[p].ids.fs };
        if s != Share::default() {
            share[i] = s;
            owner[i] = owner[p];
        }
    }
    type IdOf = fn(&crate::model::KobjIds) -> u32;
    let kinds: [(&str, IdOf); 2] = [("an fd table (CLONE_FILES)", |k| k.files), ("an fs struct (CLONE_FS)", |k| k.fs)];
    for (what, id) in kinds {
        let mut first: HashMap<u32, usize> = HashMap::new();
        for i in (0..tasks.len()).filter(|&i| live(i)) {
            let v = id(&tasks[i].ids);
            if v == 0 {
                continue;
            }
            let Some(&a) = first.get(&v) else {
                first.insert(v, i);
                continue;
            };
            // a shares it with i: both on one chain of forks that share it
            // from the owner down
            let o = owner[i];
            let chain_ok = owner[a] == o && id(&tasks[o].ids) == v && {
                let p = index.get(&tasks[i].ppid).copied();
                p.is_some_and(|p| id(&tasks[p].ids) == v)
            };
            if !chain_ok {
                return Err(refuse(format!(
                    "processes {} and {} share {what}, but {} is not forked sharing it by its parent {} (only sharing along a chain of parents can be restored)",
                    tasks[a].pid, tasks[i].pid, tasks[i].pid, tasks[i].ppid
                )));
            }
        }
    }
    let mut groups: Vec<ShareGroup> = Vec::new();
    for i in 0..tasks.len() {
        if share[i] == Share::default() {
            continue;
        }
        let n = node_of_task[i];
        let parent_node = node_of_task[index[&tasks[i].ppid]];
        if !nodes[parent_node].children.contains(&n) {
            return Err(refuse(format!(
                "process {} shares its parent {}'s fd table or fs struct but must be forked by a helper (its session or group leader is gone): not supported",
                tasks[i].pid, tasks[i].ppid
            )));
        }
        let o = node_of_task[owner[i]];
        match groups.iter_mut().find(|g| g.owner == o) {
            Some(g) => g.members.push((n, share[i])),
            None => groups.push(ShareGroup { owner: o, members: vec![(n, share[i])] }),
        }
    }
    Ok(groups)
}

/// Processes that share signal handlers or an address space (clone with
/// CLONE_SIGHAND or CLONE_VM but not CLONE_THREAD: the ids of the image
/// are equal) would come back with one each: refused by name. (Shared fd
/// tables and fs structs are restored: `share_groups`.)
fn check_unshared(tree: &Tree) -> Result<(), RestoreError> {
    let live: Vec<&crate::model::Task> = tree.tasks.iter().filter(|t| t.zombie_exit.is_none()).collect();
    for (k, a) in live.iter().enumerate() {
        for b in &live[k + 1..] {
            let kinds = [("signal handlers (CLONE_SIGHAND)", a.ids.sighand, b.ids.sighand), ("an address space (CLONE_VM)", a.ids.vm, b.ids.vm)];
            if let Some((what, _, _)) = kinds.iter().find(|(_, x, y)| *x != 0 && x == y) {
                return Err(refuse(format!("processes {} and {} share {what}: restoring that is not supported yet", a.pid, b.pid)));
            }
        }
    }
    Ok(())
}

/// What one open file description is part of, for sharing: a pipe, a FIFO
/// (and whatever else a resource kind names, `FileKind::object`),
/// a ghost file (recreated once for all its descriptions), or itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Object {
    Ghost(u64, u64),
    /// Both ends of a connected unix socket pair: made together.
    UnixPair(u32, u32),
    /// A pty pair (by index): master and slaves, made by the root.
    Pty(u32),
    /// The object of a resource kind (by the kind's name and its key,
    /// `FileKind::object`: a pipe, a FIFO).
    Kind(&'static str, u64),
    Desc(u32),
}

fn object_of(f: &crate::model::Fd) -> Object {
    match &f.file {
        FileDesc::Kind(crate::kinds::Kind::Reg(crate::kinds::reg::Reg { ghost: Some(g), .. })) => Object::Ghost(g.dev, g.ino),
        FileDesc::Kind(crate::kinds::Kind::Unix(u)) => match crate::kinds::unix::pair_key(u) {
            Some((a, b)) => Object::UnixPair(a, b),
            None => Object::Desc(f.desc),
        },
        FileDesc::Kind(crate::kinds::Kind::Pty(p)) => Object::Pty(p.index),
        FileDesc::Kind(k) => match k.object() {
            Some((kind, key)) => Object::Kind(kind, key),
            None => Object::Desc(f.desc),
        },
    }
}

/// Descriptions the root makes for the tree (see [`Plan::shared`]); and
/// what a shared one of the resource kinds waits on (epoll: its targets)
/// is made there too, before it.
fn shared_descriptions(tree: &Tree) -> Vec<u32> {
    use std::collections::HashSet;
    let mut holders: HashMap<Object, (usize, bool)> = HashMap::new(); // first holder, several?
    for (i, t) in tree.tasks.iter().enumerate() {
        for f in &t.fds {
            let e = holders.entry(object_of(f)).or_insert((i, false));
            if e.0 != i {
                e.1 = true;
            }
        }
    }
    // a file unlinked while mapped is recreated once, by the root: an fd
    // of the same inode must be made from that one
    for f in tree.tasks.iter().flat_map(|t| t.mm.vmas.iter().filter_map(|v| v.file.as_ref())) {
        if let Some(g) = &f.ghost {
            if let Some(e) = holders.get_mut(&Object::Ghost(g.dev, g.ino)) {
                e.1 = true;
            }
        }
    }
    // a pty pair is the root's whoever holds it: a session leader takes
    // it as its controlling terminal before it forks
    for (o, e) in holders.iter_mut() {
        if matches!(o, Object::Pty(_)) {
            e.1 = true;
        }
    }
    let mut shared: HashSet<u32> = HashSet::new();
    for t in &tree.tasks {
        for f in &t.fds {
            if holders[&object_of(f)].1 {
                shared.insert(f.desc);
            }
        }
    }
    let mut out = Vec::new();
    for t in &tree.tasks {
        for f in &t.fds {
            if shared.contains(&f.desc) && !out.contains(&f.desc) {
                out.push(f.desc);
            }
        }
    }
    // what a shared resource kind's description needs made first (epoll:
    // its targets) is made by the root too, whoever holds it
    let mut i = 0;
    while i < out.len() {
        let d = out[i];
        let first = tree.tasks.iter().find_map(|t| Some((t, t.fds.iter().find(|f| f.desc == d)?)));
        if let Some((t, crate::model::Fd { file: FileDesc::Kind(k), .. })) = first {
            for n in k.after() {
                // every description of that object (a pipe's other end too)
                let Some(o) = t.fds.iter().find(|x| x.fd == n).map(object_of) else { continue };
                for f in tree.tasks.iter().flat_map(|t| &t.fds) {
                    if object_of(f) == o && !out.contains(&f.desc) {
                        out.push(f.desc);
                    }
                }
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Task;

    fn task(pid: i32, ppid: i32, pgid: i32, sid: i32) -> Task {
        Task { pid, ppid, pgid, sid, ..Default::default() }
    }

    fn tree(tasks: Vec<Task>) -> Tree {
        Tree { root_owns_pid_ns: tasks[0].pid == 1, tasks, ..Default::default() }
    }

    #[test]
    fn inherited_ids_need_no_call() {
        let p = make(&tree(vec![task(1, 0, 1, 1), task(2, 1, 1, 1), task(3, 2, 1, 1)])).unwrap();
        assert_eq!(p.nodes.len(), 3);
        assert!(p.nodes[0].setsid);
        assert!(!p.nodes[1].setsid && !p.nodes[1].own_group && p.nodes[1].join_group.is_none());
        assert_eq!(p.nodes[1].children, vec![2]);
    }

    #[test]
    fn own_groups_and_joined_groups() {
        // 2 leads group 2; 3 (child of 1) joins group 2; 4 (child of 2) inherits it
        let p = make(&tree(vec![task(1, 0, 1, 1), task(2, 1, 2, 1), task(3, 1, 2, 1), task(4, 2, 2, 1)])).unwrap();
        assert!(p.nodes[1].own_group);
        assert_eq!(p.nodes[2].join_group, Some(2));
        assert!(p.nodes[3].join_group.is_none() && !p.nodes[3].own_group);
    }

    #[test]
    fn a_child_of_a_joiner_joins_too() {
        // 3 joins group 2 after forking 4, so 4 must join on its own
        let p = make(&tree(vec![task(1, 0, 1, 1), task(2, 1, 2, 1), task(3, 1, 2, 1), task(4, 3, 2, 1)])).unwrap();
        assert_eq!(p.nodes[3].join_group, Some(2));
    }

    #[test]
    fn gone_session_leader_gets_a_helper_under_the_init() {
        // 5 led session 5 and exited; its child 6 was reparented to init 1
        let p = make(&tree(vec![task(1, 0, 1, 1), task(6, 1, 5, 5), task(7, 1, 5, 5)])).unwrap();
        assert_eq!(p.nodes.len(), 4);
        let h = p.nodes[0].children[0];
        assert_eq!((p.nodes[h].pid, p.nodes[h].role, p.nodes[h].setsid), (5, Role::Helper, true));
        assert_eq!(p.nodes[h].children.len(), 2, "one helper for both");
    }

    #[test]
    fn gone_group_leader_gets_a_helper() {
        let p = make(&tree(vec![task(1, 0, 1, 1), task(6, 1, 5, 1)])).unwrap();
        let h = p.nodes[0].children[0];
        assert_eq!((p.nodes[h].pid, p.nodes[h].role, p.nodes[h].own_group), (5, Role::Helper, true));
    }

    #[test]
    fn gone_leader_under_a_non_reaper_is_refused() {
        let t = tree(vec![task(100, 0, 100, 100), task(101, 100, 99, 99)]);
        let e = make(&t).unwrap_err().to_string();
        assert!(e.contains("session 99 whose leader is gone"), "{e}");
    }

    fn with_ids(mut t: Task, files: u32, fs: u32) -> Task {
        t.ids.files = files;
        t.ids.fs = fs;
        t
    }

    #[test]
    fn shared_tables_are_forked_sharing() {
        // 2 shares 1's fd table, 3 its fs, 4 (child of 2) the fd table too
        let t = tree(vec![with_ids(task(1, 0, 1, 1), 1, 1), with_ids(task(2, 1, 1, 1), 1, 2), with_ids(task(3, 1, 1, 1), 2, 1), with_ids(task(4, 2, 1, 1), 1, 3)]);
        let p = make(&t).unwrap();
        assert_eq!(p.share_groups.len(), 1);
        let g = &p.share_groups[0];
        assert_eq!(g.owner, 0);
        let m: Vec<(usize, u64)> = g.members.iter().map(|&(n, s)| (n, s.clone_flags())).collect();
        assert_eq!(m, vec![(1, libc::CLONE_FILES as u64), (2, libc::CLONE_FS as u64), (3, libc::CLONE_FILES as u64)]);
        assert_eq!(p.share_of(3).map(|(g, s)| (g, s.files)), Some((0, true)));
    }

    #[test]
    fn sharing_off_the_chain_of_parents_is_refused() {
        // siblings 2 and 3 share a table their parent 1 does not have
        let t = tree(vec![with_ids(task(1, 0, 1, 1), 1, 1), with_ids(task(2, 1, 1, 1), 2, 2), with_ids(task(3, 1, 1, 1), 2, 3)]);
        let e = make(&t).unwrap_err().to_string();
        assert!(e.contains("processes 2 and 3 share an fd table (CLONE_FILES)"), "{e}");
        // a chain that changes kind: 2 shares 1's fs, 3 shares 2's (own) fd table
        let t = tree(vec![with_ids(task(1, 0, 1, 1), 1, 1), with_ids(task(2, 1, 1, 1), 2, 1), with_ids(task(3, 2, 1, 1), 2, 3)]);
        let e = make(&t).unwrap_err().to_string();
        assert!(e.contains("processes 2 and 3 share an fd table"), "{e}");
    }

    #[test]
    fn session_of_a_living_non_parent_is_refused() {
        let t = tree(vec![task(1, 0, 1, 1), task(2, 1, 2, 2), task(3, 1, 2, 2)]);
        assert!(make(&t).unwrap_err().to_string().contains("not its parent 1's session"));
    }
}
