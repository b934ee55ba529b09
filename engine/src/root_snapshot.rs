//! `criu tfork --root-snapshot overlay[:DIR]|btrfs[:DIR]`: each clone
//! gets its own copy of the source's writable directory (its cwd, or DIR),
//! so clones and the source do not clobber each other's files.
//!
//! `btrfs`: instead of the overlay in step 3, the engine snapshots the
//! btrfs subvolume holding DIR (BTRFS_IOC_SNAP_CREATE_V2, writable) into
//! `BASE/<clone pid>/snap` (BASE must be on the same btrfs file system)
//! and the clone bind-mounts DIR's place in the snapshot over DIR. The
//! rest is the same.
//!
//! Per clone, while it is stopped and still single-threaded (before
//! `tfork::finish` makes its other threads: unshare(CLONE_NEWNS) implies
//! CLONE_FS, which a process whose threads share their fs_struct may not
//! unshare), these calls are injected into the clone itself:
//!
//! 1. `unshare(CLONE_NEWNS)`: a mount namespace of its own, a copy of the
//!    source's;
//! 2. `mount(NULL, "/", NULL, MS_REC|MS_SLAVE)`: the copy's mounts stop
//!    propagating back to the source's namespace (the host's / is usually
//!    a shared mount: an overlay mounted on a copy of it would appear in
//!    the host too); the host's new mounts still reach the clone;
//! 3. `mount("overlay", DIR, "overlay", 0, "lowerdir=DIR,upperdir=U,workdir=W")`
//!    over the same path, with a fresh upper and work directory per clone
//!    (`BASE/<clone pid>/upper`, `.../work`; BASE is `-D/tfork-root`), so
//!    the clone sees the same paths: reads fall through to the source's
//!    files, writes copy them up into the clone's upper directory;
//! 4. `chdir(cwd)` when the cwd is DIR or under it (the clone's cwd still
//!    named the directory under the new mount);
//! 5. each open file description of a path under DIR opened again by
//!    path (same access mode and status flags, the offset of the freeze)
//!    and `dup3`'d over every fd that shared it: a fork's fds share the
//!    source's descriptions, which would keep writing into the source's
//!    files.
//!
//! Refused by name: a source without CAP_SYS_ADMIN (the clone makes its
//! namespace and mounts with its own credentials), a source in another mount namespace or under another
//! root than the engine's (the paths would name other files), paths with
//! `,` `:` or `\` (overlayfs option syntax), a BASE inside DIR (overlayfs
//! refuses overlapping layers), a shared writable mapping of a file under
//! DIR (the clone would write into the source's file). An unlinked file
//! open under DIR gets an unlinked copy (O_TMPFILE in the overlay, filled
//! by the clone with sendfile from the shared description). Private file mappings of files under DIR stay the
//! source's (copy-on-write pages of the file as it was), and the clone's
//! exe link names the source's binary.
//!
//! A source that owns its mount namespace (a container, cloned by
//! restore): a snapshot of its root mount only ([`Plan::new_for_mount_ns`]):
//! the restoring helper makes the clone's upper and work directories, or
//! the btrfs snapshot of the subvolume holding the source's root directory
//! (`/proc/PID/root` as the engine's namespace names it)
//! ([`Plan::root_snapshot`]), and `crate::mntns::enter` mounts the overlay
//! (over a copy of the source's root mount) or a bind of the snapshot's
//! directory as the root mount of the clone's new namespace.

use crate::model::{FileDesc, Task};
use crate::restore::space::Space;
use crate::sys::inject::Injector;
use crate::sys::Pid;
use std::path::{Path, PathBuf};

/// What `--root-snapshot` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// An overlayfs per clone over `dir` (`None`: the source's cwd).
    Overlay { dir: Option<String> },
    /// A snapshot per clone of the btrfs subvolume holding `dir`, bind
    /// mounted over it.
    Btrfs { dir: Option<String> },
}

