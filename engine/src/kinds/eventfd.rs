//! eventfd: its counter, semaphore mode and status flags.
//!
//! Dump: fdinfo's `eventfd-count:` (hex) and `eventfd-semaphore:`. Image:
//! an `EVENTFD` files.img entry (`eventfd_file_entry`: `flags`, `counter`)
//! as upstream 4.2 writes it; upstream does not record EFD_SEMAPHORE, so
//! we carry it in bit 0 of `flags` (EFD_SEMAPHORE's value; an eventfd's
//! access mode is always O_RDWR, so the bit is otherwise clear, and
//! upstream's restore, which only F_SETFLs these flags, ignores it).
//! Restore: eventfd2 with the counter (written on when it does not fit the
//! u32 eventfd2 takes) and the mode, then the status flags.

use super::{Collect, FileKind, ImageAcc, Read, Restore};
use crate::dump::files::FilesError;
use crate::images_io::ImagesError;
use crate::sys::event;
use images_proto::pb;
use std::io::Write;
use std::os::fd::OwnedFd;

/// EFD_SEMAPHORE, as it rides in the image's `flags`.
const EFD_SEMAPHORE: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eventfd {
    /// File status flags (O_RDWR, O_NONBLOCK, ...; no O_CLOEXEC).
    pub flags: u32,
    pub count: u64,
    pub semaphore: bool,
}

impl FileKind for Eventfd {
    const TYPE: pb::FdTypes = pb::FdTypes::Eventfd;
    const NAME: &'static str = "eventfd";

    fn claims(link: &str, _meta: &std::fs::Metadata) -> bool {
        link == "anon_inode:[eventfd]"
    }

    fn collect(cx: &mut Collect<'_>) -> Result<Self, FilesError> {
        let count = cx.field(Self::NAME, "eventfd-count")?;
        let count = u64::from_str_radix(count, 16).map_err(|_| cx.refuse(Self::NAME, format!("eventfd-count {count:?} is not a hex number")))?;
        let semaphore = cx.field(Self::NAME, "eventfd-semaphore").map(|s| s == "1").unwrap_or(false);
        Ok(Eventfd { flags: cx.flags & !EFD_SEMAPHORE, count, semaphore })
    }

    fn write(&self, id: u32, _acc: &mut ImageAcc) -> Result<pb::FileEntry, ImagesError> {
        Ok(pb::FileEntry {
            r#type: Self::TYPE as i32,
            id,
            efd: Some(pb::EventfdFileEntry {
                id,
                flags: self.flags | if self.semaphore { EFD_SEMAPHORE } else { 0 },
                fown: super::fown(),
                counter: self.count,
            }),
            ..Default::default()
        })
    }

    fn read(e: &pb::FileEntry, cx: &mut Read<'_>) -> Result<Self, ImagesError> {
        let m = cx.member(e, "efd", &e.efd)?;
        if m.counter == u64::MAX {
            return Err(cx.bad(e, "efd.counter", "0xffffffffffffffff is past an eventfd's largest count"));
        }
        Ok(Eventfd { flags: m.flags & !EFD_SEMAPHORE, count: m.counter, semaphore: m.flags & EFD_SEMAPHORE != 0 })
    }

    fn restore(&self, _cx: &mut Restore<'_>) -> Result<OwnedFd, String> {
        let mode = if self.semaphore { libc::EFD_SEMAPHORE } else { 0 };
        let (init, rest) = match u32::try_from(self.count) {
            Ok(c) => (c, 0),
            Err(_) => (0, self.count),
        };
        let fd = event::eventfd(init, mode | libc::EFD_NONBLOCK).map_err(|e| format!("eventfd2: {e}"))?;
        if rest != 0 {
            std::fs::File::from(fd.try_clone().map_err(|e| format!("dup: {e}"))?)
                .write_all(&rest.to_ne_bytes())
                .map_err(|e| format!("writing its count {rest}: {e}"))?;
        }
        super::set_status_flags(&fd, self.flags)?;
        Ok(fd)
    }
}
