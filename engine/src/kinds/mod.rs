//! Resource kinds of files: one module per kind of object behind an fd,
//! holding its three halves against one image message, behind one small
//! trait ([`FileKind`]) the orchestration walks:
//!
//! - **collect** (dump): from outside the frozen task (the fd's link and
//!   stat, `/proc/PID/fdinfo/N`, kcmp, sock_diag, `pidfd_getfd` of the
//!   fd, ...) into a plain-Rust model value of the kind;
//! - **image**: the model <-> the `files.img` entry of upstream 4.2's type
//!   for it (plus any image beside files.img the kind needs, gathered in an
//!   [`ImageAcc`] and written once for the whole tree). Reading is untrusted
//!   input: every error names the file, the entry and the field;
//! - **restore**: in the restore child (a fork of the engine, before it is
//!   seized), in plain syscalls: create the object and hand it back; the
//!   phase puts it on its fd number, dups it onto the other fds of its open
//!   file description and sets FD_CLOEXEC. A kind that needs other fds in
//!   place first (epoll's targets) names them in [`FileKind::after`]; the
//!   [`FileKind::EARLY`] kinds (files opened by path, memfds, terminals,
//!   pipes, FIFOs) are made first, and the phase runs after the memfd
//!   inodes are made (`restore/files.rs`).
//!
//! The model holds every such fd as one `FileDesc::Kind(Kind)`; [`Kind`]
//! is the enum of the kinds below, generated with its dispatch by the
//! `kinds!` list at the end of this file: a new kind is a module and one
//! line there.

use crate::dump::files::FilesError;
use crate::images_io::ImagesError;
use crate::model::Fd;
use crate::sys::Pid;
use images_proto::magic::ImageKind;
use images_proto::pb;
use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::path::Path;

pub mod epoll;
pub mod eventfd;
pub mod fanotify;
pub mod fifo;
pub mod ghost;
pub mod inet;
pub mod inotify;
pub mod memfd;
pub mod netlink;
pub mod packet;
pub mod pidfd;
pub mod pipe;
pub mod pty;
pub mod reg;
pub mod signalfd;
pub mod sk_opts;
pub mod tcp_stream;
pub mod timerfd;
pub mod tty;
pub mod unix;

/// State a kind keeps across the fds of one walk (one fd table at dump,
/// one image set at read, one restore child): one value per type, made on
/// first use. For what is shared between fds (a socketpair's other end, a
/// sock_diag dump, an extra image read once).
#[derive(Default)]
pub struct Scratch(HashMap<TypeId, Box<dyn Any>>);

impl Scratch {
    /// The value of type `T`, `T::default()` the first time.
    pub fn get<T: Any + Default>(&mut self) -> &mut T {
        self.0.entry(TypeId::of::<T>()).or_insert_with(|| Box::new(T::default())).downcast_mut::<T>().expect("keyed by its own type")
    }
}

/// What the dump knows of one fd when it asks the kinds about it.
pub struct Collect<'a> {
    pub pid: Pid,
    pub fd: i32,
    /// `readlink /proc/PID/fd/N`: `anon_inode:[eventfd]`, `socket:[1234]`, ...
    pub link: &'a str,
    /// `/proc/PID/fdinfo/N`, whole.
    pub fdinfo: &'a str,
    /// File status flags (fdinfo `flags:`), O_CLOEXEC taken out.
    pub flags: u32,
    /// stat of `/proc/PID/fd/N`.
    pub meta: &'a std::fs::Metadata,
    /// The file offset (fdinfo `pos:`).
    pub pos: u64,
    /// What the command line says about files (`--ghost-limit`, ...).
    pub opts: &'a crate::dump::files::FileOpts,
    pub scratch: &'a mut Scratch,
}