impl Mode {
    /// `overlay` or `overlay:DIR`.
    pub fn parse(s: &str) -> Result<Mode, String> {
        let (kind, dir) = match s.split_once(':') {
            Some((k, d)) => (k, Some(d.to_string())),
            None => (s, None),
        };
        if let Some(d) = &dir {
            if !d.starts_with('/') {
                return Err(format!("--root-snapshot {kind}:{d}: the directory must be an absolute path"));
            }
        }
        match kind {
            "overlay" => Ok(Mode::Overlay { dir }),
            "btrfs" => Ok(Mode::Btrfs { dir }),
            m => Err(format!("unknown --root-snapshot mode {m:?} (overlay, overlay:DIR, btrfs, btrfs:DIR)")),
        }
    }
}

/// A checked snapshot plan for one source.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The directory snapshotted (absolute, no trailing `/`).
    pub dir: String,
    /// Where each clone's upper and work directories (or snapshot) go.
    pub base: PathBuf,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Overlay,
    /// `subvol`: the root of the subvolume holding `dir`, `rel` the path
    /// of `dir` in it.
    Btrfs { subvol: PathBuf, rel: PathBuf },
}

/// `path` is `dir` or under it.
fn under(path: &str, dir: &str) -> bool {
    path == dir || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/')) || dir == "/"
}

fn ns_ino(pid: &str) -> std::io::Result<std::fs::Metadata> {
    std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
}

impl Plan {
    /// Check that `mode` can be applied to `task` (pid `pid`), with upper
    /// directories under `base`.
    pub fn new(mode: &Mode, pid: Pid, task: &Task, base: &Path) -> Result<Plan, String> {
        Self::new_for(mode, pid, task, base, true)
    }

    /// [`Plan::new`] for clones made by restore (a tree, a namespace
    /// init): their files are opened again by path in the snapshot, so a
    /// shared writable file mapping under the directory maps the clone's
    /// own copy and is not refused.
    pub fn new_restored(mode: &Mode, pid: Pid, task: &Task, base: &Path) -> Result<Plan, String> {
        Self::new_for(mode, pid, task, base, false)
    }

    fn new_for(mode: &Mode, pid: Pid, task: &Task, base: &Path, forked: bool) -> Result<Plan, String> {
        let (Mode::Overlay { dir } | Mode::Btrfs { dir }) = mode;
        let dir = dir.clone().unwrap_or_else(|| task.fs.cwd.clone());
        let dir = if dir.len() > 1 { dir.trim_end_matches('/').to_string() } else { dir };
        if dir == "/" {
            return Err(format!("--root-snapshot overlay: the directory of {pid} is / (give overlay:DIR for a directory below it)"));
        }
        use std::os::unix::fs::MetadataExt;
        let (mine, theirs) = (ns_ino("self").map_err(|e| e.to_string())?, ns_ino(&pid.to_string()).map_err(|e| format!("process {pid}: {e}"))?);
        if (mine.dev(), mine.ino()) != (theirs.dev(), theirs.ino()) || task.fs.root != "/" {
            return Err(format!(
                "--root-snapshot: process {pid} is in another mount namespace or root ({}) than the engine: not supported yet",
                task.fs.root
            ));
        }
        // the clone itself unshares and mounts (injected: its credentials)
        const CAP_SYS_ADMIN: u64 = 21;
        if task.threads[0].creds.cap_eff & (1 << CAP_SYS_ADMIN) == 0 {
            return Err(format!(
                "--root-snapshot: process {pid} lacks CAP_SYS_ADMIN, which its clones need to make their mount namespace and snapshot mount: not supported"
            ));
        }
        if !Path::new(&dir).is_dir() {
            return Err(format!("--root-snapshot: {dir} (of process {pid}) is not a directory"));
        }
        // (a given DIR through symlinks: the path the kernel reports for the files under it)
        let dir = std::fs::canonicalize(&dir).ok().and_then(|d| d.to_str().map(str::to_string)).unwrap_or(dir);
        let parent = base.parent().unwrap_or(Path::new("."));
        let parent = std::fs::canonicalize(parent).map_err(|e| format!("--root-snapshot: {}: {e}", parent.display()))?;
        let base = parent.join(base.file_name().unwrap_or_default());
        let bs = base.to_str().ok_or_else(|| format!("--root-snapshot: {} is not UTF-8", base.display()))?;
        let kind = match mode {
            Mode::Overlay { .. } => Kind::Overlay,
            Mode::Btrfs { .. } => btrfs_kind(&dir)?,
        };
        for p in [dir.as_str(), bs].into_iter().filter(|_| matches!(kind, Kind::Overlay)) {
            if p.contains([',', ':', '\\']) {
                return Err(format!("--root-snapshot overlay: the path {p:?} has a , : or \\ (overlayfs option syntax): not supported"));
            }
        }
        if under(bs, &dir) && matches!(kind, Kind::Overlay) {
            return Err(format!("--root-snapshot overlay: the clones' directories would be in {bs}, inside the snapshotted {dir} (overlayfs refuses overlapping layers): give -D outside it"));
        }
        for v in task.mm.vmas.iter().filter(|_| forked) {
            if let Some(f) = &v.file {
                if v.shared() && v.prot & libc::PROT_WRITE as u32 != 0 && under(&f.path, &dir) {
                    return Err(format!(
                        "--root-snapshot: process {pid} maps {} shared and writable at {:#x}: a clone would write into the source's file (not supported)",
                        f.path, v.start
                    ));
                }
            }
        }
        std::fs::create_dir_all(&base).map_err(|e| format!("--root-snapshot: creating {}: {e}", base.display()))?;
        Ok(Plan { dir, base, kind })
    }

