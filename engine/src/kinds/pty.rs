//! Pseudo-terminals held by the tree itself: a `/dev/ptmx` master and the
//! `/dev/pts/N` slaves of the same pair (unix98), with the pair's state.
//!
//! Dump: a master is claimed by its device (5:2); its fd is taken with
//! `pidfd_getfd` and asked (index, lock, packet mode, termios and locked
//! termios in the kernel's layout, window size, session and foreground
//! group); a new open of its slave (TIOCGPTPEER, the pair unlocked for a
//! moment) gives the exclusive flag, the slave's owner and mode, and the
//! input queued for the slave. The bytes queued in both directions are
//! read (the slave's with ICANON off for the moment, so that a partial
//! line comes too) and put straight back with TIOCSTI, which hands them to
//! the line discipline at once (no echo, no input mapping, no special
//! characters meanwhile): the dump leaves the pair as it found it. Slave
//! fds are collected by the terminal kind (`kinds::tty`) and
//! become this kind in [`check_tree`] when their master is in the tree
//! (else they are the `--shell-job` terminal); session and group are
//! turned into pids of the tree's namespace there, and refused by name
//! when no process of the tree has them.
//!
//! Image: a `TTY` files.img entry per description with a `REG` entry for
//! its path after it (`regf_id`), one `tty_info_entry` per side of the
//! pair (id `2 * index + 1` for the master, `2 * index` for the slave, as
//! upstream 4.2 numbers them) and `tty-data.img` entries (per side, the
//! bytes that side will read). `c_cc` as upstream writes it: glibc's 32
//! control characters packed four to a word, little-endian.
//!
//! Restore: every pair is made by the root for the whole tree (the plan
//! treats it as shared), so that a session leader has it before it forks
//! and takes it as its controlling terminal (`take_ctty`, TIOCSCTTY) then:
//! its children inherit it. The master is opened from `/dev/ptmx` until
//! the kernel hands out the dumped index (it gives the lowest free one;
//! the ones below are held meanwhile), refused by name when that index is
//! taken; termios, locked termios, window size, queued bytes (TIOCSTI),
//! packet mode, exclusive flag, owner, lock. A slave is a new open of its
//! master's peer (TIOCGPTPEER), whatever devpts is mounted where. The
//! leader sets the foreground group once it exists (`set_foreground`).

use super::{Collect, FileKind, ImageAcc, Read, Restore};
use crate::dump::files::FilesError;
use crate::images_io::ImagesError;
use crate::model::{Fd, FileDesc, Tree};
use crate::sys::tty::{self, Termios, Winsize};
use crate::sys::Pid;
use images_proto::magic as mg;
use images_proto::pb;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

/// The kernel's limit of pty indices (NR_UNIX98_PTY_MAX).
pub const MAX_INDEX: u32 = 1 << 20;
/// Queued bytes per direction a terminal can hold, with room to spare
/// (the line discipline keeps 4 KiB, the flip buffers a little more).
pub const MAX_QUEUED: usize = 64 * 1024;

/// The state of a pair, the same for its master and slaves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PtyState {
    pub termios: Termios,
    pub locked_termios: Termios,
    pub winsize: Winsize,
    /// TIOCSPTLCK: new opens of the slave refused.
    pub locked: bool,
    pub packet: bool,
    pub exclusive: bool,
    /// Session and foreground group (pids of the tree's namespace after
    /// `check_tree`; 0: none).
    pub sid: i32,
    pub pgrp: i32,
    /// Bytes the master will read (the slave's output).
    pub to_master: Vec<u8>,
    /// Bytes the slave will read (its input).
    pub to_slave: Vec<u8>,
    /// The slave's owner and mode bits.
    pub uid: u32,
    pub gid: u32,
    pub slave_mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pty {
    /// /dev/pts/`index`.
    pub index: u32,
    pub master: bool,
    /// File status flags (no O_CLOEXEC).
    pub flags: u32,
    pub state: PtyState,
    /// A slave whose master was outside the tree (a container's terminal),
    /// restored with RPC `orphan_pts_master` ([`adopt_orphans`]): a new
    /// pair, made from the `ptmx` of the slave's devpts, whose master goes
    /// to the engine (and from it to the client) instead of the tree.
    pub orphan: Option<Box<Orphan>>,
}

/// Where the new pair of an orphan slave is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The slave's dumped path (`/dev/pts/0`): the pair comes from the
    /// `ptmx` beside it.
    pub path: String,
    /// The tree's own mount namespace is restored (pivot_root'ed before
    /// the fds are made): the path is the process's own; else it is
    /// resolved as every image path (`--root`).
    pub in_mntns: bool,
    /// `--inherit-fd fd[N]:tty[RDEV:DEV]` of a slave dumped with
    /// `--external tty[RDEV:DEV]`: the slave is a new open of the
    /// inherited fd, no pair is made.
    pub inherit: Option<String>,
}

fn ptmx_rdev() -> u64 {
    libc::makedev(5, 2)
}

/// The pts index of slave device `rdev`, if it is one (majors 136-143).
pub fn slave_index(rdev: u64) -> Option<u32> {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (136..=143).contains(&major).then(|| (major - 136) * 256 + minor).filter(|&i| i < MAX_INDEX)
}

fn info_id(index: u32, master: bool) -> u32 {
    index * 2 + u32::from(master)
}

