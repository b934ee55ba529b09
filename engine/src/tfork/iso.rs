//! tfork isolation: which sources a fork may clone (docs/ARCHITECTURE.md,
//! "tfork", "Isolation").
//!
//! A fork-made clone shares every open file description and every
//! `MAP_SHARED` mapping with the source. That is what a fork gives for the
//! objects that live outside the process (regular files, directories,
//! devices, terminals, FIFOs by their path, a pipe whose other end is held
//! elsewhere, listening sockets; TCP connections and UDP sockets are
//! [`super::net`]'s), but not for the kernel objects the process made for
//! itself: a clone reading the source's pipe, socketpair, eventfd or
//! timerfd takes the source's bytes, counts and expirations; an
//! `epoll_ctl` in a clone changes the source's set; a write into shared
//! anonymous memory, a memfd or a SysV segment is seen by the source.
//! The kinds an event loop holds (eventfd, signalfd, relative timerfd,
//! epoll set, a pipe or socketpair with both ends in the process) are
//! copied into each fork-made clone ([`super::copy`]); a source holding
//! any other is cloned by the restore path instead
//! ([`super::tfork_restored`]: fresh objects with the frozen state in each
//! clone, as for a tree), and the log names the fd or mapping that made
//! the choice. The decision is made twice: on a look at /proc before the
//! freeze (so that the common case freezes once), and on the collected fds
//! and the frozen source's maps after it (authoritative: the process may
//! have changed in between; the fork path then lets it go and the restore
//! path freezes it again).
//!
//! Every kind of the engine is named in [`kind_route`] (no wildcard): a
//! kind added later must be given a route here before it compiles.

use crate::kinds::Kind;
use crate::model::{FileDesc, Task};
use crate::sys::Pid;

/// TCP_LISTEN, the state of a listening unix socket too.
const ST_LISTEN: u8 = 10;
/// `__SO_ACCEPTCON` in /proc/net/unix's flags: a listening socket.
const SO_ACCEPTCON: u64 = 1 << 16;

/// Whether the kinds [`super::copy`] copies into fork-made clones are
/// copied (default), or send the process down the restore path like the
/// others (`CRIU_RS_TFORK_COPY=off`: measurements).
fn copies_on() -> bool {
    std::env::var("CRIU_RS_TFORK_COPY").as_deref() != Ok("off")
}

/// Why a fork-made clone could see the source's writes through the
/// object of kind `k` (fd `fd`), or `None` when a fork may share it or
/// when [`super::copy`] gives each clone its own copy of it.
fn kind_route(k: &Kind, fds: &[crate::model::Fd]) -> Option<&'static str> {
    let copied = |why: &'static str| (!copies_on()).then_some(why);
    match k {
        // outside the process: shared as after fork() (documented)
        Kind::Reg(_) | Kind::Tty(_) | Kind::Fifo(_) => None,
        // `net::plan` decides (closed with --tcp-close, listeners and UDP shared)
        Kind::Inet(_) => None,
        Kind::Pipe(p) => {
            // both ends in the process: its own pipe; one end only: a
            // channel to another process (a shell pipeline), shared as fork
            let end = |wr: bool| {
                fds.iter().any(|f| matches!(&f.file, FileDesc::Kind(Kind::Pipe(q)) if q.pipe_id == p.pipe_id && (q.flags as i32 & libc::O_ACCMODE == libc::O_WRONLY) == wr))
            };
            (end(true) && end(false)).then_some("a pipe with both ends in the process").and_then(copied)
        }
        Kind::Unix(u) if u.state == ST_LISTEN && !u.name.is_empty() => None,
        // (a socketpair of the process is copied, any other unix socket
        // sends it down the restore path: `copy::Plan::new` says which)
        Kind::Unix(_) => copied("a unix socket (socketpair, connected or unconnected)"),
        Kind::Eventfd(_) => copied("an eventfd"),
        Kind::Timerfd(_) => copied("a timerfd"),
        Kind::Signalfd(_) => copied("a signalfd"),
        Kind::Epoll(_) => copied("an epoll set"),
        Kind::Inotify(_) => Some("an inotify instance"),
        Kind::Fanotify(_) => Some("a fanotify group"),
        Kind::Netlink(_) => Some("a netlink socket"),
        Kind::Packet(_) => Some("a packet socket"),
        Kind::Memfd(_) => Some("a memfd"),
        Kind::Pty(_) => Some("a pseudo-terminal master"),
        // (a fork's names the source's process, not the clone's)
        Kind::Pidfd(_) => Some("a pidfd"),
    }
}

