//! The mount namespace a tree's root owns (a container's), all three
//! halves, as upstream CRIU 4.2 images it:
//!
//! - dump ([`collect`]): the namespace's mounts from the root's
//!   /proc/PID/mountinfo ([`parse_mountinfo`], a pure parser), each
//!   classified by [`classify`]; a tmpfs's own files (not those of mounts
//!   below it) archived by `tar --create --gzip` run with its working
//!   directory on a detached copy of that one mount
//!   (`sys::mount::in_mount_copy`), as upstream runs tar.
//! - images ([`write_images`], [`read_images`]): mountpoints-ID.img (one
//!   `mnt_entry` a mount, in reverse mountinfo order as upstream writes
//!   them; ID the root's mnt_ns_id) and tmpfs-dev-DEV.tar.gz.img (DEV the
//!   tmpfs's s_dev in the kernel's encoding, major << 20 | minor).
//! - restore ([`enter`]): in the tree's root before it forks, a new mount
//!   namespace; `--root DIR` bind-mounted as the namespace's root mount,
//!   the other mounts made below it parents first (new proc, sysfs, tmpfs
//!   with its archive extracted, devpts, mqueue...; binds of a part of
//!   another mount of the namespace; external mounts from the paths given
//!   with `--external mnt[KEY]:PATH`), their per-mount flags set by a bind
//!   remount; then pivot_root into it, the old root detached, and the
//!   `--root` fd every later path of the image is resolved in (RootDir)
//!   opened again on the new `/`.
//!
//! What a mount is restored from ([`How`]): the root mount (`/`) always
//! from `--root`; a mount whose mount point was given at dump with
//! `--external mnt[MOUNTPOINT]:KEY` (`ext_key` in the image) from the path
//! given at restore for KEY; the first mount of each file system (by
//! s_dev, the widest root) as a new mount of its type if it is one of
//! [`NEW_MOUNT`]; every other mount of that file system as a bind of the
//! part of the first it shows. Refused by name (mount id, mount point,
//! fstype, source): shared or slave mounts (propagation groups), a mount
//! stacked on another at the same place, a file system of another type
//! (overlayfs, ext4 other than the root's, cgroup v1...) that is not
//! external, a bind of a directory no mount of the namespace shows, and
//! processes of the tree in another mount namespace than the root's.

use crate::images_io::ImagesError;
use crate::model::{KobjIds, Tree};
use images_proto::image::{read_all, write_all};
use images_proto::magic as mg;
use images_proto::pb;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Mounts in one namespace at most (image input is bounded by it).
pub const MOUNTS_MAX: usize = 4096;
/// The most bytes of tmpfs archives (all of a dump together) held in
/// memory on the way to the images.
pub const TMPFS_TOTAL_MAX: u64 = 1 << 30;

// MS_* flags (linux/mount.h)
const MS_RDONLY: u32 = 1;
const MS_NOSUID: u32 = 2;
const MS_NODEV: u32 = 4;
const MS_NOEXEC: u32 = 8;
const MS_SYNCHRONOUS: u32 = 16;
const MS_MANDLOCK: u32 = 64;
const MS_DIRSYNC: u32 = 128;
const MS_NOATIME: u32 = 1024;
const MS_NODIRATIME: u32 = 2048;
const MS_RELATIME: u32 = 1 << 21;
const MS_STRICTATIME: u32 = 1 << 24;
const MS_LAZYTIME: u32 = 1 << 25;
/// The per-mount flags a bind remount sets.
const MNT_FLAGS: u32 = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME | MS_RELATIME | MS_STRICTATIME;
/// The superblock flags of mountinfo's super options.
const SB_FLAGS: u32 = MS_RDONLY | MS_SYNCHRONOUS | MS_MANDLOCK | MS_DIRSYNC | MS_LAZYTIME;

/// upstream's `enum fstype` (mnt.proto) by file system name.
const FSTYPES: &[(&str, u32)] = &[
    ("proc", 1),
    ("sysfs", 2),
    ("devtmpfs", 3),
    ("binfmt_misc", 4),
    ("tmpfs", 5),
    ("devpts", 6),
    ("pstore", 8),
    ("securityfs", 9),
    ("fusectl", 10),
    ("debugfs", 11),
    ("cgroup", 12),
    ("mqueue", 14),
    ("fuse", 15),
    ("overlay", 17),
    ("autofs", 18),
    ("tracefs", 19),
    ("cgroup2", 23),
];

/// File systems a restore mounts anew (their state is the kernel's, or,
/// for tmpfs, its archive).
pub const NEW_MOUNT: &[&str] =
    &["proc", "sysfs", "tmpfs", "devpts", "mqueue", "devtmpfs", "cgroup2", "debugfs", "tracefs", "securityfs", "fusectl", "pstore", "binfmt_misc"];

fn fstype_code(name: &str) -> u32 {
    FSTYPES.iter().find(|(n, _)| *n == name).map_or(0, |(_, c)| *c)
}

fn fstype_name(code: u32) -> Option<&'static str> {
    FSTYPES.iter().find(|(_, c)| *c == code).map(|(n, _)| *n)
}

/// A tmpfs's files: the gzip'd tar (dump, tfork), or the image holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Archive {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// One mount of the namespace (a `mnt_entry`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mount {
    pub mnt_id: u32,
    pub parent_mnt_id: u32,
    /// s_dev in the kernel's encoding (major << 20 | minor).
    pub root_dev: u32,
    /// Per-mount MS_* flags.
    pub flags: u32,
    /// Superblock MS_* flags.
    pub sb_flags: u32,
    /// The directory of its file system it shows.
    pub root: String,
    /// Where, as the namespace's root sees it.
    pub mountpoint: String,
    pub source: String,
    /// The file system's options (mountinfo's super options without the
    /// superblock flags).
    pub options: String,
    /// The file system type ("" when the image has only upstream's
    /// UNSUPPORTED code: the root's or an external mount's).
    pub fstype: String,
    pub shared_id: u32,
    pub master_id: u32,
    /// `--external mnt[MOUNTPOINT]:KEY` at dump.
    pub ext_key: Option<String>,
    /// A tmpfs's files (the first mount of that tmpfs only).
    pub archive: Option<Archive>,
}

impl Mount {
    /// How errors name it.
    pub fn name(&self) -> String {
        let fs = if self.fstype.is_empty() { "fstype unknown" } else { &self.fstype };
        format!("mount {} at {} ({fs}, source {:?}, root {:?})", self.mnt_id, self.mountpoint, self.source, self.root)
    }
}

/// The root's own mount namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MntNs {
    /// In mountinfo order (parents before children, the order they were
    /// mounted).
    pub mounts: Vec<Mount>,
    /// tfork: the live source (its host pid) whose namespace the root and
    /// external mounts are copied from (not in the images).
    pub source: Option<i32>,
}