/// glibc's 32 control characters packed four to a word (upstream's
/// `c_cc`), 19 words.
fn cc_words(cc: &[u8; 19]) -> Vec<u32> {
    let mut b = [0u8; 32];
    b[..19].copy_from_slice(cc);
    let mut w: Vec<u32> = b.chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    w.resize(19, 0);
    w
}

fn cc_bytes(words: &[u32]) -> [u8; 19] {
    let mut out = [0u8; 19];
    for (i, b) in words.iter().take(5).flat_map(|w| w.to_le_bytes()).take(19).enumerate() {
        out[i] = b;
    }
    out
}

fn termios_entry(t: &Termios) -> pb::TermiosEntry {
    pb::TermiosEntry {
        c_iflag: t.iflag,
        c_oflag: t.oflag,
        c_cflag: t.cflag,
        c_lflag: t.lflag,
        c_line: u32::from(t.line),
        c_ispeed: 0,
        c_ospeed: 0,
        c_cc: cc_words(&t.cc),
    }
}

fn termios_of(e: &pb::TermiosEntry) -> Result<Termios, String> {
    let line = u8::try_from(e.c_line).map_err(|_| format!("c_line {} is past a byte", e.c_line))?;
    Ok(Termios { iflag: e.c_iflag, oflag: e.c_oflag, cflag: e.c_cflag, lflag: e.c_lflag, line, cc: cc_bytes(&e.c_cc) })
}

/// A termios with which queued input goes in as it is: no echo, no
/// signals, no mapping, no flow control, no editing characters (the
/// canonical mode kept, so lines are lines again).
fn quiet(t: &Termios) -> Termios {
    let mut q = *t;
    q.lflag &= !(libc::ECHO | libc::ECHONL | libc::ISIG | libc::IEXTEN | libc::ECHOE | libc::ECHOK | libc::ECHOCTL | libc::ECHOKE);
    q.iflag &= !(libc::ISTRIP | libc::INLCR | libc::IGNCR | libc::ICRNL | libc::IUCLC | libc::IXON | libc::IXOFF | libc::PARMRK);
    for c in [libc::VERASE, libc::VKILL, libc::VWERASE, libc::VREPRINT, libc::VLNEXT, libc::VEOF, libc::VINTR, libc::VQUIT, libc::VSUSP, libc::VDISCARD] {
        q.cc[c] = 0;
    }
    q
}

/// Put queued bytes back: the slave's input through the line discipline
/// with [`quiet`] termios for the moment, the master's as they are.
fn refill(master: &OwnedFd, slave: Option<&OwnedFd>, st: &PtyState) -> std::io::Result<()> {
    if let Some(slave) = slave.filter(|_| !st.to_slave.is_empty()) {
        tty::set_termios(slave.as_fd(), &quiet(&st.termios))?;
        for &b in &st.to_slave {
            tty::push_input(slave.as_fd(), b)?;
        }
        tty::set_termios(slave.as_fd(), &st.termios)?;
    }
    for &b in &st.to_master {
        tty::push_input(master.as_fd(), b)?;
    }
    Ok(())
}

/// Read what `fd` has queued without blocking (FIONREAD bytes at a time,
/// until it has none).
fn drain(fd: &OwnedFd) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut f = std::fs::File::from(fd.try_clone()?);
    loop {
        let n = tty::queued(fd.as_fd())? as usize;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > MAX_QUEUED {
            return Err(std::io::Error::other(format!("more than {MAX_QUEUED} bytes queued")));
        }
        let at = out.len();
        out.resize(at + n, 0);
        let r = std::io::Read::read(&mut f, &mut out[at..])?;
        out.truncate(at + r);
        if r == 0 {
            return Ok(out);
        }
    }
}

/// The peer of `master` opened with `flags`, the pair unlocked for the
/// moment when it is locked.
fn peer(master: &OwnedFd, flags: i32, locked: bool) -> std::io::Result<OwnedFd> {
    if locked {
        tty::set_locked(master.as_fd(), false)?;
    }
    let r = tty::open_peer(master.as_fd(), flags | libc::O_NOCTTY | libc::O_CLOEXEC);
    if locked {
        tty::set_locked(master.as_fd(), true)?;
    }
    r
}

impl FileKind for Pty {
    const TYPE: pb::FdTypes = pb::FdTypes::Tty;
    const NAME: &'static str = "pty";

    fn claims(_link: &str, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        meta.file_type().is_char_device() && meta.rdev() == ptmx_rdev()
    }

