//! Cgroup membership of a tree's processes (`cgroup.img`), all three
//! halves, as upstream CRIU 4.2 images it (its dump of a process in a
//! `pids` and a `cpu` cgroup of its own, read with crit, is the
//! reference), and `--manage-cgroups MODE` / RPC `manage_cgroups(_mode)`.
//!
//! - dump ([`collect`]): every thread's /proc/PID/task/TID/cgroup (a
//!   thread in other cgroups than its process's is refused naming it).
//!   When every process is in criu's own cgroups nothing is written (as
//!   upstream: each thread's `cg_set` is 1, inventory's `root_cg_set` 1).
//!   Else `cgroup.img` holds one set per distinct membership (id 1 for
//!   criu's own, 2.. for the others, in pstree order; a set's members are
//!   `name` = the hierarchy's controllers as /proc shows them, e.g. `cpu`,
//!   `name=systemd`, "" for cgroup2, and `path` absolute, sorted by name)
//!   and one controller entry per hierarchy with a dir per path the sets
//!   use (`dir_name` relative to the hierarchy's root, "" the root), its
//!   owner and mode, and the properties upstream reads by default
//!   ([`PROPS`]) that exist there. The hierarchies are found through
//!   criu's mountinfo (a mount of the hierarchy's root); one not mounted
//!   is refused by name. A thread's `thread_core.cg_set` is its set.
//! - images ([`write_image`], [`read_image`]): read back, every name,
//!   path and property is checked (paths relative, no `.`/`..`/empty
//!   components; property names from [`PROPS`] only: no write to any
//!   other file of a hierarchy ever comes from an image), errors naming
//!   cgroup.img, the set or dir, and the field.
//! - restore ([`Prepared::prepare`] before the tree is forked, then
//!   [`Prepared::join`] once every process exists, before any is seized):
//!   per mode, the cgroups the sets name are required to exist (`none`,
//!   `props`), made where missing (`soft`, the default, and `full`), or
//!   required not to exist and made (`strict`); properties are written
//!   to the dirs made (`soft`) or to every dir of the sets (`props`,
//!   `full`, `strict`), cpuset's cpus and mems first, each only when it
//!   differs from the dir's value; then each process whose set differs
//!   from criu's own is moved by writing its host pid to the
//!   `cgroup.procs` of each such cgroup (its threads, made later, follow
//!   it). Dirs the restore made are removed again if it fails. `ignore`
//!   neither dumps nor restores memberships.
//!
//! Dirs of the image that no process is in (upstream also dumps the
//! subtree below a process's cgroup) are read and checked, not made.
//!
//! `--cgroup-root [CTRL:]PATH` (RPC `cg_root`, what runc sends to restore
//! a container into the cgroup it made for it): the root process's cgroup
//! of that hierarchy becomes PATH, the others keep their place below it.
//!
//! Not done: `--cgroup-props`, `--cgroup-dump-controller`, `--cgroup-yard` (refused
//! by name), trees in a cgroup namespace of their own (refused by the
//! namespace check), threads of a process in different cgroups. Pages a process touched
//! before its move (its copy-on-write preparation) stay charged to
//! criu's memory cgroup.

use crate::images_io::ImagesError;
use crate::kinds::inotify::unescape;
use crate::sys::Pid;
use images_proto::image::{read_all, write_all};
use images_proto::magic as mg;
use images_proto::pb;
use std::path::{Path, PathBuf};

/// `--manage-cgroups` modes, upstream's names and RPC numbers
/// (`criu_cg_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Neither dumped nor restored.
    Ignore,
    /// Restore requires every cgroup to exist; no property written.
    Existing,
    /// Restore requires every cgroup to exist and writes the properties.
    Props,
    /// The default: missing cgroups made with their properties.
    #[default]
    Soft,
    /// Missing cgroups made; properties written to all.
    Full,
    /// Every cgroup must not exist; made with their properties.
    Strict,
}

impl Mode {
    /// `--manage-cgroups[=MODE]` (no value: soft, as upstream).
    pub fn parse(s: Option<&str>) -> Option<Mode> {
        Some(match s {
            None | Some("soft") | Some("default") => Mode::Soft,
            Some("ignore") => Mode::Ignore,
            Some("none") => Mode::Existing,
            Some("props") => Mode::Props,
            Some("full") => Mode::Full,
            Some("strict") => Mode::Strict,
            Some(_) => return None,
        })
    }

