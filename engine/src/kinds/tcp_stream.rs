//! Established TCP connections with `--tcp-established`: TCP_REPAIR,
//! `tcp-stream-INO.img`, and the network lock. Also carried: a connection
//! whose end here shut its writing side (FIN_WAIT1/2, see
//! [`TcpStream::fin_sent`] and [`restore`]), and one that received its
//! peer's FIN (CLOSE_WAIT, and with its own FIN too LAST_ACK and CLOSING,
//! [`TcpStream::fin_received`]): the kernel takes a received FIN only from
//! the wire, so the restore forges the peer's FIN segment
//! ([`deliver_peer_fin`]).
//!
//! Dump (the tree frozen; the socket is the target's own description,
//! taken with `pidfd_getfd` and held by [`hold`]): once every fd table is
//! read, [`read_all`] locks all the connections at once (netfilter rules
//! that drop their packets both ways, below), puts each in repair mode,
//! and reads it:
//! for each queue (TCP_REPAIR_QUEUE) its sequence number (TCP_QUEUE_SEQ),
//! length (SIOCINQ; SIOCOUTQ and SIOCOUTQNSD for the unsent part) and
//! bytes (recv with MSG_PEEK, which in repair mode reads the selected
//! queue whole and consumes nothing); TCP_INFO's options and window
//! scales, the MSS clamp (TCP_MAXSEG answers it in repair mode),
//! TCP_TIMESTAMP and TCP_REPAIR_WINDOW; then repair mode goes off again
//! at once (TCP_REPAIR_OFF_NO_WP: nothing sent). The tree is frozen and
//! its packets dropped, so what was read stays true until the dump ends
//! ([`release_dump`], from the frozen tree's release): processes that
//! run on (`--leave-running`, or a failed dump) get the lock lifted;
//! killed ones get their sockets into repair mode again just before the
//! kill, so that they close sending nothing (no FIN, no RST), and the
//! lock stays for the restore to lift.
//!
//! Restore (the restore child): a socket put in repair mode, bound to its
//! name (repair mode binds past any conflict, the listener of the same
//! port included), both sequence numbers set where the queues start, then
//! connect (in repair mode: no handshake, the connection is established
//! at once), TCP_REPAIR_OPTIONS, the receive queue and the send queue
//! written in repair mode (the kernel takes the send queue as sent and
//! unacknowledged: it goes out again by retransmission), the FINs in the
//! order they came (ours by a repair-mode shutdown, the peer's by a
//! forged segment), the window, the timestamp. The engine turns repair
//! mode off on each just before the tree is released ([`finish_restore`])
//! and lifts the lock after ([`unlock_restored`]).
//!
//! The network lock is upstream CRIU's iptables one, rule for rule (so a
//! set of images locked by either is unlocked by the other's restore):
//! per connection `-I INPUT` dropping its packets from the peer and
//! `-I OUTPUT` dropping its own, both skipping packets marked 0xC114,
//! through `iptables-restore --noflush` (one process per family for all
//! the connections; `ip6tables-restore` for IPv6, an IPv4-mapped address
//! as IPv4).
//!
//! An engine killed in the middle of a dump (SIGKILL, a crash) must not
//! leave the processes it released with their connections in repair mode
//! and locked: before the lock, the dump starts a guard, `criu` executed
//! again ([`GUARD_ARG`], [`guard_main`]) in a session of its own, holding
//! a duplicate of every held socket and the read end of a pipe whose
//! write end only the engine has. The dump's end ([`release_dump`]) tells
//! it `k` and waits for it; a pipe that ends without a word (the engine
//! died) makes the guard take every socket out of repair mode (where the
//! engine died while one was in it) and lift the locks, as a failed dump
//! does: the connections stall for the moment the packets were dropped
//! and go on by retransmission. Fault point `tcp-repaired` (every held
//! connection locked and read) tests it.

use crate::sys::inet::{self as si, Addr, RepairWindow};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

/// The repair state of an established connection (`tcp_stream_entry` +
/// its queues).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpStream {
    /// The TCP state read in repair mode (the INETSK entry's):
    /// ESTABLISHED, FIN_WAIT1 / FIN_WAIT2 when this end shut its writing
    /// side ([`TcpStream::fin_sent`]), CLOSE_WAIT when the peer shut its
    /// ([`TcpStream::fin_received`]), LAST_ACK or CLOSING with both.
    pub state: u32,
    /// rcv_nxt: the sequence number after the receive queue.
    pub inq_seq: u32,
    /// write_seq: the sequence number after the send queue.
    pub outq_seq: u32,
    /// Received, not yet read by the program.
    pub inq: Vec<u8>,
    /// Written by the program, not yet acknowledged (sent or not).
    pub outq: Vec<u8>,
    /// The part of `outq` not yet sent.
    pub unsq_len: u32,
    /// TCPI_OPT_* of TCP_INFO.
    pub opt_mask: u32,
    pub snd_wscale: u32,
    pub rcv_wscale: u32,
    pub mss_clamp: u32,
    /// TCP_TIMESTAMP (with TCPI_OPT_TIMESTAMPS).
    pub timestamp: u32,
    pub window: Option<RepairWindow>,
}

/// TCP states carried live (include/net/tcp_states.h).
pub const ESTABLISHED: u32 = 1;
pub const FIN_WAIT1: u32 = 4;
pub const FIN_WAIT2: u32 = 5;
pub const CLOSE_WAIT: u32 = 8;
pub const LAST_ACK: u32 = 9;
pub const CLOSING: u32 = 11;

/// Whether a connection in TCP state `s` is carried live with
/// `--tcp-established`: established, this end's FIN sent (acknowledged
/// or not: FIN_WAIT1/2), the peer's received (CLOSE_WAIT), or both
/// (LAST_ACK: ours after the peer's; CLOSING: both sent before either
/// was acknowledged).
pub fn carried(s: u32) -> bool {
    matches!(s, ESTABLISHED | FIN_WAIT1 | FIN_WAIT2 | CLOSE_WAIT | LAST_ACK | CLOSING)
}

