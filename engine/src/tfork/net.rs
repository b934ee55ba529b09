//! tfork and the source's inet sockets (docs/ARCHITECTURE.md, "tfork",
//! "Network").
//!
//! A fork-made clone's fds share the source's open file descriptions, a
//! socket's included: a clone reading or writing the source's TCP
//! connection would take the source's bytes. So a TCP connection (any of
//! the states `--tcp-close` takes: ESTABLISHED, SYN_SENT, FIN_WAIT1/2,
//! CLOSE_WAIT, LAST_ACK, CLOSING) to a peer outside the tree is refused by
//! name unless `--tcp-close` is given; with it, each clone's fds of the
//! connection get a description of their own, closed as `criu restore
//! --tcp-close` leaves one (upstream's and ours): a new TCP socket of the
//! family, never bound nor connected, both directions shut. Made by
//! injection into the clone before its release ([`Plan::apply`]):
//! `socket`, `shutdown(SHUT_RDWR)` (ENOTCONN on a socket never connected,
//! but the shutdown is recorded: a read then sees end of file and a write
//! EPIPE), status flags, `dup3` over every fd that shared the description.
//! The source's socket is not touched.
//!
//! A connection with both ends in the tree is refused by name: a clone
//! can't hold the source's 4-tuple in the same network namespace, and
//! tfork's clones share the source's; unless the tree owns a network
//! namespace: its clones are then restored, each in a new network
//! namespace of its own (`crate::netns`) holding its copy of the
//! connection, both ends, and of its listeners.
//!
//! Listeners and UDP sockets: a fork-made clone shares them with the source
//! (as after fork(): a connection or datagram goes to whichever process
//! takes it first), named in a warning. A clone made by restore binds
//! them again in the host's network namespace, where the source holds
//! them: a listener is refused by name unless it has SO_REUSEPORT (then
//! the kernel spreads the connections over the source and the clones).

use super::TforkError;
use crate::kinds::inet::{self, Inet};
use crate::kinds::Kind;
use crate::model::{FileDesc, Task, Tree};
use crate::sys::inject::Injector;
use crate::sys::Pid;

/// TCP_LISTEN (include/net/tcp_states.h).
const TCP_LISTEN: u32 = 10;

/// One connection each clone gets closed: its description's fds.
#[derive(Debug, Clone)]
struct Closed {
    family: i32,
    /// File status flags of the description.
    flags: u32,
    /// (fd, close-on-exec) of every fd that shares it.
    fds: Vec<(i32, bool)>,
    /// `SRC -> DST (STATE)`, for the log.
    what: String,
}

/// The connections of a fork-made clone to close.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    closed: Vec<Closed>,
}

fn inets(task: &Task) -> impl Iterator<Item = (&crate::model::Fd, &Inet)> {
    task.fds.iter().filter_map(|f| match &f.file {
        FileDesc::Kind(Kind::Inet(i)) => Some((f, i)),
        _ => None,
    })
}

fn conn_name(i: &Inet) -> String {
    let peer = i.dst.map(|d| inet::ip_port(&d)).unwrap_or_else(|| "?".into());
    format!("{} -> {} ({})", inet::ip_port(&i.src), peer, inet::state_name(i.state))
}

/// Whether connection `i` has its other end among the sockets of `tree`.
fn peer_in_tree(tree: &Tree, i: &Inet) -> bool {
    let Some(d) = i.dst else { return false };
    tree.tasks.iter().flat_map(inets).any(|(_, o)| o.proto == libc::IPPROTO_TCP && o.src == d && o.dst == Some(i.src))
}

