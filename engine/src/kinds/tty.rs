//! A terminal the tree does not own: the one it was started from (a
//! `--shell-job`), or any other terminal device (VT, serial, console,
//! `/dev/tty`, a pty slave whose master is elsewhere). Only `--shell-job`
//! accepts them (the CLI refuses them by name otherwise, at dump and at
//! restore).
//!
//! Dump: by device number, whatever the path (a pty of a devpts instance
//! unmounted since shows as "(deleted)"): its path, flags and device.
//! A pty slave whose master is in the tree becomes the pty kind
//! (`kinds::pty::check_tree`). Image: as upstream 4.2: a `REG` entry of
//! its path (mode 020620), then the `TTY` entry naming it (`regf_id`) and
//! a `tty_info_entry` per device (id `2 * index` for a pty, apart from
//! every pty's for the others) in tty-info.img. Restore: a new open file
//! description of the restoring criu's terminal (found on its fds 0..2 and
//! parked by `restore::files::park_terminal`), with the dumped flags.
//!
//! A pty slave whose master is outside the tree (a container's terminal:
//! runc's console socket or conmon holds the master) is also read as its
//! pair's state through the slave (termios, locked termios, window size,
//! exclusive flag, owner; session and foreground group from the
//! processes' /proc stat in `pty::check_tree`), written as upstream 4.2
//! writes it (a full `tty_info_entry` of type PTY with its devpts `dev`).
//! With RPC `orphan_pts_master` it is dumped without `--shell-job`, and
//! restored as a slave of a new pair (`pty::adopt_orphans`), whose master
//! goes to the client.

use super::{Collect, FileKind, Read, Restore, Write};
use crate::dump::files::{dev_major, FilesError};
use crate::images_io::ImagesError;
use images_proto::magic as mg;
use images_proto::pb;
use std::os::fd::OwnedFd;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tty {
    /// The fd's path (`/dev/pts/3`).
    pub path: String,
    /// File status flags (no O_CLOEXEC).
    pub flags: u32,
    /// The device number (glibc encoding).
    pub rdev: u64,
    /// A pty slave's pair state, read through the slave (see the module
    /// doc); None for other terminals, or when the image has none.
    pub slave: Option<Box<super::pty::PtyState>>,
    /// A pty slave's devpts instance (the minor of its st_dev: upstream's
    /// `tty_info.dev`).
    pub dev: Option<u32>,
    /// Dumped with `--external tty[RDEV:DEV]`: an `EXT_TTY` info, restored
    /// from `--inherit-fd fd[N]:tty[RDEV:DEV]` (as upstream).
    pub ext: bool,
}

/// The state of a pty slave held by `pid` as `fd`, read through a
/// duplicate of it (nothing of the terminal changes).
fn slave_state(pid: crate::sys::Pid, fd: i32) -> std::io::Result<(super::pty::PtyState, u32)> {
    use crate::sys::tty;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let pidfd = crate::sys::process::pidfd_open(pid)?;
    let s = crate::sys::process::pidfd_getfd(&pidfd, fd)?;
    let md = std::fs::File::from(s.try_clone()?).metadata()?;
    let st = super::pty::PtyState {
        termios: tty::get_termios(s.as_fd())?,
        locked_termios: tty::get_locked_termios(s.as_fd())?,
        winsize: tty::get_winsize(s.as_fd())?,
        exclusive: tty::exclusive(s.as_fd())?,
        uid: md.uid(),
        gid: md.gid(),
        slave_mode: md.mode(),
        ..Default::default()
    };
    Ok((st, libc::minor(md.dev())))
}

/// Major numbers of terminals: VT/serial (4), /dev/tty + console + ptmx
/// (5), Unix98 pty slaves (136..=143).
pub fn is_tty_major(major: u64) -> bool {
    major == 4 || major == 5 || (136..=143).contains(&major)
}

