//! Unix sockets (AF_UNIX: stream, datagram, seqpacket): their connections,
//! names, queued data, shutdown state and socket options.
//!
//! **Collect** (dump), from outside the frozen task: one sock_diag dump of
//! the network namespace (`dump/unix_diag.rs`: type, state, name, bound
//! file, peer, queued clients of a listener, queue lengths, shutdown),
//! the options with getsockopt on a duplicate of the fd (`pidfd_getfd`),
//! and the receive queue read through that duplicate without consuming
//! it: SO_PEEK_OFF set to 0 and recvmsg(MSG_PEEK) walks the queue (each
//! datagram or seqpacket record whole, a stream in chunks), then the
//! process's own peek offset is put back. Refused by name: a passed fd in
//! flight (SCM_RIGHTS), a peer outside the process (without
//! `--ext-unix-sk`: not supported yet), a listener with connections
//! queued by sockets outside the process, data sent on a connection not
//! yet accepted, a relative bound path, a socket filter.
//!
//! A client whose connection is queued on a listener of the process (not
//! yet accepted) has for peer the kernel's embryo socket, which no fd
//! holds: as upstream, its image names the listener as its peer, and
//! restore connects it to the listener's name again.
//!
//! **Image**: a files.img `UNIXSK` entry (`unix_sk_entry`) per socket,
//! the receive queue in `sk-queues.img` (`sk_packet_entry` {`id_for`: the
//! receiving socket's file id, `length`} + bytes, one entry per datagram
//! or record), as upstream 4.2 writes them (`backlog` is the kernel's
//! write-queue figure for a connected socket, the listen backlog for a
//! listener, as upstream records it).
//!
//! **Restore**, in the restore child, all the process's unix sockets at
//! once on the first one asked for (they depend on each other): a pair of
//! sockets that are each other's peer is a socketpair; a stream socket
//! whose peer had closed is a socketpair whose other end goes after its
//! data is queued (the reader sees the data, then EOF); names bound (a
//! stale socket file at a path unlinked first), listeners listening, other
//! connected sockets connected to their peer's name; the queues refilled
//! by sending each message from the peer (a named unconnected datagram
//! socket's from a temporary socket), the sender's send buffer raised for
//! it; bound paths unlinked at dump unlinked again; then the options, the
//! shutdown state and the status flags. A stream socket that is connected
//! (an accepted one, or a client) does not get its name back: only its
//! peer name shows it.

use super::sk_opts::{SkOpts, Sizes};
use super::{Collect, FileKind, ImageAcc, Read, Restore};
use crate::dump::files::FilesError;
use crate::dump::unix_diag::{self, UnixDiag, ST_CLOSE, ST_ESTABLISHED, ST_LISTEN};
use crate::images_io::ImagesError;
use crate::sys::process as p;
use crate::sys::sock;
use crate::sys::Pid;
use images_proto::magic as mg;
use images_proto::pb;
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// `uflags` bit of an entry that describes a socket outside the dump.
pub const USK_EXTERN: u32 = 1;