/// In state `s` this end has sent its FIN (shut its writing side).
fn sends_fin(s: u32) -> bool {
    matches!(s, FIN_WAIT1 | FIN_WAIT2 | CLOSING | LAST_ACK)
}

/// In state `s` this end has received the peer's FIN.
fn got_fin(s: u32) -> bool {
    matches!(s, CLOSE_WAIT | LAST_ACK | CLOSING)
}

/// The mark that lets a packet past the network lock's rules (theirs is
/// `! --mark 0xc114`, as upstream's).
const LOCK_MARK: i32 = 0xc114;

impl TcpStream {
    /// This end shut its writing side: a FIN follows the send queue.
    /// `outq_seq` counts it (it is write_seq); `outq` and `unsq_len` do
    /// not, as upstream 4.2's image.
    pub fn fin_sent(&self) -> bool {
        sends_fin(self.state)
    }

    /// The peer's FIN was received: it follows the receive queue.
    /// `inq_seq` counts it (it is rcv_nxt); `inq` does not (SIOCINQ leaves
    /// it out), as upstream 4.2's image. Whether the program has read the
    /// end of file already is not kept (reading it again gives it again).
    pub fn fin_received(&self) -> bool {
        got_fin(self.state)
    }
}

/// An established socket of a frozen process the dump holds (a
/// duplicate of its description), locked and in repair mode once
/// [`read_all`] has run.
struct Held {
    sk: OwnedFd,
    src: Addr,
    dst: Addr,
    ino: u32,
    locked: bool,
    repaired: bool,
}

/// The sockets the dump put in repair mode (one dump per engine process).
static HELD: Mutex<Vec<Held>> = Mutex::new(Vec::new());

/// The argument `criu` is executed with as the guard of a dump's held
/// connections (see the module's doc).
pub const GUARD_ARG: &str = "__criu-rs-tcp-guard";

/// The running guard: its pid and the write end of its pipe.
static GUARD: Mutex<Option<(crate::sys::Pid, OwnedFd)>> = Mutex::new(None);

/// Start the guard of the held sockets `socks` (before they are locked).
fn start_guard(socks: &[i32]) -> Result<(), String> {
    use crate::sys::process as p;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let exe = std::fs::read_link("/proc/self/exe").map_err(|e| format!("/proc/self/exe: {e}"))?;
    let (rd, wr) = p::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (rd_fd, wr_fd) = (rd.as_raw_fd(), wr.as_raw_fd());
    let skip = if per_conn_skip() { "skip" } else { "lock" };
    // the fds it keeps, above every one it inherits (dup2 clears CLOEXEC)
    let base = socks.iter().copied().chain([rd_fd, wr_fd]).max().unwrap_or(2) + 1;
    let socks = socks.to_vec();
    let pid = p::fork3(0, &[], libc::SIGCHLD, || {
        let mut keep = vec![base];
        let _ = p::dup2(rd_fd, base);
        for (k, &s) in socks.iter().enumerate() {
            let to = base + 1 + k as i32;
            let _ = p::dup2(s, to);
            keep.push(to);
        }
        p::close_all_except(&keep);
        // its own session: a signal to the engine's process group (^C)
        // must not take the guard with it
        let _ = p::setsid();
        let e = std::process::Command::new(&exe).arg(GUARD_ARG).arg(skip).args(keep.iter().map(|f| f.to_string())).exec();
        drop(e);
        p::exit_now(127)
    })
    .map_err(|e| format!("forking the guard: {e}"))?;
    drop(rd);
    crate::pr_debug!("guard {pid} of {} held connection(s) started", socks.len());
    *GUARD.lock().unwrap_or_else(|p| p.into_inner()) = Some((pid, wr));
    Ok(())
}

/// Tell the guard the dump ended as it should (the engine took care of
/// the sockets) and reap it.
fn stop_guard() {
    let Some((pid, wr)) = GUARD.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
    let _ = std::io::Write::write_all(&mut std::fs::File::from(wr), b"k");
    let _ = crate::sys::ptrace::wait_flags(pid, 0);
}

/// The guard (`criu __criu-rs-tcp-guard lock|skip CTL SOCK...`): wait
/// for the engine's word on CTL; without it (the engine died), every
/// SOCK out of repair mode and its connection's lock lifted. Never returns.
pub fn guard_main(args: &[String]) -> ! {
    use crate::sys::process as p;
    let mut fds: Vec<OwnedFd> = args.iter().skip(3).filter_map(|a| a.parse().ok()).filter_map(|n| p::take_inherited(n).ok()).collect();
    if fds.is_empty() {
        p::exit_now(2);
    }
    let mut ctl = std::fs::File::from(fds.remove(0));
    let socks = fds;
    set_lock_skip(args.get(2).is_some_and(|a| a == "skip"));
    let mut b = [0u8; 1];
    let word = loop {
        match std::io::Read::read(&mut ctl, &mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(1) => break Some(b[0]),
            _ => break None,
        }
    };
    if word == Some(b'k') {
        p::exit_now(0);
    }
    let mut conns = Vec::new();
    for s in &socks {
        let _ = si::set_int(s.as_fd(), libc::IPPROTO_TCP, si::TCP_REPAIR, si::REPAIR_OFF);
        if let (Ok(Some(a)), Ok(Some(b))) = (si::name(s.as_fd(), false), si::name(s.as_fd(), true)) {
            conns.push((a, b));
        }
    }
    unlock(&conns);
    p::exit_now(0)
}