impl Collect<'_> {
    /// Refuse this fd: `fd N of PID (KIND): why`.
    pub fn refuse(&self, kind: &'static str, why: impl Into<String>) -> FilesError {
        FilesError::Kind { pid: self.pid, fd: self.fd, kind, why: why.into() }
    }

    /// The value of fdinfo line `key:` (trimmed), or a refusal naming it.
    pub fn field(&self, kind: &'static str, key: &str) -> Result<&str, FilesError> {
        fdinfo_field(self.fdinfo, key).ok_or_else(|| self.refuse(kind, format!("no `{key}:` line in its fdinfo")))
    }
}

/// The value after `key:` on its line of an fdinfo text, trimmed.
pub fn fdinfo_field<'t>(fdinfo: &'t str, key: &str) -> Option<&'t str> {
    fdinfo.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(str::trim))
}

/// Images beside files.img that kinds write (one file per image kind,
/// gathered over the whole tree): entries, each optionally followed by a
/// payload, in the order pushed.
#[derive(Default)]
pub struct ImageAcc {
    images: BTreeMap<&'static str, (&'static ImageKind, Vec<Record>)>,
    /// files.img entries no fd refers to, by a key of the kind's (each
    /// once): a unix socket's peer outside the tree. Their ids are given
    /// when files.img is written.
    files: Vec<(u64, pb::FileEntry)>,
    /// (image file, key) of the entries pushed with [`ImageAcc::push_once`].
    once: std::collections::HashSet<(&'static str, u64)>,
    /// Images of one object each (`tcp-stream-INO.img`), by file name.
    named: BTreeMap<String, (&'static ImageKind, Vec<Record>)>,
    /// What kinds keep across the whole tree's images (a terminal's
    /// tty-info id, ...): [`ImageAcc::state`].
    state: Scratch,
}

/// One encoded entry and the bytes that follow it.
type Record = (Vec<u8>, Vec<u8>);

impl ImageAcc {
    /// A kind's state across the whole tree's images, `T::default()` first.
    pub fn state<T: Any + Default>(&mut self) -> &mut T {
        self.state.get::<T>()
    }

    /// Add a files.img entry that no fd refers to, once per `key`.
    pub fn push_file(&mut self, key: u64, e: pb::FileEntry) {
        if !self.files.iter().any(|(k, _)| *k == key) {
            self.files.push((key, e));
        }
    }

    /// The entries of [`ImageAcc::push_file`], in the order pushed.
    pub fn files(&self) -> impl Iterator<Item = &pb::FileEntry> {
        self.files.iter().map(|(_, e)| e)
    }

    /// Append an entry (and the bytes after it, empty for none) to image `kind`.
    pub fn push(&mut self, kind: &'static ImageKind, entry: &impl prost::Message, payload: Vec<u8>) {
        self.images.entry(kind.file).or_insert_with(|| (kind, Vec::new())).1.push((entry.encode_to_vec(), payload));
    }

    /// [`ImageAcc::push`], unless an entry of the same `key` was pushed to
    /// image `kind` before (what several fds share: a pty pair's info).
    pub fn push_once(&mut self, kind: &'static ImageKind, key: u64, entry: &impl prost::Message, payload: Vec<u8>) {
        if self.once.insert((kind.file, key)) {
            self.push(kind, entry, payload);
        }
    }

    /// Append an entry (and its payload) to the image of `kind` for
    /// object `arg` (its file name is `kind.file_name(arg)`).
    pub fn push_named(&mut self, kind: &'static ImageKind, arg: impl std::fmt::Display, entry: &impl prost::Message, payload: Vec<u8>) {
        self.named.entry(kind.file_name(arg)).or_insert_with(|| (kind, Vec::new())).1.push((entry.encode_to_vec(), payload));
    }

    /// Write every gathered image into `dir`.
    pub fn finish(&self, dir: &Path) -> Result<(), ImagesError> {
        for (name, (kind, recs)) in &self.named {
            let mut w = images_proto::image::ImageWriter::create(dir, name, kind)?;
            for (entry, payload) in recs {
                w.write_raw(entry)?;
                w.write_payload(payload)?;
            }
            w.finish()?;
        }
        for (kind, recs) in self.images.values() {
            let mut w = images_proto::image::ImageWriter::create(dir, &kind.file_name(""), kind)?;
            for (entry, payload) in recs {
                w.write_raw(entry)?;
                w.write_payload(payload)?;
            }
            w.finish()?;
        }
        Ok(())
    }
}

/// A `REG` files.img entry a kind has written after its own
/// ([`FileKind::extra_files`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraReg {
    pub path: String,
    pub flags: u32,
    pub pos: u64,
    pub mode: u32,
}

