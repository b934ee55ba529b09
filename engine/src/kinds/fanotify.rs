//! fanotify: the group's flags and its inode and mount marks.
//!
//! Dump: fdinfo's `fanotify flags:F event-flags:E` line and one line per
//! mark: `fanotify ino:I sdev:D mflags:M mask:X ignored_mask:Y
//! fhandle-bytes:.. fhandle-type:.. f_handle:..` for an inode (named by its
//! file handle, with a path looked up as for inotify), `fanotify mnt_id:N
//! mflags:M mask:X ignored_mask:Y` for a mount (its mount point read from
//! the task's mountinfo). A file system mark (`sdev:` alone), which
//! upstream's image has no type for, is refused by name. Events queued and
//! unread are not carried (a warning says how many bytes), as upstream.
//!
//! Image: a `FANOTIFY` files.img entry (`fanotify_file_entry`: faflags,
//! evflags, marks inline: `ie` for an inode, `me` with the mount point for
//! a mount), as upstream 4.2 writes it.
//!
//! Restore: fanotify_init with the group's flags and event flags; per
//! mark, fanotify_mark(FAN_MARK_ADD) of its mask, then of its ignored mask
//! (FAN_MARK_IGNORED_MASK, or FAN_MARK_IGNORE when the mark has it), on the
//! inode (opened by handle, watched through `/proc/self/fd/N`) or on the
//! mount point (FAN_MARK_MOUNT).