/// One line of /proc/PID/mountinfo (proc(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mnt_id: u32,
    pub parent_id: u32,
    pub major: u32,
    pub minor: u32,
    pub root: String,
    pub mountpoint: String,
    pub mnt_opts: String,
    /// shared:N, master:N, propagate_from:N, unbindable.
    pub optional: Vec<String>,
    pub fstype: String,
    pub source: String,
    pub super_opts: String,
}

/// mountinfo's escapes: `\NNN` (octal) for space, tab, newline, backslash.
fn unescape(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = u32::from(b[i + 1] - b'0') * 64 + u32::from(b[i + 2] - b'0') * 8 + u32::from(b[i + 3] - b'0');
            out.push(u8::try_from(v).map_err(|_| format!("escape \\{} is beyond a byte", &s[i + 1..i + 4]))?);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once unescaped: not supported"))
}

/// Parse /proc/PID/mountinfo; an error names the line and the field.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountInfo>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let err = |what: &str| format!("mountinfo line {}: {what}: {line:?}", n + 1);
        let f: Vec<&str> = line.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-").ok_or_else(|| err("no \"-\" separator"))?;
        if sep < 6 || f.len() < sep + 4 {
            return Err(err("too few fields"));
        }
        let num = |s: &str, what: &str| s.parse::<u32>().map_err(|_| err(&format!("{what} {s:?} is not a number")));
        let (ma, mi) = f[2].split_once(':').ok_or_else(|| err("major:minor"))?;
        out.push(MountInfo {
            mnt_id: num(f[0], "mount id")?,
            parent_id: num(f[1], "parent id")?,
            major: num(ma, "major")?,
            minor: num(mi, "minor")?,
            root: unescape(f[3]).map_err(|e| err(&e))?,
            mountpoint: unescape(f[4]).map_err(|e| err(&e))?,
            mnt_opts: f[5].to_string(),
            optional: f[6..sep].iter().map(|s| s.to_string()).collect(),
            fstype: unescape(f[sep + 1]).map_err(|e| err(&e))?,
            source: unescape(f[sep + 2]).map_err(|e| err(&e))?,
            super_opts: f[sep + 3..].join(" "),
        });
    }
    Ok(out)
}

/// The kernel's dev_t encoding upstream images use (MKKDEV).
pub fn kdev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xfffff)
}

fn mnt_flags(opts: &str) -> u32 {
    opts.split(',')
        .map(|o| match o {
            "ro" => MS_RDONLY,
            "nosuid" => MS_NOSUID,
            "nodev" => MS_NODEV,
            "noexec" => MS_NOEXEC,
            "noatime" => MS_NOATIME,
            "nodiratime" => MS_NODIRATIME,
            "relatime" => MS_RELATIME,
            _ => 0,
        })
        .fold(0, |a, b| a | b)
}

/// Super options -> (superblock flags, the file system's own options).
fn sb_split(fstype: &str, opts: &str) -> (u32, String) {
    let mut flags = 0;
    let mut rest = Vec::new();
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => flags |= MS_RDONLY,
            "rw" => {}
            "sync" => flags |= MS_SYNCHRONOUS,
            "dirsync" => flags |= MS_DIRSYNC,
            "mand" => flags |= MS_MANDLOCK,
            "lazytime" => flags |= MS_LAZYTIME,
            o => rest.push(o.to_string()),
        }
    }
    // (a devpts is a new instance: upstream writes it so)
    if fstype == "devpts" && !rest.iter().any(|o| o == "newinstance") {
        rest.push("newinstance".into());
    }
    (flags, rest.join(","))
}

/// What a restore makes a mount from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum How {
    /// The namespace's root mount: `--root`.
    Root,
    /// `--external mnt[KEY]:PATH` at restore.
    External(String),
    /// A new mount of its file system type.
    New,
    /// A bind of `sub` (relative, "" for all) of mount index `of`.
    Bind { of: usize, sub: String },
}

fn under(path: &str, dir: &str) -> Option<String> {
    if dir == "/" {
        return path.strip_prefix('/').map(|s| s.to_string());
    }
    let rest = path.strip_prefix(dir)?;
    if rest.is_empty() {
        return Some(String::new());
    }
    rest.strip_prefix('/').map(|s| s.to_string())
}

fn clean(path: &str) -> bool {
    path.starts_with('/') && !path.split('/').any(|c| c == ".." || c == ".") && !path.contains('\0')
}

/// What each mount is made from (see the module's doc), and the order to
/// make them in (parents and bind sources first); an error names the
/// mount and why it can't be restored.
pub fn classify(ms: &[Mount]) -> Result<(Vec<How>, Vec<usize>), String> {
    if ms.len() > MOUNTS_MAX {
        return Err(format!("{} mounts: at most {MOUNTS_MAX}", ms.len()));
    }
    let idx = |id: u32| ms.iter().position(|m| m.mnt_id == id);
    let mut seen = std::collections::HashSet::new();
    for m in ms {
        if !seen.insert(m.mnt_id) {
            return Err(format!("{}: its mount id appears twice", m.name()));
        }
        // (an external mount's root is not used: an nsfs bind's is
        // "net:[INO]", as `ip netns add` makes them)
        if m.fstype == "nsfs" && m.ext_key.is_none() {
            return Err(format!(
                "{}: a namespace file bind-mounted (nsfs) is not made anew: give it as external (--external mnt[{}]:KEY at dump)",
                m.name(),
                m.mountpoint
            ));
        }
        if !clean(&m.mountpoint) || (m.ext_key.is_none() && !clean(&m.root)) {
            return Err(format!("{}: its mount point and root must be absolute paths without . or ..", m.name()));
        }
    }
    let roots: Vec<usize> = (0..ms.len()).filter(|&i| idx(ms[i].parent_mnt_id).is_none()).collect();
    let root = match roots.as_slice() {
        [r] if ms[*r].mountpoint == "/" => *r,
        [] => return Err("no root mount (each mount's parent is one of the namespace's: a cycle)".into()),
        [r] => return Err(format!("{}: the namespace's top mount is not at /", ms[*r].name())),
        _ => {
            let names: Vec<String> = roots.iter().map(|&i| ms[i].name()).collect();
            return Err(format!("several mounts have no parent in the namespace: {}", names.join("; ")));
        }
    };
    let mut how = Vec::with_capacity(ms.len());
    for (i, m) in ms.iter().enumerate() {
        if m.shared_id != 0 || m.master_id != 0 {
            return Err(format!(
                "{} is in a propagation group (shared_id {}, master_id {}): shared and slave mounts are not supported yet",
                m.name(),
                m.shared_id,
                m.master_id
            ));
        }
        if i != root {
            let p = &ms[idx(m.parent_mnt_id).expect("a parent")];
            if under(&m.mountpoint, &p.mountpoint).is_none() {
                return Err(format!("{}: its mount point is not below its parent's ({})", m.name(), p.name()));
            }
            if let Some(o) = ms.iter().find(|o| o.mnt_id != m.mnt_id && o.mountpoint == m.mountpoint && o.parent_mnt_id == m.parent_mnt_id) {
                return Err(format!("{} and {} are stacked at the same place: overmounts are not supported yet", o.name(), m.name()));
            }
        }
        if i == root {
            how.push(How::Root);
            continue;
        }
        if let Some(k) = &m.ext_key {
            how.push(How::External(k.clone()));
            continue;
        }
        // the first mount of its file system: the widest root, then the
        // lowest id; the namespace's root mount first of all
        let owner = (0..ms.len())
            .filter(|&j| ms[j].root_dev == m.root_dev && ms[j].ext_key.is_none())
            .min_by_key(|&j| (j != root, ms[j].root.len(), ms[j].mnt_id))
            .expect("m itself");
        if owner == i {
            if m.fstype == "overlay" {
                return Err(format!("{}: overlay file systems inside the namespace are not supported yet", m.name()));
            }
            if !NEW_MOUNT.contains(&m.fstype.as_str()) {
                return Err(format!(
                    "{}: a mount of a file system criu-rs does not make anew and no mount of the namespace shows (a host directory or device?): give it as external (--external mnt[{}]:KEY at dump), or it is not supported yet",
                    m.name(),
                    m.mountpoint
                ));
            }
            how.push(How::New);
            continue;
        }
        let Some(sub) = under(&m.root, &ms[owner].root) else {
            return Err(format!(
                "{} shows {} of its file system, which no mount of the namespace shows ({} shows {}): give it as external (--external mnt[{}]:KEY at dump)",
                m.name(),
                m.root,
                ms[owner].name(),
                ms[owner].root,
                m.mountpoint
            ));
        };
        how.push(How::Bind { of: owner, sub });
    }
    // the order: parents and bind sources first
    let mut order = Vec::with_capacity(ms.len());
    let mut done = vec![false; ms.len()];
    while order.len() < ms.len() {
        let before = order.len();
        for i in 0..ms.len() {
            if done[i] {
                continue;
            }
            let parent_done = i == root || done[idx(ms[i].parent_mnt_id).expect("a parent")];
            let src_done = match &how[i] {
                How::Bind { of, .. } => done[*of],
                _ => true,
            };
            if parent_done && src_done {
                done[i] = true;
                order.push(i);
            }
        }
        if order.len() == before {
            let left: Vec<String> = (0..ms.len()).filter(|&i| !done[i]).map(|i| ms[i].name()).collect();
            return Err(format!("mounts whose parents or bind sources form a cycle: {}", left.join("; ")));
        }
    }
    Ok((how, order))
}