/// What reading one files.img entry of a kind has at hand.
pub struct Read<'a> {
    pub dir: &'a Path,
    /// Every entry of files.img (a kind may refer to others).
    pub files: &'a [pb::FileEntry],
    /// The fd being read (for errors).
    pub fd: u32,
    pub scratch: &'a mut Scratch,
}

impl Read<'_> {
    /// A malformed entry: `files.img: fd N, file ID (TYPE): field: what`.
    pub fn bad(&self, e: &pb::FileEntry, field: &str, what: impl std::fmt::Display) -> ImagesError {
        let ty = pb::FdTypes::try_from(e.r#type).map(|t| t.as_str_name()).unwrap_or("?");
        ImagesError::Bad { file: "files.img".to_string(), what: format!("fd {}, file {} ({ty}): {field}: {what}", self.fd, e.id) }
    }

    /// The kind's own member of `e`, or an error naming it.
    pub fn member<'m, T>(&self, e: &'m pb::FileEntry, name: &str, m: &'m Option<T>) -> Result<&'m T, ImagesError> {
        m.as_ref().ok_or_else(|| self.bad(e, name, "missing"))
    }
}

/// What the restore of one fd of a kind has at hand.
pub struct Restore<'a> {
    /// The fd number it will get.
    pub fd: i32,
    pub scratch: &'a mut Scratch,
    /// Every fd of the phase with its kind (objects that are built
    /// together, as the unix sockets of a process, see them all).
    pub all: &'a [(&'a Fd, &'a Kind)],
    /// Where the fds the kind names (by their numbers in the dumped
    /// process: [`FileKind::after`]) are in the table being built, when
    /// not on those numbers (the root making a description shared across
    /// the tree holds every such file on a number of its own).
    pub moved: Option<&'a HashMap<i32, i32>>,
    /// The restore child's plan (`--root`, `--shell-job`, ...).
    pub plan: &'a crate::restore::child::ChildPlan,
    /// The restoring shell's terminal, parked (`--shell-job`), if any.
    pub terminal: Option<i32>,
    /// Working fds of the table being built (see [`Work`]).
    pub work: &'a mut Work,
    /// A process's own table (not the descriptions the root makes for
    /// the tree).
    pub own_table: bool,
}

impl Restore<'_> {
    /// The fd that holds now what was fd `n` of the dumped process.
    pub fn fd_of(&self, n: i32) -> i32 {
        self.moved.and_then(|m| m.get(&n)).copied().unwrap_or(n)
    }
}

/// Working fds of one fd table being built (a pipe's two ends, a FIFO's
/// keeper): handed out from just below the service fds downwards (above
/// every restored fd: the engine leaves room, [`FileKind::WORKING_FDS`]
/// per fd), held for the whole table, and closed once it is built.
pub struct Work {
    next: i32,
    held: Vec<i32>,
}

impl Work {
    /// Working fds from `top - 1` down.
    pub fn new(top: i32) -> Work {
        Work { next: top, held: Vec::new() }
    }

    /// The next working fd number (the caller puts a file on it).
    pub fn take(&mut self) -> i32 {
        self.next -= 1;
        self.held.push(self.next);
        self.next
    }

    /// Close the working fds handed out, but those in `keep` (fds of the
    /// restored table).
    pub fn close(self, keep: &std::collections::HashSet<i32>) {
        for x in self.held {
            if !keep.contains(&x) {
                crate::sys::process::close(x);
            }
        }
    }
}