    /// `criu_opts.manage_cgroups_mode`.
    pub fn from_rpc(v: i32) -> Option<Mode> {
        Some(match v {
            0 => Mode::Ignore,
            1 => Mode::Existing,
            2 => Mode::Props,
            3 | 6 => Mode::Soft,
            4 => Mode::Full,
            5 => Mode::Strict,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Ignore => "ignore",
            Mode::Existing => "none",
            Mode::Props => "props",
            Mode::Soft => "soft",
            Mode::Full => "full",
            Mode::Strict => "strict",
        }
    }
}

/// What cgroup.img holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cgroups {
    pub sets: Vec<CgSet>,
    pub controllers: Vec<Controller>,
}

/// One membership: the cgroup of each hierarchy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgSet {
    pub id: u32,
    /// (hierarchy name, absolute path), sorted by name.
    pub ctls: Vec<(String, String)>,
}

/// A hierarchy: its controllers and the dirs the sets use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Controller {
    pub cnames: Vec<String>,
    pub dirs: Vec<CgDir>,
}

/// A cgroup dir (`path` relative to the hierarchy's root, "" the root).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgDir {
    pub path: String,
    pub props: Vec<(String, String)>,
    /// (mode, uid, gid)
    pub perms: Option<(u32, u32, u32)>,
}

/// The properties dumped and restored, per controller (upstream's default
/// list); the `cgroup.*`/`notify_on_release`/`tasks` ones of every v1
/// hierarchy are in [`COMMON_PROPS`]. cgroup2's own are under "".
pub const PROPS: &[(&str, &[&str])] = &[
    ("cpu", &["cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.rt_period_us", "cpu.rt_runtime_us"]),
    (
        "memory",
        &[
            "memory.limit_in_bytes",
            "memory.memsw.limit_in_bytes",
            "memory.swappiness",
            "memory.soft_limit_in_bytes",
            "memory.move_charge_at_immigrate",
            "memory.oom_control",
            "memory.use_hierarchy",
            "memory.kmem.limit_in_bytes",
            "memory.kmem.tcp.limit_in_bytes",
        ],
    ),
    (
        "cpuset",
        &[
            "cpuset.cpus",
            "cpuset.mems",
            "cpuset.memory_migrate",
            "cpuset.cpu_exclusive",
            "cpuset.mem_exclusive",
            "cpuset.mem_hardwall",
            "cpuset.memory_spread_page",
            "cpuset.memory_spread_slab",
            "cpuset.sched_load_balance",
            "cpuset.sched_relax_domain_level",
        ],
    ),
    ("blkio", &["blkio.weight"]),
    ("net_cls", &["net_cls.classid"]),
    ("net_prio", &["net_prio.ifpriomap"]),
    ("pids", &["pids.max"]),
    ("devices", &["devices.list"]),
    ("", &["cgroup.subtree_control", "cgroup.max.descendants", "cgroup.max.depth", "cgroup.freeze", "cgroup.type"]),
];

/// Of every cgroup v1 hierarchy (the membership files are read as "",
/// as upstream stores them, and never written).
pub const COMMON_PROPS: &[&str] = &["cgroup.clone_children", "notify_on_release", "cgroup.procs", "tasks"];

/// Longest property value taken from an image.
const MAX_VALUE: usize = 64 << 10;

fn known_prop(cnames: &[String], name: &str) -> bool {
    let v1 = !cnames.iter().any(|c| c.is_empty());
    (v1 && COMMON_PROPS.contains(&name))
        || PROPS.iter().any(|(c, ps)| ps.contains(&name) && (cnames.iter().any(|n| n == c) || (c.is_empty() && !v1)))
}

/// /proc/PID/cgroup's lines: (hierarchy name, path), sorted by name.
fn parse_membership(text: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, name, path) = (f.next()?, f.next()?, f.next()?);
            Some((name.to_string(), path.to_string()))
        })
        .collect();
    v.sort();
    v
}

fn read_membership(path: &str) -> std::io::Result<Vec<(String, String)>> {
    std::fs::read_to_string(path).map(|t| parse_membership(&t))
}