/// Why a mapping of /proc/PID/maps shares memory a fork would share with
/// the source, where a file's would not be expected to (or one a fork does
/// not copy at all), or `None`.
fn mapping_route(m: &crate::dump::proc::MapsLine) -> Option<&'static str> {
    let n = m.name.as_str();
    if n.starts_with("/[aio]") {
        // (VM_DONTCOPY: a fork leaves the AIO context behind)
        return Some("an AIO ring (a fork does not copy AIO contexts)");
    }
    if !m.shared {
        return None;
    }
    if n.starts_with("/memfd:") {
        Some("a MAP_SHARED memfd mapping")
    } else if n.starts_with("/SYSV") {
        Some("a SysV shared memory segment")
    } else if n.starts_with("[anon_shmem:") || (m.dev.0 == 0 && (n.starts_with("/dev/zero") || n.starts_with("/anon_hugepage"))) {
        Some("MAP_SHARED anonymous memory")
    } else {
        None
    }
}

fn maps_reason(pid: Pid) -> Option<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().filter_map(crate::dump::proc::parse_maps_line).find_map(|m| {
        mapping_route(&m).map(|why| format!("mapping {:#x}-{:#x} ({}) of {pid} is {why}", m.start, m.end, if m.name.is_empty() { "anonymous" } else { &m.name }))
    })
}

/// Why the process itself, not one of its fds or mappings, must be
/// cloned by restore: a uts, ipc, net or mount namespace of its own (fork-made
/// clones would share it; restored ones get new namespaces with its
/// contents, `crate::utsipc`, `crate::netns`, `crate::mntns`), or a Go program with threads (its runtime keeps each
/// thread's id, `m.procid`, and preempts a goroutine by `tgkill` to it:
/// a fork-made clone's threads have new ids, its preemption signals go
/// nowhere and a busy goroutine never yields; restored clones keep the ids
/// in a pid namespace of their own). `owns`: the namespaces it owns, as
/// the caller knows them (from /proc before the freeze, from the
/// collection after it).
fn process_reason(pid: Pid, owns: [(&str, bool); 4], threads: usize) -> Option<String> {
    if let Some((kind, _)) = owns.iter().find(|(_, own)| *own) {
        return Some(format!("process {pid} owns a {kind} namespace, which fork-made clones would share"));
    }
    if threads > 1 {
        let exe = std::fs::File::open(format!("/proc/{pid}/exe")).ok()?;
        if crate::dump::elf::is_go_program(&exe) {
            return Some(format!(
                "process {pid} is a Go program with {threads} threads (its runtime signals its threads by their ids, which fork-made clones do not keep)"
            ));
        }
    }
    None
}

/// [`process_reason`] from /proc, before the freeze.
pub(crate) fn look_process(pid: Pid) -> Option<String> {
    let owns = |kind: &str| {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
        theirs.is_some() && theirs != std::fs::read_link(format!("/proc/self/ns/{kind}")).ok()
    };
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(1);
    process_reason(pid, [("uts", owns("uts")), ("ipc", owns("ipc")), ("net", owns("net")), ("mnt", owns("mnt"))], threads)
}

/// [`process_reason`] from the collection, after the freeze.
pub(crate) fn check_process(tree: &crate::model::Tree) -> Option<String> {
    let task = tree.root();
    process_reason(task.pid, [("uts", tree.uts.is_some()), ("ipc", tree.ipc.is_some()), ("net", tree.net.is_some()), ("mnt", tree.mnt.is_some())], task.threads.len())
}

/// After the freeze: why the collected process `task` (its maps read now,
/// frozen) must be cloned by restore, naming the first fd or mapping
/// found (`Err`); else what each fork-made clone gets its own copy of
/// ([`super::copy`]). A named unix listener a fork-made clone shares is
/// named in a warning.
pub(crate) fn check(task: &Task) -> Result<super::copy::Plan, String> {
    let pid = task.pid;
    for f in &task.fds {
        let FileDesc::Kind(k) = &f.file;
        if let Some(why) = kind_route(k, &task.fds) {
            return Err(format!("fd {} of {pid} is {why}", f.fd));
        }
    }
    if let Some(why) = maps_reason(pid) {
        return Err(why);
    }
    let copies = super::copy::Plan::new(task)?;
    let mut seen = std::collections::HashSet::new();
    for f in &task.fds {
        if let FileDesc::Kind(Kind::Unix(u)) = &f.file {
            if seen.insert(f.desc) {
                crate::pr_warn!(
                    "fd {} of {pid}: the clones share the unix listener {} with the source: each connection goes to whichever process accepts it first, as with forked workers",
                    f.fd,
                    String::from_utf8_lossy(&u.name).replace('\0', "@")
                );
            }
        }
    }
    Ok(copies)
}

