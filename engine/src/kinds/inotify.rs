//! inotify: its watches (watch descriptor, mask, the watched inode) and
//! status flags.
//!
//! Dump: fdinfo's `inotify wd:W ino:I sdev:D mask:M ignored_mask:X
//! fhandle-bytes:B fhandle-type:T f_handle:H` lines. The inode is named
//! by its file handle (name_to_handle_at's, as the kernel keeps it); a
//! path is looked up too (the handle opened on the file system's mount and
//! its /proc/self/fd link read back, kept when that path still names the
//! inode), for the image and as a fallback. Events queued and unread at
//! dump are not carried (a warning names how many bytes), as upstream.
//!
//! Image: an `INOTIFY` files.img entry (`inotify_file_entry`) with its
//! watches inline (`wd`: i_ino, mask, ignored_mask, s_dev, wd, f_handle
//! with the handle in 16 u64 words as upstream packs it, and `path`).
//!
//! Restore: inotify_init1; per watch, in increasing wd order, the inode
//! opened from its handle on a mount of its file system (or, failing that,
//! by the recorded path, checked to be the same inode) and watched through
//! `/proc/self/fd/N` with its mask. Watch descriptors come from a counter
//! that only goes up, so a watch whose number comes out below the dumped
//! one is removed and added again until it matches (the removals' IN_IGNORED
//! events are read out of the queue afterwards).

use super::{Collect, FileKind, ImageAcc, Read, Restore};
use crate::dump::files::FilesError;
use crate::images_io::ImagesError;
use crate::sys::event;
use images_proto::pb;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

/// The kernel's MAX_HANDLE_SZ.
const MAX_HANDLE: usize = 128;
/// Upstream writes a handle as this many u64 words (fh_entry_sizes.min_entries).
const HANDLE_WORDS: usize = 16;
/// Watch descriptors past this are refused in images (restore would add
/// and remove a watch that many times).
const MAX_WD: u32 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub wd: i32,
    pub mask: u32,
    pub ignored_mask: u32,
    /// The watched inode.
    pub inode: Handle,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inotify {
    /// File status flags (O_RDONLY, O_NONBLOCK; no O_CLOEXEC).
    pub flags: u32,
    /// In the order fdinfo lists them (upstream's image order too).
    pub watches: Vec<Watch>,
}

pub(super) fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// One `inotify` line of an fdinfo.
fn parse_watch(line: &str) -> Option<Watch> {
    let rest = line.strip_prefix("inotify ")?;
    let mut f = std::collections::HashMap::new();
    for w in rest.split_whitespace() {
        let (k, v) = w.split_once(':')?;
        f.insert(k, v);
    }
    let hex32 = |k: &str| u32::from_str_radix(f.get(k)?, 16).ok();
    let ino = u64::from_str_radix(f.get("ino")?, 16).ok()?;
    Some(Watch {
        wd: i32::try_from(hex32("wd")?).ok()?,
        mask: hex32("mask")?,
        ignored_mask: hex32("ignored_mask")?,
        inode: Handle::from_fdinfo(|k| f.get(k).copied(), hex32("sdev")?, ino)?,
    })
}

/// A directory on the file system of `dev` (kernel encoding), from the
/// mount table `mountinfo` (of the process whose root `root` is), opened
/// read-only (open_by_handle_at takes no O_PATH fd).
pub(super) fn mount_of(mountinfo: &str, root: &str, dev: u32) -> Option<OwnedFd> {
    let want = format!("{}:{}", dev >> 20, dev & 0xf_ffff);
    for l in mountinfo.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(2) != Some(&want.as_str()) {
            continue;
        }
        let Some(mp) = f.get(4) else { continue };
        // mountinfo escapes spaces and the like as \ooo
        let mp = unescape(mp);
        let path = format!("{root}{mp}");
        if let Ok(d) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC).open(&path) {
            return Some(OwnedFd::from(d));
        }
    }
    None
}

/// mountinfo's octal escapes (`\040`) decoded.
pub(crate) fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An inode named by a file handle, as inotify and fanotify marks name
/// theirs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handle {
    /// st_dev of the file system, kernel encoding (major << 20 | minor).
    pub dev: u32,
    pub ino: u64,
    pub htype: i32,
    pub bytes: Vec<u8>,
    /// A path that named the inode at dump, if one was found.
    pub path: Option<String>,
}

impl Handle {
    /// The inode opened O_PATH from the handle, on a mount of its file
    /// system (mount table `mountinfo`, paths under `root`).
    fn open_by_handle(&self, mountinfo: &str, root: &str) -> std::io::Result<OwnedFd> {
        let m = mount_of(mountinfo, root, self.dev).ok_or_else(|| std::io::Error::other(format!("no mount of device {}:{}", self.dev >> 20, self.dev & 0xf_ffff)))?;
        event::open_by_handle(m.as_fd(), self.htype, &self.bytes, libc::O_PATH | libc::O_CLOEXEC)
    }