    fn collect(cx: &mut Collect<'_>) -> Result<Self, FilesError> {
        use std::os::unix::fs::MetadataExt;
        let (pid, fd) = (cx.pid, cx.fd);
        let io = |what: &str, e: std::io::Error| FilesError::Kind { pid, fd, kind: Self::NAME, why: format!("{what}: {e}") };
        let pidfd = crate::sys::process::pidfd_open(pid).map_err(|e| FilesError::Io { pid, fd, source: e })?;
        let m = crate::sys::process::pidfd_getfd(&pidfd, fd).map_err(|e| io("pidfd_getfd", e))?;
        let index = tty::index(m.as_fd()).map_err(|e| io("TIOCGPTN", e))?;
        let locked = tty::locked(m.as_fd()).map_err(|e| io("TIOCGPTLCK", e))?;
        let packet = tty::packet_mode(m.as_fd()).map_err(|e| io("TIOCGPKT", e))?;
        let termios = tty::get_termios(m.as_fd()).map_err(|e| io("TCGETS", e))?;
        let locked_termios = tty::get_locked_termios(m.as_fd()).map_err(|e| io("TIOCGLCKTRMIOS", e))?;
        let winsize = tty::get_winsize(m.as_fd()).map_err(|e| io("TIOCGWINSZ", e))?;
        let sid = tty::session(m.as_fd()).map_err(|e| io("TIOCGSID", e))?.unwrap_or(0);
        let pgrp = tty::foreground(m.as_fd()).map_err(|e| io("TIOCGPGRP", e))?;
        let hup_before = tty::hung_up(m.as_fd()).unwrap_or(true);
        let s = peer(&m, libc::O_RDWR | libc::O_NONBLOCK, locked).map_err(|e| io(&format!("opening /dev/pts/{index} (TIOCGPTPEER)"), e))?;
        let exclusive = tty::exclusive(s.as_fd()).map_err(|e| io("TIOCGEXCL", e))?;
        let sm = std::fs::File::from(s.try_clone().map_err(|e| io("dup", e))?).metadata().map_err(|e| io("fstat of the slave", e))?;
        let mut st = PtyState {
            termios,
            locked_termios,
            winsize,
            locked,
            packet,
            exclusive,
            sid,
            pgrp,
            to_master: Vec::new(),
            to_slave: Vec::new(),
            uid: sm.uid(),
            gid: sm.gid(),
            slave_mode: sm.mode(),
        };
        // the bytes queued both ways, read and put straight back
        if packet {
            tty::set_packet_mode(m.as_fd(), false).map_err(|e| io("TIOCPKT 0", e))?;
        }
        st.to_master = drain(&m).map_err(|e| io("reading the master's queue", e))?;
        if packet {
            tty::set_packet_mode(m.as_fd(), true).map_err(|e| io("TIOCPKT 1", e))?;
        }
        let mut raw = termios;
        raw.lflag &= !libc::ICANON;
        tty::set_termios(s.as_fd(), &raw).map_err(|e| io("TCSETS (ICANON off)", e))?;
        let to_slave = drain(&s);
        tty::set_termios(s.as_fd(), &termios).map_err(|e| io("TCSETS (back)", e))?;
        st.to_slave = to_slave.map_err(|e| io("reading the slave's queue", e))?;
        refill(&m, Some(&s), &st).map_err(|e| io("putting the queued bytes back (TIOCSTI)", e))?;
        drop(s);
        if !hup_before && tty::hung_up(m.as_fd()).unwrap_or(false) {
            crate::pr_warn!("fd {fd} of {pid}: /dev/pts/{index} had never been opened: its master reads as hung up now (the dump opened the slave to read its queue)");
        }
        crate::pr_debug!("pty {index} of {pid} fd {fd}: sid {sid} pgrp {pgrp}, {} + {} bytes queued", st.to_master.len(), st.to_slave.len());
        Ok(Pty { index, master: true, flags: cx.flags, state: st, orphan: None })
    }

    fn write(&self, id: u32, acc: &mut ImageAcc) -> Result<pb::FileEntry, ImagesError> {
        let st = &self.state;
        for master in [true, false] {
            let iid = info_id(self.index, master);
            let rdev = if master { ptmx_rdev() } else { libc::makedev(136 + self.index / 256, self.index % 256) };
            let mut info = pb::TtyInfoEntry {
                id: iid,
                r#type: pb::TtyType::Pty as i32,
                rdev: rdev as u32,
                pty: Some(pb::TtyPtyEntry { index: self.index }),
                ..Default::default()
            };
            fill_info(&mut info, st);
            acc.push_once(&mg::TTY_INFO, u64::from(iid), &info, Vec::new());
            let data = if master { &st.to_master } else { &st.to_slave };
            if !data.is_empty() {
                acc.push_once(&mg::TTY_DATA, u64::from(iid), &pb::TtyDataEntry { tty_id: iid, data: data.clone() }, Vec::new());
            }
        }
        Ok(pb::FileEntry {
            r#type: Self::TYPE as i32,
            id,
            tty: Some(pb::TtyFileEntry {
                id,
                tty_info_id: info_id(self.index, self.master),
                flags: self.flags,
                fown: super::fown(),
                // the REG entry `extra_files` gives, right after this one
                regf_id: Some(id + 1),
            }),
            ..Default::default()
        })
    }

    fn extra_files(&self) -> Vec<super::ExtraReg> {
        let (path, mode) = if self.master {
            ("/dev/ptmx".to_string(), libc::S_IFCHR | 0o666)
        } else {
            (format!("/dev/pts/{}", self.index), self.state.slave_mode)
        };
        vec![super::ExtraReg { path, flags: self.flags, pos: 0, mode }]
    }

    fn read(e: &pb::FileEntry, cx: &mut Read<'_>) -> Result<Self, ImagesError> {
        let t = cx.member(e, "tty", &e.tty)?;
        let im = cx.scratch.get::<ReadScratch>();
        if !im.loaded {
            im.loaded = true;
            im.infos = crate::images_io::read_optional(cx.dir, &mg::TTY_INFO)?;
            let data: Vec<pb::TtyDataEntry> = crate::images_io::read_optional(cx.dir, &mg::TTY_DATA)?;
            for d in data {
                if d.data.len() > MAX_QUEUED {
                    return Err(ImagesError::Bad {
                        file: "tty-data.img".into(),
                        what: format!("tty {}: {} bytes queued, more than a terminal holds ({MAX_QUEUED})", d.tty_id, d.data.len()),
                    });
                }
                if im.data.insert(d.tty_id, d.data).is_some() {
                    return Err(ImagesError::Bad { file: "tty-data.img".into(), what: format!("tty {}: queued data given twice", d.tty_id) });
                }
            }
        }
        let im = cx.scratch.get::<ReadScratch>();
        let infos = std::mem::take(&mut im.infos);
        let data = std::mem::take(&mut im.data);
        let r = read_entry(e, t, &infos, &data, cx);
        let im = cx.scratch.get::<ReadScratch>();
        im.infos = infos;
        im.data = data;
        r
    }