use super::inotify::{unescape, Handle};
use super::{Collect, FileKind, ImageAcc, Read, Restore};
use crate::dump::files::FilesError;
use crate::images_io::ImagesError;
use crate::sys::event;
use images_proto::pb;
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;
const FAN_MARK_EVICTABLE: u32 = 0x200;
const FAN_MARK_IGNORE: u32 = 0x400;
/// The mark flags fdinfo reports and a restore passes on.
const MARK_FLAGS: u32 = FAN_MARK_IGNORED_SURV_MODIFY | FAN_MARK_EVICTABLE | FAN_MARK_IGNORE;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Inode(Handle),
    /// A mount: its id at dump, mount point (in the task's root) and
    /// device (kernel encoding).
    Mount { mnt_id: u32, path: String, dev: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub target: Target,
    /// FAN_MARK_IGNORED_SURV_MODIFY, FAN_MARK_EVICTABLE, FAN_MARK_IGNORE.
    pub mflags: u32,
    pub mask: u32,
    pub ignored_mask: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fanotify {
    /// File status flags (O_RDONLY, O_NONBLOCK; no O_CLOEXEC).
    pub flags: u32,
    /// fanotify_init's flags (FAN_CLASS_*, FAN_REPORT_*, ...).
    pub faflags: u32,
    /// fanotify_init's event_f_flags.
    pub evflags: u32,
    pub marks: Vec<Mark>,
}

/// The `key:value` fields of an fdinfo `fanotify` line.
fn fields(line: &str) -> Option<HashMap<&str, &str>> {
    line.strip_prefix("fanotify ")?.split_whitespace().map(|w| w.split_once(':')).collect()
}

fn hex32(f: &HashMap<&str, &str>, k: &str) -> Option<u32> {
    u32::from_str_radix(f.get(k)?, 16).ok()
}

impl FileKind for Fanotify {
    const TYPE: pb::FdTypes = pb::FdTypes::Fanotify;
    const NAME: &'static str = "fanotify";

    fn claims(link: &str, _meta: &std::fs::Metadata) -> bool {
        link == "anon_inode:[fanotify]"
    }

    fn collect(cx: &mut Collect<'_>) -> Result<Self, FilesError> {
        let (pid, fd, n) = (cx.pid, cx.fd, Self::NAME);
        let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).map_err(|e| FilesError::Io { pid, fd, source: e })?;
        let mut group = None;
        let mut marks = Vec::new();
        for line in cx.fdinfo.lines().filter(|l| l.starts_with("fanotify ")) {
            let bad = || cx.refuse(n, format!("fdinfo line {line:?} is not one this engine reads"));
            let f = fields(line).ok_or_else(bad)?;
            if f.contains_key("flags") {
                group = Some((hex32(&f, "flags").ok_or_else(bad)?, hex32(&f, "event-flags").ok_or_else(bad)?));
                continue;
            }
            let (mflags, mask, ignored_mask) = (hex32(&f, "mflags").ok_or_else(bad)?, hex32(&f, "mask").ok_or_else(bad)?, hex32(&f, "ignored_mask").ok_or_else(bad)?);
            let target = if let Some(ino) = f.get("ino") {
                let ino = u64::from_str_radix(ino, 16).map_err(|_| bad())?;
                let mut h = Handle::from_fdinfo(|k| f.get(k).copied(), hex32(&f, "sdev").ok_or_else(bad)?, ino).ok_or_else(bad)?;
                h.find_path(pid, &mountinfo);
                Target::Inode(h)
            } else if let Some(id) = hex32(&f, "mnt_id") {
                let (path, dev) = mountinfo
                    .lines()
                    .find_map(|l| {
                        let w: Vec<&str> = l.split_whitespace().collect();
                        if w.first()?.parse::<u32>().ok()? != id {
                            return None;
                        }
                        let (ma, mi) = w.get(2)?.split_once(':')?;
                        let dev = (ma.parse::<u32>().ok()? << 20) | mi.parse::<u32>().ok()?;
                        Some((unescape(w.get(4)?), dev))
                    })
                    .ok_or_else(|| cx.refuse(n, format!("it marks mount {id}, which is not in the process's mount table")))?;
                Target::Mount { mnt_id: id, path, dev }
            } else if f.contains_key("sdev") {
                return Err(cx.refuse(n, format!("a file system mark ({line}): not supported (upstream's image has no such mark)")));
            } else {
                return Err(bad());
            };
            crate::pr_debug!("fanotify fd {fd} of {pid}: {target:?} mflags {mflags:#x} mask {mask:#x} ignored {ignored_mask:#x}");
            marks.push(Mark { target, mflags, mask, ignored_mask });
        }
        let (faflags, evflags) = group.ok_or_else(|| cx.refuse(n, "no `fanotify flags:` line in its fdinfo"))?;
        let queued = crate::sys::process::pidfd_open(pid)
            .and_then(|p| crate::sys::process::pidfd_getfd(&p, fd))
            .and_then(|f| event::bytes_queued(f.as_fd()))
            .map_err(|e| FilesError::Io { pid, fd, source: e })?;
        if queued > 0 {
            crate::pr_warn!("fanotify fd {fd} of {pid}: {queued} bytes of queued events are not carried over (as upstream)");
        }
        Ok(Fanotify { flags: cx.flags, faflags, evflags, marks })
    }

    fn write(&self, id: u32, _acc: &mut ImageAcc) -> Result<pb::FileEntry, ImagesError> {
        let mark = self
            .marks
            .iter()
            .map(|m| {
                let (ty, dev, ie, me) = match &m.target {
                    Target::Inode(h) => (pb::MarkType::Inode, h.dev, Some(pb::FanotifyInodeMarkEntry { i_ino: h.ino, f_handle: h.to_pb() }), None),
                    Target::Mount { mnt_id, path, dev } => (pb::MarkType::Mount, *dev, None, Some(pb::FanotifyMountMarkEntry { mnt_id: *mnt_id, path: Some(path.clone()) })),
                };
                // id 0, as upstream writes the inline entries
                pb::FanotifyMarkEntry { id: 0, r#type: ty as i32, mflags: m.mflags, mask: m.mask, ignored_mask: m.ignored_mask, s_dev: dev, ie, me }
            })
            .collect();
        Ok(pb::FileEntry {
            r#type: Self::TYPE as i32,
            id,
            ffy: Some(pb::FanotifyFileEntry { id, flags: self.flags, fown: super::fown(), faflags: self.faflags, evflags: self.evflags, mark }),
            ..Default::default()
        })
    }

    fn read(e: &pb::FileEntry, cx: &mut Read<'_>) -> Result<Self, ImagesError> {
        let m = cx.member(e, "ffy", &e.ffy)?;
        let mut marks = Vec::with_capacity(m.mark.len());
        for (i, k) in m.mark.iter().enumerate() {
            let field = |f: &str| format!("ffy.mark[{i}].{f}");
            let target = match pb::MarkType::try_from(k.r#type) {
                Ok(pb::MarkType::Inode) => {
                    let ie = k.ie.as_ref().ok_or_else(|| cx.bad(e, &field("ie"), "missing for an inode mark"))?;
                    Target::Inode(Handle::from_pb(&ie.f_handle, k.s_dev, ie.i_ino).map_err(|why| cx.bad(e, &field("ie.f_handle.bytes"), why))?)
                }
                Ok(pb::MarkType::Mount) => {
                    let me = k.me.as_ref().ok_or_else(|| cx.bad(e, &field("me"), "missing for a mount mark"))?;
                    let path = me.path.clone().filter(|p| p.starts_with('/')).ok_or_else(|| cx.bad(e, &field("me.path"), "a mount mark needs its absolute mount point"))?;
                    Target::Mount { mnt_id: me.mnt_id, path, dev: k.s_dev }
                }
                Err(_) => return Err(cx.bad(e, &field("type"), format!("{} is not a mark type", k.r#type))),
            };
            if k.mflags & !MARK_FLAGS != 0 {
                return Err(cx.bad(e, &field("mflags"), format!("{:#x} has bits other than {MARK_FLAGS:#x}", k.mflags)));
            }
            marks.push(Mark { target, mflags: k.mflags, mask: k.mask, ignored_mask: k.ignored_mask });
        }
        Ok(Fanotify { flags: m.flags, faflags: m.faflags, evflags: m.evflags, marks })
    }

    fn restore(&self, _cx: &mut Restore<'_>) -> Result<OwnedFd, String> {
        let fd = event::fanotify_init(self.faflags, self.evflags).map_err(|e| format!("fanotify_init({:#x}, {:#x}): {e}", self.faflags, self.evflags))?;
        let mountinfo = if self.marks.iter().any(|m| matches!(m.target, Target::Inode(_))) {
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?
        } else {
            String::new()
        };
        for m in &self.marks {
            // the inode, held open while it is marked through its /proc link
            let (what, kind, _held, path) = match &m.target {
                Target::Inode(h) => {
                    let f = h.open(&mountinfo)?;
                    let p = format!("/proc/self/fd/{}", f.as_raw_fd());
                    (format!("inode {:#x}", h.ino), 0, Some(f), p)
                }
                Target::Mount { path, .. } => (format!("mount {path}"), FAN_MARK_MOUNT, None, path.clone()),
            };
            let c = CString::new(path).map_err(|e| format!("{what}: {e}"))?;
            if m.mask != 0 {
                let flags = FAN_MARK_ADD | kind | (m.mflags & (FAN_MARK_EVICTABLE | FAN_MARK_IGNORED_SURV_MODIFY));
                event::fanotify_mark(fd.as_fd(), flags, u64::from(m.mask), &c).map_err(|e| format!("fanotify_mark({what}, {flags:#x}, mask {:#x}): {e}", m.mask))?;
            }
            if m.ignored_mask != 0 {
                let ignore = if m.mflags & FAN_MARK_IGNORE != 0 { FAN_MARK_IGNORE } else { FAN_MARK_IGNORED_MASK };
                let flags = FAN_MARK_ADD | kind | ignore | (m.mflags & (FAN_MARK_EVICTABLE | FAN_MARK_IGNORED_SURV_MODIFY));
                event::fanotify_mark(fd.as_fd(), flags, u64::from(m.ignored_mask), &c)
                    .map_err(|e| format!("fanotify_mark({what}, {flags:#x}, ignored mask {:#x}): {e}", m.ignored_mask))?;
            }
        }
        super::set_status_flags(&fd, self.flags)?;
        Ok(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_lines() {
        let f = fields("fanotify ino:1 sdev:1b mflags:40 mask:0 ignored_mask:20 fhandle-bytes:c fhandle-type:1 f_handle:590363330100000000000000").unwrap();
        assert_eq!((hex32(&f, "mflags"), hex32(&f, "ignored_mask")), (Some(0x40), Some(0x20)));
        let f = fields("fanotify flags:3 event-flags:8000").unwrap();
        assert_eq!(hex32(&f, "event-flags"), Some(0x8000));
        assert!(fields("fanotify bogus").is_none());
    }
}