/// `--ext-unix-sk` of the running dump (the command line sets it before
/// collecting; the collect half of a kind sees no options otherwise).
static EXTERNAL_PEERS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--ext-unix-sk`: a datagram socket connected to a named socket outside
/// the dumped tree is dumped (the peer as an external entry, as upstream)
/// and connected to that name again on restore.
pub fn allow_external_peers(on: bool) {
    EXTERNAL_PEERS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Longest `sun_path`.
const NAME_MAX: usize = 108;

/// Peek buffer: a stream is read in chunks of this; a larger datagram in
/// several peeks.
const PEEK_CHUNK: usize = 256 << 10;

/// A queue larger than this is refused (it is held in memory).
const QUEUE_MAX: usize = 1 << 30;

/// One unix socket (model value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixSk {
    pub ino: u32,
    /// SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET.
    pub ty: u8,
    /// TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN.
    pub state: u8,
    /// File status flags (O_RDWR, O_NONBLOCK, ...; no O_CLOEXEC).
    pub flags: u32,
    pub backlog: u32,
    /// The peer's inode (a queued client: its listener's); 0 for none.
    pub peer: u32,
    /// Bound name: a path, or `\0` + an abstract name; empty if unbound.
    pub name: Vec<u8>,
    /// The bound path was unlinked (or replaced) since.
    pub deleted: bool,
    /// (mode, uid, gid) of the bound socket file.
    pub perms: Option<(u32, u32, u32)>,
    /// RCV_SHUTDOWN 1 | SEND_SHUTDOWN 2.
    pub shutdown: u8,
    pub uflags: u32,
    pub opts: SkOpts,
    /// The receive queue: datagrams or records one each, a stream's bytes
    /// in chunks.
    pub queue: Vec<Vec<u8>>,
    /// Files passed in flight (SCM_RIGHTS) with queued messages: (index
    /// of the message in `queue`, the files, in order).
    pub passed: Vec<(usize, Vec<Passed>)>,
    /// `--ext-unix-sk`: the peer is a datagram socket outside the dump,
    /// bound to this name (an external entry in files.img).
    pub ext_peer: Option<Vec<u8>>,
}

/// A regular file in flight: passed (SCM_RIGHTS) with a queued message,
/// not received yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed {
    pub path: String,
    /// File status flags and access mode (no O_CLOEXEC).
    pub flags: u32,
    pub pos: u64,
    pub mode: u32,
}

/// The file behind `f`, an fd the kernel passed to the engine with a
/// peeked message: a regular file with a path, else refused by name.
fn passed_file(f: &OwnedFd) -> Result<Passed, String> {
    use std::os::unix::fs::MetadataExt;
    let n = std::os::fd::AsRawFd::as_raw_fd(f);
    let link = std::fs::read_link(format!("/proc/self/fd/{n}")).map_err(|e| format!("a file in flight: readlink: {e}"))?;
    let link = link.to_str().ok_or_else(|| format!("a file in flight with a non-UTF-8 path {link:?}"))?.to_string();
    let meta = std::fs::metadata(format!("/proc/self/fd/{n}")).map_err(|e| format!("{link} in flight: stat: {e}"))?;
    if !meta.is_file() || !link.starts_with('/') || link.ends_with(" (deleted)") {
        return Err(format!("{link} passed in flight (SCM_RIGHTS): only regular files with a path are supported in flight yet"));
    }
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{n}")).map_err(|e| format!("{link} in flight: fdinfo: {e}"))?;
    let flags = super::fdinfo_field(&info, "flags").and_then(|v| u32::from_str_radix(v, 8).ok()).ok_or_else(|| format!("{link} in flight: no flags in its fdinfo"))?;
    let pos = super::fdinfo_field(&info, "pos").and_then(|v| v.parse().ok()).ok_or_else(|| format!("{link} in flight: no pos in its fdinfo"))?;
    Ok(Passed { path: link, flags: flags & !(libc::O_CLOEXEC as u32), pos, mode: meta.mode() })
}

/// A new open of a file in flight, at its offset, for the restore to
/// pass it again.
fn open_passed(p: &Passed) -> Result<OwnedFd, String> {
    use std::io::Seek;
    use std::os::unix::fs::OpenOptionsExt;
    let acc = p.flags as i32 & libc::O_ACCMODE;
    let mut f = std::fs::OpenOptions::new()
        .read(acc != libc::O_WRONLY)
        .write(acc != libc::O_RDONLY)
        .custom_flags(p.flags as i32 & !(libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL) | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&p.path)
        .map_err(|e| format!("the file {} in flight: {e}", p.path))?;
    f.seek(std::io::SeekFrom::Start(p.pos)).map_err(|e| format!("the file {} in flight: seek to {}: {e}", p.path, p.pos))?;
    Ok(OwnedFd::from(f))
}

fn type_name(ty: u8) -> &'static str {
    match i32::from(ty) {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "datagram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "unknown-type",
    }
}

/// A name for messages: the path, `@abstract`, or `(unbound)`.
pub fn show_name(name: &[u8]) -> String {
    match name.split_first() {
        None => "(unbound)".to_string(),
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        Some(_) => path_of(name).display().to_string(),
    }
}

impl UnixSk {
    fn what(&self) -> String {
        format!("unix {} socket:[{}] {}", type_name(self.ty), self.ino, show_name(&self.name))
    }

    fn is_path(&self) -> bool {
        self.name.first().is_some_and(|&c| c != 0)
    }

    /// The bound path, for file operations (the name without the NUL the
    /// kernel keeps after it).
    fn path(&self) -> &std::path::Path {
        path_of(&self.name)
    }
}

/// A path name as a path (trailing NULs cut).
fn path_of(name: &[u8]) -> &std::path::Path {
    use std::os::unix::ffi::OsStrExt;
    let end = name.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
    std::path::Path::new(std::ffi::OsStr::from_bytes(&name[..end]))
}

/// What collect keeps across one fd table.
#[derive(Default)]
struct DumpScratch {
    /// sock_diag of the namespace, read on first use.
    diag: Option<HashMap<u32, UnixDiag>>,
    /// Socket inode -> fd, for every socket fd of the process.
    held: Option<HashMap<u32, i32>>,
    pidfd: Option<(Pid, OwnedFd)>,
}

/// The socket fds of `pid`: inode -> (lowest) fd.
fn held_sockets(pid: Pid) -> std::io::Result<HashMap<u32, i32>> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = HashMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let e = e?;
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(link) = std::fs::read_link(e.path()) else { continue };
        let link = link.as_os_str().as_bytes();
        if let Some(ino) = link.strip_prefix(b"socket:[").and_then(|s| s.strip_suffix(b"]")) {
            if let Some(ino) = std::str::from_utf8(ino).ok().and_then(|s| s.parse::<u32>().ok()) {
                let slot = out.entry(ino).or_insert(fd);
                *slot = (*slot).min(fd);
            }
        }
    }
    Ok(out)
}

/// Dump, after every fd table of the tree is read: each unix socket's peer
/// is a unix socket of the tree, or (with `--ext-unix-sk`) a named
/// datagram socket outside. Across processes only a connected pair (each
/// the other's peer) is supported: restore makes both ends in the root,
/// for the processes to inherit. Refusals name the pid, the fd and both
/// sockets.
pub fn check_tree(tables: &mut [(Pid, &mut Vec<crate::model::Fd>)]) -> Result<(), FilesError> {
    use crate::model::FileDesc;
    // ino -> (pid, peer)
    let mut where_: HashMap<u32, (Pid, u32)> = HashMap::new();
    for (pid, fds) in tables.iter() {
        for f in fds.iter() {
            if let FileDesc::Kind(super::Kind::Unix(u)) = &f.file {
                where_.entry(u.ino).or_insert((*pid, u.peer));
            }
        }
    }
    for (pid, fds) in tables.iter_mut() {
        let pid = *pid;
        for f in fds.iter_mut() {
            let FileDesc::Kind(super::Kind::Unix(u)) = &mut f.file else { continue };
            if u.peer == 0 {
                continue;
            }
            let refuse = |why: String| FilesError::Kind { pid, fd: f.fd, kind: UnixSk::NAME, why: format!("socket:[{}] {}: {why}", u.ino, show_name(&u.name)) };
            match where_.get(&u.peer) {
                Some(&(ppid, ppeer)) => {
                    u.ext_peer = None;
                    if ppid != pid && ppeer != u.ino {
                        return Err(refuse(format!(
                            "its peer socket:[{}] is held by process {ppid} and is not connected back to it: across processes only a connected pair is supported yet",
                            u.peer
                        )));
                    }
                }
                None if u.ext_peer.is_some() => {
                    if !u.queue.is_empty() && u.name.is_empty() {
                        return Err(refuse(format!(
                            "{} datagrams queued on an unnamed socket whose peer is outside the dumped tree: no sender could put them back",
                            u.queue.len()
                        )));
                    }
                }
                None if i32::from(u.ty) == libc::SOCK_DGRAM => {
                    return Err(refuse(format!(
                        "its peer socket:[{}] is not open in the dumped tree: use --ext-unix-sk to dump it and connect it again on restore (a named datagram peer)",
                        u.peer
                    )));
                }
                None => {
                    return Err(refuse(format!(
                        "its peer socket:[{}] is not open in the dumped tree: a {} connection with one end outside is not supported (as upstream, even with --ext-unix-sk)",
                        u.peer,
                        type_name(u.ty)
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The object a unix socket's fd stands for when the tree's processes
/// share what they hold: a connected pair is one (both ends made
/// together), any other socket its own. `None`: not a connected socket.
pub fn pair_key(u: &UnixSk) -> Option<(u32, u32)> {
    (u.peer != 0 && u.ext_peer.is_none()).then(|| (u.ino.min(u.peer), u.ino.max(u.peer)))
}

/// (mode, uid, gid) a socket file bound by `pid` gets: S_IFSOCK with
/// 0777 less its umask, its fsuid and fsgid (`/proc/PID/status`).
fn bind_perms(pid: Pid) -> std::io::Result<(u32, u32, u32)> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |k: &str| st.lines().find_map(|l| l.strip_prefix(k)).map(str::trim).unwrap_or("");
    let umask = u32::from_str_radix(field("Umask:"), 8).unwrap_or(0o022);
    // Uid:/Gid: real, effective, saved, fs
    let fs = |k: &str| field(k).split_whitespace().nth(3).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok((libc::S_IFSOCK | (0o777 & !umask), fs("Uid:"), fs("Gid:")))
}

/// The receive queue of `s` (type `ty`), not consumed: SO_PEEK_OFF 0,
/// recvmsg(MSG_PEEK) until nothing is left, the old peek offset put back.
/// `stream_len` is what sock_diag counted for a stream (cross-check).
type Queue = (Vec<Vec<u8>>, Vec<(usize, Vec<Passed>)>);

fn read_queue(s: BorrowedFd<'_>, ty: u8, shutdown: u8, stream_len: u32) -> Result<Queue, String> {
    let old = sock::get_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF).map_err(|e| format!("getsockopt SO_PEEK_OFF: {e}"))?;
    sock::set_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0).map_err(|e| format!("setsockopt SO_PEEK_OFF: {e}"))?;
    let r = peek_all(s, ty, shutdown, stream_len);
    let back = sock::set_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old).map_err(|e| format!("putting SO_PEEK_OFF back to {old}: {e}"));
    let q = r?;
    back?;
    Ok(q)
}

fn peek_all(s: BorrowedFd<'_>, ty: u8, shutdown: u8, stream_len: u32) -> Result<Queue, String> {
    let stream = i32::from(ty) == libc::SOCK_STREAM;
    let mut buf = vec![0u8; PEEK_CHUNK];
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut passed: Vec<(usize, Vec<Passed>)> = Vec::new();
    let mut total = 0usize;
    // a datagram or record bigger than the buffer comes in several peeks
    // (the peek offset moves by what was copied); `partial` collects it
    let mut partial: Option<Vec<u8>> = None;
    loop {
        if stream && total >= stream_len as usize {
            break;
        }
        let Some(pk) = sock::peek(s, &mut buf).map_err(|e| format!("recvmsg(MSG_PEEK): {e}"))? else { break };
        if pk.ctrunc {
            return Err("more fds in flight with one message (SCM_RIGHTS) than a peek takes (64): not supported".to_string());
        }
        if !pk.fds.is_empty() {
            // with the message (or stream chunk) that starts here
            let files = pk.fds.iter().map(passed_file).collect::<Result<Vec<_>, _>>()?;
            passed.push((out.len(), files));
        }
        total = total.saturating_add(pk.len);
        if total > QUEUE_MAX {
            return Err(format!("more than {QUEUE_MAX} bytes queued"));
        }
        let data = &buf[..pk.len];
        if stream {
            if pk.len == 0 {
                break; // end of stream (the peer shut down)
            }
            out.push(data.to_vec());
            continue;
        }
        if pk.len == 0 && partial.is_none() && shutdown & 1 != 0 {
            // empty queue of a socket shut down for reading reads as EOF
            break;
        }
        let mut msg = partial.take().unwrap_or_default();
        msg.extend_from_slice(data);
        if pk.trunc {
            partial = Some(msg);
        } else {
            out.push(msg);
        }
    }
    if let Some(m) = partial {
        return Err(format!("the queue ended inside a datagram ({} bytes read of it)", m.len()));
    }
    if stream && total != stream_len as usize {
        return Err(format!("sock_diag counted {stream_len} queued bytes but {total} were read"));
    }
    Ok((out, passed))
}

impl FileKind for UnixSk {
    const TYPE: pb::FdTypes = pb::FdTypes::Unixsk;
    const NAME: &'static str = "unix socket";

    fn claims(link: &str, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::FileTypeExt;
        link.starts_with("socket:[") && meta.file_type().is_socket()
    }

    fn collect(cx: &mut Collect<'_>) -> Result<Self, FilesError> {
        use std::os::unix::fs::MetadataExt;
        const N: &str = UnixSk::NAME;
        let ino = u32::try_from(cx.meta.ino()).map_err(|_| cx.refuse(N, format!("inode {} does not fit 32 bits", cx.meta.ino())))?;
        let (pid, fd) = (cx.pid, cx.fd);
        let st = cx.scratch.get::<DumpScratch>();
        if st.diag.is_none() {
            st.diag = Some(unix_diag::all_unix().map_err(|e| FilesError::Kind { pid, fd, kind: N, why: format!("sock_diag of unix sockets: {e}") })?);
        }
        if st.held.is_none() {
            st.held = Some(held_sockets(pid).map_err(|e| FilesError::Io { pid, fd, source: e })?);
        }
        let diag = st.diag.as_ref().unwrap_or_else(|| unreachable!());
        let held = st.held.as_ref().unwrap_or_else(|| unreachable!());
        let Some(d) = diag.get(&ino).cloned() else {
            // not AF_UNIX (sock_diag of AF_UNIX lists them all), or another netns
            return Err(FilesError::Unsupported {
                pid,
                fd,
                what: format!("a socket of another family than AF_UNIX (socket:[{ino}]), or a unix socket of another network namespace"),
            });
        };
        let refuse = |why: String| FilesError::Kind { pid, fd, kind: N, why: format!("socket:[{ino}] {}: {why}", show_name(d.name.as_deref().unwrap_or_default())) };
        let ty = i32::from(d.ty);
        if ![libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&ty) {
            return Err(refuse(format!("socket type {ty} is not supported")));
        }
        let name = d.name.clone().unwrap_or_default();
        if !name.is_empty() && name[0] != 0 && name[0] != b'/' {
            return Err(refuse("bound to a relative path: not supported yet".to_string()));
        }
        let mut peer = d.peer;
        let mut ext_peer = None;
        // a client whose connection is queued on a listener of the process
        // (not accepted yet): its kernel peer is the embryo socket, which
        // has no inode yet; the listener names it among its queued clients
        if let Some(l) = diag.values().find(|l| l.state == ST_LISTEN && held.contains_key(&l.ino) && l.icons.contains(&ino)) {
            if d.rqlen.1 != 0 {
                return Err(refuse(format!(
                    "{} bytes sent on its connection to listening socket:[{}], not accepted yet: not supported",
                    d.rqlen.1, l.ino
                )));
            }
            peer = l.ino;
        } else if let Some(l) = diag.values().find(|l| l.state == ST_LISTEN && l.icons.contains(&ino)) {
            return Err(refuse(format!(
                "its connection is queued (not accepted) on listening socket:[{}] {}, which is not open in process {pid}: a peer outside the dumped process is not supported yet",
                l.ino,
                show_name(l.name.as_deref().unwrap_or_default())
            )));
        } else if peer != 0 && !held.contains_key(&peer) {
            // another process of the tree may hold it: `check_tree` decides
            // once every fd table is read; a datagram peer outside is
            // external with --ext-unix-sk (until the tree holds it)
            let pname = diag.get(&peer).and_then(|p| p.name.clone()).unwrap_or_default();
            if ty == libc::SOCK_DGRAM && EXTERNAL_PEERS.load(std::sync::atomic::Ordering::Relaxed) && !pname.is_empty() {
                ext_peer = Some(pname);
            }
        }
        if d.state == ST_LISTEN {
            if let Some(c) = d.icons.iter().find(|c| **c == 0 || !held.contains_key(c)) {
                return Err(refuse(format!(
                    "listening, with a connection queued (not accepted) from socket:[{c}] that is not open in process {pid}: not supported"
                )));
            }
        }
        let (deleted, perms) = if name.first().is_some_and(|&c| c == b'/') {
            match std::fs::symlink_metadata(path_of(&name)) {
                Ok(m) if d.vfs.is_none_or(|(vino, _)| u64::from(vino) == m.ino()) => (false, Some((m.mode(), m.uid(), m.gid()))),
                // the file is gone: the mode and owner a bind by the
                // process gives it (as upstream records them)
                _ => (true, Some(bind_perms(pid).map_err(|e| FilesError::Io { pid, fd, source: e })?)),
            }
        } else {
            (false, None)
        };
        // the options and the queue, through a duplicate of the fd
        let st = cx.scratch.get::<DumpScratch>();
        if st.pidfd.as_ref().is_none_or(|(p, _)| *p != pid) {
            let pfd = p::pidfd_open(pid).map_err(|e| FilesError::Io { pid, fd, source: e })?;
            st.pidfd = Some((pid, pfd));
        }
        let pidfd = &st.pidfd.as_ref().unwrap_or_else(|| unreachable!()).1;
        let dup = p::pidfd_getfd(pidfd, fd).map_err(|e| FilesError::Io { pid, fd, source: e })?;
        let opts = SkOpts::read(dup.as_fd()).map_err(|e| refuse(format!("reading its options: {e}")))?;
        if sock::get_int(dup.as_fd(), libc::SOL_SOCKET, libc::SO_GET_FILTER).unwrap_or(0) > 0 {
            return Err(refuse("a socket filter (SO_ATTACH_FILTER) is attached: not supported yet".to_string()));
        }
        let (queue, passed) = if d.state == ST_LISTEN || (ty != libc::SOCK_DGRAM && d.rqlen.0 == 0) {
            (Vec::new(), Vec::new())
        } else {
            read_queue(dup.as_fd(), d.ty, d.shutdown, d.rqlen.0).map_err(|e| refuse(format!("reading its receive queue: {e}")))?
        };

        let bytes: usize = queue.iter().map(Vec::len).sum();
        crate::pr_debug!(
            "fd {fd} of {pid}: unix {} socket:[{ino}] state {} peer {peer} name {} shutdown {}: {} queued messages, {bytes} bytes",
            type_name(d.ty), d.state, show_name(&name), d.shutdown, queue.len()
        );
        Ok(UnixSk {
            ino,
            ty: d.ty,
            state: d.state,
            flags: cx.flags,
            backlog: d.rqlen.1,
            peer,
            name,
            deleted,
            perms,
            shutdown: d.shutdown & 3,
            uflags: 0,
            opts,
            queue,
            passed,
            ext_peer,
        })
    }

    fn extra_files(&self) -> Vec<super::ExtraReg> {
        self.passed.iter().flat_map(|(_, v)| v).map(|p| super::ExtraReg { path: p.path.clone(), flags: p.flags, pos: p.pos, mode: p.mode }).collect()
    }

    fn write(&self, id: u32, acc: &mut ImageAcc) -> Result<pb::FileEntry, ImagesError> {
        let opts = self.opts.to_image();
        // the files in flight are the REG entries right after this one
        let mut next = id + 1;
        for (i, m) in self.queue.iter().enumerate() {
            let length = u32::try_from(m.len()).map_err(|_| ImagesError::Bad {
                file: "sk-queues.img".to_string(),
                what: format!("{}: a message of {} bytes", self.what(), m.len()),
            })?;
            let mut scm = Vec::new();
            if let Some((_, files)) = self.passed.iter().find(|(at, _)| *at == i) {
                let rights: Vec<u32> = (next..next + files.len() as u32).collect();
                next += files.len() as u32;
                scm.push(pb::ScmEntry { r#type: libc::SCM_RIGHTS as u32, rights });
            }
            acc.push(&mg::SK_QUEUES, &pb::SkPacketEntry { id_for: id, length, scm }, m.clone());
        }
        if let Some(name) = &self.ext_peer {
            // as upstream writes an external peer: a datagram "listener"
            // with its name, no options
            let ext = pb::UnixSkEntry {
                id: 0,
                ino: self.peer,
                r#type: libc::SOCK_DGRAM as u32,
                state: u32::from(ST_LISTEN),
                flags: 0,
                uflags: USK_EXTERN,
                backlog: 0,
                peer: 0,
                fown: super::fown(),
                opts: pb::SkOptsEntry::default(),
                name: name.clone(),
                ..Default::default()
            };
            acc.push_file(u64::from(self.peer), pb::FileEntry { r#type: Self::TYPE as i32, id: 0, usk: Some(ext), ..Default::default() });
        }
        Ok(pb::FileEntry {
            r#type: Self::TYPE as i32,
            id,
            usk: Some(pb::UnixSkEntry {
                id,
                ino: self.ino,
                r#type: u32::from(self.ty),
                state: u32::from(self.state),
                flags: self.flags,
                uflags: self.uflags,
                backlog: self.backlog,
                peer: self.peer,
                fown: super::fown(),
                opts,
                name: self.name.clone(),
                shutdown: (self.shutdown != 0).then_some(i32::from(self.shutdown)),
                file_perms: self.perms.map(|(mode, uid, gid)| pb::FilePermsEntry { mode, uid, gid }),
                name_dir: None,
                deleted: self.deleted.then_some(true),
                ns_id: None,
                mnt_id: None,
            }),
            ..Default::default()
        })
    }

    fn read(e: &pb::FileEntry, cx: &mut Read<'_>) -> Result<Self, ImagesError> {
        let u = cx.member(e, "usk", &e.usk)?;
        let ty = u8::try_from(u.r#type).ok().filter(|t| [libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&i32::from(*t)));
        let ty = ty.ok_or_else(|| cx.bad(e, "usk.type", format!("{} is not a unix socket type (stream 1, dgram 2, seqpacket 5)", u.r#type)))?;
        let state = u8::try_from(u.state).ok().filter(|s| [ST_ESTABLISHED, ST_CLOSE, ST_LISTEN].contains(s));
        let state = state.ok_or_else(|| cx.bad(e, "usk.state", format!("{} is not a state a unix socket has (1, 7, 10)", u.state)))?;
        if u.name.len() > NAME_MAX {
            return Err(cx.bad(e, "usk.name", format!("{} bytes, longer than sun_path ({NAME_MAX})", u.name.len())));
        }
        if u.name.first().is_some_and(|&c| c != 0 && c != b'/') {
            return Err(cx.bad(e, "usk.name", format!("{}: a relative path is not supported yet", show_name(&u.name))));
        }
        if u.uflags & USK_EXTERN != 0 {
            return Err(cx.bad(e, "usk.uflags", "an external socket (USK_EXTERN) held by an fd"));
        }
        if state == ST_LISTEN && (i32::from(ty) == libc::SOCK_DGRAM || u.name.is_empty()) {
            return Err(cx.bad(e, "usk.state", format!("a listening {} socket {}", type_name(ty), show_name(&u.name))));
        }
        let shutdown = match u.shutdown.unwrap_or(0) {
            s @ 0..=3 => s as u8,
            s => return Err(cx.bad(e, "usk.shutdown", format!("{s} is not a shutdown mode (0..3)"))),
        };
        let mut ext_peer = None;
        if u.peer != 0 {
            let p = cx.files.iter().filter_map(|f| f.usk.as_ref()).find(|p| p.ino == u.peer);
            let p = p.ok_or_else(|| cx.bad(e, "usk.peer", format!("socket:[{}] is in no UNIXSK entry of files.img", u.peer)))?;
            if p.r#type != u.r#type {
                return Err(cx.bad(e, "usk.peer", format!("socket:[{}] is of type {}, not {}", u.peer, p.r#type, u.r#type)));
            }
            if p.ino == u.ino {
                return Err(cx.bad(e, "usk.peer", "the socket is its own peer"));
            }
            if p.uflags & USK_EXTERN != 0 {
                if p.name.is_empty() || p.name.len() > NAME_MAX || u.r#type != libc::SOCK_DGRAM as u32 {
                    return Err(cx.bad(e, "usk.peer", format!("external socket:[{}]: only a named datagram peer can be connected to again", u.peer)));
                }
                ext_peer = Some(p.name.clone());
            }
        }
        let (queue, passed) = queue_of(cx, e.id)?;
        if !queue.is_empty() && state == ST_LISTEN {
            return Err(ImagesError::Bad { file: "sk-queues.img".to_string(), what: format!("data queued on listening socket:[{}] (file {})", u.ino, e.id) });
        }
        let opts = SkOpts::from_image(&u.opts).map_err(|(f, why)| cx.bad(e, &format!("usk.{f}"), why))?;
        Ok(UnixSk {
            ino: u.ino,
            ty,
            state,
            flags: u.flags,
            backlog: u.backlog,
            peer: u.peer,
            name: u.name.clone(),
            deleted: u.deleted.unwrap_or(false),
            perms: u.file_perms.as_ref().map(|f| (f.mode, f.uid, f.gid)),
            shutdown,
            uflags: u.uflags,
            opts,
            queue,
            passed,
            ext_peer,
        })
    }

    fn restore(&self, cx: &mut Restore<'_>) -> Result<OwnedFd, String> {
        let st = cx.scratch.get::<RestoreScratch>();
        if !st.built {
            st.built = true;
            let socks: Vec<&UnixSk> = cx
                .all
                .iter()
                .filter_map(|(_, k)| match k {
                    super::Kind::Unix(u) => Some(u),
                    _ => None,
                })
                .collect();
            // out of the way of the fds still to be placed
            let top = cx.all.iter().map(|(f, _)| f.fd).max().unwrap_or(0).saturating_add(1);
            for (ino, s) in build_all(&socks)? {
                let high = sock::dup_above(s.as_fd(), top).map_err(ioerr(format!("moving socket:[{ino}] above fd {top}")))?;
                st.made.insert(ino, high);
            }
        }
        st.made.remove(&self.ino).ok_or_else(|| format!("{} was restored already for another fd", self.what()))
    }
}

/// The queued messages of file `id` from sk-queues.img (read once per
/// image set, every entry checked against files.img).
fn queue_of(cx: &mut Read<'_>, id: u32) -> Result<Queue, ImagesError> {
    let (dir, files) = (cx.dir, cx.files);
    let files_all = files;
    let q = cx.scratch.get::<QueueScratch>();
    if !q.loaded {
        q.loaded = true;
        let file = mg::SK_QUEUES.file_name("");
        if dir.join(&file).exists() {
            let ids: HashSet<u32> = files.iter().filter(|f| f.usk.is_some()).map(|f| f.id).collect();
            let mut r = images_proto::image::ImageReader::open(dir, &file, &mg::SK_QUEUES)?;
            let mut i = 0usize;
            while let Some(e) = r.next_entry::<pb::SkPacketEntry>()? {
                let bad = |what: String| ImagesError::Bad { file: file.clone(), what: format!("entry {i}: {what}") };
                if !ids.contains(&e.id_for) {
                    return Err(bad(format!("id_for {} names no unix socket of files.img", e.id_for)));
                }
                let mut files = Vec::new();
                for (k, scm) in e.scm.iter().enumerate() {
                    if scm.r#type != libc::SCM_RIGHTS as u32 {
                        return Err(bad(format!("scm[{k}]: ancillary data of type {} (only SCM_RIGHTS is supported)", scm.r#type)));
                    }
                    for &fid in &scm.rights {
                        let f = files_all.iter().find(|f| f.id == fid).ok_or_else(|| bad(format!("scm[{k}].rights: file {fid} is not in files.img")))?;
                        let reg = f.reg.as_ref().ok_or_else(|| {
                            let ty = pb::FdTypes::try_from(f.r#type).map(|t| t.as_str_name()).unwrap_or("?");
                            bad(format!("scm[{k}].rights: file {fid} in flight is a {ty}: only regular files are supported in flight yet"))
                        })?;
                        files.push(Passed { path: reg.name.clone(), flags: reg.flags, pos: reg.pos, mode: reg.mode.unwrap_or(libc::S_IFREG | 0o644) });
                    }
                }
                if files.len() > 253 {
                    return Err(bad(format!("{} files in flight with one message, more than SCM_MAX_FD (253)", files.len())));
                }
                let data = r.read_payload(u64::from(e.length))?;
                let all = q.by_id.entry(e.id_for).or_default();
                if !files.is_empty() {
                    q.passed_by_id.entry(e.id_for).or_default().push((all.len(), files));
                }
                all.push(data);
                i += 1;
            }
        }
    }
    Ok((q.by_id.remove(&id).unwrap_or_default(), q.passed_by_id.remove(&id).unwrap_or_default()))
}

#[derive(Default)]
struct QueueScratch {
    loaded: bool,
    by_id: HashMap<u32, Vec<Vec<u8>>>,
    passed_by_id: HashMap<u32, Vec<(usize, Vec<Passed>)>>,
}

#[derive(Default)]
struct RestoreScratch {
    built: bool,
    made: HashMap<u32, OwnedFd>,
}

fn ioerr(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// bind(2) `s` to its name; a stale socket file left at a path (its
/// socket gone: the dumped process was killed) is unlinked first.
fn bind_name(s: &OwnedFd, u: &UnixSk) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    match sock::bind_unix(s.as_fd(), &u.name) {
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) && u.is_path() => {
            let path = u.path();
            let stale = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
                && std::os::unix::net::UnixStream::connect(path).is_err_and(|e| e.raw_os_error() == Some(libc::ECONNREFUSED));
            if !stale {
                return Err(format!("bind {}: {e}", u.what()));
            }
            std::fs::remove_file(path).map_err(ioerr(format!("unlinking the stale socket file {}", path.display())))?;
            sock::bind_unix(s.as_fd(), &u.name).map_err(ioerr(format!("bind {}", u.what())))
        }
        r => r.map_err(ioerr(format!("bind {}", u.what()))),
    }?;
    if let (Some((mode, uid, gid)), true) = (u.perms, u.is_path()) {
        let path = u.path();
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(ioerr(format!("chown {}", path.display())))?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777))
            .map_err(ioerr(format!("chmod {}", path.display())))?;
    }
    Ok(())
}

/// Raise the send buffer of `s` so that `bytes` in `n` messages fit in
/// flight (a unix message is charged to its sender until it is read).
fn raise_sndbuf(s: BorrowedFd<'_>, bytes: usize, n: usize) -> Result<(), String> {
    // the kernel charges each buffer's true size, more than its bytes
    let want = bytes.saturating_mul(2).saturating_add(n.saturating_mul(1024)).saturating_add(64 << 10);
    let want = i32::try_from(want).unwrap_or(i32::MAX / 2).min(i32::MAX / 2);
    let cur = sock::get_int(s, libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap_or(0);
    if cur < want {
        sock::set_int(s, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, want).map_err(ioerr("SO_SNDBUFFORCE"))?;
    }
    Ok(())
}

/// Send every message of `u`'s queue from `from` (to its connected peer,
/// or to `to` by name).
fn fill_queue(from: BorrowedFd<'_>, u: &UnixSk, to: Option<&[u8]>) -> Result<(), String> {
    let bytes: usize = u.queue.iter().map(Vec::len).sum();
    raise_sndbuf(from, bytes, u.queue.len())?;
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    for (i, m) in u.queue.iter().enumerate() {
        let mut off = 0;
        // the files in flight with it, opened again, passed with its first part
        let mut fds = match u.passed.iter().find(|(at, _)| *at == i) {
            Some((_, files)) => files.iter().map(open_passed).collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        loop {
            let r = if !fds.is_empty() {
                let b: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
                sock::send_fds(from, &m[off..], flags, to, &b)
            } else {
                match to {
                    Some(name) => sock::sendto_unix(from, &m[off..], flags, name),
                    None => sock::send(from, &m[off..], flags),
                }
            };
            if r.is_ok() {
                fds.clear();
            }
            let n = r.map_err(|e| {
                let hint = if e.raw_os_error() == Some(libc::EAGAIN) && i32::from(u.ty) == libc::SOCK_DGRAM {
                    " (more datagrams than net.unix.max_dgram_qlen allows queued?)"
                } else {
                    ""
                };
                format!("refilling the queue of {}: message {i} of {} ({} bytes): {e}{hint}", u.what(), u.queue.len(), m.len())
            })?;
            off += n;
            // a datagram or record goes whole; a stream may take it in parts
            if off >= m.len() || i32::from(u.ty) != libc::SOCK_STREAM {
                break;
            }
        }
    }
    Ok(())
}

/// The dumped options back on `s`: buffer sizes forced (the queue
/// restored into it needs the room it had), then the locks as dumped.
fn apply_opts(s: BorrowedFd<'_>, u: &UnixSk) -> Result<(), String> {
    u.opts.apply(s, Sizes::Forced).and_then(|()| u.opts.bind_to_device(s)).map_err(|e| format!("{}: {e}", u.what()))
}

/// With `--root`: unix sockets bound to a path are not supported yet (the
/// kinds are restored before the chroot, so a bind would land outside the
/// root): refused naming the socket.
pub fn refuse_paths_under_root(fds: &[(&crate::model::Fd, &super::Kind)], root: &std::path::Path) -> Result<(), String> {
    for (fd, k) in fds {
        if let super::Kind::Unix(u) = k {
            if u.is_path() || u.ext_peer.as_deref().is_some_and(|n| n.first().is_some_and(|&c| c != 0)) {
                return Err(format!(
                    "fd {}: {} is bound or connected to a path: unix socket paths under --root {} are not supported yet",
                    fd.fd,
                    u.what(),
                    root.display()
                ));
            }
        }
    }
    Ok(())
}

/// Create every unix socket of one process (`socks`, all of its UNIXSK
/// fds), connected, with names, queues, options and shutdown state as
/// dumped; by inode.
pub fn build_all(socks: &[&UnixSk]) -> Result<HashMap<u32, OwnedFd>, String> {
    let by_ino: HashMap<u32, &UnixSk> = socks.iter().map(|u| (u.ino, *u)).collect();
    let mut made: HashMap<u32, OwnedFd> = HashMap::new();
    // the other end of a socketpair standing in for a peer that had closed
    let mut orphan_peers: HashMap<u32, OwnedFd> = HashMap::new();
    let base = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    let mutual = |u: &UnixSk| u.peer != 0 && by_ino.get(&u.peer).is_some_and(|p| p.peer == u.ino);
    let is_stream = |u: &UnixSk| i32::from(u.ty) != libc::SOCK_DGRAM;
    // 1. the sockets: pairs as socketpairs, the rest on their own
    for u in socks {
        if made.contains_key(&u.ino) {
            continue;
        }
        if u.peer != 0 && !by_ino.contains_key(&u.peer) && u.ext_peer.is_none() {
            return Err(format!("{}: its peer socket:[{}] is not restored by this process (external, or in another process)", u.what(), u.peer));
        }
        let ty = i32::from(u.ty) | base;
        if mutual(u) {
            let p = by_ino[&u.peer];
            let (a, b) = sock::socketpair(ty).map_err(ioerr(format!("socketpair for {} and {}", u.what(), p.what())))?;
            made.insert(u.ino, a);
            made.insert(p.ino, b);
        } else if is_stream(u) && u.state == ST_ESTABLISHED && u.peer == 0 {
            let (a, b) = sock::socketpair(ty).map_err(ioerr(format!("socketpair for {} (its peer had closed)", u.what())))?;
            made.insert(u.ino, a);
            orphan_peers.insert(u.ino, b);
        } else {
            made.insert(u.ino, sock::unix_socket(ty).map_err(ioerr(format!("socket for {}", u.what())))?);
        }
    }
    // 2. names (a connected stream socket's name is its listener's, or
    //    one it bound before connecting: it is not bound again)
    for u in socks {
        let connected_stream = is_stream(u) && u.state == ST_ESTABLISHED;
        if !u.name.is_empty() && !connected_stream {
            bind_name(&made[&u.ino], u)?;
        }
    }
    // 3. listeners
    for u in socks.iter().filter(|u| u.state == ST_LISTEN) {
        let backlog = i32::try_from(u.backlog).unwrap_or(i32::MAX);
        sock::listen(made[&u.ino].as_fd(), backlog).map_err(ioerr(format!("listen {} (backlog {backlog})", u.what())))?;
    }
    // 4. datagram queues of named sockets with no peer here, sent from a
    //    temporary socket (before connecting: a connected socket takes
    //    datagrams from its peer only)
    let local_peer = |u: &UnixSk| u.peer != 0 && u.ext_peer.is_none();
    for u in socks.iter().filter(|u| !is_stream(u) && !u.queue.is_empty() && !local_peer(u)) {
        if u.name.is_empty() {
            return Err(format!("{}: {} datagrams queued on an unnamed, unconnected socket: no sender can reach it", u.what(), u.queue.len()));
        }
        let tmp = sock::unix_socket(libc::SOCK_DGRAM | base).map_err(ioerr("socket for a temporary sender"))?;
        fill_queue(tmp.as_fd(), u, Some(&u.name))?;
    }
    // 5. connections to a peer's name (a queued client to its listener, a
    //    datagram socket to a bound one, here or outside)
    for u in socks.iter().filter(|u| u.ext_peer.is_some()) {
        let name = u.ext_peer.as_deref().unwrap_or_default();
        sock::connect_unix(made[&u.ino].as_fd(), name)
            .map_err(ioerr(format!("connect {} to its peer outside the restored process, socket:[{}] {}", u.what(), u.peer, show_name(name))))?;
    }
    for u in socks.iter().filter(|u| local_peer(u) && !mutual(u)) {
        let p = by_ino[&u.peer];
        if is_stream(u) && p.state != ST_LISTEN {
            return Err(format!("{}: its peer {} is neither its own peer nor listening", u.what(), p.what()));
        }
        if p.name.is_empty() {
            return Err(format!("{}: its peer {} has no name to connect to", u.what(), p.what()));
        }
        sock::connect_unix(made[&u.ino].as_fd(), &p.name).map_err(ioerr(format!("connect {} to {}", u.what(), p.what())))?;
    }
    // 6. the other queues, sent by the peer
    for u in socks.iter().filter(|u| !u.queue.is_empty() && (is_stream(u) || local_peer(u))) {
        if let Some(t) = orphan_peers.get(&u.ino) {
            fill_queue(t.as_fd(), u, None)?;
        } else if u.peer != 0 {
            let p = by_ino[&u.peer];
            if p.peer == u.ino {
                fill_queue(made[&p.ino].as_fd(), u, None)?;
            } else if !is_stream(u) && !u.name.is_empty() {
                fill_queue(made[&p.ino].as_fd(), u, Some(&u.name))?;
            } else {
                return Err(format!("{}: {} messages queued but its peer {} is connected elsewhere and it has no name", u.what(), u.queue.len(), p.what()));
            }
        } else {
            return Err(format!("{}: {} messages queued on a socket that is not connected", u.what(), u.queue.len()));
        }
    }
    // 7. paths unlinked since the bind
    for u in socks.iter().filter(|u| u.deleted && u.is_path() && !(is_stream(u) && u.state == ST_ESTABLISHED)) {
        let path = u.path();
        std::fs::remove_file(path).map_err(ioerr(format!("unlinking {} (it was unlinked at dump)", path.display())))?;
    }
    // 8. options, shutdown, status flags
    for u in socks {
        let s = &made[&u.ino];
        apply_opts(s.as_fd(), u)?;
        let how = match u.shutdown {
            1 => Some(libc::SHUT_RD),
            2 => Some(libc::SHUT_WR),
            3 => Some(libc::SHUT_RDWR),
            _ => None,
        };
        if let Some(how) = how {
            sock::shutdown(s.as_fd(), how).map_err(ioerr(format!("shutdown {} ({how})", u.what())))?;
        }
        super::set_status_flags(s, u.flags).map_err(|e| format!("{}: {e}", u.what()))?;
    }
    drop(orphan_peers);
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_words() {
        assert_eq!(show_name(b""), "(unbound)");
        assert_eq!(show_name(b"\0abc"), "@abc");
        assert_eq!(show_name(b"/tmp/x"), "/tmp/x");
    }
}