    /// [`Plan`] for a source that owns its mount namespace (a container,
    /// cloned by restore, `crate::mntns`): each clone's root mount is an
    /// overlayfs over a copy of the source's, or a bind of a btrfs snapshot
    /// of the subvolume holding its root directory, made in the clone's new
    /// namespace ([`Plan::root_snapshot`], `mntns::set_root_snapshot`); its
    /// other mounts are as without `--root-snapshot`. Refused by name: a
    /// DIR other than `/`, a root not on btrfs for `btrfs`.
    pub fn new_for_mount_ns(mode: &Mode, pid: Pid, base: &Path) -> Result<Plan, String> {
        let (Mode::Overlay { dir: Some(d) } | Mode::Btrfs { dir: Some(d) }) = mode else {
            return Self::root_plan(mode, pid, base);
        };
        if !d.trim_end_matches('/').is_empty() {
            let m = if matches!(mode, Mode::Btrfs { .. }) { "btrfs" } else { "overlay" };
            return Err(format!(
                "--root-snapshot {m}:{d}: process {pid} owns its mount namespace (a container's): its root mount is what each clone gets a snapshot of; a directory below it is not supported (give {m})"
            ));
        }
        Self::root_plan(mode, pid, base)
    }

    fn root_plan(mode: &Mode, pid: Pid, base: &Path) -> Result<Plan, String> {
        let parent = base.parent().unwrap_or(Path::new("."));
        let parent = std::fs::canonicalize(parent).map_err(|e| format!("--root-snapshot: {}: {e}", parent.display()))?;
        let base = parent.join(base.file_name().unwrap_or_default());
        if base.to_str().is_none() {
            return Err(format!("--root-snapshot: {} is not UTF-8", base.display()));
        }
        let kind = match mode {
            Mode::Overlay { .. } => Kind::Overlay,
            // the source's root directory, as this namespace names it
            // (/proc/PID/root: the directory its root mount shows)
            Mode::Btrfs { .. } => btrfs_kind(&root_in_engine_ns(pid)?)?,
        };
        std::fs::create_dir_all(&base).map_err(|e| format!("--root-snapshot: creating {}: {e}", base.display()))?;
        Ok(Plan { dir: "/".into(), base, kind })
    }

