//! Ghosts: files unlinked while open or mapped, whose contents (or, for
//! a directory, memory device, symlink or FIFO, whose kind) travel with
//! the image, in their three halves. Not a kind of its own: the regular
//! files (`kinds::reg`), the FIFOs (`kinds::fifo`) and the mappings of
//! deleted files (`dump::mm`, `images_io`, `restore::files`) use it.
//!
//! - **collect**: [`ghost_of`] reads a regular file's data extents
//!   (SEEK_DATA/SEEK_HOLE: holes stay holes, `--ghost-limit` counts the
//!   allocated bytes), [`special_ghost`] the kind of a directory, memory
//!   device, symlink (its target, through the fd) or FIFO;
//! - **image**: as upstream 4.2, a `GHOST` remap (remap-fpath.img) of the
//!   files.img entry and one ghost-file-N.img per inode across the tree
//!   ([`ghost_remap`], [`GhostImages`] in the kinds' image state; the
//!   `--link-remap` links' `LINKED` remaps go to remap-fpath.img with
//!   them, [`linked_remap`]); read back once per table ([`GhostReads`]),
//!   untrusted: only the modes above, no contents but a regular file's;
//! - **restore**: [`Ghosts`], one per fd table: each inode recreated once
//!   next to its old path (`<path>.cr.<n>.ghost`, inside `--root` if
//!   given) with its size, extents, mode, owner and times, each fd opened
//!   through the old name, the ghosts unlinked when dropped.

use crate::dump::files::FilesError;
use crate::images_io::{read_optional, ImagesError};
use crate::model::Ghost;
use crate::pr_debug;
use crate::restore::child::{ChildPlan, RootDir};
use crate::restore::files::open_image_path;
use crate::sys::process as p;
use crate::sys::Pid;
use images_proto::image::{ImageReader, ImageWriter};
use images_proto::magic as mg;
use images_proto::pb;
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

fn bad(file: &str, what: impl Into<String>) -> ImagesError {
    ImagesError::Bad { file: file.to_string(), what: what.into() }
}

// ---- collect

/// The contents of an unlinked file `open` names (`/proc/PID/fd/N`, or
/// `/proc/PID/map_files/START-END` for a mapping: then `fd` is -1): its
/// data extents (SEEK_DATA / SEEK_HOLE), so holes stay holes and only
/// allocated bytes count against the ghost limit.
pub fn ghost_of(open: &str, pid: Pid, fd: i32, path: &str, meta: &std::fs::Metadata, limit: u64) -> Result<Ghost, FilesError> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;
    let io_err = |e| FilesError::Io { pid, fd, source: e };
    let allocated = meta.blocks().saturating_mul(512);
    if allocated > limit {
        return Err(FilesError::GhostTooBig { pid, fd, path: path.to_string(), size: allocated, limit });
    }
    let f = std::fs::File::open(open).map_err(io_err)?;
    let size = meta.size();
    let mut extents: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut total: u64 = 0;
    let mut off = 0;
    while off < size {
        let Some(start) = p::seek_data_hole(f.as_fd(), off, libc::SEEK_DATA).map_err(io_err)? else { break };
        if start >= size {
            break;
        }
        let end = p::seek_data_hole(f.as_fd(), start, libc::SEEK_HOLE).map_err(io_err)?.unwrap_or(size).min(size);
        let len = end.saturating_sub(start);
        total = total.saturating_add(len);
        // a file system without hole reporting shows one extent; it must
        // still fit the limit (the data is read into memory)
        if total > limit.max(allocated) {
            return Err(FilesError::GhostTooBig { pid, fd, path: path.to_string(), size: total, limit });
        }
        let mut data = vec![0u8; len as usize];
        f.read_exact_at(&mut data, start).map_err(io_err)?;
        extents.push((start, data));
        off = end;
    }
    pr_debug!("Dumping ghost file contents for fd {fd} ({path}, {size} bytes, {} extents, {total} bytes of data)", extents.len());
    Ok(Ghost { size, extents, ..of_inode(meta, 0, None) })
}

