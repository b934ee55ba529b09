//! Files opened by path: regular files, directories, symlinks (O_PATH),
//! memory devices (/dev/null, /dev/zero, ...), and those unlinked while
//! open (ghosts, or `--link-remap`).
//!
//! Dump: claimed last, every fd whose link is a path the kinds before it
//! leave (terminals, FIFOs, memfds are others'); a character device that
//! is no memory device, a deleted FIFO, socket file or block device are
//! refused by name. One unlinked from its path:
//! - no longer linked anywhere: a regular file gets a ghost of its
//!   contents (data extents, holes stay holes; over `--ghost-limit` it is
//!   refused), a directory, memory device or symlink a ghost of its kind
//!   with no contents (`kinds::ghost`); the fds of one inode
//!   share one ghost;
//! - linked again under its old name: that path;
//! - linked elsewhere: refused, unless `--link-remap`, which makes a hard
//!   link `link_remap.N` beside the old path once the whole tree is
//!   collected (`dump::files::make_link_remaps`).
//!
//! Image: as upstream 4.2: a `REG` entry (path, flags, offset, mode, and
//! the size upstream records: not for write-only append files); a ghost
//! a `GHOST` remap of it (remap-fpath.img) and its ghost-file-N.img
//! (numbered with the FIFOs' and the mappings' ghosts,
//! `kinds::ghost`); a link remap the link's own `REG` entry (once
//! per link) and a `LINKED` remap to it.
//!
//! Restore: opened by path (inside `--root` if given) with the dumped
//! flags, O_NONBLOCK until its type and mode (and size when recorded) are
//! checked, then seeked. A ghost is recreated once per table
//! (`kinds::ghost::Ghosts`, shared with the FIFOs) and each fd opened
//! under its old name; a link remap is opened under the old name through
//! the link. A ghost held by several processes of a tree is recreated by
//! the root for all (the plan's `Object::Ghost`).

use super::{Collect, FileKind, Read, Restore, Write};
use crate::dump::files::FilesError;
use crate::images_io::ImagesError;
use crate::model::Ghost;
use images_proto::pb;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reg {
    /// The path it was opened by (its old path when unlinked).
    pub path: String,
    /// File status flags (no O_CLOEXEC).
    pub flags: u32,
    pub pos: u64,
    /// Its st_mode, checked on restore.
    pub mode: u32,
    /// Recorded (and checked on restore) as upstream does: for regular
    /// files not opened `O_WRONLY|O_APPEND`.
    pub size: Option<u64>,
    /// Unlinked while open: its contents travel with the image.
    pub ghost: Option<Box<Ghost>>,
    /// `--link-remap`: the path was unlinked but the file has other names;
    /// a hard link the dump made in the same directory (upstream's
    /// `link_remap.N`, empty until made), through which restore opens it
    /// under `path` again (removed once the restore succeeded).
    pub link: Option<String>,
}

/// Dump, per fd table: the ghosts read, by (dev, ino).
#[derive(Default)]
struct Taken(HashMap<(u64, u64), Box<Ghost>>);

/// Dump, per fd table: the mount ids of the process's mount namespace and
/// of criu's (/proc/PID/mountinfo, /proc/self/mountinfo), asked for at its
/// first file opened by path (read once per mount namespace per dump:
/// `dump::cache::mount_ids`).
#[derive(Default)]
struct Mounts(Option<std::sync::Arc<std::collections::HashSet<u32>>>);

impl Mounts {
    fn of(&mut self, pid: crate::sys::Pid) -> Result<&std::collections::HashSet<u32>, FilesError> {
        if self.0.is_none() {
            self.0 = Some(crate::dump::cache::mount_ids(pid).map_err(|e| FilesError::Io { pid, fd: -1, source: e })?);
        }
        Ok(self.0.as_ref().expect("just read"))
    }
}