    /// Clone directory `top` of a plan made for a source owning its mount
    /// namespace ([`Plan::new_for_mount_ns`]): the overlay's upper and work
    /// directories, or the btrfs snapshot's directory that is the clone's
    /// root (for `mntns::set_root_snapshot`).
    pub fn root_snapshot(&self, top: &Path) -> Result<crate::mntns::RootSnapshot, String> {
        let (upper, work, bind) = self.make_top(top)?;
        let s = |p: PathBuf| p.into_os_string().into_string().map_err(|p| format!("{} is not UTF-8", Path::new(&p).display()));
        Ok(match bind {
            Some(src) => crate::mntns::RootSnapshot::Bind(src),
            None => crate::mntns::RootSnapshot::Overlay { upper: s(upper)?, work: s(work)? },
        })
    }

    /// The directory of clone `pid`'s files: its overlay's upper
    /// directory, or where its snapshot has the directory.
    pub fn upper(&self, pid: Pid) -> PathBuf {
        match &self.kind {
            Kind::Overlay => self.base.join(pid.to_string()).join("upper"),
            Kind::Btrfs { rel, .. } => self.base.join(pid.to_string()).join("snap").join(rel),
        }
    }

    /// What the engine made for clone `pid` (removed if the tfork fails).
    pub fn made(&self, pid: Pid) -> PathBuf {
        self.base.join(pid.to_string())
    }

    /// Make clone directory `top`: its overlay's upper and work
    /// directories, or its btrfs snapshot (then the path to bind-mount).
    fn make_top(&self, top: &Path) -> Result<(PathBuf, PathBuf, Option<String>), String> {
        let (upper, work) = (top.join("upper"), top.join("work"));
        let bind = match &self.kind {
            Kind::Overlay => {
                for d in [&upper, &work] {
                    std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
                }
                None
            }
            Kind::Btrfs { subvol, rel } => {
                std::fs::create_dir_all(top).map_err(|e| format!("creating {}: {e}", top.display()))?;
                crate::sys::btrfs::snapshot(subvol, top, std::ffi::OsStr::new("snap")).map_err(|e| {
                    format!("snapshot of the btrfs subvolume {} into {} (same btrfs file system needed): {e}", subvol.display(), top.display())
                })?;
                let src = top.join("snap").join(rel);
                Some(src.to_str().ok_or_else(|| format!("{} is not UTF-8", src.display()))?.to_string())
            }
        };
        Ok((upper, work, bind))
    }

    /// Put the calling process (single-threaded) in a mount namespace of
    /// its own with the snapshot in `top` mounted over the directory: for
    /// a clone that is restored, not forked (tfork of a namespace init),
    /// whose files are then opened by path, in the snapshot.
    pub fn mount_here(&self, top: &Path) -> Result<(), String> {
        let t0 = std::time::Instant::now();
        let (upper, work, bind) = self.make_top(top)?;
        crate::sys::ns::unshare(libc::CLONE_NEWNS).map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
        crate::sys::ns::mount(None, "/", None, libc::MS_REC | libc::MS_SLAVE, None).map_err(|e| format!("mount(/, MS_REC|MS_SLAVE): {e}"))?;
        match &bind {
            None => {
                let opts = format!("lowerdir={},upperdir={},workdir={}", self.dir, upper.display(), work.display());
                crate::sys::ns::mount(Some("overlay"), &self.dir, Some("overlay"), 0, Some(&opts)).map_err(|e| format!("mount overlay {opts} on {}: {e}", self.dir))?;
            }
            Some(src) => {
                crate::sys::ns::mount(Some(src), &self.dir, None, libc::MS_BIND, None).map_err(|e| format!("bind mount of {src} on {}: {e}", self.dir))?;
            }
        }
        let what = if bind.is_some() { "btrfs snapshot" } else { "overlay" };
        crate::pr_info!("{what} on {} (in {}) in {:.2} ms", self.dir, top.display(), t0.elapsed().as_secs_f64() * 1e3);
        Ok(())
    }