/// A ghost of the inode `meta` describes (owner, mode, times to the
/// microsecond), with no contents.
fn of_inode(meta: &std::fs::Metadata, rdev: u64, target: Option<String>) -> Ghost {
    Ghost {
        dev: meta.dev(),
        ino: meta.ino(),
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode(),
        atime: (meta.atime() as u64, meta.atime_nsec() as u64 / 1000),
        mtime: (meta.mtime() as u64, meta.mtime_nsec() as u64 / 1000),
        rdev,
        target,
        size: 0,
        extents: Vec::new(),
    }
}

/// A deleted directory, memory device node or symlink held open (as
/// upstream 4.2 writes them: a ghost with no contents, its mode, and its
/// rdev or the symlink's target): recreated at restore as what it was.
/// A symlink's target is read through the fd itself (pidfd_getfd).
pub(crate) fn special_ghost(pid: Pid, fd: i32, path: &str, meta: &std::fs::Metadata) -> Result<Ghost, FilesError> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileTypeExt;
    let io_err = |e| FilesError::Io { pid, fd, source: e };
    let ft = meta.file_type();
    let target = if ft.is_symlink() {
        let pidfd = p::pidfd_open(pid).map_err(io_err)?;
        let f = p::pidfd_getfd(&pidfd, fd).map_err(io_err)?;
        let t = p::readlink_fd(f.as_fd()).map_err(io_err)?;
        Some(String::from_utf8(t).map_err(|t| FilesError::Unsupported { pid, fd, what: format!("{path} (deleted), a symlink to a name that is not UTF-8 ({:?})", String::from_utf8_lossy(t.as_bytes())) })?)
    } else {
        None
    };
    let rdev = if ft.is_char_device() || ft.is_block_device() { meta.rdev() } else { 0 };
    pr_debug!("Dumping ghost {path} (mode {:o}, rdev {rdev:#x}, target {target:?}) for fd {fd}", meta.mode());
    Ok(of_inode(meta, rdev, target))
}

// ---- image

/// Kernel-internal dev encoding (major << 20 | minor) from glibc's `dev_t`,
/// as ghost_file_entry.dev carries it.
fn kdev(dev: u64) -> u32 {
    let major = crate::dump::files::dev_major(dev);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    ((major << 20) | (minor & 0xf_ffff)) as u32
}

/// The ghost files and remaps of the whole tree (the ghosts of regular
/// files, FIFOs and mappings numbered together), in the kinds' image state
/// ([`crate::kinds::ImageAcc::state`]): remap-fpath.img is written from it
/// once, after the last fd table.
#[derive(Default)]
pub(crate) struct GhostImages {
    /// (dev, ino) -> remap id (its ghost-file-N.img).
    ids: HashMap<(u64, u64), u32>,
    pub(crate) remaps: Vec<pb::RemapFilePathEntry>,
}

/// A `GHOST` remap of files.img entry `orig_id` to `g`, whose
/// ghost-file-N.img is written the first time.
pub(crate) fn ghost_remap(dir: &Path, acc: &mut crate::kinds::ImageAcc, orig_id: u32, g: &Ghost) -> Result<(), ImagesError> {
    let st = acc.state::<GhostImages>();
    let remap_id = match st.ids.get(&(g.dev, g.ino)) {
        Some(&r) => r,
        None => {
            let r = st.ids.len() as u32 + 1;
            st.ids.insert((g.dev, g.ino), r);
            write_ghost(dir, r, g)?;
            r
        }
    };
    acc.state::<GhostImages>().remaps.push(pb::RemapFilePathEntry { orig_id, remap_id, remap_type: Some(pb::RemapType::Ghost as i32) });
    Ok(())
}

/// A `LINKED` remap of files.img entry `orig_id` to entry `remap_id` (a
/// `--link-remap` link's).
pub(crate) fn linked_remap(acc: &mut crate::kinds::ImageAcc, orig_id: u32, remap_id: u32) {
    acc.state::<GhostImages>().remaps.push(pb::RemapFilePathEntry { orig_id, remap_id, remap_type: Some(pb::RemapType::Linked as i32) });
}