/// The hierarchies criu's /proc/self/cgroup names, each with a mount of
/// its root in criu's mount namespace (None: not mounted here).
fn hierarchies(names: &[(String, String)]) -> Vec<(String, Option<PathBuf>)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounts: Vec<(String, String, String, String)> = info
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let lf: Vec<&str> = left.split(' ').collect();
            let rf: Vec<&str> = right.split(' ').collect();
            Some((unescape(lf.get(3)?), unescape(lf.get(4)?), rf.first()?.to_string(), rf.get(2).copied().unwrap_or("").to_string()))
        })
        .collect();
    names
        .iter()
        .map(|(name, _)| {
            let found = mounts.iter().find(|(root, _, fstype, opts)| {
                root == "/"
                    && if name.is_empty() {
                        fstype == "cgroup2"
                    } else {
                        fstype == "cgroup" && name.split(',').all(|c| opts.split(',').any(|o| o == c))
                    }
            });
            (name.clone(), found.map(|(_, mp, _, _)| PathBuf::from(mp)))
        })
        .collect()
}

fn mount_of(h: &[(String, Option<PathBuf>)], name: &str) -> Result<PathBuf, String> {
    match h.iter().find(|(n, _)| n == name) {
        Some((_, Some(m))) => Ok(m.clone()),
        Some((_, None)) => Err(format!("its cgroup hierarchy {} is not mounted in criu's mount namespace", shown(name))),
        None => Err(format!("cgroup hierarchy {} is not one of this machine's (criu's /proc/self/cgroup)", shown(name))),
    }
}

fn shown(name: &str) -> String {
    if name.is_empty() {
        "\"\" (cgroup2)".into()
    } else {
        format!("{name:?}")
    }
}

fn perms_of(p: &Path) -> Option<(u32, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.mode(), m.uid(), m.gid()))
}

/// Dump: the memberships of the live processes `procs` (host pids, in
/// pstree order): the image (None: all in criu's own cgroups) and each
/// process's set id (1: criu's own).
pub fn collect(procs: &[Pid]) -> Result<(Option<Cgroups>, Vec<u32>), (Pid, String)> {
    let own = read_membership("/proc/self/cgroup").map_err(|e| (0, format!("reading criu's /proc/self/cgroup: {e}")))?;
    let mut sets: Vec<Vec<(String, String)>> = Vec::new();
    let mut ids = Vec::with_capacity(procs.len());
    for &p in procs {
        let main = read_membership(&format!("/proc/{p}/cgroup")).map_err(|e| (p, format!("reading /proc/{p}/cgroup: {e}")))?;
        let tasks = std::fs::read_dir(format!("/proc/{p}/task")).map_err(|e| (p, format!("listing /proc/{p}/task: {e}")))?;
        for t in tasks.flatten() {
            let tid = t.file_name().to_string_lossy().into_owned();
            // (a thread gone since: nothing to compare)
            let Ok(m) = read_membership(&format!("/proc/{p}/task/{tid}/cgroup")) else { continue };
            if m != main {
                let (n, path) = m.iter().find(|x| !main.contains(x)).cloned().unwrap_or_default();
                return Err((p, format!("thread {tid} is in cgroup {}:{path}, not its process's: threads in cgroups of their own are not supported", shown(&n))));
            }
        }
        if main == own {
            ids.push(1);
            continue;
        }
        let k = match sets.iter().position(|s| *s == main) {
            Some(k) => k,
            None => {
                sets.push(main);
                sets.len() - 1
            }
        };
        ids.push(k as u32 + 2);
    }
    if sets.is_empty() {
        return Ok((None, ids));
    }
    let h = hierarchies(&own);
    let mut cg = Cgroups::default();
    if ids.contains(&1) {
        cg.sets.push(CgSet { id: 1, ctls: own.clone() });
    }
    for (k, s) in sets.iter().enumerate() {
        cg.sets.push(CgSet { id: k as u32 + 2, ctls: s.clone() });
    }
    // one controller entry per hierarchy, a dir per path used
    let first = procs.first().copied().unwrap_or(0);
    for (name, _) in &own {
        let cnames: Vec<String> = if name.is_empty() { vec![String::new()] } else { name.split(',').map(str::to_string).collect() };
        // (a hierarchy criu's namespace does not mount is needed only
        // where a process is in another of its cgroups than criu)
        let mine = own.iter().find(|(n, _)| n == name).map(|(_, p)| p);
        let needed = cg.sets.iter().any(|s| s.ctls.iter().any(|(n, p)| n == name && Some(p) != mine));
        let mount = match mount_of(&h, name) {
            Ok(m) => m,
            Err(_) if !needed => {
                cg.controllers.push(Controller { cnames, dirs: Vec::new() });
                continue;
            }
            Err(e) => return Err((first, e)),
        };
        let mut dirs: Vec<CgDir> = Vec::new();
        for s in &cg.sets {
            let Some((_, path)) = s.ctls.iter().find(|(n, _)| n == name) else { continue };
            let rel = path.trim_start_matches('/').to_string();
            if dirs.iter().any(|d| d.path == rel) {
                continue;
            }
            let at = mount.join(&rel);
            let mut props = Vec::new();
            let names = PROPS.iter().filter(|(c, _)| cnames.iter().any(|n| n == c)).flat_map(|(_, ps)| ps.iter());
            let common = if name.is_empty() { &[][..] } else { COMMON_PROPS };
            for p in names.chain(common.iter()) {
                let v = if *p == "cgroup.procs" || *p == "tasks" {
                    if !at.join(p).exists() {
                        continue;
                    }
                    String::new()
                } else {
                    match std::fs::read_to_string(at.join(p)) {
                        Ok(v) => v.trim_end_matches('\n').to_string(),
                        Err(_) => continue,
                    }
                };
                props.push((p.to_string(), v));
            }
            dirs.push(CgDir { path: rel, props, perms: perms_of(&at) });
        }
        cg.controllers.push(Controller { cnames, dirs });
    }
    Ok((Some(cg), ids))
}