    /// Give clone `pid` (stopped, single-threaded; `main` its injector,
    /// `sp` its gadget area) its own overlay and reopen its files there.
    pub fn apply(&self, pid: Pid, main: &mut Injector, sp: &Space, task: &Task) -> Result<(), String> {
        let t0 = std::time::Instant::now();
        let top = self.base.join(pid.to_string());
        let (upper, work, bind) = self.make_top(&top)?;
        let cstr = |s: &str| -> Vec<u8> {
            let mut v = s.as_bytes().to_vec();
            v.push(0);
            v
        };
        let call = |main: &mut Injector, what: &str, nr: i64, args: &[u64]| main.call(what, nr, args).map_err(|e| format!("clone {pid}: {e}"));
        let put = |off: u64, b: &[u8]| sp.write(off, b).map_err(|e| format!("clone {pid}: {e}"));
        call(main, "unshare(CLONE_NEWNS)", libc::SYS_unshare, &[libc::CLONE_NEWNS as u64])?;
        let root = put(0, b"/\0")?;
        call(main, "mount(/, MS_REC|MS_SLAVE)", libc::SYS_mount, &[0, root, 0, libc::MS_REC | libc::MS_SLAVE, 0])?;
        let target = put(16, &cstr(&self.dir))?;
        match &bind {
            None => {
                let opts = format!("lowerdir={},upperdir={},workdir={}", self.dir, upper.display(), work.display());
                let fstype = put(0, b"overlay\0")?;
                let data = put(8192, &cstr(&opts))?;
                call(main, "mount(overlay)", libc::SYS_mount, &[fstype, target, fstype, 0, data])?;
            }
            Some(src) => {
                let srcp = put(8192, &cstr(src))?;
                call(main, "mount(MS_BIND of the snapshot)", libc::SYS_mount, &[srcp, target, 0, libc::MS_BIND, 0])?;
            }
        }
        crate::fault::point("snapshot-mounted");
        if under(&task.fs.cwd, &self.dir) {
            let cwd = put(0, &cstr(&task.fs.cwd))?;
            call(main, "chdir(cwd)", libc::SYS_chdir, &[cwd])?;
        }
        // open file descriptions under the directory, once each
        let mut done = std::collections::HashSet::new();
        for fd in &task.fds {
            let FileDesc::Kind(crate::kinds::Kind::Reg(crate::kinds::reg::Reg { path, flags, pos, mode, .. })) = &fd.file else { continue };
            if !under(path, &self.dir) || !done.insert(fd.desc) {
                continue;
            }
            let keep = !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | libc::O_CLOEXEC) as u32;
            let open_path = match ghost_size(&fd.file) {
                // unlinked: an unlinked copy of its own, reopened with the fd's flags
                Some(size) => {
                    let tmp = ghost_copy(main, sp, pid, path, fd.fd, *mode, size)?;
                    format!("/proc/self/fd/{tmp}")
                }
                None => path.clone(),
            };
            let p = put(0, &cstr(&open_path))?;
            let nfd = call(main, &format!("openat({open_path})"), libc::SYS_openat, &[libc::AT_FDCWD as u64, p, u64::from(flags & keep), 0])?;
            if let Some(tmp) = open_path.strip_prefix("/proc/self/fd/") {
                call(main, "close", libc::SYS_close, &[tmp.parse::<u64>().unwrap_or(u64::MAX)])?;
            }
            let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
            if !is_dir && *pos != 0 {
                call(main, "lseek", libc::SYS_lseek, &[nfd, *pos, libc::SEEK_SET as u64])?;
            }
            for f in task.fds.iter().filter(|f| f.desc == fd.desc) {
                let fl = if f.cloexec { libc::O_CLOEXEC as u64 } else { 0 };
                call(main, &format!("dup3(.., {})", f.fd), libc::SYS_dup3, &[nfd, f.fd as u64, fl])?;
            }
            if !task.fds.iter().any(|f| f.fd as u64 == nfd) {
                call(main, "close", libc::SYS_close, &[nfd])?;
            }
            crate::pr_debug!("clone {pid}: {path} reopened in its overlay");
        }
        match &bind {
            None => crate::pr_info!("clone {pid}: overlay on {} (upper {}) in {:.2} ms", self.dir, upper.display(), t0.elapsed().as_secs_f64() * 1e3),
            Some(src) => crate::pr_info!("clone {pid}: btrfs snapshot {src} on {} in {:.2} ms", self.dir, t0.elapsed().as_secs_f64() * 1e3),
        }
        Ok(())
    }
}