/// Before the freeze, from /proc alone: a reason [`check`] would give
/// (an fd of an anonymous inode or a memfd but those copied, a unix socket that is not a listener, a netlink or packet socket, one of
/// the mappings of [`mapping_route`]); `None` says only that the look
/// found none (the collection decides).
pub(crate) fn look(pid: Pid) -> Option<String> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let mut pipes: std::collections::HashMap<String, [bool; 2]> = std::collections::HashMap::new();
    let mut sockets = Vec::new();
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(link) = std::fs::read_link(e.path()) else { continue };
        let link = link.to_string_lossy().into_owned();
        let copied = ["anon_inode:[eventfd]", "anon_inode:[signalfd]", "anon_inode:[eventpoll]", "anon_inode:[timerfd]"].contains(&link.as_str()) && copies_on();
        if (link.starts_with("anon_inode:") && !copied) || link.starts_with("/memfd:") {
            return Some(format!("fd {fd} of {pid} is {link}"));
        }
        if let Some(ino) = link.strip_prefix("pipe:") {
            let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
            let flags = crate::dump::proc::parse_fdinfo(&fdinfo).1;
            let ends = pipes.entry(ino.to_string()).or_default();
            ends[usize::from(flags as i32 & libc::O_ACCMODE == libc::O_WRONLY)] = true;
            if ends[0] && ends[1] && !copies_on() {
                return Some(format!("fd {fd} of {pid} is a pipe with both ends in the process"));
            }
        } else if let Some(ino) = link.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')).and_then(|s| s.parse::<u64>().ok()) {
            sockets.push((fd, ino));
        }
    }
    if !sockets.is_empty() {
        let table = |name: &str, col: usize| -> Vec<(u64, Vec<String>)> {
            let t = std::fs::read_to_string(format!("/proc/{pid}/net/{name}")).unwrap_or_default();
            t.lines()
                .skip(1)
                .filter_map(|l| {
                    let w: Vec<String> = l.split_whitespace().map(str::to_string).collect();
                    Some((w.get(col)?.parse().ok()?, w))
                })
                .collect()
        };
        // /proc/net/unix: Num RefCount Protocol Flags Type St Inode Path
        let unix = table("unix", 6);
        let netlink = table("netlink", 9);
        let packet = table("packet", 8);
        for (fd, ino) in sockets {
            if let Some((_, w)) = unix.iter().find(|(i, _)| *i == ino) {
                let flags = w.get(3).and_then(|f| u64::from_str_radix(f, 16).ok()).unwrap_or(0);
                // (a socketpair may be copied: the collection decides)
                if (flags & SO_ACCEPTCON == 0 || w.len() < 8) && !(copies_on() && w.len() < 8) {
                    return Some(format!("fd {fd} of {pid} is a unix socket (socketpair, connected or unconnected)"));
                }
            } else if netlink.iter().any(|(i, _)| *i == ino) {
                return Some(format!("fd {fd} of {pid} is a netlink socket"));
            } else if packet.iter().any(|(i, _)| *i == ino) {
                return Some(format!("fd {fd} of {pid} is a packet socket"));
            }
        }
    }
    maps_reason(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> crate::dump::proc::MapsLine {
        crate::dump::proc::parse_maps_line(s).unwrap()
    }

    #[test]
    fn shared_kernel_memory_is_routed_and_files_and_private_memory_are_not() {
        let routed = [
            "7f0000000000-7f0000001000 rw-s 00000000 00:01 1234                       /dev/zero (deleted)",
            "7f0000000000-7f0000001000 rw-s 00000000 00:01 1234                       /memfd:buf (deleted)",
            "7f0000000000-7f0000001000 rw-s 00000000 00:01 32768                      /SYSV00000000 (deleted)",
            "7f0000000000-7f0000001000 rw-s 00000000 00:0f 99                         [anon_shmem:named]",
            "7f0000000000-7f0000001000 rw-s 00000000 00:10 99                         /[aio] (deleted)",
        ];
        for l in routed {
            assert!(mapping_route(&line(l)).is_some(), "{l}");
        }
        let shared = [
            "7f0000000000-7f0000001000 rw-s 00000000 08:01 1234                       /var/tmp/data.bin",
            "7f0000000000-7f0000001000 r--p 00000000 00:01 1234                       /memfd:code (deleted)",
            "7f0000000000-7f0000001000 rw-p 00000000 00:00 0 ",
            "7f0000000000-7f0000001000 rw-p 00000000 00:00 0                          [heap]",
        ];
        for l in shared {
            assert!(mapping_route(&line(l)).is_none(), "{l}");
        }
    }
}