/// `--external mnt[MOUNTPOINT]:KEY` pairs of the running dump (set by
/// `dump::collect_tree_opts`, as the other per-dump choices are).
static DUMP_EXTERNAL: std::sync::Mutex<(Vec<(String, String)>, bool)> = std::sync::Mutex::new((Vec::new(), false));

/// Set the dump's `--external mnt[MOUNTPOINT]:KEY` pairs, and `auto`
/// (`--external mnt[]`: [`auto_external`]).
pub fn set_dump_external(ext: &[(String, String)], auto: bool) {
    *DUMP_EXTERNAL.lock().unwrap_or_else(|e| e.into_inner()) = (ext.to_vec(), auto);
}

/// `--external mnt[]`: each mount of `ms` that a restore would make
/// neither anew ([`NEW_MOUNT`]) nor as a bind of another mount of the
/// namespace (the first of its file system, as [`classify`] picks it),
/// but the root, becomes external when criu's own namespace (`own`) shows
/// its file system's directory: its key is the path it shows at there
/// (the deepest such mount's mount point and the rest of the root), for
/// a restore on this host to bind (`--ext-mount-map auto`). Others are
/// left to [`classify`]'s refusal. A mount made external can make the
/// next of its file system the first: repeated until none changes.
fn auto_external(ms: &mut [Mount], own: &[MountInfo]) {
    let ids: std::collections::HashSet<u32> = ms.iter().map(|m| m.mnt_id).collect();
    loop {
        let mut changed = false;
        for i in 0..ms.len() {
            let m = &ms[i];
            if m.ext_key.is_some() || !ids.contains(&m.parent_mnt_id) || NEW_MOUNT.contains(&m.fstype.as_str()) {
                continue;
            }
            // the first of its file system: the widest root, then the
            // lowest id (the root mount, which owns its own, is skipped)
            let first = (0..ms.len())
                .filter(|&j| ms[j].root_dev == m.root_dev && ms[j].ext_key.is_none())
                .min_by_key(|&j| (ids.contains(&ms[j].parent_mnt_id), ms[j].root.len(), ms[j].mnt_id));
            if first != Some(i) {
                continue;
            }
            let shown = own
                .iter()
                .filter(|o| kdev(o.major, o.minor) == m.root_dev)
                .filter_map(|o| under(&m.root, &o.root).map(|rest| (o.root.len(), o.mountpoint.clone(), rest)))
                .max_by_key(|(depth, ..)| *depth);
            if let Some((_, at, rest)) = shown {
                let key = if rest.is_empty() { at } else { format!("{}/{rest}", at.trim_end_matches('/')) };
                crate::pr_info!("{}: external (--external mnt[]), bound from {key} at restore", m.name());
                ms[i].ext_key = Some(key);
                changed = true;
            }
        }
        if !changed {
            return;
        }
    }
}

/// `--ext-mount-map auto` at restore: `ext` with each external key of the
/// tree's mount namespace that is an absolute path and that `ext` does not
/// give added as its own path ([`auto_external`]'s keys).
pub fn with_auto_paths(tree: &Tree, ext: &[(String, String)], auto: bool) -> Vec<(String, String)> {
    let mut out = ext.to_vec();
    let Some(ns) = tree.mnt.as_ref().filter(|_| auto) else { return out };
    for k in ns.mounts.iter().filter_map(|m| m.ext_key.as_ref()) {
        if k.starts_with('/') && !out.iter().any(|(key, _)| key == k) {
            out.push((k.clone(), k.clone()));
        }
    }
    out
}

/// tfork's collection: mounts restore would not make anew are copied
/// from the live source instead (see [`set_from_source`]).
static FROM_SOURCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// For tfork: the tree's clones take the mounts of its namespace that a
/// restore does not make anew (the root, host directories, file systems
/// not in [`NEW_MOUNT`]) from the live source, as copies
/// (`MntNs::source`), instead of from `--root` and `--external`.
pub fn set_from_source(on: bool) {
    FROM_SOURCE.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// tfork `--root-snapshot` of a source owning its mount namespace: what
/// the clone's root mount is made of instead of a plain copy of the
/// source's ([`set_root_snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSnapshot {
    /// An overlayfs, the copy of the source's root its lower layer, these
    /// its upper and work directories.
    Overlay { upper: String, work: String },
    /// A bind of this directory (the clone's btrfs snapshot of the
    /// source's root directory), in the engine's namespace.
    Bind(String),
}