/// Image, for the whole tree: link remap path -> the file id of its REG
/// entry.
#[derive(Default)]
struct Links(HashMap<String, u32>);

/// The memory devices (/dev/null, /dev/zero, /dev/full, /dev/random,
/// /dev/urandom, ...): reopened by path like regular files, as upstream.
const MEM_MAJOR: u64 = 1;

impl FileKind for Reg {
    const TYPE: pb::FdTypes = pb::FdTypes::Reg;
    const NAME: &'static str = "regular file";
    const EARLY: bool = true;

    fn claims(link: &str, _meta: &std::fs::Metadata) -> bool {
        link.starts_with('/')
    }

    fn collect(cx: &mut Collect<'_>) -> Result<Self, FilesError> {
        use super::ghost::{ghost_of, special_ghost};
        use crate::dump::files::{dev_major, dev_minor, should_check_size, type_name};
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let (pid, fd, flags, meta) = (cx.pid, cx.fd, cx.flags, cx.meta);
        let pos = crate::dump::proc::parse_fdinfo(cx.fdinfo).0;
        let unsupported = |what: String| FilesError::Unsupported { pid, fd, what };
        let ft = meta.file_type();
        let reg = |path: &str, size, ghost, link| Reg { path: path.to_string(), flags, pos, mode: meta.mode(), size, ghost, link };
        let link = cx.link;
        // a file on a mount neither its process's namespace nor criu's
        // shows (a detached tree of open_tree(2)/fsmount(2), or a third
        // namespace's mount): its path would reopen another file at
        // restore (memfd_secret's files are on an internal mount: refused
        // below; a file opened in criu's namespace, as a container's stdio
        // /dev/null, is reopened by path as before)
        let mnt = crate::dump::proc::parse_fdinfo(cx.fdinfo).2;
        if mnt != 0 && link != "/secretmem (deleted)" && !cx.scratch.get::<Mounts>().of(pid)?.contains(&mnt) {
            return Err(unsupported(format!(
                "{link} on mount {mnt}, which is in neither the process's mount namespace nor criu's (a detached mount of open_tree/fsmount, or another namespace's)"
            )));
        }
        let Some(orig) = link.strip_suffix(" (deleted)") else {
            if ft.is_char_device() {
                let major = dev_major(meta.rdev());
                if major != MEM_MAJOR {
                    return Err(unsupported(format!("{link}, character device {major}:{}", dev_minor(meta.rdev()))));
                }
                return Ok(reg(link, None, None, None));
            }
            if ft.is_file() || ft.is_dir() || ft.is_symlink() {
                let size = (ft.is_file() && should_check_size(flags)).then(|| meta.size());
                return Ok(reg(link, size, None, None));
            }
            return Err(unsupported(format!("{link}, a {}", type_name(&ft))));
        };
        if orig == "/secretmem" && crate::sys::process::is_secretmem(std::path::Path::new(&format!("/proc/{pid}/fd/{fd}"))) {
            return Err(unsupported("a memfd_secret(2) area (only the process itself can read its memory)".into()));
        }
        let key = (meta.dev(), meta.ino());
        // a directory, memory device node or symlink no longer linked
        // anywhere: a ghost of its kind (see `special_ghost`)
        let special = (ft.is_dir() || ft.is_symlink() || (ft.is_char_device() && dev_major(meta.rdev()) == MEM_MAJOR)) && meta.nlink() == 0;
        if special {
            let g = match cx.scratch.get::<Taken>().0.get(&key) {
                Some(g) => g.clone(),
                None => {
                    let g = Box::new(special_ghost(pid, fd, orig, meta)?);
                    cx.scratch.get::<Taken>().0.insert(key, g.clone());
                    g
                }
            };
            return Ok(reg(orig, None, Some(g), None));
        }
        if !ft.is_file() {
            return Err(unsupported(format!("{link}, a deleted {}", type_name(&ft))));
        }
        if meta.nlink() != 0 {
            // unlinked from this path, linked elsewhere
            return match std::fs::metadata(orig) {
                // linked again under its old name: a plain path
                Ok(m) if (m.dev(), m.ino()) == key => Ok(reg(orig, should_check_size(flags).then(|| meta.size()), None, None)),
                Ok(_) => Err(unsupported(format!("{link}: another file now has that name, and this one has {} other links", meta.nlink()))),
                Err(_) if !cx.opts.link_remap => Err(FilesError::LinkRemap { pid, fd, path: orig.to_string(), nlink: meta.nlink() }),
                // the link itself is made once the whole tree is
                // collected (`make_link_remaps`), so that a refusal
                // later leaves nothing behind
                Err(_) => Ok(reg(orig, should_check_size(flags).then(|| meta.size()), None, Some(String::new()))),
            };
        }
        // fds of one unlinked inode (opened separately) share one ghost
        let g = match cx.scratch.get::<Taken>().0.get(&key) {
            Some(g) => g.clone(),
            None => {
                let g = Box::new(ghost_of(&format!("/proc/{pid}/fd/{fd}"), pid, fd, orig, meta, cx.opts.ghost_limit)?);
                cx.scratch.get::<Taken>().0.insert(key, g.clone());
                g
            }
        };
        Ok(reg(orig, Some(meta.size()), Some(g), None))
    }