    fn restore(&self, cx: &mut Restore<'_>) -> Result<OwnedFd, String> {
        if let Some(o) = &self.orphan {
            return self.restore_orphan(o, cx);
        }
        let made = cx.scratch.get::<Made>();
        let m = match made.0.entry(self.index) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let flags = if self.master { self.flags } else { libc::O_RDWR as u32 };
                let open = |fl: i32| tty::open(c"/dev/ptmx", fl).map_err(|e| format!("opening /dev/ptmx for /dev/pts/{}: {e}", self.index));
                v.insert(make_master(self.index, &self.state, flags, &open, true)?)
            }
        };
        let fd = if self.master {
            m.try_clone().map_err(|e| format!("dup of the master of /dev/pts/{}: {e}", self.index))?
        } else {
            peer(m, self.flags as i32 & libc::O_ACCMODE, self.state.locked).map_err(|e| format!("opening /dev/pts/{} (TIOCGPTPEER): {e}", self.index))?
        };
        super::set_status_flags(&fd, self.flags)?;
        Ok(fd)
    }
}

/// Pairs made while the mount namespace is built (a bind of one slave
/// of a devpts made anew, as runc's `/dev/console`: the slave must exist
/// for the bind), by index, on fds at or above [`PREMADE_FLOOR`] (above
/// every fd the restore places); an orphan slave's restore takes its
/// pair from here ([`Pty::restore_orphan`]), the rest are closed with
/// [`drop_premade`].
static PREMADE: std::sync::Mutex<Vec<(u32, OwnedFd)>> = std::sync::Mutex::new(Vec::new());
static PREMADE_FLOOR: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// In a restore child, before its mount namespace is built: where the
/// pairs [`premake`] makes are kept.
pub fn set_premade_floor(fd: i32) {
    PREMADE_FLOOR.store(fd, std::sync::atomic::Ordering::Relaxed);
}

/// Make pty `index` of a devpts instance (`open`: of its `ptmx`), unlocked,
/// so that its slave exists; kept for an orphan slave's restore.
pub fn premake(open: &dyn Fn(i32) -> std::io::Result<OwnedFd>, index: u32) -> Result<(), String> {
    let mut pre = PREMADE.lock().unwrap_or_else(|e| e.into_inner());
    if index >= MAX_INDEX || pre.iter().any(|(i, _)| *i == index) {
        return Ok(());
    }
    let mut below = Vec::new();
    let m = loop {
        let f = open(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC).map_err(|e| format!("ptmx for /dev/pts/{index}: {e}"))?;
        let got = tty::index(f.as_fd()).map_err(|e| format!("TIOCGPTN: {e}"))?;
        match got.cmp(&index) {
            std::cmp::Ordering::Equal => break f,
            std::cmp::Ordering::Less => below.push(f),
            std::cmp::Ordering::Greater => return Err(format!("/dev/pts/{index} is taken (ptmx gave {got})")),
        }
    };
    drop(below);
    tty::set_locked(m.as_fd(), false).map_err(|e| format!("/dev/pts/{index}: TIOCSPTLCK 0: {e}"))?;
    let floor = PREMADE_FLOOR.load(std::sync::atomic::Ordering::Relaxed);
    let m = crate::sys::process::dup_number_above(std::os::fd::AsRawFd::as_raw_fd(&m), floor).map_err(|e| format!("/dev/pts/{index}: moving its master above fd {floor}: {e}"))?;
    pre.push((index, m));
    Ok(())
}

fn take_premade(index: u32) -> Option<OwnedFd> {
    let mut pre = PREMADE.lock().unwrap_or_else(|e| e.into_inner());
    let at = pre.iter().position(|(i, _)| *i == index)?;
    Some(pre.remove(at).1)
}