fn perms_pb(p: Option<(u32, u32, u32)>) -> Option<pb::CgroupPerms> {
    p.map(|(mode, uid, gid)| pb::CgroupPerms { mode, uid, gid })
}

/// Write cgroup.img.
pub fn write_image(dir: &Path, cg: &Cgroups) -> Result<(), ImagesError> {
    let e = pb::CgroupEntry {
        sets: cg
            .sets
            .iter()
            .map(|s| pb::CgSetEntry { id: s.id, ctls: s.ctls.iter().map(|(name, path)| pb::CgMemberEntry { name: name.clone(), path: path.clone(), cgns_prefix: None }).collect() })
            .collect(),
        controllers: cg
            .controllers
            .iter()
            .map(|c| pb::CgControllerEntry {
                cnames: c.cnames.clone(),
                dirs: c
                    .dirs
                    .iter()
                    .map(|d| pb::CgroupDirEntry {
                        dir_name: d.path.clone(),
                        children: vec![],
                        properties: d.props.iter().map(|(name, value)| pb::CgroupPropEntry { name: name.clone(), value: value.clone(), perms: None }).collect(),
                        dir_perms: perms_pb(d.perms),
                    })
                    .collect(),
                // (as upstream marks them: a v1 hierarchy places threads)
                is_threaded: Some(!c.cnames.iter().any(|n| n.is_empty())),
            })
            .collect(),
    };
    write_all(dir, &mg::CGROUP.file_name(""), &mg::CGROUP, &[e])?;
    Ok(())
}

fn bad(what: impl Into<String>) -> ImagesError {
    ImagesError::Bad { file: mg::CGROUP.file_name(""), what: what.into() }
}

/// A path of the image: components neither empty, `.` nor `..`, no NUL,
/// at most 4096 bytes (`abs`: starts with `/`; "/" alone is the root).
fn check_path(p: &str, abs: bool) -> Result<(), String> {
    if p.len() > 4096 || p.contains('\0') {
        return Err("longer than 4096 bytes or holding a NUL".into());
    }
    let rel = if abs {
        p.strip_prefix('/').ok_or("not absolute")?
    } else if p.starts_with('/') {
        return Err("absolute, where a path relative to the hierarchy's root is expected".into());
    } else {
        p
    };
    if rel.is_empty() {
        return Ok(());
    }
    if rel.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err("an empty, `.` or `..` component".into());
    }
    Ok(())
}

fn check_name(n: &str) -> bool {
    n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"_=,.-".contains(&b))
}