    fn write_entries(&self, cx: &mut Write<'_>) -> Result<u32, ImagesError> {
        let id = cx.push(crate::images_io::reg_entry(0, &self.path, self.flags, self.pos, self.mode, self.size));
        if let Some(l) = &self.link {
            // as upstream: the link's own REG entry, and a LINKED remap of
            // the fd's file to it
            let remap_id = match cx.acc.state::<Links>().0.get(l) {
                Some(&r) => r,
                None => {
                    let r = cx.push(crate::images_io::reg_entry(0, l, 0, 0, self.mode, None));
                    cx.acc.state::<Links>().0.insert(l.clone(), r);
                    r
                }
            };
            super::ghost::linked_remap(cx.acc, id, remap_id);
        }
        if let Some(g) = &self.ghost {
            super::ghost::ghost_remap(cx.dir, cx.acc, id, g)?;
        }
        Ok(id)
    }

    fn read(e: &pb::FileEntry, cx: &mut Read<'_>) -> Result<Self, ImagesError> {
        use super::ghost::GhostReads;
        use images_proto::magic as mg;
        let r = cx.member(e, "reg", &e.reg)?;
        let (dir, fd, files) = (cx.dir, cx.fd, cx.files);
        let bad = |file: &str, what: String| ImagesError::Bad { file: file.to_string(), what };
        let mut link = None;
        let reads = cx.scratch.get::<GhostReads>();
        let ghost = match reads.remap_of(dir, e.id)? {
            None => None,
            Some(m) if m.remap_type.unwrap_or(0) == pb::RemapType::Linked as i32 => {
                // the link the dump made beside the old path: in the
                // same directory, for restore links it to the path
                let l = files
                    .iter()
                    .find(|f| f.id == m.remap_id)
                    .and_then(|e| e.reg.as_ref())
                    .ok_or_else(|| bad("remap-fpath.img", format!("fd {fd}: linked remap of {} names file {}, which is no regular file", r.name, m.remap_id)))?;
                let parent = |p: &str| std::path::Path::new(p).parent().map(std::path::Path::to_path_buf);
                if parent(&l.name).is_none() || parent(&l.name) != parent(&r.name) || l.name == r.name {
                    return Err(bad("remap-fpath.img", format!("fd {fd}: linked remap {} of {} is not another name in the same directory", l.name, r.name)));
                }
                link = Some(l.name.clone());
                None
            }
            Some(m) if m.remap_type.unwrap_or(0) == pb::RemapType::Ghost as i32 => Some(reads.ghost(dir, m.remap_id)?)
                .filter(|g| g.mode & libc::S_IFMT != libc::S_IFIFO)
                .map(Some)
                .ok_or_else(|| bad(&mg::GHOST_FILE.file_name(m.remap_id), format!("fd {fd}: a FIFO ghost behind {}, which is not a FIFO entry", r.name)))?,
            Some(m) => return Err(bad("remap-fpath.img", format!("fd {fd}: remap type {} of {} is not supported yet", m.remap_type.unwrap_or(0), r.name))),
        };
        Ok(Reg { path: r.name.clone(), flags: r.flags, pos: r.pos, mode: r.mode.unwrap_or(0), size: r.size, ghost, link })
    }