/// Close the pairs [`premake`] made that no orphan slave took.
pub fn drop_premade() {
    PREMADE.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

impl Pty {
    /// A slave whose master was outside the tree: the first of its index
    /// in this walk makes a new pair from the `ptmx` beside the dumped
    /// slave (its devpts instance: a container's own) with the dumped
    /// index and state, and hands the master to the engine (the plan's
    /// `orphan_sock`), which passes it on to the client; the slave is a
    /// new open of the master's peer.
    fn restore_orphan(&self, o: &Orphan, cx: &mut Restore<'_>) -> Result<OwnedFd, String> {
        let n = cx.fd;
        let plan = cx.plan;
        if let Some(key) = &o.inherit {
            // a new open of the inherited slave, with the dumped flags
            let at = plan.inherited(key).ok_or_else(|| format!("{}: no inherited fd for {key}", o.path))?;
            let c = std::ffi::CString::new(format!("/proc/self/fd/{at}")).map_err(|_| "a NUL in a path".to_string())?;
            let fd = tty::open(&c, (self.flags as i32 & !libc::O_CLOEXEC) | libc::O_NOCTTY).map_err(|e| format!("{}: reopening the inherited fd of {key}: {e}", o.path))?;
            if !is_slave(&fd) {
                return Err(format!("{}: the inherited fd of {key} is no pty slave", o.path));
            }
            super::set_status_flags(&fd, self.flags)?;
            return Ok(fd);
        }
        let made = cx.scratch.get::<Made>();
        if let std::collections::hash_map::Entry::Vacant(v) = made.0.entry(self.index) {
            let dir = o.path.rsplit_once('/').map_or("/dev/pts", |(d, _)| d);
            let ptmx = format!("{}/ptmx", if dir.is_empty() { "/dev/pts" } else { dir });
            let index = self.index;
            let open = |fl: i32| -> Result<OwnedFd, String> {
                // (made already for a bind of its slave: mntns)
                if let Some(m) = take_premade(index) {
                    return Ok(m);
                }
                if o.in_mntns || plan.root.is_none() {
                    let c = std::ffi::CString::new(ptmx.as_str()).map_err(|_| format!("{ptmx:?}: a NUL in the path"))?;
                    tty::open(&c, fl).map_err(|e| format!("opening {ptmx} for /dev/pts/{}: {e}", self.index))
                } else {
                    let m = crate::restore::files::open_image_path_own(plan, &ptmx, fl, n)?;
                    super::set_status_flags(&m, (fl & libc::O_ACCMODE) as u32)?;
                    Ok(m)
                }
            };
            let m = make_master(self.index, &self.state, libc::O_RDWR as u32, &open, false)?;
            let sock = plan.orphan_sock.ok_or_else(|| format!("{}: a slave whose master was outside the tree, and nowhere to hand its new master", o.path))?;
            let s = tty::dup_number(sock).map_err(|e| format!("the engine's socket for the new master of {} (fd {sock}): {e}", o.path))?;
            crate::sys::sock::send_fds(s.as_fd(), &self.index.to_le_bytes(), libc::MSG_NOSIGNAL, None, &[m.as_fd()])
                .map_err(|e| format!("handing the new master of {} to the engine: {e}", o.path))?;
            v.insert(m);
        }
        let m = &made.0[&self.index];
        let fd = peer(m, self.flags as i32 & libc::O_ACCMODE, false).map_err(|e| format!("opening {} (TIOCGPTPEER of its new master): {e}", o.path))?;
        // the dumped owner (devpts gives a new slave to its opener)
        std::os::unix::fs::fchown(&fd, Some(self.state.uid), Some(self.state.gid)).map_err(|e| format!("{}: fchown: {e}", o.path))?;
        super::set_status_flags(&fd, self.flags)?;
        Ok(fd)
    }
}

fn read_entry(e: &pb::FileEntry, t: &pb::TtyFileEntry, infos: &[pb::TtyInfoEntry], data: &HashMap<u32, Vec<u8>>, cx: &Read<'_>) -> Result<Pty, ImagesError> {
    let info = infos.iter().find(|i| i.id == t.tty_info_id).ok_or_else(|| cx.bad(e, "tty.tty_info_id", format!("{}: no such entry in tty-info.img", t.tty_info_id)))?;
    let index = info.pty.as_ref().map(|p| p.index).ok_or_else(|| cx.bad(e, "tty_info.pty", "missing"))?;
    if index >= MAX_INDEX {
        return Err(cx.bad(e, "tty_info.pty.index", format!("{index} is past the kernel's largest pty index ({})", MAX_INDEX - 1)));
    }
    let rdev = u64::from(info.rdev);
    let master = if rdev == ptmx_rdev() {
        true
    } else if slave_index(rdev) == Some(index) {
        false
    } else {
        return Err(cx.bad(e, "tty_info.rdev", format!("{:#x} is neither /dev/ptmx nor /dev/pts/{index}", info.rdev)));
    };
    // the pair's state is the master side's
    let mi = infos
        .iter()
        .find(|i| u64::from(i.rdev) == ptmx_rdev() && i.pty.as_ref().map(|p| p.index) == Some(index))
        .ok_or_else(|| cx.bad(e, "tty.tty_info_id", format!("/dev/pts/{index} has no master in tty-info.img")))?;
    let si = infos.iter().find(|i| slave_index(u64::from(i.rdev)) == Some(index) && i.pty.as_ref().map(|p| p.index) == Some(index));
    let mut st = state_of(mi, si).map_err(|(field, what)| cx.bad(e, field, what))?;
    st.to_master = data.get(&mi.id).cloned().unwrap_or_default();
    st.to_slave = si.and_then(|s| data.get(&s.id)).cloned().unwrap_or_default();
    Ok(Pty { index, master, flags: t.flags, state: st, orphan: None })
}

/// Write a pair's state into its `tty_info_entry` (either side's), as
/// upstream 4.2 writes it.
pub fn fill_info(info: &mut pb::TtyInfoEntry, st: &PtyState) {
    info.locked = st.locked;
    info.exclusive = st.exclusive;
    info.packet_mode = st.packet;
    info.sid = st.sid as u32;
    info.pgrp = st.pgrp as u32;
    info.termios = Some(termios_entry(&st.termios));
    info.termios_locked = Some(termios_entry(&st.locked_termios));
    info.winsize = Some(pb::WinsizeEntry {
        ws_row: u32::from(st.winsize.row),
        ws_col: u32::from(st.winsize.col),
        ws_xpixel: u32::from(st.winsize.xpixel),
        ws_ypixel: u32::from(st.winsize.ypixel),
    });
    info.uid = Some(st.uid);
    info.gid = Some(st.gid);
}

/// A pair's state from its master's info `mi` (for an orphan slave, the
/// slave's own) and its slave's `si` (owner), checked (untrusted): the
/// field and what is wrong with it. No queued bytes.
pub fn state_of(mi: &pb::TtyInfoEntry, si: Option<&pb::TtyInfoEntry>) -> Result<PtyState, (&'static str, String)> {
    let termios = termios_of(mi.termios.as_ref().ok_or(("tty_info.termios", "missing".to_string()))?).map_err(|w| ("tty_info.termios", w))?;
    let locked_termios = match &mi.termios_locked {
        Some(l) => termios_of(l).map_err(|w| ("tty_info.termios_locked", w))?,
        None => Termios::default(),
    };
    let ws = mi.winsize.unwrap_or(pb::WinsizeEntry { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 });
    let w16 = |v: u32, f: &'static str| u16::try_from(v).map_err(|_| (f, format!("{v} is past 65535")));
    let winsize = Winsize { row: w16(ws.ws_row, "winsize.ws_row")?, col: w16(ws.ws_col, "winsize.ws_col")?, xpixel: w16(ws.ws_xpixel, "winsize.ws_xpixel")?, ypixel: w16(ws.ws_ypixel, "winsize.ws_ypixel")? };
    let pid = |v: u32, f: &'static str| i32::try_from(v).ok().filter(|&p| p <= 4 * 1024 * 1024).ok_or_else(|| (f, format!("{v} is no pid")));
    Ok(PtyState {
        termios,
        locked_termios,
        winsize,
        locked: mi.locked,
        packet: mi.packet_mode,
        exclusive: mi.exclusive,
        sid: pid(mi.sid, "tty_info.sid")?,
        pgrp: pid(mi.pgrp, "tty_info.pgrp")?,
        to_master: Vec::new(),
        to_slave: Vec::new(),
        uid: si.and_then(|s| s.uid).unwrap_or(0),
        gid: si.and_then(|s| s.gid).unwrap_or(0),
        slave_mode: libc::S_IFCHR | 0o620,
    })
}

#[derive(Default)]
struct ReadScratch {
    loaded: bool,
    infos: Vec<pb::TtyInfoEntry>,
    data: HashMap<u32, Vec<u8>>,
}

/// Masters made in this restore walk, by index.
#[derive(Default)]
struct Made(HashMap<u32, OwnedFd>);

/// Whether a `TTY` entry is one side of a pair whose master is in the
/// image (this kind), not a terminal of the shell (`--shell-job`).
pub fn is_pair(t: &pb::TtyFileEntry, infos: &[pb::TtyInfoEntry]) -> bool {
    let Some(index) = infos.iter().find(|i| i.id == t.tty_info_id).and_then(|i| i.pty.as_ref()).map(|p| p.index) else { return false };
    infos.iter().any(|i| u64::from(i.rdev) == ptmx_rdev() && i.pty.as_ref().map(|p| p.index) == Some(index))
}

/// Open `/dev/ptmx` until the kernel gives index `index` (it gives the
/// lowest free one: the ones below are held until then), and give the new
/// pair the dumped state.
/// (`open`: of the ptmx to use; `chown`: the slave's owner set through
/// its path `/dev/pts/N`.)
fn make_master(index: u32, st: &PtyState, flags: u32, open: &dyn Fn(i32) -> Result<OwnedFd, String>, chown: bool) -> Result<OwnedFd, String> {
    let mut below = Vec::new();
    let m = loop {
        let f = open((flags as i32 & libc::O_ACCMODE) | libc::O_NOCTTY | libc::O_CLOEXEC)?;
        let got = tty::index(f.as_fd()).map_err(|e| format!("TIOCGPTN: {e}"))?;
        match got.cmp(&index) {
            std::cmp::Ordering::Equal => break f,
            std::cmp::Ordering::Less => below.push(f),
            std::cmp::Ordering::Greater => {
                return Err(format!("/dev/pts/{index} is taken (another pty holds that index now; /dev/ptmx gave {got})"));
            }
        }
    };
    drop(below);
    let e = |what: &'static str| move |err: std::io::Error| format!("/dev/pts/{index}: {what}: {err}");
    tty::set_locked(m.as_fd(), false).map_err(e("TIOCSPTLCK 0"))?;
    // the slave opened only when needed: its last close marks the master
    // hung up, which a slave never opened does not show
    let s = if !st.to_slave.is_empty() || st.exclusive {
        Some(tty::open_peer(m.as_fd(), libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC).map_err(e("TIOCGPTPEER"))?)
    } else {
        None
    };
    // (TCSETS on a master sets its slave's termios)
    tty::set_termios(m.as_fd(), &st.termios).map_err(e("TCSETS"))?;
    if st.locked_termios != Termios::default() {
        tty::set_locked_termios(m.as_fd(), &st.locked_termios).map_err(e("TIOCSLCKTRMIOS"))?;
    }
    tty::set_winsize(m.as_fd(), &st.winsize).map_err(e("TIOCSWINSZ"))?;
    refill(&m, s.as_ref(), st).map_err(e("queued bytes (TIOCSTI)"))?;
    if st.packet {
        tty::set_packet_mode(m.as_fd(), true).map_err(e("TIOCPKT"))?;
    }
    let path = format!("/dev/pts/{index}");
    match std::fs::metadata(&path) {
        _ if !chown => {}
        Ok(md) if std::os::unix::fs::MetadataExt::uid(&md) == st.uid && std::os::unix::fs::MetadataExt::gid(&md) == st.gid => {}
        _ => std::os::unix::fs::chown(&path, Some(st.uid), Some(st.gid)).map_err(e("chown"))?,
    }
    if let Some(s) = s.as_ref().filter(|_| st.exclusive) {
        tty::set_exclusive(s.as_fd()).map_err(e("TIOCEXCL"))?;
    }
    if st.locked {
        tty::set_locked(m.as_fd(), true).map_err(e("TIOCSPTLCK 1"))?;
    }
    Ok(m)
}

/// Dump, once every fd table is read: slaves whose master is in the tree
/// become this kind with the pair's state; sessions and groups become
/// pids of the tree's namespace (`ns_pid`: host pid -> that pid), a
/// session or group no process of the tree has is refused by name.
pub fn check_tree(tables: &mut [(Pid, &mut Vec<Fd>)], ns_pid: &HashMap<Pid, i32>) -> Result<(), FilesError> {
    let mut pairs: HashMap<u32, PtyState> = HashMap::new();
    for (pid, fds) in tables.iter_mut() {
        for f in fds.iter_mut() {
            let FileDesc::Kind(super::Kind::Pty(p)) = &mut f.file else { continue };
            let refuse = |why: String| FilesError::Kind { pid: *pid, fd: f.fd, kind: Pty::NAME, why: format!("/dev/pts/{}: {why}", p.index) };
            if let Some(st) = pairs.get(&p.index) {
                p.state = st.clone();
                continue;
            }
            let st = &mut p.state;
            if st.sid != 0 {
                st.sid = *ns_pid.get(&st.sid).ok_or_else(|| refuse(format!("it is the controlling terminal of session {}, which is not in the dumped tree", st.sid)))?;
            }
            if st.pgrp != 0 {
                st.pgrp = *ns_pid.get(&st.pgrp).ok_or_else(|| refuse(format!("its foreground process group {} is led by no process of the dumped tree", st.pgrp)))?;
            }
            pairs.insert(p.index, st.clone());
        }
    }
    // the processes' controlling terminals (/proc stat: session, tty_nr,
    // tpgid; host pids), for slaves whose master is outside
    let mut cttys: Vec<(Pid, u64, Pid)> = Vec::new();
    for (pid, _) in tables.iter() {
        if let Some(c) = ctty_of(*pid) {
            cttys.push(c);
        }
    }
    for (_, fds) in tables.iter_mut() {
        for f in fds.iter_mut() {
            let FileDesc::Kind(super::Kind::Tty(t)) = &mut f.file else { continue };
            let Some(index) = slave_index(t.rdev) else { continue };
            if let Some(st) = pairs.get(&index) {
                f.file = FileDesc::Kind(super::Kind::Pty(Pty { index, master: false, flags: t.flags, state: st.clone(), orphan: None }));
            } else if let Some(st) = t.slave.as_mut() {
                // its master is outside: the session it is the terminal of
                // and that session's foreground group, when in the tree
                if let Some(&(sid, _, tpgid)) = cttys.iter().find(|(_, tty, _)| *tty == t.rdev) {
                    st.sid = ns_pid.get(&sid).copied().unwrap_or(0);
                    st.pgrp = if st.sid == 0 { 0 } else { ns_pid.get(&tpgid).copied().unwrap_or(0) };
                }
            }
        }
    }
    Ok(())
}

/// (session, controlling terminal, its foreground group) of `pid`, from
/// /proc/PID/stat; None without a terminal.
fn ctty_of(pid: Pid) -> Option<(Pid, u64, Pid)> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = st.rsplit_once(')')?.1.split_whitespace().collect();
    // (after the comm: state ppid pgrp session tty_nr tpgid)
    let sid: Pid = f.get(3)?.parse().ok()?;
    let tty: i64 = f.get(4)?.parse().ok()?;
    let tpgid: Pid = f.get(5)?.parse().ok()?;
    (tty > 0).then_some((sid, tty as u64, tpgid))
}