/// Set in the restoring helper of one clone, inherited by its root.
static ROOT_SNAPSHOT: std::sync::Mutex<Option<RootSnapshot>> = std::sync::Mutex::new(None);

/// For tfork `--root-snapshot` of a source owning its mount namespace:
/// the clone restored next (by this process) gets `snap` as its root
/// mount ([`RootSnapshot`]).
pub fn set_root_snapshot(snap: Option<RootSnapshot>) {
    *ROOT_SNAPSHOT.lock().unwrap_or_else(|e| e.into_inner()) = snap;
}

/// [`collect`] with the pairs [`set_dump_external`] set (or, for tfork,
/// [`set_from_source`]).
pub fn collect_dump(pid: i32) -> Result<MntNs, String> {
    let (ext, auto) = DUMP_EXTERNAL.lock().unwrap_or_else(|e| e.into_inner()).clone();
    collect(pid, &ext, auto, FROM_SOURCE.load(std::sync::atomic::Ordering::Relaxed))
}

/// The mounts of `pid`'s mount namespace (it must own one: the caller
/// checks), classified ([`classify`]) and with each tmpfs's files.
/// `ext`: `--external mnt[MOUNTPOINT]:KEY` pairs of the dump; one naming
/// no mount point of the namespace is refused. `auto`: the mounts a
/// restore would not make anew that criu's namespace shows are external
/// ([`auto_external`]). `from_source` (tfork):
/// every mount not made anew (but the root) is external, its key its
/// mount point, copied from the live source at restore.
pub fn collect(pid: i32, ext: &[(String, String)], auto: bool, from_source: bool) -> Result<MntNs, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).map_err(|e| format!("reading /proc/{pid}/mountinfo: {e}"))?;
    let lines = parse_mountinfo(&text)?;
    let mut mounts = Vec::with_capacity(lines.len());
    for l in lines {
        let (sb_flags, options) = sb_split(&l.fstype, &l.super_opts);
        let opt = |k: &str| l.optional.iter().find_map(|o| o.strip_prefix(k)).and_then(|v| v.parse().ok()).unwrap_or(0);
        let m = Mount {
            mnt_id: l.mnt_id,
            parent_mnt_id: l.parent_id,
            root_dev: kdev(l.major, l.minor),
            flags: mnt_flags(&l.mnt_opts),
            sb_flags,
            root: l.root,
            ext_key: ext.iter().find(|(mp, _)| *mp == l.mountpoint).map(|(_, k)| k.clone()),
            mountpoint: l.mountpoint,
            source: l.source,
            options,
            fstype: l.fstype,
            shared_id: opt("shared:"),
            master_id: opt("master:"),
            archive: None,
        };
        if l.optional.iter().any(|o| o == "unbindable") {
            return Err(format!("{} is unbindable: not supported yet", m.name()));
        }
        mounts.push(m);
    }
    if from_source {
        // (the root mount: the first without a parent in the namespace)
        let ids: std::collections::HashSet<u32> = mounts.iter().map(|m| m.mnt_id).collect();
        for m in mounts.iter_mut().filter(|m| ids.contains(&m.parent_mnt_id) && !NEW_MOUNT.contains(&m.fstype.as_str())) {
            m.ext_key = Some(m.mountpoint.clone());
        }
    }
    if auto && !from_source {
        let own = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("reading criu's /proc/self/mountinfo: {e}"))?;
        auto_external(&mut mounts, &parse_mountinfo(&own)?);
    }
    // (runc names every device and cgroup mount it may have made: one that
    // is not a mount here is unused, as upstream leaves it)
    for (mp, key) in ext {
        if !mounts.iter().any(|m| &m.mountpoint == mp) {
            crate::pr_info!("--external mnt[{mp}]:{key}: no mount of the tree's mount namespace is at {mp}: unused");
        }
    }
    let (how, _) = classify(&mounts)?;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).map_err(|e| format!("opening its mount namespace: {e}"))?;
    let own = std::fs::File::open("/proc/self/ns/mnt").map_err(|e| format!("opening criu's mount namespace: {e}"))?;
    let mut total = 0u64;
    // (one tar per tmpfs, all at once: tfork's source is frozen meanwhile)
    let tmpfs: Vec<usize> = (0..mounts.len()).filter(|&i| how[i] == How::New && mounts[i].fstype == "tmpfs").collect();
    let (nsr, ownr, ms) = (&ns, &own, &mounts);
    let archives: Vec<Result<Vec<u8>, String>> = std::thread::scope(|sc| {
        let hs: Vec<_> = tmpfs.iter().map(|&i| (i, sc.spawn(move || archive(nsr, ownr, &ms[i])))).collect();
        hs.into_iter().map(|(i, h)| h.join().unwrap_or_else(|_| Err(format!("{}: archiving its files: the thread panicked", mounts[i].name())))).collect()
    });
    for (&i, data) in tmpfs.iter().zip(archives) {
        let data = data?;
        total = total.saturating_add(data.len() as u64);
        if total > TMPFS_TOTAL_MAX {
            return Err(format!("{}: the tmpfs archives take over {TMPFS_TOTAL_MAX} bytes: not supported", mounts[i].name()));
        }
        crate::pr_debug!("{}: archive of {} bytes", mounts[i].name(), data.len());
        mounts[i].archive = Some(Archive::Bytes(data));
    }
    crate::pr_info!("mount namespace of {pid}: {} mounts", mounts.len());
    Ok(MntNs { mounts, source: from_source.then_some(pid) })
}

/// tar's options as upstream runs it (a format fact: the archive is what
/// GNU tar writes with them).
const TAR_CREATE: &[&str] =
    &["--create", "--gzip", "--no-unquote", "--no-wildcards", "--one-file-system", "--check-links", "--preserve-permissions", "--sparse", "--numeric-owner", "."];