    /// Dump: a path that names the inode now, found from its handle.
    pub fn find_path(&mut self, pid: crate::sys::Pid, mountinfo: &str) {
        self.path = self.path_now(pid, mountinfo);
    }

    fn path_now(&self, pid: crate::sys::Pid, mountinfo: &str) -> Option<String> {
        use std::os::unix::ffi::OsStrExt;
        let fd = self.open_by_handle(mountinfo, &format!("/proc/{pid}/root")).ok()?;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        let path = std::str::from_utf8(link.as_os_str().as_bytes()).ok()?.to_string();
        let m = std::fs::symlink_metadata(format!("/proc/{pid}/root{path}")).ok()?;
        (m.ino() == self.ino).then_some(path)
    }

    /// Restore: the inode opened O_PATH, from its handle, or failing that
    /// by the recorded path (checked to be the same inode).
    pub fn open(&self, mountinfo: &str) -> Result<OwnedFd, String> {
        let he = match self.open_by_handle(mountinfo, "") {
            Ok(f) => return Ok(f),
            Err(e) => e,
        };
        let Some(path) = &self.path else {
            return Err(format!("opening inode {:#x} from its file handle: {he} (and no path was recorded)", self.ino));
        };
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| format!("inode {:#x}: file handle: {he}; path {path}: {e}", self.ino))?;
        let ino = f.metadata().map(|m| m.ino()).map_err(|e| format!("fstat {path}: {e}"))?;
        if ino != self.ino {
            return Err(format!("{path} is inode {ino:#x}, not the marked {:#x} (file handle: {he})", self.ino));
        }
        Ok(OwnedFd::from(f))
    }

    /// The handle of an fdinfo line's `fhandle-bytes:`, `fhandle-type:`,
    /// `f_handle:` fields (`get` looks a field up).
    pub fn from_fdinfo<'a>(get: impl Fn(&str) -> Option<&'a str>, dev: u32, ino: u64) -> Option<Handle> {
        let len = usize::from_str_radix(get("fhandle-bytes")?, 16).ok()?;
        let bytes = hex_bytes(get("f_handle")?)?;
        if bytes.len() != len || len > MAX_HANDLE {
            return None;
        }
        let htype = u32::from_str_radix(get("fhandle-type")?, 16).ok()? as i32;
        Some(Handle { dev, ino, htype, bytes, path: None })
    }

    /// The image's `fh_entry`: the handle in u64 words as upstream packs it.
    pub fn to_pb(&self) -> pb::FhEntry {
        let mut words = vec![0u64; HANDLE_WORDS.max(self.bytes.len().div_ceil(8))];
        for (i, c) in self.bytes.chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            words[i] = u64::from_le_bytes(b);
        }
        pb::FhEntry { bytes: self.bytes.len() as u32, r#type: self.htype as u32, handle: words, path: self.path.clone(), mnt_id: None }
    }

    /// From the image's `fh_entry` (checked: `Err` says what is wrong).
    pub fn from_pb(fh: &pb::FhEntry, dev: u32, ino: u64) -> Result<Handle, String> {
        let len = fh.bytes as usize;
        if len > MAX_HANDLE || len > fh.handle.len() * 8 {
            return Err(format!("{len} bytes, with {} handle words", fh.handle.len()));
        }
        let bytes = fh.handle.iter().flat_map(|x| x.to_le_bytes()).take(len).collect();
        Ok(Handle { dev, ino, htype: fh.r#type as i32, bytes, path: fh.path.clone() })
    }
}

impl FileKind for Inotify {
    const TYPE: pb::FdTypes = pb::FdTypes::Inotify;
    const NAME: &'static str = "inotify";

    fn claims(link: &str, _meta: &std::fs::Metadata) -> bool {
        link == "anon_inode:inotify"
    }

    fn collect(cx: &mut Collect<'_>) -> Result<Self, FilesError> {
        let (pid, fd) = (cx.pid, cx.fd);
        let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).map_err(|e| FilesError::Io { pid, fd, source: e })?;
        let mut watches = Vec::new();
        for line in cx.fdinfo.lines().filter(|l| l.starts_with("inotify ")) {
            let mut w = parse_watch(line).ok_or_else(|| cx.refuse(Self::NAME, format!("fdinfo line {line:?} is not an inotify watch")))?;
            w.inode.find_path(pid, &mountinfo);
            crate::pr_debug!("inotify fd {fd} of {pid}: wd {} ino {:#x} mask {:#x} path {:?}", w.wd, w.inode.ino, w.mask, w.inode.path);
            watches.push(w);
        }
        // what is queued and unread is not carried: say so
        let queued = crate::sys::process::pidfd_open(pid)
            .and_then(|p| crate::sys::process::pidfd_getfd(&p, fd))
            .and_then(|f| event::bytes_queued(f.as_fd()))
            .map_err(|e| FilesError::Io { pid, fd, source: e })?;
        if queued > 0 {
            crate::pr_warn!("inotify fd {fd} of {pid}: {queued} bytes of queued events are not carried over (as upstream)");
        }
        Ok(Inotify { flags: cx.flags, watches })
    }

    fn write(&self, id: u32, _acc: &mut ImageAcc) -> Result<pb::FileEntry, ImagesError> {
        let wd = self
            .watches
            .iter()
            .map(|w| pb::InotifyWdEntry {
                id: 0, // as upstream writes the inline entries
                i_ino: w.inode.ino,
                mask: w.mask,
                ignored_mask: w.ignored_mask,
                s_dev: w.inode.dev,
                wd: w.wd as u32,
                f_handle: w.inode.to_pb(),
            })
            .collect();
        Ok(pb::FileEntry {
            r#type: Self::TYPE as i32,
            id,
            ify: Some(pb::InotifyFileEntry { id, flags: self.flags, fown: super::fown(), wd }),
            ..Default::default()
        })
    }

    fn read(e: &pb::FileEntry, cx: &mut Read<'_>) -> Result<Self, ImagesError> {
        let m = cx.member(e, "ify", &e.ify)?;
        let mut watches: Vec<Watch> = Vec::with_capacity(m.wd.len());
        for (i, w) in m.wd.iter().enumerate() {
            let field = |f: &str| format!("ify.wd[{i}].{f}");
            if w.wd == 0 || w.wd > MAX_WD {
                return Err(cx.bad(e, &field("wd"), format!("{} is not a watch descriptor (1..={MAX_WD})", w.wd)));
            }
            let inode = Handle::from_pb(&w.f_handle, w.s_dev, w.i_ino).map_err(|why| cx.bad(e, &field("f_handle.bytes"), why))?;
            watches.push(Watch { wd: w.wd as i32, mask: w.mask, ignored_mask: w.ignored_mask, inode });
        }
        let mut wds: Vec<i32> = watches.iter().map(|w| w.wd).collect();
        wds.sort_unstable();
        if let Some(p) = wds.windows(2).find(|p| p[0] == p[1]) {
            return Err(cx.bad(e, "ify.wd", format!("watch descriptor {} appears twice", p[0])));
        }
        Ok(Inotify { flags: m.flags, watches })
    }

    fn restore(&self, _cx: &mut Restore<'_>) -> Result<OwnedFd, String> {
        let ifd = event::inotify_init(libc::IN_NONBLOCK).map_err(|e| format!("inotify_init1: {e}"))?;
        let mountinfo = if self.watches.is_empty() {
            String::new()
        } else {
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?
        };
        let mut removed = false;
        let mut in_order: Vec<&Watch> = self.watches.iter().collect();
        in_order.sort_by_key(|w| w.wd);
        for w in in_order {
            let inode = w.inode.open(&mountinfo).map_err(|e| format!("watch {}: {e}", w.wd))?;
            let p = CString::new(format!("/proc/self/fd/{}", inode.as_raw_fd())).map_err(|e| e.to_string())?;
            loop {
                let got = event::inotify_add_watch(ifd.as_fd(), &p, w.mask).map_err(|e| format!("inotify_add_watch(inode {:#x}, mask {:#x}): {e}", w.inode.ino, w.mask))?;
                if got == w.wd {
                    break;
                }
                if got > w.wd {
                    return Err(format!("watch descriptor {} can't be had again (the next one is {got})", w.wd));
                }
                event::inotify_rm_watch(ifd.as_fd(), got).map_err(|e| format!("inotify_rm_watch {got}: {e}"))?;
                removed = true;
            }
        }
        if removed {
            // the IN_IGNORED events of the watches removed on the way
            let mut buf = vec![0u8; 64 << 10];
            let mut f = std::fs::File::from(ifd.try_clone().map_err(|e| format!("dup: {e}"))?);
            loop {
                match std::io::Read::read(&mut f, &mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("reading out IN_IGNORED events: {e}")),
                }
            }
        }
        super::set_status_flags(&ifd, self.flags)?;
        Ok(ifd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_lines() {
        let l = "inotify wd:3 ino:263 sdev:fe00000 mask:4000020 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:6302000000000000";
        let w = parse_watch(l).unwrap();
        assert_eq!((w.wd, w.inode.ino, w.inode.dev, w.mask, w.inode.htype), (3, 0x263, 0xfe0_0000, 0x400_0020, 1));
        assert_eq!(w.inode.bytes, vec![0x63, 2, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Handle::from_pb(&w.inode.to_pb(), w.inode.dev, w.inode.ino), Ok(w.inode.clone()));
        assert!(parse_watch("inotify wd:3 ino:263 sdev:fe00000 mask:4 ignored_mask:0 fhandle-bytes:9 fhandle-type:1 f_handle:63").is_none());
        assert_eq!(unescape("/a\\040b"), "/a b");
    }
}