/// Restore with `orphan_pts_master`: every pty slave whose master was
/// outside the tree (a `tty` kind with its pair's state in the image)
/// becomes a slave of a new pair ([`Orphan`]). Returns how many pairs.
/// With `--inherit-fd fd[N]:tty[RDEV:DEV]` (`inherit`: the keys given), a
/// slave dumped with `--external tty[RDEV:DEV]` becomes one restored from
/// that fd (with or without `orphan_pts_master`).
pub fn adopt_orphans(tree: &mut Tree, orphan_pts_master: bool, inherit: &[String]) -> usize {
    let in_mntns = tree.mnt.is_some();
    let mut pairs = Vec::new();
    for f in tree.tasks.iter_mut().flat_map(|t| t.fds.iter_mut()) {
        let FileDesc::Kind(super::Kind::Tty(t)) = &f.file else { continue };
        let (Some(index), Some(st)) = (slave_index(t.rdev), t.slave.as_ref()) else { continue };
        let key = t.dev.map(|d| crate::inherit::tty_key(t.rdev, u64::from(d))).filter(|k| t.ext && inherit.contains(k));
        if key.is_none() && (t.ext || !orphan_pts_master) {
            continue;
        }
        if !pairs.contains(&index) {
            pairs.push(index);
        }
        let orphan = Some(Box::new(Orphan { path: t.path.clone(), in_mntns, inherit: key }));
        f.file = FileDesc::Kind(super::Kind::Pty(Pty { index, master: false, flags: t.flags, state: (**st).clone(), orphan }));
    }
    pairs.len()
}