/// What writing the files.img entries of one fd has at hand
/// ([`FileKind::write_entries`]).
pub struct Write<'a> {
    /// files.img so far (ids count from 1: the next entry's is `len + 1`).
    pub files: &'a mut Vec<pb::FileEntry>,
    pub acc: &'a mut ImageAcc,
    /// The process's network namespace id (0: none recorded).
    pub net_ns: u32,
    /// The image directory (for an image of one object, written at once:
    /// a ghost file).
    pub dir: &'a Path,
}

impl Write<'_> {
    /// Append `e` to files.img with the next id (in the entry and its
    /// member); returns the id.
    pub fn push(&mut self, e: pb::FileEntry) -> u32 {
        crate::images_io::push_file(self.files, e)
    }
}

/// One kind of file: its model value is `Self`.
pub trait FileKind: Sized {
    /// Upstream's fd type (files.img and fdinfo `type`).
    const TYPE: pb::FdTypes;
    /// The kind in words, for logs and errors ("eventfd").
    const NAME: &'static str;

    /// Made in the first pass of the restore phase, before every kind
    /// that is not: what other kinds may name ([`FileKind::after`]) or
    /// expect open (regular files, pipes, FIFOs, terminals).
    const EARLY: bool = false;
    /// Working fds ([`Work`]) the restore of one fd of the kind may take.
    const WORKING_FDS: i32 = 0;