/// The path, in the engine's mount namespace, of the directory that is
/// process `pid`'s root (a container's rootfs after pivot_root: readlink
/// of /proc/PID/root says only "/" for a mount of another namespace): the
/// file system and root of the mount at its "/", found below a mount of
/// the same file system in the engine's namespace, and checked to be the
/// same directory (device and inode).
fn root_in_engine_ns(pid: Pid) -> Result<String, String> {
    use std::os::unix::fs::MetadataExt;
    let read = |p: &str| -> Result<Vec<crate::mntns::MountInfo>, String> {
        let text = std::fs::read_to_string(p).map_err(|e| format!("--root-snapshot btrfs: {p}: {e}"))?;
        crate::mntns::parse_mountinfo(&text).map_err(|e| format!("--root-snapshot btrfs: {p}: {e}"))
    };
    let theirs = read(&format!("/proc/{pid}/mountinfo"))?;
    let top = theirs.iter().rev().find(|m| m.mountpoint == "/").ok_or_else(|| format!("--root-snapshot btrfs: process {pid} has no mount at /"))?;
    let want = std::fs::metadata(format!("/proc/{pid}/root")).map_err(|e| format!("--root-snapshot btrfs: the root of process {pid}: {e}"))?;
    let mut best: Option<String> = None;
    for m in read("/proc/self/mountinfo")?.iter().filter(|m| (m.major, m.minor) == (top.major, top.minor)) {
        let rest = if m.root == "/" { top.root.strip_prefix('/') } else { top.root.strip_prefix(m.root.as_str()).and_then(|r| if r.is_empty() { Some(r) } else { r.strip_prefix('/') }) };
        let Some(rest) = rest else { continue };
        let path = if rest.is_empty() { m.mountpoint.clone() } else { format!("{}/{rest}", m.mountpoint.trim_end_matches('/')) };
        if std::fs::metadata(&path).is_ok_and(|h| (h.dev(), h.ino()) == (want.dev(), want.ino())) {
            best = Some(path);
            break;
        }
    }
    best.ok_or_else(|| {
        format!(
            "--root-snapshot btrfs: the root of process {pid} ({} of device {}:{}) is no directory the engine's mount namespace shows",
            top.root, top.major, top.minor
        )
    })
}

/// The btrfs subvolume holding `dir` and `dir`'s path in it.
fn btrfs_kind(dir: &str) -> Result<Kind, String> {
    use std::os::unix::fs::MetadataExt;
    let t = crate::sys::btrfs::fs_type(Path::new(dir)).map_err(|e| format!("--root-snapshot btrfs: {dir}: {e}"))?;
    if t != crate::sys::btrfs::SUPER_MAGIC {
        return Err(format!("--root-snapshot btrfs: {dir} is not on btrfs (file system type {t:#x})"));
    }
    let mut root = PathBuf::from(dir);
    loop {
        let m = std::fs::metadata(&root).map_err(|e| format!("--root-snapshot btrfs: {}: {e}", root.display()))?;
        if m.ino() == crate::sys::btrfs::SUBVOL_ROOT_INO {
            break;
        }
        if !root.pop() {
            return Err(format!("--root-snapshot btrfs: no subvolume root above {dir}"));
        }
    }
    let rel = Path::new(dir).strip_prefix(&root).map(Path::to_path_buf).unwrap_or_default();
    Ok(Kind::Btrfs { subvol: root, rel })
}

/// The size of an unlinked file's description.
fn ghost_size(f: &FileDesc) -> Option<u64> {
    match f {
        FileDesc::Kind(crate::kinds::Kind::Reg(crate::kinds::reg::Reg { ghost: Some(g), .. })) => Some(g.size),
        _ => None,
    }
}