/// Restore plan check: a pair's session is a session of the tree whose
/// leader is in it, its foreground group a group of that session.
pub fn check_sessions(tree: &Tree) -> Result<(), String> {
    for t in &tree.tasks {
        for f in &t.fds {
            let FileDesc::Kind(super::Kind::Pty(p)) = &f.file else { continue };
            let st = &p.state;
            if st.sid == 0 {
                continue;
            }
            if !tree.tasks.iter().any(|x| x.pid == st.sid && x.sid == st.sid) {
                return Err(format!("/dev/pts/{} (fd {} of {}) is the controlling terminal of session {}, whose leader is not in the tree", p.index, f.fd, t.pid, st.sid));
            }
            if st.pgrp != 0 && !tree.tasks.iter().any(|x| x.pgid == st.pgrp && x.sid == st.sid) {
                return Err(format!("/dev/pts/{}: its foreground group {} is not a group of session {} in the tree", p.index, st.pgrp, st.sid));
            }
        }
    }
    Ok(())
}

/// The masters of the pairs whose session `sid` leads: (index, the
/// description's inherited fd, locked).
fn led_by<'t>(tree: &'t Tree, shared: &HashMap<u32, i32>, sid: i32) -> Vec<(u32, Option<i32>, &'t PtyState)> {
    let mut out: Vec<(u32, Option<i32>, &PtyState)> = Vec::new();
    for f in tree.tasks.iter().flat_map(|t| &t.fds) {
        if let FileDesc::Kind(super::Kind::Pty(p)) = &f.file {
            if (p.master || p.orphan.is_some()) && p.state.sid == sid && !out.iter().any(|(i, _, _)| *i == p.index) {
                out.push((p.index, shared.get(&f.desc).copied(), &p.state));
            }
        }
    }
    out
}