/// `--network-lock skip`: connections are neither locked nor unlocked.
static LOCK_SKIP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set from `--network-lock` before a dump or a restore.
pub fn set_lock_skip(on: bool) {
    LOCK_SKIP.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// `--network-lock skip` was given.
pub fn lock_skipped() -> bool {
    LOCK_SKIP.load(std::sync::atomic::Ordering::Relaxed)
}

/// No connection is locked one by one: `--network-lock skip`, or the
/// tree's own network namespace is locked whole (`crate::netns`).
fn per_conn_skip() -> bool {
    lock_skipped() || crate::netns::dumping_own()
}

fn ip_only(a: &Addr) -> (i32, String) {
    if a.family == libc::AF_INET6 {
        let mut b = [0u8; 16];
        for (i, w) in a.words.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        let v6 = std::net::Ipv6Addr::from(b);
        match v6.to_ipv4_mapped() {
            Some(v4) => (libc::AF_INET, v4.to_string()),
            None => (libc::AF_INET6, v6.to_string()),
        }
    } else {
        (libc::AF_INET, std::net::Ipv4Addr::from(a.words[0].to_ne_bytes()).to_string())
    }
}

/// The two rules of a connection (`src` ours, `dst` the peer), as
/// iptables-restore lines with `op` (`-I` or `-D`), and its family.
fn rules(op: &str, src: &Addr, dst: &Addr) -> (i32, [String; 2]) {
    let (fam, s) = ip_only(src);
    let (_, d) = ip_only(dst);
    let rule = |chain: &str, sa: &str, sp: u16, da: &str, dp: u16| {
        format!("{op} {chain} -p tcp -m mark ! --mark 0xc114 -s {sa} --sport {sp} -d {da} --dport {dp} -j DROP")
    };
    (fam, [rule("INPUT", &d, dst.port, &s, src.port), rule("OUTPUT", &s, src.port, &d, dst.port)])
}

/// Run `iptables-restore --noflush` (or ip6tables') with `lines` in the
/// filter table.
fn iptables_restore(fam: i32, lines: &[String]) -> Result<(), String> {
    use std::io::Write;
    let cmd = if fam == libc::AF_INET6 { "ip6tables-restore" } else { "iptables-restore" };
    let mut input = String::from("*filter\n");
    for l in lines {
        input.push_str(l);
        input.push('\n');
    }
    input.push_str("COMMIT\n");
    let mut child = std::process::Command::new(cmd)
        .args(["-w", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {cmd} (the network lock of --tcp-established needs iptables): {e}"))?;
    child.stdin.take().expect("piped").write_all(input.as_bytes()).map_err(|e| format!("writing to {cmd}: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("waiting for {cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// Lock the connections `conns` (ours, peer): drop their packets both
/// ways; one `iptables-restore` per family for all of them.
pub fn lock(conns: &[(Addr, Addr)]) -> Result<(), String> {
    if per_conn_skip() {
        return Ok(());
    }
    for fam in [libc::AF_INET, libc::AF_INET6] {
        let all: Vec<String> = conns.iter().map(|(s, d)| rules("-I", s, d)).filter(|(f, _)| *f == fam).flat_map(|(_, r)| r).collect();
        if !all.is_empty() {
            iptables_restore(fam, &all)?;
        }
    }
    for (s, d) in conns {
        crate::pr_info!("Locked {} - {} connection", super::inet::ip_port(s), super::inet::ip_port(d));
    }
    Ok(())
}

/// Lift the locks of `conns` (ours, peer): all at once, or rule by rule
/// when that fails (a rule already gone: the images of a
/// `--leave-running` dump) with a warning for each that is not there.
pub fn unlock(conns: &[(Addr, Addr)]) {
    if per_conn_skip() {
        return;
    }
    for fam in [libc::AF_INET, libc::AF_INET6] {
        let all: Vec<String> = conns.iter().map(|(s, d)| rules("-D", s, d)).filter(|(f, _)| *f == fam).flat_map(|(_, r)| r).collect();
        if all.is_empty() {
            continue;
        }
        // by handle where iptables is nft's (linear), else by their text
        let all = match delete_by_handle(fam, &all) {
            Ok(rest) => rest,
            Err(e) => {
                crate::pr_debug!("unlocking by nft handle: {e}; by iptables-restore");
                all
            }
        };
        if all.is_empty() || iptables_restore(fam, &all).is_ok() {
            continue;
        }
        for r in &all {
            if let Err(e) = iptables_restore(fam, std::slice::from_ref(r)) {
                crate::pr_warn!("unlocking: `{r}`: {e}");
            }
        }
    }
}

/// The fields of one of our rules: chain, source, source port,
/// destination, destination port (from an iptables-restore line of
/// [`rules`]).
fn rule_key(line: &str) -> Option<(String, String, String, String, String)> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let after = |k: &str| w.iter().position(|x| *x == k).and_then(|i| w.get(i + 1)).map(|x| x.to_string());
    Some((w.get(1)?.to_string(), after("-s")?, after("--sport")?, after("-d")?, after("--dport")?))
}

/// Delete the rules `lines` (iptables-restore `-D` lines of [`rules`])
/// through nft by their handles, in one `nft -f`: what iptables-nft keeps
/// as `ip saddr A ip daddr B meta mark != 0x0000c114 tcp sport P tcp
/// dport Q counter ... drop # handle N`. Returns the lines no rule was
/// found for (left to iptables-restore); an error when nft is not there
/// or iptables is not nft's.
fn delete_by_handle(fam: i32, lines: &[String]) -> Result<Vec<String>, String> {
    let (ipt, table) = if fam == libc::AF_INET6 { ("ip6tables", "ip6 filter") } else { ("iptables", "ip filter") };
    let v = std::process::Command::new(ipt).arg("-V").output().map_err(|e| format!("{ipt} -V: {e}"))?;
    if !String::from_utf8_lossy(&v.stdout).contains("nf_tables") {
        return Err(format!("{ipt} is not the nf_tables one"));
    }
    let mut handles: std::collections::HashMap<(String, String, String, String, String), Vec<String>> = std::collections::HashMap::new();
    for chain in ["INPUT", "OUTPUT"] {
        let out = std::process::Command::new("nft").args(["-a", "list", "chain"]).args(table.split(' ')).arg(chain).output().map_err(|e| format!("nft: {e}"))?;
        if !out.status.success() {
            return Err(format!("nft -a list chain {table} {chain}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            if !l.contains("meta mark != 0x0000c114") || !w.contains(&"drop") {
                continue;
            }
            let after = |k: &str| w.iter().position(|x| *x == k).and_then(|i| w.get(i + 1)).map(|x| x.to_string());
            let (Some(sa), Some(da), Some(sp), Some(dp), Some(h)) = (after("saddr"), after("daddr"), after("sport"), after("dport"), after("handle")) else { continue };
            handles.entry((chain.to_string(), sa, sp, da, dp)).or_default().push(h);
        }
    }
    let mut script = String::new();
    let mut rest = Vec::new();
    for l in lines {
        match rule_key(l).and_then(|k| handles.get_mut(&k)).and_then(|v| v.pop()) {
            Some(h) => script.push_str(&format!("delete rule {table} {} handle {h}\n", rule_key(l).expect("parsed").0)),
            None => rest.push(l.clone()),
        }
    }
    if !script.is_empty() {
        use std::io::Write;
        let mut child = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("nft -f: {e}"))?;
        child.stdin.take().expect("piped").write_all(script.as_bytes()).map_err(|e| format!("writing to nft: {e}"))?;
        let out = child.wait_with_output().map_err(|e| format!("waiting for nft: {e}"))?;
        if !out.status.success() {
            return Err(format!("nft -f: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
    }
    Ok(rest)
}

fn set(s: BorrowedFd<'_>, name: i32, v: i32, what: &str) -> Result<(), String> {
    si::set_int(s, libc::IPPROTO_TCP, name, v).map_err(|e| format!("setsockopt {what} {v}: {e}"))
}

fn get(s: BorrowedFd<'_>, name: i32, what: &str) -> Result<i32, String> {
    si::get_int(s, libc::IPPROTO_TCP, name).map_err(|e| format!("getsockopt {what}: {e}"))
}

/// Peek `len` bytes of the queue selected in repair mode.
fn peek_queue(s: BorrowedFd<'_>, len: usize, what: &str) -> Result<Vec<u8>, String> {
    let mut b = vec![0u8; len];
    if len == 0 {
        return Ok(b);
    }
    let n = si::peek(s, &mut b).map_err(|e| format!("peeking the {what} queue ({len} bytes): {e}"))?;
    if n != len {
        return Err(format!("the {what} queue gave {n} bytes of {len}"));
    }
    Ok(b)
}

/// Dump: hold the established socket `sk` (a duplicate of the frozen
/// process's socket, inode `ino`) for [`read_all`]; a description held
/// already (inherited by several processes) is held once.
pub fn hold(sk: OwnedFd, src: Addr, dst: Addr, ino: u32) {
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    if !held.iter().any(|h| h.ino == ino) {
        held.push(Held { sk, src, dst, ino, locked: false, repaired: false });
    }
}

/// Read one held socket, locked and in repair mode.
fn read_one(s: BorrowedFd<'_>) -> Result<TcpStream, String> {
    let ti = si::tcp_conn_info(s).map_err(|e| format!("TCP_INFO: {e}"))?;
    // (FIN_WAIT1 may have become FIN_WAIT2 before the lock: the peer's
    // acknowledgement needs nothing of the frozen program)
    let state = u32::from(ti.state);
    if !carried(state) {
        return Err(format!("its state changed to {} while the tree was frozen", super::inet::state_name(state)));
    }
    let fin = sends_fin(state);
    set(s, si::TCP_REPAIR_QUEUE, si::TCP_RECV_QUEUE, "TCP_REPAIR_QUEUE")?;
    let inq_seq = get(s, si::TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ (receive queue)")? as u32;
    let inq_len = si::ioctl_int(s, si::SIOCINQ).map_err(|e| format!("SIOCINQ: {e}"))?;
    let inq = peek_queue(s, inq_len.max(0) as usize, "receive")?;
    set(s, si::TCP_REPAIR_QUEUE, si::TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE")?;
    let outq_seq = get(s, si::TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ (send queue)")? as u32;
    let mut outq_len = si::ioctl_int(s, si::SIOCOUTQ).map_err(|e| format!("SIOCOUTQ: {e}"))?;
    let mut unsq_len = si::ioctl_int(s, si::SIOCOUTQNSD).map_err(|e| format!("SIOCOUTQNSD: {e}"))?;
    if fin {
        // our FIN takes a sequence number, not a byte of the queue: it is
        // in both counts while unacknowledged (unsent), in neither after
        outq_len = (outq_len - 1).max(0);
        unsq_len = (unsq_len - 1).max(0);
    }
    let outq = peek_queue(s, outq_len.max(0) as usize, "send")?;
    set(s, si::TCP_REPAIR_QUEUE, 0, "TCP_REPAIR_QUEUE")?;
    let mss_clamp = get(s, libc::TCP_MAXSEG, "TCP_MAXSEG")? as u32;
    let timestamp = get(s, si::TCP_TIMESTAMP, "TCP_TIMESTAMP")? as u32;
    let window = si::get_repair_window(s).map_err(|e| format!("TCP_REPAIR_WINDOW: {e}"))?;
    Ok(TcpStream {
        state,
        inq_seq,
        outq_seq,
        inq,
        outq,
        unsq_len: unsq_len.max(0) as u32,
        opt_mask: ti.options,
        snd_wscale: ti.snd_wscale,
        rcv_wscale: ti.rcv_wscale,
        mss_clamp,
        timestamp,
        window: Some(window),
    })
}

/// Dump, once every fd table of the tree is read (the tree frozen): lock
/// every held connection (one `iptables-restore` for all), put each in
/// repair mode and read it into the fds of `tables` that hold it. The
/// sockets stay in repair mode until [`release_dump`].
pub fn read_all(tables: &mut [(crate::sys::Pid, &mut Vec<crate::model::Fd>)]) -> Result<(), crate::dump::files::FilesError> {
    use crate::dump::files::FilesError;
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    if held.is_empty() {
        return Ok(());
    }
    // the fd that names each inode first, for errors
    let name = |ino: u32| {
        tables.iter().find_map(|(pid, fds)| fds.iter().find(|f| matches!(&f.file, crate::model::FileDesc::Kind(super::Kind::Inet(k)) if k.ino == ino)).map(|f| (*pid, f.fd)))
    };
    let refuse = |ino: u32, why: String| {
        let (pid, fd) = name(ino).unwrap_or((0, -1));
        FilesError::Kind { pid, fd, kind: super::inet::Inet::NAME_OF, why }
    };
    let conns: Vec<(Addr, Addr)> = held.iter().map(|h| (h.src, h.dst)).collect();
    {
        use std::os::fd::AsRawFd;
        let socks: Vec<i32> = held.iter().map(|h| h.sk.as_raw_fd()).collect();
        start_guard(&socks).map_err(|e| refuse(held[0].ino, format!("the guard of {} established connection(s): {e}", conns.len())))?;
    }
    lock(&conns).map_err(|e| refuse(held[0].ino, format!("locking {} established connection(s): {e}", conns.len())))?;
    for h in held.iter_mut() {
        h.locked = true;
    }
    let mut streams = std::collections::HashMap::new();
    for h in held.iter_mut() {
        let what = format!("the established TCP connection {} -> {}", super::inet::ip_port(&h.src), super::inet::ip_port(&h.dst));
        si::set_int(h.sk.as_fd(), libc::IPPROTO_TCP, si::TCP_REPAIR, si::REPAIR_ON).map_err(|e| refuse(h.ino, format!("{what}: setsockopt TCP_REPAIR on: {e}")))?;
        h.repaired = true;
        let st = read_one(h.sk.as_fd()).map_err(|e| refuse(h.ino, format!("{what}: {e}")))?;
        // out of repair mode until the kill, if there is one (see the
        // module's doc): an engine that dies now leaves it working
        si::set_int(h.sk.as_fd(), libc::IPPROTO_TCP, si::TCP_REPAIR, si::REPAIR_OFF_NO_WP).map_err(|e| refuse(h.ino, format!("{what}: setsockopt TCP_REPAIR off: {e}")))?;
        h.repaired = false;
        streams.insert(h.ino, Box::new(st));
    }
    crate::fault::point("tcp-repaired");
    for (_, fds) in tables.iter_mut() {
        for f in fds.iter_mut() {
            if let crate::model::FileDesc::Kind(super::Kind::Inet(k)) = &mut f.file {
                if let Some(st) = streams.get(&k.ino) {
                    k.state = st.state;
                    k.stream = Some(st.clone());
                }
            }
        }
    }
    Ok(())
}

/// The end of a dump (from the frozen tree's release, before the
/// processes run on or are killed): with `running`, every socket of
/// [`dump`] comes out of repair mode and its lock is lifted; else they are
/// left in repair mode (closed by the kill without a word to the peer)
/// and locked for the restore.
pub fn release_dump(running: bool) {
    let held = std::mem::take(&mut *HELD.lock().unwrap_or_else(|p| p.into_inner()));
    if held.is_empty() {
        return;
    }
    if !running {
        // the processes are killed next: into repair mode again, so that
        // their sockets close sending nothing
        for h in held.iter().filter(|h| h.locked) {
            if let Err(e) = si::set_int(h.sk.as_fd(), libc::IPPROTO_TCP, si::TCP_REPAIR, si::REPAIR_ON) {
                crate::pr_err!("TCP_REPAIR on again for {} - {}: {e}", super::inet::ip_port(&h.src), super::inet::ip_port(&h.dst));
            }
        }
        stop_guard();
        return;
    }
    for h in held.iter().filter(|h| h.repaired) {
        if let Err(e) = si::set_int(h.sk.as_fd(), libc::IPPROTO_TCP, si::TCP_REPAIR, si::REPAIR_OFF) {
            crate::pr_err!("TCP_REPAIR off on {} - {}: {e}", super::inet::ip_port(&h.src), super::inet::ip_port(&h.dst));
        }
    }
    let conns: Vec<(Addr, Addr)> = held.iter().filter(|h| h.locked).map(|h| (h.src, h.dst)).collect();
    if !conns.is_empty() {
        unlock(&conns);
    }
    stop_guard();
}

/// Write `data` to the queue selected in repair mode, in pieces that the
/// socket's buffer takes.
fn fill_queue(s: BorrowedFd<'_>, data: &[u8], what: &str) -> Result<(), String> {
    let mut off = 0;
    let mut chunk = data.len().max(1);
    while off < data.len() {
        let end = (off + chunk).min(data.len());
        match si::send(s, &data[off..end]) {
            Ok(n) => off += n,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOMEM) | Some(libc::EAGAIN)) && chunk > 1024 => chunk /= 2,
            Err(e) => return Err(format!("writing the {what} queue ({} of {} bytes in): {e}", off, data.len())),
        }
    }
    Ok(())
}

/// Restore (the restore child): the connection `src` -> `dst` of `st` on
/// `sk`, a new TCP socket with its options before bind already set. It
/// is left in repair mode ([`finish_restore`] ends it).
pub fn restore(sk: &OwnedFd, src: Addr, dst: Addr, st: &TcpStream, bufs: (u32, u32)) -> Result<(), String> {
    let s = sk.as_fd();
    set(s, si::TCP_REPAIR, si::REPAIR_ON, "TCP_REPAIR")?;
    si::bind(s, src).map_err(|e| format!("bind to {} (repair mode): {e}", super::inet::ip_port(&src)))?;
    let inq_len = st.inq.len() as u32;
    let outq_len = st.outq.len() as u32;
    set(s, si::TCP_REPAIR_QUEUE, si::TCP_RECV_QUEUE, "TCP_REPAIR_QUEUE")?;
    // (a FIN received is delivered again below, after the data: its
    // sequence number is the last of inq_seq)
    let rcv_end = if st.fin_received() { st.inq_seq.wrapping_sub(1) } else { st.inq_seq };
    set(s, si::TCP_QUEUE_SEQ, rcv_end.wrapping_sub(inq_len) as i32, "TCP_QUEUE_SEQ (receive queue)")?;
    set(s, si::TCP_REPAIR_QUEUE, si::TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE")?;
    // (a FIN sent is queued again below, after the data: its sequence
    // number is the last of outq_seq)
    let data_end = if st.fin_sent() { st.outq_seq.wrapping_sub(1) } else { st.outq_seq };
    set(s, si::TCP_QUEUE_SEQ, data_end.wrapping_sub(outq_len) as i32, "TCP_QUEUE_SEQ (send queue)")?;
    set(s, si::TCP_REPAIR_QUEUE, 0, "TCP_REPAIR_QUEUE")?;
    si::connect(s, dst).map_err(|e| format!("connect to {} (repair mode): {e}", super::inet::ip_port(&dst)))?;
    let mut opts = vec![(si::TCPOPT_MSS, st.mss_clamp)];
    if st.opt_mask & si::TCPI_OPT_WSCALE != 0 {
        opts.push((si::TCPOPT_WINDOW, st.snd_wscale | (st.rcv_wscale << 16)));
    }
    if st.opt_mask & si::TCPI_OPT_SACK != 0 {
        opts.push((si::TCPOPT_SACK_PERM, 0));
    }
    if st.opt_mask & si::TCPI_OPT_TIMESTAMPS != 0 {
        opts.push((si::TCPOPT_TIMESTAMP, 0));
    }
    si::set_repair_options(s, &opts).map_err(|e| format!("setsockopt TCP_REPAIR_OPTIONS {opts:?}: {e}"))?;
    // the queues must fit the buffers: as large as when dumped (what the
    // kernel had grown them to), or as the queue; SO_BUF_LOCK is set
    // again as dumped afterwards (by the options)
    let sol = libc::SOL_SOCKET;
    let want_snd = bufs.0.max(outq_len.saturating_mul(2)) / 2;
    let want_rcv = bufs.1.max(inq_len.saturating_mul(2)) / 2;
    for (force, v, what) in [(libc::SO_SNDBUFFORCE, want_snd, "SO_SNDBUFFORCE"), (libc::SO_RCVBUFFORCE, want_rcv, "SO_RCVBUFFORCE")] {
        if v > 0 {
            si::set_int(s, sol, force, v.min(i32::MAX as u32) as i32).map_err(|e| format!("setsockopt {what} {v}: {e}"))?;
        }
    }
    set(s, si::TCP_REPAIR_QUEUE, si::TCP_RECV_QUEUE, "TCP_REPAIR_QUEUE")?;
    fill_queue(s, &st.inq, "receive")?;
    set(s, si::TCP_REPAIR_QUEUE, si::TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE")?;
    fill_queue(s, &st.outq, "send")?;
    set(s, si::TCP_REPAIR_QUEUE, 0, "TCP_REPAIR_QUEUE")?;
    // the FINs in the order they came: LAST_ACK's end got the peer's
    // before it sent its own, CLOSING's sent its own first
    if st.state == LAST_ACK {
        deliver_peer_fin(s, src, dst, st, CLOSE_WAIT)?;
    }
    if st.fin_sent() {
        set(s, si::TCP_REPAIR_QUEUE, si::TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE")?;
        // shutdown in repair mode with the send queue selected queues the
        // FIN as sent, nothing on the wire: ESTABLISHED -> FIN_WAIT1, writes
        // EPIPE. One the peer had acknowledged (FIN_WAIT2) goes out again
        // by retransmission once repair mode is off; the peer answers the
        // duplicate with its acknowledgement and the socket is in
        // FIN_WAIT2 again (upstream forges that acknowledgement instead)
        si::shutdown(s, libc::SHUT_WR).map_err(|e| format!("shutdown SHUT_WR (repair mode, our FIN of {}): {e}", super::inet::state_name(st.state)))?;
        set(s, si::TCP_REPAIR_QUEUE, 0, "TCP_REPAIR_QUEUE")?;
    }
    if matches!(st.state, CLOSE_WAIT | CLOSING) {
        deliver_peer_fin(s, src, dst, st, st.state)?;
    }
    // (the window after the FINs: its rcv_wup may count the peer's)
    if let Some(w) = &st.window {
        si::set_repair_window(s, w).map_err(|e| format!("setsockopt TCP_REPAIR_WINDOW {w:?}: {e}"))?;
    }
    if st.opt_mask & si::TCPI_OPT_TIMESTAMPS != 0 {
        set(s, si::TCP_TIMESTAMP, st.timestamp as i32, "TCP_TIMESTAMP")?;
    }
    // (SO_BUF_LOCK back to none; the options set it as dumped)
    let _ = si::set_int(s, sol, 72, 0);
    Ok(())
}

/// Give the restored socket `s` (in repair mode, `src` its name, `dst`
/// its peer's) the peer's FIN, which the kernel takes only from the wire:
/// a FIN+ACK segment forged from the peer's address and port, with the
/// FIN's sequence number (the last of `inq_seq`), acknowledging nothing
/// new (the start of the send queue) and advertising the peer's window as
/// dumped, sent through a raw socket (IPPROTO_RAW: the IP header is ours)
/// with the lock's mark, so that the lock's rules let it by. It is
/// delivered locally (the destination is `src`) and taken at once; the
/// socket is then in state `want` (CLOSE_WAIT, or CLOSING after our FIN).
/// An acknowledgement it answers with is dropped by the lock (the peer
/// had its acknowledgement when it sent the FIN; without the lock it is
/// a duplicate to it).
fn deliver_peer_fin(s: BorrowedFd<'_>, src: Addr, dst: Addr, st: &TcpStream, want: u32) -> Result<(), String> {
    let name = super::inet::state_name;
    let seq = st.inq_seq.wrapping_sub(1);
    let ack = st.outq_seq.wrapping_sub(st.outq.len() as u32).wrapping_sub(u32::from(st.fin_sent()));
    let win = match st.window {
        Some(w) => {
            let shift = if st.opt_mask & si::TCPI_OPT_WSCALE != 0 { st.snd_wscale } else { 0 };
            (w.snd_wnd >> shift).min(65535) as u16
        }
        None => 65535,
    };
    let (pkt, to) = fin_segment(src, dst, seq, ack, win);
    let what = format!("the peer's FIN (forged from {}, seq {seq}, ack {ack})", super::inet::ip_port(&dst));
    let raw = si::socket(to.family, libc::SOCK_RAW, libc::IPPROTO_RAW).map_err(|e| format!("{what}: a raw socket: {e}"))?;
    si::set_int(raw.as_fd(), libc::SOL_SOCKET, libc::SO_MARK, LOCK_MARK).map_err(|e| format!("{what}: setsockopt SO_MARK {LOCK_MARK:#x}: {e}"))?;
    si::send_to(raw.as_fd(), &pkt, to).map_err(|e| format!("{what}: sendto: {e}"))?;
    // (loopback delivery runs in the sender's softirq: normally taken
    // before sendto returns)
    let t0 = std::time::Instant::now();
    loop {
        let now = u32::from(si::tcp_conn_info(s).map_err(|e| format!("{what}: TCP_INFO: {e}"))?.state);
        if now == want {
            return Ok(());
        }
        if t0.elapsed() > std::time::Duration::from_secs(2) {
            return Err(format!("{what}: not taken, the socket is in {} (want {})", name(now), name(want)));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The IPv4 address of `a` (an IPv4 one, or IPv4-mapped IPv6), as it sits
/// in memory (network order).
fn v4_of(a: &Addr) -> Option<[u8; 4]> {
    if a.family == libc::AF_INET {
        return Some(a.words[0].to_ne_bytes());
    }
    let mapped = a.words[0] == 0 && a.words[1] == 0 && a.words[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    mapped.then(|| a.words[3].to_ne_bytes())
}

/// The ones' complement sum of `parts` (RFC 1071), folded and inverted.
fn inet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for p in parts {
        for c in p.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A FIN+ACK segment from `peer` to `ours` with the IP header (IPv4 when
/// both are IPv4 or IPv4-mapped, else IPv6), checksums filled, and the
/// address to send it to (`ours`, port 0).
fn fin_segment(ours: Addr, peer: Addr, seq: u32, ack: u32, win: u16) -> (Vec<u8>, Addr) {
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&peer.port.to_be_bytes());
    tcp[2..4].copy_from_slice(&ours.port.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = 5 << 4; // data offset: 5 words, no options
    tcp[13] = 0x11; // FIN | ACK
    tcp[14..16].copy_from_slice(&win.to_be_bytes());
    let len = tcp.len() as u16;
    if let (Some(s4), Some(d4)) = (v4_of(&peer), v4_of(&ours)) {
        let pseudo = [&s4[..], &d4[..], &[0, libc::IPPROTO_TCP as u8], &len.to_be_bytes()].concat();
        let c = inet_checksum(&[&pseudo, &tcp]);
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        let mut ip = [0u8; 20];
        ip[0] = 0x45; // version 4, 5 words
        ip[2..4].copy_from_slice(&(20 + len).to_be_bytes());
        ip[6] = 0x40; // don't fragment
        ip[8] = 64; // ttl
        ip[9] = libc::IPPROTO_TCP as u8;
        ip[12..16].copy_from_slice(&s4);
        ip[16..20].copy_from_slice(&d4);
        let c = inet_checksum(&[&ip]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let to = Addr { family: libc::AF_INET, words: [u32::from_ne_bytes(d4), 0, 0, 0], port: 0, scope_id: 0 };
        return ([&ip[..], &tcp[..]].concat(), to);
    }
    let bytes = |a: &Addr| a.words.iter().flat_map(|w| w.to_ne_bytes()).collect::<Vec<u8>>();
    let (s6, d6) = (bytes(&peer), bytes(&ours));
    let pseudo = [&s6[..], &d6[..], &u32::from(len).to_be_bytes(), &[0, 0, 0, libc::IPPROTO_TCP as u8]].concat();
    let c = inet_checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = [0u8; 40];
    ip[0] = 0x60; // version 6
    ip[4..6].copy_from_slice(&len.to_be_bytes());
    ip[6] = libc::IPPROTO_TCP as u8;
    ip[7] = 64; // hop limit
    ip[8..24].copy_from_slice(&s6);
    ip[24..40].copy_from_slice(&d6);
    let to = Addr { family: libc::AF_INET6, words: ours.words, port: 0, scope_id: ours.scope_id };
    ([&ip[..], &tcp[..]].concat(), to)
}

/// Before the restored tree runs: each established connection among
/// `fds` of process `pid` out of repair mode, SO_REUSEADDR as dumped
/// (repair mode's forced reuse is dropped with it).
pub fn finish_restore(pid: crate::sys::Pid, fds: &[crate::model::Fd]) -> Result<(), String> {
    let mut pidfd = None;
    let mut seen = std::collections::HashSet::new();
    for f in fds {
        let crate::model::FileDesc::Kind(super::Kind::Inet(k)) = &f.file else { continue };
        if k.stream.is_none() || !seen.insert(f.desc) {
            continue;
        }
        if pidfd.is_none() {
            pidfd = Some(crate::sys::process::pidfd_open(pid).map_err(|e| format!("pidfd_open {pid}: {e}"))?);
        }
        let sk = crate::sys::process::pidfd_getfd(pidfd.as_ref().expect("just set"), f.fd).map_err(|e| format!("pidfd_getfd fd {} of {pid}: {e}", f.fd))?;
        let s = sk.as_fd();
        set(s, si::TCP_REPAIR, si::REPAIR_OFF, "TCP_REPAIR").map_err(|e| format!("fd {} of {pid}: {e}", f.fd))?;
        si::set_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR, k.opts.reuseaddr as i32).map_err(|e| format!("fd {} of {pid}: setsockopt SO_REUSEADDR: {e}", f.fd))?;
    }
    Ok(())
}

/// After the restored tree runs: lift the locks of its established
/// connections (each socket's, as the dump set them).
pub fn unlock_restored(tree: &crate::model::Tree) {
    // (a network namespace of its own is unlocked whole: crate::netns)
    if tree.net.is_some() {
        return;
    }
    let mut conns = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for t in &tree.tasks {
        for f in &t.fds {
            if let crate::model::FileDesc::Kind(super::Kind::Inet(k)) = &f.file {
                if let (Some(_), Some(d)) = (&k.stream, k.dst) {
                    if seen.insert(k.ino) {
                        conns.push((k.src, d));
                    }
                }
            }
        }
    }
    if !conns.is_empty() {
        unlock(&conns);
    }
}

/// The `tcp_stream_entry` of `st` and its payload (the receive queue, then
/// the send queue), as upstream 4.2 writes them.
pub fn to_image(st: &TcpStream) -> (images_proto::pb::TcpStreamEntry, Vec<u8>) {
    let w = st.window.unwrap_or_default();
    let e = images_proto::pb::TcpStreamEntry {
        inq_len: st.inq.len() as u32,
        inq_seq: st.inq_seq,
        outq_len: st.outq.len() as u32,
        outq_seq: st.outq_seq,
        opt_mask: st.opt_mask,
        snd_wscale: st.snd_wscale,
        mss_clamp: st.mss_clamp,
        rcv_wscale: Some(st.rcv_wscale),
        timestamp: Some(st.timestamp),
        // (superseded by inet_sk_entry's tcp_opts: upstream 4.2 leaves them out)
        cork: None,
        nodelay: None,
        unsq_len: Some(st.unsq_len),
        snd_wl1: st.window.map(|_| w.snd_wl1),
        snd_wnd: st.window.map(|_| w.snd_wnd),
        max_window: st.window.map(|_| w.max_window),
        rcv_wnd: st.window.map(|_| w.rcv_wnd),
        rcv_wup: st.window.map(|_| w.rcv_wup),
    };
    let mut payload = Vec::with_capacity(st.inq.len() + st.outq.len());
    payload.extend_from_slice(&st.inq);
    payload.extend_from_slice(&st.outq);
    (e, payload)
}

/// Read `tcp-stream-INO.img` from `dir` (untrusted): errors name the file
/// and field.
pub fn read_image(dir: &std::path::Path, ino: u32, state: u32) -> Result<TcpStream, crate::images_io::ImagesError> {
    use crate::images_io::ImagesError;
    use images_proto::magic as mg;
    // (upstream names it by the inode in hex)
    let file = mg::TCP_STREAM.file_name(format!("{ino:x}"));
    let bad = |what: String| ImagesError::Bad { file: file.clone(), what };
    if !dir.join(&file).exists() {
        return Err(bad("missing: an established TCP connection needs its stream image".into()));
    }
    let mut r = images_proto::image::ImageReader::open(dir, &file, &mg::TCP_STREAM)?;
    let e: images_proto::pb::TcpStreamEntry = r.next_entry()?.ok_or_else(|| bad("no entry".into()))?;
    // the payload is bounded by the file (the reader refuses a length past it)
    let inq = r.read_payload(u64::from(e.inq_len))?;
    let outq = r.read_payload(u64::from(e.outq_len))?;
    let unsq_len = e.unsq_len.unwrap_or(0);
    if unsq_len > e.outq_len {
        return Err(bad(format!("entry 0: unsq_len: {unsq_len} is past outq_len {}", e.outq_len)));
    }
    let rcv_wscale = e.rcv_wscale.unwrap_or(0);
    for (f, v) in [("snd_wscale", e.snd_wscale), ("rcv_wscale", rcv_wscale)] {
        if v > 14 {
            return Err(bad(format!("entry 0: {f}: {v} is past 14 (RFC 7323's largest shift)")));
        }
    }
    if e.mss_clamp == 0 || e.mss_clamp > 65535 {
        return Err(bad(format!("entry 0: mss_clamp: {} is not an MSS", e.mss_clamp)));
    }
    if e.opt_mask & !0xf != 0 {
        return Err(bad(format!("entry 0: opt_mask: {:#x} has bits other than TCPI_OPT_TIMESTAMPS|SACK|WSCALE|ECN", e.opt_mask)));
    }
    let window = match (e.snd_wl1, e.snd_wnd, e.max_window, e.rcv_wnd, e.rcv_wup) {
        (Some(snd_wl1), Some(snd_wnd), Some(max_window), Some(rcv_wnd), Some(rcv_wup)) => Some(RepairWindow { snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup }),
        (None, None, None, None, None) => None,
        _ => return Err(bad("entry 0: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup: some given, not all".into())),
    };
    // the kernel's own bounds for TCP_REPAIR_WINDOW, against rcv_nxt
    // (inq_seq, a received FIN counted): refused here by name, not by an
    // EINVAL in the middle of the restore
    let after = |a: u32, b: u32| (b.wrapping_sub(a) as i32) < 0;
    if let Some(w) = &window {
        if after(w.rcv_wup, e.inq_seq) {
            return Err(bad(format!("entry 0: rcv_wup: {} is past inq_seq {} (the window cannot start after the bytes received)", w.rcv_wup, e.inq_seq)));
        }
        if after(w.snd_wl1, e.inq_seq.wrapping_add(w.rcv_wnd)) {
            return Err(bad(format!("entry 0: snd_wl1: {} is past inq_seq {} + rcv_wnd {}", w.snd_wl1, e.inq_seq, w.rcv_wnd)));
        }
    }
    Ok(TcpStream {
        state,
        inq_seq: e.inq_seq,
        outq_seq: e.outq_seq,
        inq,
        outq,
        unsq_len,
        opt_mask: e.opt_mask,
        snd_wscale: e.snd_wscale,
        rcv_wscale,
        mss_clamp: e.mss_clamp,
        timestamp: e.timestamp.unwrap_or(0),
        window,
    })
}