fn archive(ns: &std::fs::File, own: &std::fs::File, m: &Mount) -> Result<Vec<u8>, String> {
    let mut cmd = std::process::Command::new("tar");
    cmd.args(TAR_CREATE).stdin(std::process::Stdio::null());
    crate::sys::mount::in_mount_copy(&mut cmd, ns, own, &m.mountpoint).map_err(|e| format!("{}: {e}", m.name()))?;
    let out = cmd.output().map_err(|e| format!("{}: running tar to archive its files: {e}", m.name()))?;
    if !out.status.success() {
        return Err(format!("{}: tar archiving its files failed ({}): {}", m.name(), out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(out.stdout)
}

fn tmpfs_image(dev: u32) -> String {
    format!("tmpfs-dev-{dev}.tar.gz.img")
}

/// mountpoints-ID.img (ID: the root's mnt_ns_id) and a tmpfs archive per
/// tmpfs file system, as upstream 4.2 writes them.
pub fn write_images(dir: &Path, tree: &Tree) -> Result<(), ImagesError> {
    let Some(ns) = &tree.mnt else { return Ok(()) };
    let id = tree.root().ids.mnt_ns;
    let mut entries = Vec::with_capacity(ns.mounts.len());
    for m in ns.mounts.iter().rev() {
        let code = fstype_code(&m.fstype);
        entries.push(pb::MntEntry {
            fstype: code,
            mnt_id: m.mnt_id,
            root_dev: m.root_dev,
            parent_mnt_id: m.parent_mnt_id,
            flags: m.flags,
            root: m.root.clone(),
            mountpoint: m.mountpoint.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
            shared_id: Some(m.shared_id),
            master_id: Some(m.master_id),
            with_plugin: None,
            ext_mount: None,
            // (as upstream: a file system it has no code for is written
            // without its name; restore needs none for the root and
            // external mounts, the only such ones classify lets through)
            fsname: None,
            internal_sharing: None,
            deleted: None,
            sb_flags: Some(m.sb_flags),
            ext_key: m.ext_key.clone(),
        });
        if let Some(a) = &m.archive {
            let name = tmpfs_image(m.root_dev);
            let path = dir.join(&name);
            let r = match a {
                Archive::Bytes(b) => std::fs::write(&path, b),
                Archive::File(f) => std::fs::copy(f, &path).map(drop),
            };
            r.map_err(|e| ImagesError::Io { file: name, source: e })?;
        }
    }
    write_all(dir, &mg::MNTS.file_name(id), &mg::MNTS, &entries)?;
    Ok(())
}

/// The root's own mount namespace from the image set, when its
/// mnt_ns_id is not inventory's root_ids' (0: not recorded): every entry
/// checked ([`classify`]), each tmpfs's archive found.
pub fn read_images(dir: &Path, ids: &KobjIds, root_ids: &KobjIds) -> Result<Option<MntNs>, ImagesError> {
    if ids.mnt_ns == 0 || root_ids.mnt_ns == 0 || ids.mnt_ns == root_ids.mnt_ns {
        return Ok(None);
    }
    let name = mg::MNTS.file_name(ids.mnt_ns);
    if !dir.join(&name).exists() {
        return Err(ImagesError::Bad {
            file: name,
            what: format!("missing, but the root's mnt_ns_id {} is not inventory's root_ids.mnt_ns_id {}: its mount namespace has no image", ids.mnt_ns, root_ids.mnt_ns),
        });
    }
    let v: Vec<pb::MntEntry> = read_all(dir, &name, &mg::MNTS)?;
    if v.len() > MOUNTS_MAX {
        return Err(ImagesError::Bad { file: name, what: format!("{} entries: at most {MOUNTS_MAX}", v.len()) });
    }
    let bad = |i: usize, field: &str, what: String| ImagesError::Bad { file: name.clone(), what: format!("entry {i}, field {field}: {what}") };
    let mut mounts = Vec::with_capacity(v.len());
    for (i, e) in v.iter().enumerate().rev() {
        let fstype = match (fstype_name(e.fstype), &e.fsname) {
            (Some(n), _) => n.to_string(),
            (None, Some(n)) if e.fstype == 0 => n.clone(),
            (None, _) if e.fstype == 0 => String::new(),
            (None, _) => return Err(bad(i, "fstype", format!("{} is no file system type upstream 4.2 knows", e.fstype))),
        };
        if e.flags & !MNT_FLAGS != 0 {
            return Err(bad(i, "flags", format!("{:#x} has bits other than per-mount MS_* flags", e.flags)));
        }
        let sb_flags = e.sb_flags.unwrap_or(0);
        if sb_flags & !SB_FLAGS != 0 {
            return Err(bad(i, "sb_flags", format!("{sb_flags:#x} has bits other than superblock MS_* flags")));
        }
        for (field, s) in [("root", &e.root), ("mountpoint", &e.mountpoint), ("source", &e.source), ("options", &e.options)] {
            if s.len() > 4096 || s.contains('\0') {
                return Err(bad(i, field, format!("{} bytes{}: at most 4096, no NUL", s.len(), if s.contains('\0') { " with a NUL" } else { "" })));
            }
        }
        if e.ext_key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 4096) {
            return Err(bad(i, "ext_key", "empty or over 4096 bytes".into()));
        }
        mounts.push(Mount {
            mnt_id: e.mnt_id,
            parent_mnt_id: e.parent_mnt_id,
            root_dev: e.root_dev,
            flags: e.flags,
            sb_flags,
            root: e.root.clone(),
            mountpoint: e.mountpoint.clone(),
            source: e.source.clone(),
            options: e.options.clone(),
            fstype,
            shared_id: e.shared_id.unwrap_or(0),
            master_id: e.master_id.unwrap_or(0),
            ext_key: e.ext_key.clone(),
            archive: None,
        });
    }
    let (how, _) = classify(&mounts).map_err(|what| ImagesError::Bad { file: name.clone(), what })?;
    let base = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    for (m, h) in mounts.iter_mut().zip(&how) {
        if *h == How::New && m.fstype == "tmpfs" {
            let t = tmpfs_image(m.root_dev);
            if !dir.join(&t).exists() {
                return Err(ImagesError::Bad { file: t, what: format!("missing: the files of {}", m.name()) });
            }
            m.archive = Some(Archive::File(base.join(t)));
        }
    }
    Ok(Some(MntNs { mounts, source: None }))
}

/// Before restore forks: refuse an image set whose mount namespace this
/// restore can't make (no `--root`, an external key without a path),
/// naming the mount and the option wanted.
pub fn check_restore(tree: &Tree, root: Option<&Path>, ext: &[(String, String)]) -> Result<(), String> {
    let Some(ns) = &tree.mnt else { return Ok(()) };
    let (how, _) = classify(&ns.mounts)?;
    if ns.source.is_some() {
        return Ok(());
    }
    for (m, h) in ns.mounts.iter().zip(&how) {
        match h {
            How::Root if root.is_none() => {
                return Err(format!("the tree's mount namespace is restored below --root DIR (its root {}), which is not given", m.name()));
            }
            How::External(k) if !ext.iter().any(|(key, _)| key == k) => {
                return Err(format!("{} is external (key {k:?}): give its path with --external mnt[{k}]:PATH (or --ext-mount-map {k}:PATH)", m.name()));
            }
            _ => {}
        }
    }
    Ok(())
}

fn proc_fd(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// `path` inside `root`, made (directories, and a file as the last part
/// when `file`) where missing.
fn mount_target(root: &OwnedFd, path: &str, file: bool) -> Result<OwnedFd, String> {
    let open = |p: &str| crate::sys::ns::open_in_root(root.as_fd(), std::ffi::OsStr::new(p), libc::O_PATH | libc::O_CLOEXEC, 0);
    if let Ok(fd) = open(path) {
        return Ok(fd);
    }
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut at = String::new();
    for (k, c) in parts.iter().enumerate() {
        let parent = if at.is_empty() { "/".to_string() } else { at.clone() };
        at = format!("{at}/{c}");
        if open(&at).is_ok() {
            continue;
        }
        let p = open(&parent).map_err(|e| format!("{parent} below the new root: {e}"))?;
        let here = format!("{}/{c}", proc_fd(&p));
        let r = if file && k + 1 == parts.len() {
            std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&here).map(drop)
        } else {
            std::fs::create_dir(&here)
        };
        r.map_err(|e| format!("making the mount point {at}: {e}"))?;
    }
    open(path).map_err(|e| format!("the mount point {path}: {e}"))
}

/// In the tree's root (single-threaded, before it forks, after its other
/// namespaces): a new mount namespace with the image's mounts, pivot_root
/// into it. `root`: `--root` and the number of RootDir's fd, made an
/// O_PATH fd of the new `/`; the root mount is a bind of `--root`. `ext`:
/// `--external mnt[KEY]:PATH` pairs of the restore. A namespace taken from
/// a live source (`ns.source`, tfork) needs neither: its root mount and
/// external ones are copies of the source's (open_tree(2) in the source's
/// namespace, attached here with move_mount(2)).
pub fn enter(ns: &MntNs, root: Option<(&Path, i32)>, ext: &[(String, String)]) -> Result<(), String> {
    use crate::sys::mount::{clone_mount, move_mount};
    use crate::sys::ns::mount;
    let (how, order) = classify(&ns.mounts)?;
    // tfork: copies of the source's root and external mounts, made in its
    // namespace (open_tree copies only mounts of the caller's)
    let mut copies: Vec<Option<OwnedFd>> = (0..ns.mounts.len()).map(|_| None).collect();
    if let Some(src) = ns.source {
        let theirs = std::fs::File::open(format!("/proc/{src}/ns/mnt")).map_err(|e| format!("the source {src}'s mount namespace: {e}"))?;
        let own = std::fs::File::open("/proc/self/ns/mnt").map_err(|e| format!("our mount namespace: {e}"))?;
        let cwd = std::env::current_dir().ok();
        crate::sys::ns::setns(theirs.as_fd(), libc::CLONE_NEWNS).map_err(|e| format!("entering the source {src}'s mount namespace: {e}"))?;
        let mut r = Ok(());
        for (i, h) in how.iter().enumerate() {
            let path = match h {
                How::Root => "/",
                How::External(_) => ns.mounts[i].mountpoint.as_str(),
                _ => continue,
            };
            match clone_mount(path) {
                Ok(fd) => copies[i] = Some(fd),
                Err(e) => {
                    r = Err(format!("{}: a copy of the source's (open_tree): {e}", ns.mounts[i].name()));
                    break;
                }
            }
        }
        crate::sys::ns::setns(own.as_fd(), libc::CLONE_NEWNS).map_err(|e| format!("back to our mount namespace: {e}"))?;
        if let Some(c) = cwd {
            let _ = std::env::set_current_dir(c);
        }
        r?;
    }
    crate::sys::ns::unshare(libc::CLONE_NEWNS).map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
    // (nothing made here reaches the engine's namespace)
    mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None).map_err(|e| format!("mount(/, MS_REC|MS_PRIVATE): {e}"))?;
    let root_at = how.iter().position(|h| *h == How::Root).expect("classify found the root");
    let new_root = match (copies[root_at].take(), root) {
        // the source's root, stacked on ours (pivot_root makes it /)
        (Some(c), _) => {
            let slash = std::fs::File::open("/").map_err(|e| format!("opening / to attach the copy of the source's root: {e}"))?;
            let snap = ROOT_SNAPSHOT.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match snap {
                None => {
                    move_mount(&c, slash.as_fd()).map_err(|e| format!("{}: attaching the copy of the source's root (move_mount): {e}", ns.mounts[root_at].name()))?;
                    c
                }
                // --root-snapshot: an overlayfs whose lower layer is that
                // copy, detached (the overlay holds its own private clone of
                // it), attached in its place
                Some(RootSnapshot::Overlay { upper, work }) => {
                    let o = crate::sys::mount::overlay_mount(&proc_fd(&c), &upper, &work)
                        .map_err(|e| format!("{}: --root-snapshot overlay over the copy of the source's root: {e}", ns.mounts[root_at].name()))?;
                    drop(c);
                    move_mount(&o, slash.as_fd()).map_err(|e| format!("{}: attaching the --root-snapshot overlay (move_mount): {e}", ns.mounts[root_at].name()))?;
                    crate::pr_info!("{}: an overlay of the source's root, upper {upper}", ns.mounts[root_at].name());
                    o
                }
                // --root-snapshot btrfs: a bind of the clone's snapshot
                // (its path in this namespace, a copy of the engine's)
                Some(RootSnapshot::Bind(src)) => {
                    drop(c);
                    let b = crate::sys::mount::clone_mount(&src).map_err(|e| format!("{}: --root-snapshot btrfs: a bind of {src} (open_tree): {e}", ns.mounts[root_at].name()))?;
                    move_mount(&b, slash.as_fd()).map_err(|e| format!("{}: attaching the --root-snapshot btrfs snapshot {src} (move_mount): {e}", ns.mounts[root_at].name()))?;
                    crate::pr_info!("{}: a btrfs snapshot of the source's root, {src}", ns.mounts[root_at].name());
                    b
                }
            }
        }
        (None, Some((r, _))) => {
            let rootp = r.to_str().ok_or_else(|| format!("--root {}: not UTF-8", r.display()))?;
            // a new mount of its own, the namespace's root: a bind of
            // --root alone (what is mounted below it is not the image's),
            // stacked on ours as a tfork's copy is (a bind of --root on
            // itself would leave "/" naming the old root, submounts and
            // all, when --root is /)
            let b = clone_mount(rootp).map_err(|e| format!("a bind of --root {rootp} (open_tree): {e}"))?;
            let slash = std::fs::File::open("/").map_err(|e| format!("opening / to attach the bind of --root: {e}"))?;
            move_mount(&b, slash.as_fd()).map_err(|e| format!("attaching the bind of --root {rootp} (move_mount): {e}"))?;
            b
        }
        (None, None) => return Err(format!("{}: the root of the tree's mount namespace needs --root DIR", ns.mounts[root_at].name())),
    };
    // mount index -> st_dev of its restored file system (bind sources)
    let mut devs: Vec<Option<u64>> = vec![None; ns.mounts.len()];
    let at_root = |p: &str, flags: i32| crate::sys::ns::open_in_root(new_root.as_fd(), std::ffi::OsStr::new(p), flags, 0);
    let ext_path = |k: &str, name: &str| ext.iter().find(|(key, _)| key == k).map(|(_, p)| p.clone()).ok_or_else(|| format!("{name}: no --external mnt[{k}]:PATH"));
    for &i in &order {
        let m = &ns.mounts[i];
        let name = m.name();
        // a bind of one slave of a devpts made anew (runc's /dev/console):
        // that pty made first, for its slave to exist (kinds::pty keeps it
        // for the slave's restore)
        if let How::Bind { of, sub } = &how[i] {
            let d = &ns.mounts[*of];
            if d.fstype == "devpts" {
                if let Ok(index) = sub.trim_matches('/').parse::<u32>() {
                    let ptmx = format!("{}/ptmx", d.mountpoint.trim_end_matches('/'));
                    crate::kinds::pty::premake(&|fl| at_root(&ptmx, fl), index).map_err(|e| format!("{name}: a bind of /dev/pts/{index}: {e}"))?;
                }
            }
        }
        let target_fd = match &how[i] {
            How::Root => None,
            h => {
                let file = match h {
                    How::External(_) if copies[i].is_some() => {
                        crate::sys::process::fstat_mode_size(copies[i].as_ref().expect("a copy").as_raw_fd()).is_ok_and(|(mode, _)| mode & libc::S_IFMT != libc::S_IFDIR)
                    }
                    How::External(k) => !Path::new(&ext_path(k, &name)?).is_dir(),
                    How::Bind { of, sub } => {
                        let src = format!("{}/{sub}", ns.mounts[*of].mountpoint.trim_end_matches('/'));
                        at_root(&src, libc::O_PATH | libc::O_CLOEXEC).and_then(|f| crate::sys::process::fstat_mode_size(f.as_raw_fd())).is_ok_and(|(mode, _)| mode & libc::S_IFMT != libc::S_IFDIR)
                    }
                    _ => false,
                };
                Some(mount_target(&new_root, &m.mountpoint, file).map_err(|e| format!("{name}: {e}"))?)
            }
        };
        let target = target_fd.as_ref().map_or_else(|| proc_fd(&new_root), proc_fd);
        match &how[i] {
            How::Root => {}
            How::External(_) if copies[i].is_some() => {
                let to = target_fd.as_ref().expect("not the root").as_fd();
                move_mount(copies[i].as_ref().expect("a copy"), to).map_err(|e| format!("{name}: attaching the copy of the source's (move_mount): {e}"))?;
            }
            How::External(k) => {
                let p = ext_path(k, &name)?;
                mount(Some(&p), &target, None, libc::MS_BIND, None).map_err(|e| format!("{name}: bind-mounting the external {p}: {e}"))?;
            }
            How::New => {
                // (a read-only tmpfs is made writable first, for its files,
                // and read-only once they are in)
                let sb = if m.archive.is_some() { m.sb_flags & !MS_RDONLY } else { m.sb_flags };
                let flags = u64::from(sb | (m.flags & (MS_NOSUID | MS_NODEV | MS_NOEXEC)));
                let data = (!m.options.is_empty()).then_some(m.options.as_str());
                mount(Some(&m.source), &target, Some(&m.fstype), flags, data).map_err(|e| format!("{name}: mount of a new {} with options {:?}: {e}", m.fstype, m.options))?;
            }
            How::Bind { of, sub } => {
                let src = format!("{}/{sub}", ns.mounts[*of].mountpoint.trim_end_matches('/'));
                let fd = at_root(&src, libc::O_PATH | libc::O_CLOEXEC).map_err(|e| format!("{name}: its bind source {src}: {e}"))?;
                let (dev, _) = crate::sys::process::fstat_dev_ino(fd.as_raw_fd()).map_err(|e| format!("{name}: its bind source {src}: {e}"))?;
                if devs[*of].is_some_and(|d| d != dev) {
                    return Err(format!("{name}: its bind source {src} is not on {} (a mount below it is in the way): not supported yet", ns.mounts[*of].name()));
                }
                mount(Some(&proc_fd(&fd)), &target, None, libc::MS_BIND, None).map_err(|e| format!("{name}: bind of {src}: {e}"))?;
            }
        }
        // the mount's own root, as mounted now (a file for a file's bind:
        // runc's masks of /proc/keys, ...; the fd opened before the mount
        // names the file below it, which a remount refuses)
        let top = at_root(&m.mountpoint, libc::O_PATH | libc::O_CLOEXEC).ok();
        if let Some(t) = &top {
            devs[i] = crate::sys::process::fstat_dev_ino(t.as_raw_fd()).ok().map(|(d, _)| d);
        }
        if let Some(a) = &m.archive {
            let t = top.as_ref().ok_or_else(|| format!("{name}: its root after mounting"))?;
            extract(a, t).map_err(|e| format!("{name}: {e}"))?;
            if m.sb_flags & MS_RDONLY != 0 {
                let flags = u64::from(m.sb_flags | (m.flags & (MS_NOSUID | MS_NODEV | MS_NOEXEC))) | libc::MS_REMOUNT;
                mount(None, &proc_fd(t), None, flags, None).map_err(|e| format!("{name}: making its file system read-only once its files are in (remount): {e}"))?;
            }
        }
        // the per-mount flags (a bind remount sets all of them)
        let t = top.as_ref().map_or(target, proc_fd);
        mount(None, &t, None, u64::from(m.flags & MNT_FLAGS) | libc::MS_REMOUNT | libc::MS_BIND, None)
            .map_err(|e| format!("{name}: setting its flags {:#x} (bind remount): {e}", m.flags))?;
    }
    // (tests: a restore failing with the namespace half made; only
    // `:fail`: a pid namespace's init ignores its own SIGKILL)
    if crate::fault::fails("mntns-made") {
        return Err("fault point mntns-made (CRIU_RS_FAULT_AT)".into());
    }
    // into it: the old root stacked below the new one, then detached
    crate::sys::mount::fchdir(&new_root).map_err(|e| format!("chdir to the new root: {e}"))?;
    drop(new_root);
    crate::sys::mount::pivot_root(".", ".").map_err(|e| format!("pivot_root into the new root: {e}"))?;
    crate::sys::mount::umount2(".", libc::MNT_DETACH).map_err(|e| format!("detaching the old root: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir / in the new root: {e}"))?;
    if let Some((_, root_fd)) = root {
        let fd = crate::sys::ns::open_root_dir(Path::new("/"), 3).map_err(|e| format!("opening the new /: {e}"))?;
        crate::sys::process::dup2(fd.as_raw_fd(), root_fd).map_err(|e| format!("the new / onto fd {root_fd}: {e}"))?;
        crate::sys::process::set_cloexec(root_fd, true).map_err(|e| format!("close-on-exec on fd {root_fd}: {e}"))?;
    }
    Ok(())
}

/// `tar --extract` of a tmpfs archive into the mount `dir` (its root).
fn extract(a: &Archive, dir: &OwnedFd) -> Result<(), String> {
    let input: std::fs::File = match a {
        Archive::File(p) => std::fs::File::open(p).map_err(|e| format!("opening its archive {}: {e}", p.display()))?,
        Archive::Bytes(b) => {
            let fd = crate::sys::process::memfd_create(c"criu-rs-tmpfs", libc::MFD_CLOEXEC).map_err(|e| format!("memfd for its archive: {e}"))?;
            let mut f = std::fs::File::from(fd);
            use std::io::{Seek, Write};
            f.write_all(b).and_then(|_| f.rewind()).map_err(|e| format!("writing its archive to a memfd: {e}"))?;
            f
        }
    };
    // (tar's working directory: ours, set here while fd `dir` is the one
    // meant, before the spawn moves fds around the standard ones)
    std::env::set_current_dir(proc_fd(dir)).map_err(|e| format!("chdir to its root: {e}"))?;
    let out = std::process::Command::new("tar")
        .args(["--extract", "--gzip", "--no-unquote", "--no-wildcards", "--preserve-permissions", "--numeric-owner", "--same-owner"])
        .stdin(input)
        .stdout(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running tar to extract its files: {e}"))?;
    if !out.status.success() {
        return Err(format!("tar extracting its files failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// The mount namespace of every thread of the tree against its root's:
/// one of another (nested, or a child that unshared) is refused by name.
/// Returns whether the root's is not the engine's.
pub fn root_owns(pid: i32, threads: &[(i32, i32)]) -> Result<bool, (i32, String)> {
    let link = |p: String| std::fs::read_link(p).ok().map(|l| l.to_string_lossy().into_owned());
    let root = link(format!("/proc/{pid}/ns/mnt"));
    for &(p, tid) in threads {
        let theirs = link(format!("/proc/{p}/task/{tid}/ns/mnt"));
        if theirs != root {
            return Err((
                p,
                format!(
                    "thread {tid} is in a mount namespace ({}) other than its tree root {pid}'s ({}): nested mount namespaces are not supported yet",
                    theirs.unwrap_or_default(),
                    root.clone().unwrap_or_default()
                ),
            ));
        }
    }
    Ok(root.is_some() && root != link("/proc/self/ns/mnt".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTAINER: &str = "69 45 254:0 /tmp/x/rootfs / rw,relatime - ext4 /dev/vda rw,discard
70 69 0:40 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
71 69 0:41 / /tmp rw,nosuid,relatime - tmpfs tmpfs rw,size=16384k
72 69 0:42 / /dev rw,nosuid,relatime - tmpfs tmpfs rw,size=65536k,mode=755
73 72 0:43 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,mode=620,ptmxmode=666
76 69 254:0 /tmp/x/host /data rw,relatime - ext4 /dev/vda rw,discard
77 69 0:22 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs rw
78 72 0:43 /ptmx /dev/ptmx rw,nosuid,noexec,relatime - devpts devpts rw,mode=620,ptmxmode=666
79 69 254:0 /tmp/x/rootfs/etc /mnt\\040x rw,relatime shared:5 - ext4 /dev/vda rw,discard
";

    fn mounts(text: &str) -> Vec<Mount> {
        parse_mountinfo(text)
            .unwrap()
            .into_iter()
            .map(|l| {
                let (sb_flags, options) = sb_split(&l.fstype, &l.super_opts);
                Mount {
                    mnt_id: l.mnt_id,
                    parent_mnt_id: l.parent_id,
                    root_dev: kdev(l.major, l.minor),
                    flags: mnt_flags(&l.mnt_opts),
                    sb_flags,
                    root: l.root,
                    mountpoint: l.mountpoint.clone(),
                    source: l.source,
                    options,
                    fstype: l.fstype,
                    ext_key: (l.mountpoint == "/data").then(|| "data".to_string()),
                    shared_id: l.optional.iter().find_map(|o| o.strip_prefix("shared:")).map_or(0, |v| v.parse().unwrap()),
                    ..Default::default()
                }
            })
            .collect()
    }

    #[test]
    fn parses_a_container_mountinfo() {
        let l = parse_mountinfo(CONTAINER).unwrap();
        assert_eq!(l.len(), 9);
        assert_eq!(l[8].mountpoint, "/mnt x");
        assert_eq!(l[8].optional, vec!["shared:5".to_string()]);
        assert_eq!((l[0].major, l[0].minor, kdev(l[0].major, l[0].minor)), (254, 0, 0xfe00000));
        assert_eq!(mnt_flags(&l[6].mnt_opts), 0x20000f, "upstream's flags for a ro sysfs");
        assert_eq!(sb_split("devpts", &l[4].super_opts), (0, "mode=620,ptmxmode=666,newinstance".into()));
        assert_eq!(sb_split("tmpfs", "ro,size=4k"), (MS_RDONLY, "size=4k".into()));
        assert!(parse_mountinfo("1 2 3").is_err());
        assert!(parse_mountinfo("x 1 0:1 / / rw - ext4 a rw").is_err());
    }

    #[test]
    fn classifies_root_new_external_bind_and_refuses_the_rest() {
        let mut ms = mounts(CONTAINER);
        assert!(classify(&ms).unwrap_err().contains("mount 79 at /mnt x (ext4"), "a shared mount refused by name");
        ms.pop();
        let (how, order) = classify(&ms).unwrap();
        assert_eq!(how[0], How::Root);
        assert_eq!(how[1], How::New);
        assert_eq!(how[5], How::External("data".into()));
        assert_eq!(how[7], How::Bind { of: 4, sub: "ptmx".into() });
        assert_eq!(order[0], 0);
        assert!(order.iter().position(|&i| i == 7) > order.iter().position(|&i| i == 4));
        // a host directory not given as external
        ms[5].ext_key = None;
        let e = classify(&ms).unwrap_err();
        assert!(e.contains("mount 76 at /data (ext4") && e.contains("--external mnt[/data]:KEY"), "{e}");
        ms[5].ext_key = Some("data".into());
        ms[1].fstype = "overlay".into();
        assert!(classify(&ms).unwrap_err().contains("overlay file systems inside"));
        ms[1].fstype = "proc".into();
        ms[1].mountpoint = "/tmp".into();
        assert!(classify(&ms).unwrap_err().contains("stacked"));
        ms[1].mountpoint = "/../proc".into();
        assert!(classify(&ms).is_err());
    }

    /// A namespace file bind-mounted (`ip netns add`'s /run/netns/NAME):
    /// refused by name unless external (tfork's copies from the source
    /// make every such mount external), whose root "net:[INO]" is no path.
    #[test]
    fn nsfs_bind_is_refused_by_name_unless_external() {
        let text = format!("{CONTAINER}80 69 0:4 net:[4026532181] /run/netns/x rw - nsfs nsfs rw\n");
        let mut ms = mounts(&text);
        ms.retain(|m| m.mnt_id != 79);
        let e = classify(&ms).unwrap_err();
        assert!(e.contains("mount 80 at /run/netns/x (nsfs") && e.contains("--external mnt[/run/netns/x]:KEY"), "{e}");
        ms.last_mut().unwrap().ext_key = Some("/run/netns/x".into());
        let (how, _) = classify(&ms).unwrap();
        assert_eq!(how.last(), Some(&How::External("/run/netns/x".into())));
    }
}