/// In clone `pid`: an O_TMPFILE in the (overlay's) directory of `path`
/// with the contents of its fd `fd` (the source's unlinked file), copied
/// by the clone itself (sendfile); its fd number.
fn ghost_copy(main: &mut Injector, sp: &Space, pid: Pid, path: &str, fd: i32, mode: u32, size: u64) -> Result<u64, String> {
    let call = |main: &mut Injector, what: &str, nr: i64, args: &[u64]| main.call(what, nr, args).map_err(|e| format!("clone {pid}: {e}"));
    let put = |off: u64, b: &[u8]| sp.write(off, b).map_err(|e| format!("clone {pid}: {e}"));
    let dir = Path::new(path).parent().and_then(|d| d.to_str()).unwrap_or("/");
    let mut d = dir.as_bytes().to_vec();
    d.push(0);
    let dp = put(64, &d)?;
    let tmp = call(main, &format!("openat({dir}, O_TMPFILE)"), libc::SYS_openat, &[libc::AT_FDCWD as u64, dp, (libc::O_TMPFILE | libc::O_RDWR) as u64, u64::from(mode & 0o7777)])?;
    // sendfile with an offset of its own: the shared description's stays
    // (copy_file_range refuses to copy across file system types)
    let off = put(0, &0u64.to_le_bytes())?;
    let mut done = 0;
    while done < size {
        let n = call(main, "sendfile", libc::SYS_sendfile, &[tmp, fd as u64, off, size - done])?;
        if n == 0 {
            return Err(format!("clone {pid}: the unlinked {path} (fd {fd}) ended at {done} of {size} bytes"));
        }
        done += n;
    }
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_paths() {
        assert_eq!(Mode::parse("overlay").unwrap(), Mode::Overlay { dir: None });
        assert_eq!(Mode::parse("overlay:/srv/w").unwrap(), Mode::Overlay { dir: Some("/srv/w".into()) });
        assert!(Mode::parse("overlay:rel").is_err());
        assert_eq!(Mode::parse("btrfs:/m/w").unwrap(), Mode::Btrfs { dir: Some("/m/w".into()) });
        assert!(Mode::parse("btrfs:w").is_err());
        assert!(Mode::parse("zfs").is_err());
        assert!(under("/a/b", "/a") && under("/a", "/a") && !under("/ab", "/a") && !under("/b", "/a"));
    }

    #[test]
    fn a_source_owning_its_mount_namespace_gets_a_snapshot_of_its_root_only() {
        let base = std::env::temp_dir().join(format!("criu-rs-rootsnap-unit-{}", std::process::id()));
        let me = std::process::id() as Pid;
        std::fs::create_dir_all(&base).unwrap();
        // this test's root (/) is no btrfs here: refused naming the type
        let e = Plan::new_for_mount_ns(&Mode::Btrfs { dir: None }, me, &base.join("b")).unwrap_err();
        assert!(e.contains("--root-snapshot btrfs") && (e.contains("is not on btrfs") || e.contains("no subvolume")), "{e}");
        for (m, name) in [(Mode::Overlay { dir: Some("/srv".into()) }, "overlay"), (Mode::Btrfs { dir: Some("/srv".into()) }, "btrfs")] {
            let e = Plan::new_for_mount_ns(&m, 7, &base.join("b")).unwrap_err();
            assert!(e.contains(&format!("{name}:/srv")) && e.contains(&format!("(give {name})")), "{e}");
        }
        for m in [Mode::Overlay { dir: None }, Mode::Overlay { dir: Some("/".into()) }] {
            let p = Plan::new_for_mount_ns(&m, 7, &base.join("b")).unwrap();
            assert_eq!(p.dir, "/");
            let crate::mntns::RootSnapshot::Overlay { upper: u, work: w } = p.root_snapshot(&p.made(9)).unwrap() else { panic!("an overlay") };
            assert!(u.ends_with("/b/9/upper") && w.ends_with("/b/9/work") && Path::new(&u).is_dir() && Path::new(&w).is_dir(), "{u} {w}");
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}