/// Read cgroup.img when there is one.
pub fn read_image(dir: &Path) -> Result<Option<Cgroups>, ImagesError> {
    let name = mg::CGROUP.file_name("");
    if !dir.join(&name).exists() {
        return Ok(None);
    }
    let entries: Vec<pb::CgroupEntry> = read_all(dir, &name, &mg::CGROUP)?;
    if entries.len() > 1 {
        return Err(bad(format!("{} entries, one expected", entries.len())));
    }
    let Some(e) = entries.into_iter().next() else { return Ok(None) };
    if e.sets.len() > 4096 || e.controllers.len() > 64 {
        return Err(bad(format!("{} sets and {} controllers: at most 4096 and 64", e.sets.len(), e.controllers.len())));
    }
    let mut cg = Cgroups::default();
    for (k, s) in e.sets.iter().enumerate() {
        if s.id == 0 || cg.sets.iter().any(|x: &CgSet| x.id == s.id) {
            return Err(bad(format!("set {k}: field id: {} is 0 or twice", s.id)));
        }
        if s.ctls.len() > 64 {
            return Err(bad(format!("set {}: {} members, at most 64", s.id, s.ctls.len())));
        }
        let mut ctls = Vec::new();
        for m in &s.ctls {
            if !check_name(&m.name) {
                return Err(bad(format!("set {}: field name: {:?} is not a hierarchy name", s.id, m.name)));
            }
            check_path(&m.path, true).map_err(|w| bad(format!("set {}: member {}: field path {:?}: {w}", s.id, shown(&m.name), m.path)))?;
            if m.cgns_prefix.is_some_and(|p| p != 0) {
                return Err(bad(format!("set {}: member {}: field cgns_prefix: a cgroup namespace is not supported", s.id, shown(&m.name))));
            }
            if ctls.iter().any(|(n, _): &(String, String)| *n == m.name) {
                return Err(bad(format!("set {}: member {} twice", s.id, shown(&m.name))));
            }
            ctls.push((m.name.clone(), m.path.clone()));
        }
        ctls.sort();
        cg.sets.push(CgSet { id: s.id, ctls });
    }
    let mut total = 0usize;
    for c in &e.controllers {
        if c.cnames.is_empty() || c.cnames.len() > 32 || !c.cnames.iter().all(|n| check_name(n)) {
            return Err(bad(format!("controller {:?}: field cnames: not a list of controller names", c.cnames)));
        }
        // (is_threaded: upstream marks every v1 hierarchy, whose threads
        // may be placed one by one; placement here is per process, the
        // threads' cg_set checked against their process's)
        let mut dirs = Vec::new();
        fn walk(c: &pb::CgControllerEntry, d: &pb::CgroupDirEntry, parent: &str, depth: usize, total: &mut usize, out: &mut Vec<CgDir>) -> Result<(), ImagesError> {
            *total += 1;
            if depth > 64 || *total > 65536 {
                return Err(bad(format!("controller {:?}: more than 65536 dirs or deeper than 64", c.cnames)));
            }
            check_path(&d.dir_name, false).map_err(|w| bad(format!("controller {:?}: dir {:?}: field dir_name: {w}", c.cnames, d.dir_name)))?;
            // a child's name: relative to its parent's, or the whole path
            let path = if parent.is_empty() || d.dir_name.starts_with(&format!("{parent}/")) { d.dir_name.clone() } else { format!("{parent}/{}", d.dir_name) };
            let mut props = Vec::new();
            for p in &d.properties {
                // upstream 4.2 records a v1 freezer's state (runc's
                // freeze_cgroup dumps): THAWED asks for nothing (the
                // restored tree runs); FROZEN is refused by name
                if p.name == "freezer.state" && c.cnames.iter().any(|n| n == "freezer") {
                    if p.value.trim() == "THAWED" {
                        continue;
                    }
                    return Err(bad(format!("controller {:?}: dir {path:?}: property freezer.state {:?}: restoring a frozen cgroup is not supported yet", c.cnames, p.value)));
                }
                if !known_prop(&c.cnames, &p.name) {
                    return Err(bad(format!("controller {:?}: dir {path:?}: property {:?} is not one criu-rs restores", c.cnames, p.name)));
                }
                if p.value.len() > MAX_VALUE {
                    return Err(bad(format!("controller {:?}: dir {path:?}: property {}: field value over {MAX_VALUE} bytes", c.cnames, p.name)));
                }
                props.push((p.name.clone(), p.value.clone()));
            }
            out.push(CgDir { path: path.clone(), props, perms: d.dir_perms.as_ref().map(|p| (p.mode, p.uid, p.gid)) });
            for ch in &d.children {
                walk(c, ch, &path, depth + 1, total, out)?;
            }
            Ok(())
        }
        for d in &c.dirs {
            walk(c, d, "", 0, &mut total, &mut dirs)?;
        }
        cg.controllers.push(Controller { cnames: c.cnames.clone(), dirs });
    }
    Ok(Some(cg))
}

