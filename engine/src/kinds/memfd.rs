//! Fds of memfds (the inodes themselves, their data and seals, are the
//! tree's: `dump::files::collect_memfds` reads each once, `images_io`
//! writes memfd.img, `restore::files` makes each once on a working fd
//! before the fds; mappings of them name the same inodes).
//!
//! Dump: claimed by its link `/memfd:NAME (deleted)` on a regular file no
//! longer linked; the inode number, flags and offset. Image: a `MEMFD`
//! `memfd_file_entry` naming the inode's memfd.img `inode_id`; read back,
//! an inode memfd.img does not have, or hugetlb memory
//! (`/anon_hugepage`), is refused. Restore (`EARLY`): the first read-write
//! description of each inode in a table is memfd_create's own (a dup of
//! the working fd: not counted as a writer, so the memfd can still be
//! executed), every other a reopen through /proc/self/fd with its flags;
//! seeked. An inode several processes use is made by the root: a
//! process's own table reopens it.

use super::{Collect, FileKind, Read, Restore, Write};
use crate::dump::files::FilesError;
use crate::images_io::ImagesError;
use images_proto::pb;
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memfd {
    /// Its inode number, which names it in `Tree::memfds`.
    pub ino: u64,
    /// File status flags (no O_CLOEXEC).
    pub flags: u32,
    pub pos: u64,
}

/// Image, for the whole tree: inode number -> memfd.img `inode_id`.
#[derive(Default)]
pub(crate) struct InodeIds(pub(crate) HashMap<u64, u32>);

/// Read, per table: memfd.img's inode_id -> (shmid, name), read once.
#[derive(Default)]
struct Inodes(Option<HashMap<u32, (u64, String)>>);

/// Restore, per table: the inodes whose memfd_create description is given.
#[derive(Default)]
struct Given(HashSet<u64>);

/// The status flags F_SETFL sets on a memfd's description.
const MEMFD_SETFL: i32 = libc::O_APPEND | libc::O_NONBLOCK | libc::O_ASYNC | libc::O_NOATIME | libc::O_DIRECT;

impl FileKind for Memfd {
    const TYPE: pb::FdTypes = pb::FdTypes::Memfd;
    const NAME: &'static str = "memfd";
    const EARLY: bool = true;

    fn claims(link: &str, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        meta.file_type().is_file() && link.starts_with("/memfd:") && link.ends_with(" (deleted)") && meta.nlink() == 0
    }

    fn collect(cx: &mut Collect<'_>) -> Result<Self, FilesError> {
        use std::os::unix::fs::MetadataExt;
        // (its inode, contents and seals: `collect_memfds`, once per inode)
        Ok(Memfd { ino: cx.meta.ino(), flags: cx.flags, pos: cx.pos })
    }

    fn write_entries(&self, cx: &mut Write<'_>) -> Result<u32, ImagesError> {
        let ids = &cx.acc.state::<InodeIds>().0;
        let e = crate::images_io::memfd_entry("files.img", ids, self.ino, self.flags, self.pos)?;
        Ok(cx.push(e))
    }

    fn reads(e: &pb::FileEntry, _cx: &mut Read<'_>) -> Result<bool, ImagesError> {
        Ok(e.memfd.is_some())
    }

    fn read(e: &pb::FileEntry, cx: &mut Read<'_>) -> Result<Self, ImagesError> {
        let m = cx.member(e, "memfd", &e.memfd)?;
        let (dir, fd) = (cx.dir, cx.fd);
        let bad = |what: String| ImagesError::Bad { file: "files.img".to_string(), what };
        let st = cx.scratch.get::<Inodes>();
        if st.0.is_none() {
            let ids = crate::images_io::memfd_shmids(dir)?;
            let names = crate::images_io::memfd_names(dir)?;
            st.0 = Some(ids.into_iter().map(|(id, shmid)| (id, (shmid, names.get(&id).cloned().unwrap_or_default()))).collect());
        }
        let (ino, name) = st
            .0
            .as_ref()
            .and_then(|ids| ids.get(&m.inode_id))
            .ok_or_else(|| bad(format!("fd {fd}: memfd {} names inode {}, which memfd.img does not have", e.id, m.inode_id)))?;
        if name == "/anon_hugepage" {
            return Err(bad(format!("fd {fd}: memfd {} is hugetlb memory (/anon_hugepage): an fd of it is not supported", e.id)));
        }
        Ok(Memfd { ino: *ino, flags: m.flags, pos: m.pos })
    }

    fn restore(&self, cx: &mut Restore<'_>) -> Result<OwnedFd, String> {
        use crate::sys::process as p;
        let (n, plan, ino) = (cx.fd, cx.plan, self.ino);
        let i = plan.memfds.iter().position(|m| m.ino == ino).ok_or_else(|| format!("memfd inode {ino} was not planned"))?;
        let slot = crate::restore::files::memfd_slot(plan, i);
        let fl = self.flags as i32;
        // (a memfd several processes use: that description only where
        // the root makes it for all, `restore_shared`)
        let shared_inode = plan.shared_memfds.contains(&i);
        let f = if fl & libc::O_ACCMODE == libc::O_RDWR && !cx.scratch.get::<Given>().0.contains(&ino) && (!shared_inode || !cx.own_table) {
            // memfd_create's own description (read-write) is not counted
            // as a writer of the inode, so the memfd can still be executed
            // (a reopen for writing would make execveat fail with
            // ETXTBSY): the first read-write description of each memfd is
            // that one
            cx.scratch.get::<Given>().0.insert(ino);
            let f = crate::sys::tty::dup_number(slot).map_err(|e| format!("dup of memfd {slot}: {e}"))?;
            p::fcntl_int(f.as_raw_fd(), libc::F_SETFL, (fl & MEMFD_SETFL) as u64).map_err(|e| format!("F_SETFL fd {n}: {e}"))?;
            f
        } else {
            crate::restore::files::open_own(&format!("/proc/self/fd/{slot}"), fl).map_err(|e| format!("{e} (fd {n})"))?
        };
        if self.pos != 0 {
            p::seek_to(f.as_raw_fd(), self.pos).map_err(|e| format!("lseek fd {n} to {}: {e}", self.pos))?;
        }
        Ok(f)
    }
}