/// TtyType and pty index of a terminal device (glibc `dev_t`).
fn tty_kind(rdev: u64) -> (pb::TtyType, Option<u32>) {
    let major = dev_major(rdev);
    let minor = (((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)) as u32;
    match major {
        136..=143 => (pb::TtyType::Pty, Some((major as u32 - 136) * 256 + minor)),
        5 if minor == 0 => (pb::TtyType::Ctty, None),
        5 => (pb::TtyType::Console, None),
        4 if minor < 64 => (pb::TtyType::Vt, None),
        _ => (pb::TtyType::Serial, None),
    }
}

/// The tty-info entries of this kind written so far (the whole tree's).
#[derive(Default)]
struct WriteState(Vec<pb::TtyInfoEntry>);

/// tty-info.img, read once per fd table.
#[derive(Default)]
struct ReadState {
    loaded: bool,
    infos: Vec<pb::TtyInfoEntry>,
}

fn infos<'s>(cx: &'s mut Read<'_>) -> Result<&'s [pb::TtyInfoEntry], ImagesError> {
    let dir = cx.dir;
    let st = cx.scratch.get::<ReadState>();
    if !st.loaded {
        st.infos = crate::images_io::read_optional(dir, &mg::TTY_INFO)?;
        st.loaded = true;
    }
    Ok(&cx.scratch.get::<ReadState>().infos)
}

impl FileKind for Tty {
    const TYPE: pb::FdTypes = pb::FdTypes::Tty;
    const NAME: &'static str = "tty";
    const EARLY: bool = true;

    fn claims(_link: &str, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        // (a pty master, /dev/ptmx, is the pty kind's)
        meta.file_type().is_char_device() && is_tty_major(dev_major(meta.rdev())) && meta.rdev() != libc::makedev(5, 2)
    }

    fn collect(cx: &mut Collect<'_>) -> Result<Self, FilesError> {
        use std::os::unix::fs::MetadataExt;
        let rdev = cx.meta.rdev();
        let (mut slave, mut dev) = (None, None);
        if super::pty::slave_index(rdev).is_some() {
            match slave_state(cx.pid, cx.fd) {
                Ok((st, d)) => (slave, dev) = (Some(Box::new(st)), Some(d)),
                Err(e) => crate::pr_warn!("fd {} of {}: reading the state of pty slave {}: {e}", cx.fd, cx.pid, cx.link),
            }
        }
        Ok(Tty { path: cx.link.to_string(), flags: cx.flags, rdev, slave, dev, ext: false })
    }

    fn write_entries(&self, cx: &mut Write<'_>) -> Result<u32, ImagesError> {
        let st = cx.acc.state::<WriteState>();
        let info_id = match st.0.iter().find(|t| u64::from(t.rdev) == self.rdev) {
            Some(t) => t.id,
            None => {
                let (kind, index) = tty_kind(self.rdev);
                // (--external tty[RDEV:DEV]: upstream's EXT_TTY, no pty
                // index, no path)
                let (kind, index) = if self.ext { (pb::TtyType::ExtTty, None) } else { (kind, index) };
                // as upstream numbers a pty's (2 * index), others apart
                // from every pty's
                let id = match index {
                    Some(i) => i * 2,
                    // upstream 4.2 numbers an EXT_TTY 2026 (its restore
                    // refuses an id past its table of terminals)
                    None if self.ext => 2026 + 2 * st.0.iter().filter(|t| t.r#type == pb::TtyType::ExtTty as i32).count() as u32,
                    None => (1 << 30) + st.0.len() as u32,
                };
                let mut info = pb::TtyInfoEntry {
                    id,
                    r#type: kind as i32,
                    locked: false,
                    exclusive: false,
                    packet_mode: false,
                    sid: 0,
                    pgrp: 0,
                    rdev: self.rdev as u32,
                    pty: index.map(|index| pb::TtyPtyEntry { index }),
                    ..Default::default()
                };
                // a pty slave's pair state, as upstream writes it
                if let (Some(st), true) = (&self.slave, index.is_some() || self.ext) {
                    super::pty::fill_info(&mut info, st);
                    info.dev = self.dev;
                }
                // (one tty-info.img with the pty kind's entries)
                cx.acc.push_once(&mg::TTY_INFO, u64::from(id), &info, Vec::new());
                cx.acc.state::<WriteState>().0.push(info);
                id
            }
        };
        let regf_id = if self.ext { None } else { Some(cx.push(crate::images_io::reg_entry(0, &self.path, self.flags, 0, 0o20620, None))) };
        let e = pb::FileEntry {
            r#type: pb::FdTypes::Tty as i32,
            tty: Some(pb::TtyFileEntry { id: 0, tty_info_id: info_id, flags: self.flags, fown: super::fown(), regf_id }),
            ..Default::default()
        };
        Ok(cx.push(e))
    }

    fn reads(e: &pb::FileEntry, cx: &mut Read<'_>) -> Result<bool, ImagesError> {
        // (a pair of the tree's own is the pty kind's)
        let Some(t) = &e.tty else { return Ok(e.r#type == Self::TYPE as i32) };
        Ok(e.r#type == Self::TYPE as i32 && !super::pty::is_pair(t, infos(cx)?))
    }

    fn read(e: &pb::FileEntry, cx: &mut Read<'_>) -> Result<Self, ImagesError> {
        let t = cx.member(e, "tty", &e.tty)?;
        let fd = cx.fd;
        let files = cx.files;
        let info = infos(cx)?.iter().find(|i| i.id == t.tty_info_id).cloned().ok_or_else(|| ImagesError::Bad {
            file: "files.img".into(),
            what: format!("fd {fd}: tty {} names tty-info entry {}, which tty-info.img does not have", e.id, t.tty_info_id),
        })?;
        let path = match t.regf_id.and_then(|id| files.iter().find(|f| f.id == id)).and_then(|r| r.reg.as_ref()) {
            Some(r) => r.name.clone(),
            None => match &info.pty {
                Some(p) => format!("/dev/pts/{}", p.index),
                None => "/dev/tty".to_string(),
            },
        };
        // a pty slave's pair state (upstream writes it; so do we since
        // orphan_pts_master)
        let ext = info.r#type == pb::TtyType::ExtTty as i32;
        let slave = match (&info.pty, &info.termios) {
            (Some(_), Some(_)) if info.r#type == pb::TtyType::Pty as i32 => {
                Some(Box::new(super::pty::state_of(&info, Some(&info)).map_err(|(field, what)| cx.bad(e, field, what))?))
            }
            (_, Some(_)) if ext => {
                Some(Box::new(super::pty::state_of(&info, Some(&info)).map_err(|(field, what)| cx.bad(e, field, what))?))
            }
            _ => None,
        };
        Ok(Tty { path, flags: t.flags, rdev: u64::from(info.rdev), slave, dev: info.dev, ext })
    }

    fn restore(&self, cx: &mut Restore<'_>) -> Result<OwnedFd, String> {
        let n = cx.fd;
        let Some(t) = cx.terminal else {
            if let (false, true, Some(dev)) = (cx.plan.shell_job, self.ext, self.dev) {
                let key = crate::inherit::tty_key(self.rdev, u64::from(dev));
                return Err(format!("fd {n} is a terminal dumped with --external {key}: restore with --inherit-fd fd[N]:{key} (or --shell-job)"));
            }
            if !cx.plan.shell_job && self.slave.is_some() {
                return Err(format!("fd {n} is a pty slave ({}) whose master was outside the tree: restore with --shell-job, or through the RPC with orphan_pts_master (runc, podman)", self.path));
            }
            return Err(if cx.plan.shell_job {
                format!("fd {n} was a terminal ({}) but the restoring criu has none on fds 0..2", self.path)
            } else {
                format!("fd {n} is a terminal ({}): restore with --shell-job", self.path)
            });
        };
        // a new open file description of our terminal, with the dumped flags
        crate::restore::files::open_own(&format!("/proc/self/fd/{t}"), self.flags as i32 | libc::O_NOCTTY)
    }
}