/// What a restore did and will do with the cgroups: the dirs it made
/// (removed again by [`Prepared::undo`] when the restore fails) and, per
/// task index, the `cgroup.procs` files its process is moved through.
#[derive(Debug, Default)]
pub struct Prepared {
    made: Vec<PathBuf>,
    joins: Vec<(usize, Vec<PathBuf>)>,
}

impl Prepared {
    /// Before the tree is forked: `sets` (task index, set id) of the live
    /// processes. Makes or checks every cgroup a process will be moved
    /// into, as `mode` says; on error what it made is removed.
    ///
    /// `roots` (`--cgroup-root [CTRL:]PATH`, RPC `cg_root`; no CTRL: every
    /// hierarchy without one of its own): the tree's cgroups go below PATH
    /// instead, the root process's cgroup of that hierarchy (set
    /// `root_set`) becoming PATH and the others keeping their place below
    /// it (a process outside the root's cgroup can't be placed: refused).
    pub fn prepare(cg: Option<&Cgroups>, sets: &[(usize, u32)], mode: Mode, roots: &[(Option<String>, String)], root_set: u32) -> Result<Prepared, String> {
        let mut out = Prepared::default();
        for (c, p) in roots {
            check_path(p, true).map_err(|w| format!("--cgroup-root {}{p}: {w}", c.as_ref().map(|c| format!("{c}:")).unwrap_or_default()))?;
        }
        let Some(cg) = cg.filter(|_| mode != Mode::Ignore) else { return Ok(out) };
        let root_ctls: &[(String, String)] = cg.sets.iter().find(|s| s.id == root_set).map_or(&[], |s| &s.ctls);
        let own = read_membership("/proc/self/cgroup").map_err(|e| format!("reading criu's /proc/self/cgroup: {e}"))?;
        let h = hierarchies(&own);
        let r = (|| {
            let mut done: Vec<(u32, Vec<PathBuf>)> = Vec::new();
            for &(i, id) in sets {
                if let Some((_, files)) = done.iter().find(|(d, _)| *d == id) {
                    if !files.is_empty() {
                        out.joins.push((i, files.clone()));
                    }
                    continue;
                }
                let files = match cg.sets.iter().find(|s| s.id == id) {
                    // (criu's own set, not in the image: left where it is forked)
                    None if id <= 1 => vec![],
                    None => return Err(format!("cgroup.img has no set {id}")),
                    Some(s) => out.make_set(cg, s, &own, &h, mode, roots, root_ctls)?,
                };
                if !files.is_empty() {
                    out.joins.push((i, files.clone()));
                }
                done.push((id, files));
            }
            Ok(())
        })();
        if let Err(e) = r {
            out.undo();
            return Err(e);
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn make_set(
        &mut self,
        cg: &Cgroups,
        s: &CgSet,
        own: &[(String, String)],
        h: &[(String, Option<PathBuf>)],
        mode: Mode,
        roots: &[(Option<String>, String)],
        root_ctls: &[(String, String)],
    ) -> Result<Vec<PathBuf>, String> {
        let mut files = Vec::new();
        for (name, dumped) in &s.ctls {
            // where it goes, and the image's dir of each new dir (relative)
            let (path, moved) = placed(name, dumped, roots, root_ctls).map_err(|e| format!("set {}: {e}", s.id))?;
            let img_dir = |new_rel: &str| -> Option<String> {
                match &moved {
                    None => Some(new_rel.to_string()),
                    Some((nr, b)) if new_rel == nr => Some(b.clone()),
                    Some((nr, b)) => {
                        let rest = if nr.is_empty() { Some(new_rel) } else { new_rel.strip_prefix(&format!("{nr}/")) }?;
                        Some(if b.is_empty() { rest.to_string() } else { format!("{b}/{rest}") })
                    }
                }
            };
            let path = &path;
            if own.iter().any(|(n, p)| n == name && p == path) {
                continue;
            }
            let mount = mount_of(h, name).map_err(|e| format!("set {}: {e}", s.id))?;
            let ctl = cg.controllers.iter().find(|c| c.cnames.join(",") == *name || (name.is_empty() && c.cnames == [""]));
            let rel = path.trim_start_matches('/');
            let target = mount.join(rel);
            let exists = target.is_dir();
            match (mode, exists) {
                (Mode::Existing | Mode::Props, false) => {
                    return Err(format!("cgroup {}:{path} does not exist (--manage-cgroups {} wants it to)", shown(name), mode.name()))
                }
                (Mode::Strict, true) => return Err(format!("cgroup {}:{path} exists (--manage-cgroups strict wants it not to)", shown(name))),
                _ => {}
            }
            // each component from the hierarchy's root down
            let mut at = mount.clone();
            let mut relp = String::new();
            for comp in rel.split('/').filter(|c| !c.is_empty()) {
                at.push(comp);
                if !relp.is_empty() {
                    relp.push('/');
                }
                relp.push_str(comp);
                let made = if at.is_dir() {
                    false
                } else {
                    std::fs::create_dir(&at).map_err(|e| format!("making cgroup {}:/{relp} ({}): {e}", shown(name), at.display()))?;
                    self.made.push(at.clone());
                    true
                };
                let write = match mode {
                    Mode::Soft => made,
                    Mode::Props | Mode::Full | Mode::Strict => true,
                    Mode::Existing | Mode::Ignore => false,
                };
                let Some(d) = img_dir(&relp).and_then(|ir| ctl.and_then(|c| c.dirs.iter().find(|d| d.path == ir))) else { continue };
                if made {
                    if let Some((mode, uid, gid)) = d.perms {
                        use std::os::unix::fs::PermissionsExt;
                        let _ = std::fs::set_permissions(&at, std::fs::Permissions::from_mode(mode & 0o7777));
                        std::os::unix::fs::chown(&at, Some(uid), Some(gid)).map_err(|e| format!("chown of cgroup {}:/{relp}: {e}", shown(name)))?;
                    }
                }
                if write {
                    write_props(&at, d).map_err(|e| format!("cgroup {}:/{relp}: {e}", shown(name)))?;
                }
            }
            files.push(target.join("cgroup.procs"));
        }
        Ok(files)
    }

    /// Once every process exists (host pids by task index), before any
    /// is seized: each moved into its set's cgroups.
    pub fn join(&self, host_of: impl Fn(usize) -> Option<Pid>) -> Result<(), String> {
        for (i, files) in &self.joins {
            let Some(pid) = host_of(*i) else { continue };
            for f in files {
                std::fs::write(f, pid.to_string()).map_err(|e| format!("moving process {pid} into the cgroup of {}: {e}", f.display()))?;
            }
        }
        Ok(())
    }

    /// Whether any process is to be moved.
    pub fn any(&self) -> bool {
        !self.joins.is_empty()
    }

    /// The dirs made, removed (deepest first); failures only logged.
    pub fn undo(&mut self) {
        for d in self.made.drain(..).rev() {
            if let Err(e) = std::fs::remove_dir(&d) {
                crate::pr_warn!("removing the cgroup {} the failed restore made: {e}", d.display());
            }
        }
    }

    /// The restore succeeded: what it made stays.
    pub fn keep(&mut self) {
        self.made.clear();
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        self.undo();
    }
}

/// Where member `name`:`dumped` of a set goes with `roots`: its path, and
/// when moved, (new root, the root process's dumped path), both relative.
fn placed(name: &str, dumped: &str, roots: &[(Option<String>, String)], root_ctls: &[(String, String)]) -> Result<(String, Option<(String, String)>), String> {
    let own = roots.iter().find(|(c, _)| c.as_deref().is_some_and(|c| c == name || (!c.is_empty() && name.split(',').any(|n| n == c))));
    let Some((_, root)) = own.or_else(|| roots.iter().find(|(c, _)| c.is_none())) else { return Ok((dumped.to_string(), None)) };
    let base = root_ctls.iter().find(|(n, _)| n == name).map(|(_, p)| p.as_str()).ok_or_else(|| format!("the tree's root has no cgroup of hierarchy {} for --cgroup-root", shown(name)))?;
    let rest = if base == "/" {
        Some(dumped.trim_start_matches('/'))
    } else if dumped == base {
        Some("")
    } else {
        dumped.strip_prefix(&format!("{base}/"))
    }
    .ok_or_else(|| format!("cgroup {}:{dumped} is not below the tree root's {base}: --cgroup-root can't place it", shown(name)))?;
    let nr = root.trim_start_matches('/').trim_end_matches('/');
    let path = match (nr.is_empty(), rest.is_empty()) {
        (true, true) => "/".to_string(),
        (true, false) => format!("/{rest}"),
        (false, true) => format!("/{nr}"),
        (false, false) => format!("/{nr}/{rest}"),
    };
    Ok((path, Some((nr.to_string(), base.trim_start_matches('/').to_string()))))
}

/// A dir's properties written where they differ from its value now:
/// cpuset.cpus and cpuset.mems first (a cpuset takes no process without
/// them), membership files never.
fn write_props(at: &Path, d: &CgDir) -> Result<(), String> {
    let first = ["cpuset.cpus", "cpuset.mems"];
    let ordered = first.iter().filter_map(|f| d.props.iter().find(|(n, _)| n == f)).chain(d.props.iter().filter(|(n, _)| !first.contains(&n.as_str())));
    for (name, value) in ordered {
        if matches!(name.as_str(), "cgroup.procs" | "tasks") {
            continue;
        }
        // (the restored tree runs: a cgroup frozen at dump is not frozen
        // again here)
        if name == "cgroup.freeze" {
            if value.trim() != "0" {
                crate::pr_info!("{}: cgroup.freeze {value:?} not restored (the restored processes run)", at.display());
            }
            continue;
        }
        let file = at.join(name);
        let now = match std::fs::read_to_string(&file) {
            Ok(v) => v,
            // (a property this kernel lacks)
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::pr_warn!("{}: no such property here; {name} = {value:?} not restored", at.display());
                continue;
            }
            Err(e) => return Err(format!("reading {name}: {e}")),
        };
        let (now, value) = (now.trim_end_matches('\n'), value.trim_end_matches('\n'));
        if now == value {
            continue;
        }
        let put = |f: &str, v: &str| std::fs::write(at.join(f), v).map_err(|e| format!("writing {v:?} to {f} (was {now:?}): {e}"));
        match name.as_str() {
            "memory.oom_control" => {
                let flag = |s: &str| s.lines().find_map(|l| l.strip_prefix("oom_kill_disable ")).map(str::trim).map(str::to_string);
                if let Some(v) = flag(value).filter(|v| Some(v) != flag(now).as_ref()) {
                    put(name, &v)?;
                }
            }
            "devices.list" => {
                put("devices.deny", "a")?;
                for l in value.lines().filter(|l| !l.is_empty()) {
                    put("devices.allow", l)?;
                }
            }
            "cgroup.subtree_control" => {
                for c in value.split_whitespace().filter(|c| !now.split_whitespace().any(|n| n == *c)) {
                    put(name, &format!("+{c}"))?;
                }
            }
            _ => put(name, value)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_lines_sorted_by_name() {
        let m = parse_membership("9:name=systemd:/\n1:cpu:/a/b\n0::/\n");
        assert_eq!(m, vec![("".into(), "/".into()), ("cpu".into(), "/a/b".into()), ("name=systemd".into(), "/".into())]);
    }

    #[test]
    fn paths_are_checked() {
        assert!(check_path("/", true).is_ok());
        assert!(check_path("/a/b", true).is_ok());
        assert!(check_path("a/b", true).is_err());
        assert!(check_path("/a/../b", true).is_err());
        assert!(check_path("/a//b", true).is_err());
        assert!(check_path("", false).is_ok());
        assert!(check_path("x/./y", false).is_err());
        assert!(check_path("/x", false).is_err());
    }

    #[test]
    fn cgroup_root_places_below_the_root() {
        let roots = vec![(Some("pids".to_string()), "/new".to_string()), (None, "/def".to_string())];
        let root = vec![("pids".to_string(), "/old".to_string()), ("cpu".to_string(), "/".to_string())];
        assert_eq!(placed("pids", "/old", &roots, &root).unwrap().0, "/new");
        assert_eq!(placed("pids", "/old/sub", &roots, &root).unwrap().0, "/new/sub");
        assert!(placed("pids", "/elsewhere", &roots, &root).is_err());
        assert_eq!(placed("cpu", "/x", &roots, &root).unwrap().0, "/def/x");
        assert_eq!(placed("cpu", "/x", &[], &root).unwrap(), ("/x".to_string(), None));
    }

    #[test]
    fn only_known_properties() {
        assert!(known_prop(&["pids".into()], "pids.max"));
        assert!(known_prop(&["pids".into()], "notify_on_release"));
        assert!(!known_prop(&["pids".into()], "release_agent"));
        assert!(!known_prop(&["pids".into()], "cpu.shares"));
        assert!(known_prop(&["".into()], "cgroup.max.depth"));
        assert!(!known_prop(&["".into()], "cgroup.procs"));
    }
}