/// In the restore child of session leader `pid`, before it forks (the
/// pairs are the root's, inherited): the pair whose session it leads
/// becomes its controlling terminal.
pub fn take_ctty(tree: &Tree, shared: &HashMap<u32, i32>, pid: i32) -> Result<(), String> {
    for (index, fd, st) in led_by(tree, shared, pid) {
        let fd = fd.ok_or_else(|| format!("/dev/pts/{index}: its master is not made for the tree"))?;
        let m = tty::dup_number(fd).map_err(|e| format!("/dev/pts/{index}: master fd {fd}: {e}"))?;
        // (an orphan slave's description is the slave itself)
        let s = if is_slave(&m) { m } else { peer(&m, libc::O_RDWR, st.locked).map_err(|e| format!("opening /dev/pts/{index} (TIOCGPTPEER): {e}"))? };
        tty::make_controlling(s.as_fd()).map_err(|e| format!("/dev/pts/{index} as the controlling terminal of session {pid} (TIOCSCTTY): {e}"))?;
    }
    Ok(())
}

fn is_slave(fd: &OwnedFd) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::File::from(match fd.try_clone() {
        Ok(f) => f,
        Err(_) => return false,
    })
    .metadata()
    .is_ok_and(|m| slave_index(m.rdev()).is_some())
}

/// In the restore child of session leader `pid`, after its forks: the
/// foreground group of its terminal, once a process has made that group
/// (bounded wait).
pub fn set_foreground(tree: &Tree, pid: i32) -> Result<(), String> {
    let none = HashMap::new();
    for (index, _, st) in led_by(tree, &none, pid) {
        if st.pgrp == 0 {
            continue;
        }
        let t = tty::open(c"/dev/tty", libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC).map_err(|e| format!("/dev/tty of session {pid} (/dev/pts/{index}): {e}"))?;
        let t0 = std::time::Instant::now();
        loop {
            match tty::set_foreground(t.as_fd(), st.pgrp) {
                Ok(()) => break,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::ESRCH)) && t0.elapsed() < std::time::Duration::from_secs(10) => {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                Err(e) => return Err(format!("/dev/pts/{index}: foreground group {} (TIOCSPGRP): {e}", st.pgrp)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cc_packing_is_upstreams() {
        // upstream 4.2's first words for VINTR=^B, VQUIT=^\, VERASE=DEL, VKILL=^U, VEOF=^D, VMIN=1
        let mut cc = [0u8; 19];
        cc[..8].copy_from_slice(&[2, 0x1c, 0x7f, 0x15, 4, 0, 1, 0]);
        let w = cc_words(&cc);
        assert_eq!(&w[..2], &[360651778, 65540]);
        assert_eq!(w.len(), 19);
        assert_eq!(cc_bytes(&w), cc);
        // garbage past the 32 bytes (upstream leaves it) is ignored
        let mut g = w.clone();
        g[10] = 0xdead;
        assert_eq!(cc_bytes(&g), cc);
        assert_eq!(cc_bytes(&[]), [0; 19]);
    }

    #[test]
    fn slave_indices() {
        assert_eq!(slave_index(libc::makedev(136, 3)), Some(3));
        assert_eq!(slave_index(libc::makedev(137, 1)), Some(257));
        assert_eq!(slave_index(libc::makedev(5, 2)), None);
    }
}