/// remap-fpath.img and the ghost files of an image set, read as fds
/// need them (once per fd table).
#[derive(Default)]
pub(crate) struct GhostReads {
    remaps: Option<Vec<pb::RemapFilePathEntry>>,
    ghosts: Vec<(u32, Box<Ghost>)>,
}

impl GhostReads {
    /// The remap of files.img entry `orig_id`, if any.
    pub(crate) fn remap_of(&mut self, dir: &Path, orig_id: u32) -> Result<Option<pb::RemapFilePathEntry>, ImagesError> {
        if self.remaps.is_none() {
            self.remaps = Some(read_optional(dir, &mg::REMAP_FPATH)?);
        }
        Ok(self.remaps.as_ref().and_then(|r| r.iter().find(|m| m.orig_id == orig_id)).cloned())
    }

    /// ghost-file-`remap_id`.img, read once.
    pub(crate) fn ghost(&mut self, dir: &Path, remap_id: u32) -> Result<Box<Ghost>, ImagesError> {
        if let Some((_, g)) = self.ghosts.iter().find(|(id, _)| *id == remap_id) {
            return Ok(g.clone());
        }
        let g = Box::new(read_ghost(dir, remap_id)?);
        self.ghosts.push((remap_id, g.clone()));
        Ok(g)
    }
}

/// ghost-file-`r`.img for `g`: the whole contents after the entry (as
/// upstream writes a file without holes), or, when the file has holes,
/// one `ghost_chunk_entry` + bytes per data extent (`chunks`, `size`).
pub(crate) fn write_ghost(dir: &Path, r: u32, g: &Ghost) -> Result<(), ImagesError> {
    let dense = match g.extents.as_slice() {
        [] => g.size == 0,
        [(0, d)] => d.len() as u64 == g.size,
        _ => false,
    };
    let e = pb::GhostFileEntry {
        uid: g.uid, gid: g.gid, mode: g.mode, dev: Some(kdev(g.dev)), ino: Some(g.ino),
        // a device node's number, a symlink's target (as upstream 4.2)
        // (rdev as st_rdev, the old major:minor encoding crit shows: as upstream)
        rdev: matches!(g.mode & libc::S_IFMT, libc::S_IFCHR | libc::S_IFBLK).then_some(g.rdev as u32),
        atim: Some(pb::Timeval { tv_sec: g.atime.0, tv_usec: g.atime.1 }),
        mtim: Some(pb::Timeval { tv_sec: g.mtime.0, tv_usec: g.mtime.1 }),
        chunks: (!dense).then_some(true), size: (!dense).then_some(g.size), symlnk_target: g.target.clone(),
    };
    let mut w = ImageWriter::create(dir, &mg::GHOST_FILE.file_name(r), &mg::GHOST_FILE)?;
    w.write_entry(&e)?;
    for (off, data) in &g.extents {
        if !dense {
            w.write_entry(&pb::GhostChunkEntry { len: data.len() as u64, off: *off })?;
        }
        w.write_payload(data)?;
    }
    w.finish()?;
    Ok(())
}

