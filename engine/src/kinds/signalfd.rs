//! signalfd: the signals it accepts and its status flags.
//!
//! Dump: fdinfo's `sigmask:` (hex, bit `signo - 1`). Image: a `SIGNALFD`
//! files.img entry (`signalfd_entry`: `flags`, `sigmask`) as upstream 4.2
//! writes it. Restore: signalfd4 with the mask, then the status flags. The
//! signals pending at dump are the task's (its core image), restored with
//! it: a signalfd reads whatever is pending in the task that reads it, so
//! they stay readable through it.

use super::{Collect, FileKind, ImageAcc, Read, Restore};
use crate::dump::files::FilesError;
use crate::images_io::ImagesError;
use crate::sys::event;
use images_proto::pb;
use std::os::fd::OwnedFd;

/// SIGKILL and SIGSTOP, which a signalfd never takes (the kernel drops them).
const UNBLOCKABLE: u64 = (1 << (libc::SIGKILL - 1)) | (1 << (libc::SIGSTOP - 1));

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signalfd {
    /// File status flags (O_RDWR, O_NONBLOCK; no O_CLOEXEC).
    pub flags: u32,
    /// Accepted signals, bit `signo - 1`.
    pub mask: u64,
}

impl FileKind for Signalfd {
    const TYPE: pb::FdTypes = pb::FdTypes::Signalfd;
    const NAME: &'static str = "signalfd";

    fn claims(link: &str, _meta: &std::fs::Metadata) -> bool {
        link == "anon_inode:[signalfd]"
    }

    fn collect(cx: &mut Collect<'_>) -> Result<Self, FilesError> {
        let m = cx.field(Self::NAME, "sigmask")?;
        let mask = u64::from_str_radix(m, 16).map_err(|_| cx.refuse(Self::NAME, format!("fdinfo sigmask {m:?} is not a hex number")))?;
        Ok(Signalfd { flags: cx.flags, mask })
    }

    fn write(&self, id: u32, _acc: &mut ImageAcc) -> Result<pb::FileEntry, ImagesError> {
        Ok(pb::FileEntry {
            r#type: Self::TYPE as i32,
            id,
            sgfd: Some(pb::SignalfdEntry { id, flags: self.flags, fown: super::fown(), sigmask: self.mask }),
            ..Default::default()
        })
    }

    fn read(e: &pb::FileEntry, cx: &mut Read<'_>) -> Result<Self, ImagesError> {
        let m = cx.member(e, "sgfd", &e.sgfd)?;
        Ok(Signalfd { flags: m.flags, mask: m.sigmask & !UNBLOCKABLE })
    }

    fn restore(&self, _cx: &mut Restore<'_>) -> Result<OwnedFd, String> {
        let fd = event::signalfd(self.mask, libc::SFD_NONBLOCK).map_err(|e| format!("signalfd4(mask {:#x}): {e}", self.mask))?;
        super::set_status_flags(&fd, self.flags)?;
        Ok(fd)
    }
}