    fn restore(&self, cx: &mut Restore<'_>) -> Result<OwnedFd, String> {
        use super::ghost::Ghosts;
        use crate::restore::files::{open_image_path_own, validate};
        use crate::sys::process as p;
        let (n, plan, path) = (cx.fd, cx.plan, &self.path);
        let fl = self.flags as i32;
        // --inherit-fd fd[N]:PATH (the path without its leading /, as
        // upstream keys a regular file): the inherited fd's own open file
        // description (upstream dups it), its status flags set as dumped
        if let Some(from) = path.strip_prefix('/').and_then(|k| plan.inherited(k)) {
            let f = crate::sys::tty::dup_number(from).map_err(|e| format!("dup of the inherited fd {from} for {path}: {e}"))?;
            super::set_status_flags(&f, self.flags)?;
            crate::pr_debug!("fd {n} ({path}): the inherited fd {from}");
            return Ok(f);
        }
        let f = match (&self.ghost, &self.link) {
            // (opened onto its number, as the open through the old name
            // needs a target; the phase gets a second handle of it)
            (Some(g), _) => {
                cx.scratch.get::<Ghosts>().open(plan, path, g, fl, n)?;
                crate::sys::tty::dup_number(n).map_err(|e| format!("dup of fd {n}: {e}"))?
            }
            (None, Some(l)) => {
                // --link-remap: the dump's extra link opened under the old
                // name (linked there, opened, unlinked), as a ghost is
                cx.scratch.get::<Ghosts>().open_through(plan, path, l, fl | libc::O_NONBLOCK, n)?;
                validate(n, path, self.mode, self.size)?;
                let f = crate::sys::tty::dup_number(n).map_err(|e| format!("dup of fd {n}: {e}"))?;
                if fl & libc::O_NONBLOCK == 0 {
                    clear_nonblock(&f, n, path)?;
                }
                f
            }
            (None, None) => {
                // O_NONBLOCK until the type is checked: a path that became a
                // FIFO (or a device that waits in open) must not block the child
                let f = open_image_path_own(plan, path, fl | libc::O_NONBLOCK, n)?;
                validate(f.as_raw_fd(), path, self.mode, self.size)?;
                if fl & libc::O_NONBLOCK == 0 && fl & libc::O_PATH == 0 {
                    clear_nonblock(&f, n, path)?;
                }
                f
            }
        };
        if self.pos != 0 {
            p::seek_to(f.as_raw_fd(), self.pos).map_err(|e| format!("lseek fd {n} to {}: {e}", self.pos))?;
        }
        Ok(f)
    }
}

/// Take O_NONBLOCK off `f` (fd `n` of the table, opened `path`).
fn clear_nonblock(f: &OwnedFd, n: i32, path: &str) -> Result<(), String> {
    use crate::sys::process::fcntl_int as fcntl;
    let now = fcntl(f.as_raw_fd(), libc::F_GETFL, 0).map_err(|e| format!("F_GETFL fd {n} ({path}): {e}"))?;
    fcntl(f.as_raw_fd(), libc::F_SETFL, now & !(libc::O_NONBLOCK as u64)).map_err(|e| format!("F_SETFL fd {n} ({path}): {e}"))?;
    Ok(())
}