/// ghost-file-`id`.img: the entry and the contents (whole or in chunks).
pub(crate) fn read_ghost(dir: &Path, remap_id: u32) -> Result<Ghost, ImagesError> {
    let name = mg::GHOST_FILE.file_name(remap_id);
    let mut r = ImageReader::open(dir, &name, &mg::GHOST_FILE)?;
    let e: pb::GhostFileEntry = r.next_entry()?.ok_or_else(|| bad(&name, "no ghost_file_entry"))?;
    // a deleted directory, memory device node or symlink: no contents, its
    // rdev or target (written so by upstream 4.2 and by us)
    let (mut rdev, mut target) = (0u64, None);
    match e.mode & libc::S_IFMT {
        libc::S_IFREG => {}
        libc::S_IFDIR => {}
        // a deleted FIFO (only behind a FIFO entry: see `read_fds`)
        libc::S_IFIFO => {}
        libc::S_IFCHR => {
            let k = u64::from(e.rdev.ok_or_else(|| bad(&name, "a device ghost without rdev"))?);
            let (major, minor) = (libc::major(k), libc::minor(k));
            if major != 1 {
                return Err(bad(&name, format!("ghost of character device {major}:{minor}: only memory devices (major 1) are supported")));
            }
            rdev = k;
        }
        libc::S_IFLNK => {
            let t = e.symlnk_target.clone().ok_or_else(|| bad(&name, "a symlink ghost without symlnk_target"))?;
            if t.is_empty() || t.len() >= libc::PATH_MAX as usize || t.contains('\0') {
                return Err(bad(&name, format!("symlnk_target of {} bytes is not a symlink's target", t.len())));
            }
            target = Some(t);
        }
        _ => return Err(bad(&name, format!("ghost of mode {:o}: not supported (regular files, directories, memory devices, symlinks, FIFOs are)", e.mode))),
    }
    if e.mode & libc::S_IFMT != libc::S_IFREG && (e.chunks == Some(true) || e.size.is_some_and(|s| s != 0)) {
        return Err(bad(&name, format!("ghost of mode {:o} with contents", e.mode)));
    }
    let (size, extents) = if e.chunks == Some(true) {
        let size = e.size.ok_or_else(|| bad(&name, "chunked ghost without a size"))?;
        let mut extents: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut end_prev = 0;
        while let Some(c) = r.next_entry::<pb::GhostChunkEntry>()? {
            let end = c.off.checked_add(c.len).filter(|&e| e <= size).ok_or_else(|| bad(&name, format!("chunk {}+{} beyond size {size}", c.off, c.len)))?;
            if c.off < end_prev {
                return Err(bad(&name, format!("chunk at {} overlaps or precedes the previous one (ending at {end_prev})", c.off)));
            }
            extents.push((c.off, r.read_payload(c.len)?));
            end_prev = end;
        }
        (size, extents)
    } else {
        let data = r.read_rest()?;
        (data.len() as u64, if data.is_empty() { Vec::new() } else { vec![(0, data)] })
    };
    if e.mode & libc::S_IFMT != libc::S_IFREG && !extents.is_empty() {
        return Err(bad(&name, format!("ghost of mode {:o} with contents", e.mode)));
    }
    let dev = u64::from(e.dev.unwrap_or(0));
    Ok(Ghost {
        dev: ((dev >> 20) << 8) | (dev & 0xff), // good enough to tell ghosts apart
        ino: e.ino.unwrap_or(0),
        uid: e.uid,
        gid: e.gid,
        mode: e.mode,
        atime: e.atim.as_ref().map(|t| (t.tv_sec, t.tv_usec)).unwrap_or_default(),
        mtime: e.mtim.as_ref().map(|t| (t.tv_sec, t.tv_usec)).unwrap_or_default(),
        size,
        extents,
        rdev,
        target,
    })
}

// ---- restore

/// Ghost files created by this restore (paths of the image, inside
/// `--root` if given); unlinked when dropped (after the fds are open, or on
/// failure). One per fd table, in the table's scratch (the regular files
/// here and the FIFOs of `kinds::fifo` share it).
#[derive(Default)]
pub struct Ghosts {
    list: std::collections::HashMap<(u64, u64), String>,
    /// `--root` (a handle of its own, taken at the first open).
    root: Option<RootDir>,
}

impl Drop for Ghosts {
    fn drop(&mut self) {
        for path in self.list.values() {
            let gone = match &self.root {
                Some(r) => r.unlink(path),
                None => std::fs::remove_file(path),
            };
            // a directory's ghost
            if gone.is_err() {
                if let Ok((dir, name)) = self.dir_of(path) {
                    let _ = p::unlink_in_flags(dir.as_fd(), &name, libc::AT_REMOVEDIR);
                }
            }
        }
    }
}