/// Check the sockets of `tree` (collected with its connections recorded)
/// for a tfork: refused by name, a TCP connection with both ends in the
/// tree, and one to the outside without `tcp_close`; for clones made by
/// restore (`forked` false), a listener without SO_REUSEPORT. Listeners
/// and UDP sockets a fork-made clone shares are named in a warning.
/// Returns what each fork-made clone closes.
pub(crate) fn plan(tree: &Tree, tcp_close: bool, forked: bool) -> Result<Plan, TforkError> {
    let mut p = Plan::default();
    let mut seen = std::collections::HashSet::new();
    for task in &tree.tasks {
        for (f, i) in inets(task) {
            let tcp = i.proto == libc::IPPROTO_TCP;
            let at = format!("fd {} of {}", f.fd, task.pid);
            if tcp && inet::is_connection(i.state) {
                // (a tree in a network namespace of its own: each clone is
                // restored in a new one, where it holds its own copy of
                // the connection, both ends: crate::netns)
                if peer_in_tree(tree, i) && tree.net.is_some() {
                    continue;
                }
                if tree.net.is_some() {
                    return Err(TforkError::Unsupported(format!(
                        "{at}: the TCP connection {} has its peer outside the tree in the tree's network namespace: each clone's namespace would hold it without its peer (not supported)",
                        conn_name(i)
                    )));
                }
                if peer_in_tree(tree, i) {
                    return Err(TforkError::Unsupported(format!(
                        "{at}: the TCP connection {} has both ends in the tree: a clone could keep it only in a network namespace of its own, which a tree sharing the host's does not get (not supported)",
                        conn_name(i)
                    )));
                }
                if !tcp_close {
                    return Err(TforkError::Unsupported(format!(
                        "{at}: the TCP connection {} to a peer outside the tree would be shared by every clone with the source (a clone's reads would take the source's bytes): give --tcp-close to have it closed in the clones",
                        conn_name(i)
                    )));
                }
                if forked && seen.insert(f.desc) {
                    let fds = task.fds.iter().filter(|g| g.desc == f.desc).map(|g| (g.fd, g.cloexec)).collect();
                    p.closed.push(Closed { family: i.family, flags: i.flags, fds, what: conn_name(i) });
                }
            } else if tcp && i.state == TCP_LISTEN {
                if !forked && !i.opts.reuseport && tree.net.is_none() {
                    return Err(TforkError::Unsupported(format!(
                        "{at}: a TCP listener on {}: a clone restored beside the source can't listen on the port the source holds (without SO_REUSEPORT): not supported",
                        inet::ip_port(&i.src)
                    )));
                }
                if forked && seen.insert(f.desc) {
                    crate::pr_warn!(
                        "{at}: the clones share the TCP listener on {} with the source: each connection goes to whichever process accepts it first, as with forked workers",
                        inet::ip_port(&i.src)
                    );
                }
            } else if !tcp && forked && seen.insert(f.desc) && (i.dst.is_some() || i.src.port != 0) {
                let to = i.dst.map(|d| format!(" connected to {}", inet::ip_port(&d))).unwrap_or_default();
                crate::pr_warn!(
                    "{at}: the clones share the UDP socket on {}{to} with the source: each datagram is read by whichever process reads it first",
                    inet::ip_port(&i.src)
                );
            }
        }
    }
    Ok(p)
}

impl Plan {
    /// Whether there is nothing to close.
    pub(crate) fn is_empty(&self) -> bool {
        self.closed.is_empty()
    }

    /// In the stopped clone `pid` (`main` its injector): each connection's fds onto a closed socket of the clone's
    /// own.
    pub(crate) fn apply(&self, pid: Pid, main: &mut Injector) -> Result<(), TforkError> {
        let ioe = |what: String| move |e: std::io::Error| TforkError::Io { pid, what, source: e, loc: std::panic::Location::caller() };
        for c in &self.closed {
            let nonblock = if c.flags & libc::O_NONBLOCK as u32 != 0 { libc::SOCK_NONBLOCK } else { 0 };
            let s = main
                .call("socket", libc::SYS_socket, &[c.family as u64, (libc::SOCK_STREAM | libc::SOCK_CLOEXEC | nonblock) as u64, libc::IPPROTO_TCP as u64])
                .map_err(ioe(format!("a socket for the closed connection {}", c.what)))?;
            // never connected: ENOTCONN, but both directions are shut
            match main.raw(libc::SYS_shutdown, &[s, libc::SHUT_RDWR as u64]) {
                Ok(r) if r == 0 || r == -(libc::ENOTCONN as i64) => {}
                Ok(r) => return Err(TforkError::Io { pid, what: format!("shutdown of the closed connection {}", c.what), source: std::io::Error::from_raw_os_error(-r as i32), loc: std::panic::Location::caller() }),
                Err(e) => return Err(ioe(format!("shutdown of the closed connection {}", c.what))(e)),
            }
            // status flags beyond the access mode and O_NONBLOCK (O_ASYNC...)
            let rest = c.flags & !(libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_CLOEXEC) as u32;
            if rest != 0 {
                main.call("fcntl(F_SETFL)", libc::SYS_fcntl, &[s, libc::F_SETFL as u64, u64::from(rest) | nonblock as u64])
                    .map_err(ioe(format!("status flags {:#o} of the closed connection {}", c.flags, c.what)))?;
            }
            for &(fd, cloexec) in &c.fds {
                let fl = if cloexec { libc::O_CLOEXEC as u64 } else { 0 };
                main.call(&format!("dup3(.., {fd})"), libc::SYS_dup3, &[s, fd as u64, fl]).map_err(ioe(format!("fd {fd} onto the closed connection {}", c.what)))?;
            }
            if !c.fds.iter().any(|&(fd, _)| fd as u64 == s) {
                main.call("close", libc::SYS_close, &[s]).map_err(ioe("closing the spare socket".into()))?;
            }
            crate::pr_info!("clone {pid}: the TCP connection {} closed (fds {:?})", c.what, c.fds.iter().map(|f| f.0).collect::<Vec<_>>());
        }
        Ok(())
    }
}