    /// Whether the fd of `link` and `meta` is of this kind (the first kind
    /// that claims an fd collects it).
    fn claims(link: &str, meta: &std::fs::Metadata) -> bool;
    /// [`FileKind::claims`] with the whole fd at hand, for a kind the link
    /// and stat do not tell (inet sockets: by the socket's protocol).
    fn claims_fd(cx: &Collect<'_>) -> bool {
        Self::claims(cx.link, cx.meta)
    }
    /// Dump: read the object behind the fd (the task is frozen).
    fn collect(cx: &mut Collect<'_>) -> Result<Self, FilesError>;
    /// Image: the files.img entry (id `id`, which the kind's member carries
    /// too), extra images into `acc`. A kind implements this or
    /// [`FileKind::write_entries`] (the default here refuses).
    fn write(&self, id: u32, acc: &mut ImageAcc) -> Result<pb::FileEntry, ImagesError> {
        let _ = acc;
        Err(ImagesError::Bad { file: "files.img".into(), what: format!("file {id} ({}): the kind writes its entries with write_entries", Self::NAME) })
    }
    /// Image: whether a files.img entry of type [`Self::TYPE`] is this
    /// kind's (two kinds share the `TTY` type: a pty pair of the tree and
    /// the `--shell-job` terminal). The first kind that reads it reads it.
    fn reads(e: &pb::FileEntry, cx: &mut Read<'_>) -> Result<bool, ImagesError> {
        let _ = cx;
        Ok(e.r#type == Self::TYPE as i32)
    }
    /// Image: the model from a files.img entry of type [`Self::TYPE`],
    /// checked (untrusted input).
    fn read(e: &pb::FileEntry, cx: &mut Read<'_>) -> Result<Self, ImagesError>;
    /// Image: append the fd's files.img entries through `cx` and return
    /// the id its fdinfo names. The default: [`FileKind::write`] (the
    /// socket's `ns_id` set from the process's), then
    /// [`FileKind::extra_files`]. A kind whose entry names others written
    /// before it (a FIFO's or terminal's `REG` entry), or that writes
    /// tree-wide images as it goes (remaps, ghosts, pipe data), writes
    /// them here.
    fn write_entries(&self, cx: &mut Write<'_>) -> Result<u32, ImagesError> {
        let mut e = self.write(cx.files.len() as u32 + 1, cx.acc)?;
        // a socket's network namespace, as upstream records it
        if let Some(u) = e.usk.as_mut() {
            u.ns_id = (cx.net_ns != 0).then_some(cx.net_ns);
        }
        let id = cx.push(e);
        for x in self.extra_files() {
            cx.push(crate::images_io::reg_entry(0, &x.path, x.flags, x.pos, x.mode, None));
        }
        Ok(id)
    }
    /// Restore: the kernel object several open file descriptions of the
    /// kind may be part of (a pipe: both ends; a FIFO), as a key of the
    /// kind's: when processes of a tree hold descriptions of one object,
    /// the root makes all of them, once, for every process to inherit.
    fn object(&self) -> Option<u64> {
        None
    }
    /// Image: `REG` entries to write right after the kind's own entry, in
    /// order (ids: the kind's + 1, + 2, ...), for a kind whose entry names
    /// files by id (a pty's path, `regf_id`; files in flight in a unix
    /// socket's queue, `scm.rights`).
    fn extra_files(&self) -> Vec<ExtraReg> {
        Vec::new()
    }
    /// Restore: fd numbers that must hold their restored files before this
    /// one is created (epoll: its targets). Fds of the EARLY kinds (files by path, memfds, ...) always do.
    fn after(&self) -> Vec<i32> {
        Vec::new()
    }
    /// Restore (in the restore child): create the object with its dumped
    /// state. The phase moves it onto `cx.fd`.
    fn restore(&self, cx: &mut Restore<'_>) -> Result<OwnedFd, String>;
}

/// The `fown_entry` of a file with no owner set (F_SETOWN), as upstream
/// writes it.
pub fn fown() -> pb::FownEntry {
    pb::FownEntry { uid: 0, euid: 0, signum: 0, pid_type: 0, pid: 0 }
}

/// F_SETFL the changeable status flags (O_NONBLOCK, O_ASYNC, O_APPEND,
/// O_DIRECT, O_NOATIME) of `flags` on `fd`, exactly.
pub fn set_status_flags(fd: &OwnedFd, flags: u32) -> Result<(), String> {
    let settable = libc::O_NONBLOCK | libc::O_ASYNC | libc::O_APPEND | libc::O_DIRECT | libc::O_NOATIME;
    crate::sys::process::fcntl_int(fd.as_raw_fd(), libc::F_SETFL, (flags as i32 & settable) as u64)
        .map(drop)
        .map_err(|e| format!("F_SETFL {flags:#o}: {e}"))
}

macro_rules! kinds {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// A file of one of the kinds of this module (model value).
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Kind {
            $($variant($ty),)*
        }

        impl Kind {
            /// Upstream's fd type.
            pub fn fd_type(&self) -> pb::FdTypes {
                match self { $(Kind::$variant(_) => <$ty as FileKind>::TYPE,)* }
            }

            /// The kind in words.
            pub fn name(&self) -> &'static str {
                match self { $(Kind::$variant(_) => <$ty as FileKind>::NAME,)* }
            }

            /// [`FileKind::write`] of the kind.
            pub fn write(&self, id: u32, acc: &mut ImageAcc) -> Result<pb::FileEntry, ImagesError> {
                match self { $(Kind::$variant(k) => k.write(id, acc),)* }
            }

            /// [`FileKind::write_entries`] of the kind.
            pub fn write_entries(&self, cx: &mut Write<'_>) -> Result<u32, ImagesError> {
                match self { $(Kind::$variant(k) => k.write_entries(cx),)* }
            }

            /// [`FileKind::EARLY`] of the kind.
            pub fn early(&self) -> bool {
                match self { $(Kind::$variant(_) => <$ty as FileKind>::EARLY,)* }
            }

            /// [`FileKind::WORKING_FDS`] of the kind.
            pub fn working_fds(&self) -> i32 {
                match self { $(Kind::$variant(_) => <$ty as FileKind>::WORKING_FDS,)* }
            }

            /// [`FileKind::object`] of the kind, with the kind's name.
            pub fn object(&self) -> Option<(&'static str, u64)> {
                match self { $(Kind::$variant(k) => k.object().map(|o| (<$ty as FileKind>::NAME, o)),)* }
            }

            /// [`FileKind::extra_files`] of the kind.
            pub fn extra_files(&self) -> Vec<ExtraReg> {
                match self { $(Kind::$variant(k) => k.extra_files(),)* }
            }

            /// [`FileKind::after`] of the kind.
            pub fn after(&self) -> Vec<i32> {
                match self { $(Kind::$variant(k) => k.after(),)* }
            }

            /// [`FileKind::restore`] of the kind.
            pub fn restore(&self, cx: &mut Restore<'_>) -> Result<OwnedFd, String> {
                match self { $(Kind::$variant(k) => k.restore(cx),)* }
            }
        }

        /// Dump: the kind that claims this fd collects it; `None` when no
        /// kind does (the caller refuses it by name).
        pub fn collect(cx: &mut Collect<'_>) -> Result<Option<Kind>, FilesError> {
            $(
                if <$ty as FileKind>::claims_fd(cx) {
                    crate::pr_debug!("fd {} of {} is {}", cx.fd, cx.pid, <$ty as FileKind>::NAME);
                    return <$ty as FileKind>::collect(cx).map(|k| Some(Kind::$variant(k)));
                }
            )*
            Ok(None)
        }

        /// Image: the kind of a files.img entry of one of these types;
        /// `None` for any other type.
        pub fn read(e: &pb::FileEntry, cx: &mut Read<'_>) -> Result<Option<Kind>, ImagesError> {
            $(
                if e.r#type == <$ty as FileKind>::TYPE as i32 && <$ty as FileKind>::reads(e, cx)? {
                    return <$ty as FileKind>::read(e, cx).map(|k| Some(Kind::$variant(k)));
                }
            )*
            Ok(None)
        }
    };
}

// The kinds, in the order they are asked to claim an fd at dump.
kinds! {
    // (terminals first, claimed by device number whatever the path: the
    // tty kind every terminal device but ptmx, the pty kind ptmx; the tty
    // kind reads the TTY entries that are no pair of the tree's, the pty
    // kind the rest)
    Tty(tty::Tty),
    Pty(pty::Pty),
    Pipe(pipe::Pipe),
    Fifo(fifo::Fifo),
    Eventfd(eventfd::Eventfd),
    Timerfd(timerfd::Timerfd),
    Signalfd(signalfd::Signalfd),
    Epoll(epoll::Epoll),
    Inotify(inotify::Inotify),
    Fanotify(fanotify::Fanotify),
    Pidfd(pidfd::Pidfd),
    // (inet first: the unix kind claims every socket the others leave)
    Inet(inet::Inet),
    Netlink(netlink::Netlink),
    Packet(packet::Packet),
    Unix(unix::UnixSk),
    Memfd(memfd::Memfd),
    // (last: every path the kinds above leave)
    Reg(reg::Reg),
}

/// Image check of a whole fd table (before anything is created): every fd
/// a kind's restore waits on ([`FileKind::after`]) is an fd of the table.
pub fn check_table(fds: &[Fd]) -> Result<(), String> {
    let have: std::collections::HashSet<i32> = fds.iter().map(|f| f.fd).collect();
    for f in fds {
        let crate::model::FileDesc::Kind(k) = &f.file;
        if let Some(d) = k.after().into_iter().find(|d| !have.contains(d) || *d == f.fd) {
            return Err(format!("fd {} ({}) needs fd {d}, which is not in the fd table", f.fd, k.name()));
        }
    }
    Ok(())
}

/// Restore phase of the kinds (in the restore child, after the memfds):
/// each of `fds` (all `FileDesc::Kind`, with their `Kind`) created once
/// its [`FileKind::after`] fds are in place, the [`FileKind::EARLY`] kinds
/// first (in fd order), moved onto its number, the other fds of its open
/// file description dup'ed from it, FD_CLOEXEC set. A dependency that no
/// fd of the phase provides must already be open, or the restore fails
/// naming it. `moved`: per description, where the fds its kind names are
/// now (see [`Restore::moved`]); none for a process's own table. `work`:
/// the table's working fds, closed by the caller once the table is built.
pub fn restore_phase(
    scratch: &mut Scratch,
    fds: &[(&Fd, &Kind)],
    moved: &HashMap<u32, HashMap<i32, i32>>,
    plan: &crate::restore::child::ChildPlan,
    terminal: Option<i32>,
    work: &mut Work,
    own_table: bool,
) -> Result<(), String> {
    use crate::sys::process as p;
    // desc -> the fd number that holds it
    let mut made: HashMap<u32, i32> = HashMap::new();
    let mut pending: Vec<(&Fd, &Kind)> = fds.to_vec();
    pending.sort_by_key(|(_, k)| !k.early());
    let is_open = |n: i32| p::fcntl_int(n, libc::F_GETFD, 0).is_ok();
    while !pending.is_empty() {
        let mut waiting: std::collections::HashSet<i32> = pending.iter().map(|(f, _)| f.fd).collect();
        let before = pending.len();
        let mut still = Vec::new();
        for (fd, kind) in pending {
            let n = fd.fd;
            if let Some(&first) = made.get(&fd.desc) {
                p::dup2(first, n).map_err(|e| format!("dup2 fd {first} -> {n} (shared {}): {e}", kind.name()))?;
            } else {
                let map = moved.get(&fd.desc);
                let deps: Vec<i32> = kind.after().into_iter().map(|d| map.and_then(|m| m.get(&d)).copied().unwrap_or(d)).collect();
                if deps.iter().any(|d| *d != n && waiting.contains(d)) {
                    still.push((fd, kind));
                    continue;
                }
                if let Some(d) = deps.iter().find(|&&d| d == n || !is_open(d)) {
                    return Err(format!("fd {n} ({}) needs fd {d}, which the image does not restore", kind.name()));
                }
                let obj = kind.restore(&mut Restore { fd: n, scratch: &mut *scratch, all: fds, moved: map, plan, terminal, work: &mut *work, own_table }).map_err(|e| format!("fd {n} ({}): {e}", kind.name()))?;
                let raw = obj.as_raw_fd();
                if raw != n {
                    p::dup2(raw, n).map_err(|e| format!("dup2 {raw} -> {n} ({}): {e}", kind.name()))?;
                    drop(obj);
                } else {
                    let _ = obj.into_raw_fd(); // it is fd n of the restored table now
                    // (made close-on-exec, as a dup of a working fd is)
                    if !fd.cloexec {
                        p::set_cloexec(n, false).map_err(|e| format!("FD_CLOEXEC fd {n}: {e}"))?;
                    }
                }
                made.insert(fd.desc, n);
            }
            // dup2 and a new object leave FD_CLOEXEC clear
            if fd.cloexec {
                p::set_cloexec(n, true).map_err(|e| format!("FD_CLOEXEC fd {n}: {e}"))?;
            }
            // (the early kinds, made first, are there for the others at once)
            if kind.early() {
                waiting.remove(&n);
            }
        }
        if still.len() == before {
            let names: Vec<String> = still.iter().map(|(f, k)| format!("fd {} ({}) after dumped fds {:?}", f.fd, k.name(), k.after())).collect();
            return Err(format!("fds that wait on each other: {}", names.join(", ")));
        }
        pending = still;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_fields() {
        let t = "pos:\t0\nflags:\t02004002\nmnt_id:\t16\nino:\t1038\neventfd-count:                5\neventfd-id: 3\n";
        assert_eq!(fdinfo_field(t, "eventfd-count"), Some("5"));
        assert_eq!(fdinfo_field(t, "flags"), Some("02004002"));
        assert_eq!(fdinfo_field(t, "eventfd"), None);
    }
}