impl Ghosts {
    /// Take `--root` from the plan (before the first ghost is made).
    fn bind(&mut self, plan: &ChildPlan) -> Result<(), String> {
        if let (None, Some(r)) = (&self.root, &plan.root) {
            // (held above every fd the table is built on: on the lowest
            // free number it would be an fd the table is yet to get, which
            // a restored file would replace)
            let fd = crate::sys::sock::dup_above(r.fd.as_fd(), plan.above_all()).map_err(|e| format!("a handle of root {}: {e}", r.path.display()))?;
            self.root = Some(RootDir { path: r.path.clone(), fd });
        }
        Ok(())
    }

    /// The path of the recreated ghost for `g` (`<path>.cr.<n>.ghost`),
    /// creating it the first time: its size, its data extents (holes stay
    /// holes), mode, owner and times.
    fn path(&mut self, orig: &str, g: &Ghost) -> Result<String, String> {
        use std::os::unix::fs::FileExt;
        if let Some(path) = self.list.get(&(g.dev, g.ino)) {
            return Ok(path.clone());
        }
        let path = format!("{orig}.cr.{:x}.ghost", self.list.len() + 1);
        let err = |what: &str, e: std::io::Error| format!("ghost file {path} for {orig}: {what}: {e}");
        if g.mode & libc::S_IFMT != libc::S_IFREG {
            // a directory, device node or symlink: made as such (owner,
            // mode; a symlink's target)
            let (dir, name) = self.dir_of(&path)?;
            let target = g.target.as_ref().map(|t| CString::new(t.as_str()).map_err(|_| format!("ghost {path}: its symlink target has a NUL byte"))).transpose()?;
            p::make_node_in(dir.as_fd(), &name, g.mode, g.rdev, target.as_deref(), g.uid, g.gid).map_err(|e| err(&format!("creating it (mode {:o})", g.mode), e))?;
            self.list.insert((g.dev, g.ino), path.clone());
            return Ok(path);
        }
        let created = match &self.root {
            Some(r) => r.open(&path, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC, g.mode & 0o7777).map(std::fs::File::from),
            None => std::fs::OpenOptions::new().write(true).create_new(true).mode(g.mode & 0o7777).open(&path),
        };
        let f = created.map_err(|e| err("create", e))?;
        self.list.insert((g.dev, g.ino), path.clone());
        f.set_len(g.size).map_err(|e| err("ftruncate", e))?;
        for (off, data) in &g.extents {
            f.write_all_at(data, *off).map_err(|e| err("write", e))?;
        }
        std::os::unix::fs::fchown(&f, Some(g.uid), Some(g.gid)).map_err(|e| err("fchown", e))?;
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(g.mode & 0o7777)).map_err(|e| err("chmod", e))?;
        let t = |(s, us): (u64, u64)| std::time::UNIX_EPOCH + std::time::Duration::new(s, (us.min(999_999) * 1000) as u32);
        f.set_times(std::fs::FileTimes::new().set_accessed(t(g.atime)).set_modified(t(g.mtime)))
            .map_err(|e| err("utimes", e))?;
        Ok(path)
    }

    /// The directory of `path` (inside `--root` if given), for the link,
    /// rename and unlink of names in it, and `path`'s last component.
    fn dir_of(&self, path: &str) -> Result<(OwnedFd, CString), String> {
        let pp = std::path::Path::new(path);
        let (Some(parent), Some(name)) = (pp.parent(), pp.file_name()) else {
            return Err(format!("ghost path {path:?} has no directory"));
        };
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
        let dir = match &self.root {
            Some(r) => r.open(&parent.to_string_lossy(), flags, 0),
            None => std::fs::OpenOptions::new().read(true).custom_flags(flags).open(parent).map(OwnedFd::from),
        };
        let dir = dir.map_err(|e| format!("the directory of {path}: {e}"))?;
        let name = CString::new(std::os::unix::ffi::OsStrExt::as_bytes(name)).map_err(|_| format!("path {path:?} has a NUL byte"))?;
        Ok((dir, name))
    }

    /// Open the ghost of `orig` onto fd `n` under its original name, so
    /// that it shows (and dumps again) as `orig (deleted)`, round after
    /// round: link the ghost to `orig`, open that, unlink it.
    ///
    /// When another file has taken `orig` since, the ghost gets a second
    /// link `<ghost>.tmp`, which is exchanged with `orig`
    /// (renameat2(RENAME_EXCHANGE): `orig` names the ghost, the other file
    /// sits at the temporary name), `orig` is opened, and the other file is
    /// renamed back over it, which unlinks the ghost's `orig` entry: `orig`
    /// names some file at every moment. Only where the file system cannot
    /// exchange is the fd opened through the ghost's own name (and then
    /// carries that name).
    pub fn open(&mut self, plan: &ChildPlan, orig: &str, g: &Ghost, flags: i32, n: i32) -> Result<(), String> {
        self.bind(plan)?;
        let gp = self.path(orig, g)?;
        if g.mode & libc::S_IFMT == libc::S_IFDIR {
            return self.open_dir(plan, orig, &gp, flags, n);
        }
        self.open_through(plan, orig, &gp, flags, n)
    }

    /// [`Self::open`] of a directory's ghost (a directory takes no second
    /// link, and an open one follows its renames): moved to `orig` if that
    /// name is free, and left there for the fds of it (removed with the
    /// other ghosts at the end, so each shows `orig (deleted)`); else
    /// opened through its own name.
    fn open_dir(&mut self, plan: &ChildPlan, orig: &str, gp: &str, flags: i32, n: i32) -> Result<(), String> {
        if gp == orig {
            return open_image_path(plan, orig, flags, n);
        }
        let (dir, name) = self.dir_of(orig)?;
        let (_, gname) = self.dir_of(gp)?;
        let moved = p::rename_in(dir.as_fd(), &gname, &name, libc::RENAME_NOREPLACE);
        drop(dir);
        match moved {
            Ok(()) => {
                if let Some(v) = self.list.values_mut().find(|v| v.as_str() == gp) {
                    *v = orig.to_string();
                }
                open_image_path(plan, orig, flags, n)
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => open_image_path(plan, gp, flags, n),
            Err(e) => Err(format!("renaming the ghost directory {gp} to {orig} for fd {n}: {e}")),
        }
    }

    /// [`Self::open`] through `gp`, another name of the file in the
    /// directory of `orig` (a recreated ghost, or a link remap).
    pub(crate) fn open_through(&mut self, plan: &ChildPlan, orig: &str, gp: &str, flags: i32, n: i32) -> Result<(), String> {
        self.bind(plan)?;
        let (mut dir, name) = self.dir_of(orig)?;
        if dir.as_raw_fd() == n {
            // fd `n` is about to be opened onto: hold the directory on
            // another number (opened while this one still holds `n`)
            dir = self.dir_of(orig)?.0;
        }
        let (_, gname) = self.dir_of(gp)?;
        match p::link_in(dir.as_fd(), &gname, &name) {
            Ok(()) => {
                let r = open_image_path(plan, orig, flags, n);
                p::unlink_in(dir.as_fd(), &name).map_err(|e| format!("unlinking {orig} (ghost of fd {n}): {e}"))?;
                r
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let tmp = format!("{gp}.tmp");
                let tname = CString::new(format!("{}.tmp", gname.to_string_lossy())).map_err(|_| format!("path {tmp:?} has a NUL byte"))?;
                p::link_in(dir.as_fd(), &gname, &tname).map_err(|e| format!("linking ghost {gp} to {tmp} for fd {n}: {e}"))?;
                if let Err(e) = p::rename_in(dir.as_fd(), &tname, &name, libc::RENAME_EXCHANGE) {
                    let _ = p::unlink_in(dir.as_fd(), &tname);
                    return if e.raw_os_error() == Some(libc::EINVAL) || e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                        open_image_path(plan, gp, flags, n)
                    } else {
                        Err(format!("exchanging ghost {tmp} with {orig} for fd {n}: {e}"))
                    };
                }
                let r = open_image_path(plan, orig, flags, n);
                p::rename_in(dir.as_fd(), &tname, &name, 0).map_err(|e| format!("putting {orig} back from {tmp} (ghost of fd {n}): {e}"))?;
                r
            }
            Err(e) => Err(format!("linking ghost {gp} to {orig} for fd {n}: {e}")),
        }
    }
}
