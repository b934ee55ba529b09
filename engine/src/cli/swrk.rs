//! `criu swrk FD`: upstream's RPC service on a SOCK_SEQPACKET socket the
//! client (runc, crun, podman, go-criu) created and left open as our fd FD.
//! One protobuf message per packet, `criu_req` in, `criu_resp` out
//! (`images-proto/proto/rpc.proto`); nothing is written before a request
//! is read. Each request's `criu_opts` becomes the command line's [`Opts`]
//! ([`map_request`]), so a request runs the very code `criu dump`,
//! `criu restore`, `criu check`, `criu cpuinfo` and `criu tfork` run, with
//! the same engine options (`cli::engine_options`).
//!
//! Every field set to something the engine does not do is refused by name
//! (`criu_opts.manage_cgroups: ...`), never ignored; the fields that change
//! nothing here are accepted and listed in [`ACCEPTED`] with the reason.
//! Input is untrusted: a message that does not decode, misses a required
//! field, is over [`MAX_MSG`] bytes, has an unknown type, a bad fd number or
//! path, or an out-of-range value gets a `success=false` reply whose
//! `cr_errmsg` names the field; the service then exits 1.
//!
//! Requests: VERSION, FEATURE_CHECK, CHECK, DUMP, RESTORE, CPUINFO_DUMP,
//! CPUINFO_CHECK and ours, TFORK (4096, options in `criu_opts.tfork`, the
//! clones' pids in `criu_resp.tfork`); PRE_DUMP, SINGLE_PRE_DUMP,
//! PAGE_SERVER, PAGE_SERVER_CHLD and WAIT_PID are refused by name.
//! `keep_open` serves further requests on the same socket. With
//! `notify_scripts` the dump and restore stop at upstream's stages
//! ([`crate::notify`]) to send `NOTIFY{script, pid}` and wait for the
//! client's `NOTIFY{notify_success}`: false (or anything else) fails the
//! request there.

use super::{report, restore_root, run_check, run_cpuinfo, run_dump, setup_log, tfork_clones, Failure, Opts, VERSION};
use crate::cpuinfo;
use images_proto::rpc::{CriuDumpResp, CriuFeatures, CriuNotify, CriuOpts, CriuReq, CriuReqType, CriuResp, CriuRestoreResp, CriuTforkResp, CriuVersion};
use prost::Message as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// The largest request taken (runc's biggest is about 1.2 KiB; upstream
/// reads into 8 KiB): a longer one is refused, not truncated.
pub const MAX_MSG: usize = 64 * 1024;

/// The most clones one TFORK may ask for.
pub const MAX_TFORK_COPIES: u32 = 4096;

/// Longest path accepted in a field (PATH_MAX).
const MAX_PATH: usize = 4096;

/// `criu_opts` fields accepted although they change nothing here, and why
/// (docs/ARCHITECTURE.md "swrk RPC" has the same table).
pub const ACCEPTED: &[(&str, &str)] = &[
    ("ext_sharing, ext_masters, skip_mnt, enable_fs (set to false or empty)", "ask for nothing beyond what a mount namespace's dump does (ext_mnt is --external mnt[KEY]:VAL)"),
    ("root (on DUMP)", "the root of the dumped mount namespace: the dumped tree must share criu's, whose paths are the image's"),
    ("evasive_devices", "lets a restore open a device by another path when its own fails: the devices restored here (/dev/null, /dev/zero) are opened by path, a failure names it"),
    ("config_file (when the file does not exist)", "upstream skips a missing config file too (runc always names /etc/criu/runc.conf); an existing one is refused"),
    ("force_irmap, irmap_scan_paths", "as the command line's: inotify watch paths; inotify fds are dumped by handle"),
    ("tcp_skip_in_flight, weak_sysctls, mntns_compat_mode, pre_dump_mode", "as the command line's (criu --help)"),
    ("ghost_fiemap", "sparse unlinked files are already copied by their data extents (SEEK_DATA)"),
    ("every boolean set to false, every number set to its default", "asks for what is done anyway"),
];

/// A refusal or bad input, with the errno the reply carries.
struct Refusal {
    msg: String,
    errno: i32,
}

fn bad(msg: impl Into<String>) -> Refusal {
    Refusal { msg: msg.into(), errno: libc::EINVAL }
}

fn unsupported(msg: impl Into<String>) -> Refusal {
    Refusal { msg: msg.into(), errno: libc::EOPNOTSUPP }
}

/// Upstream's name of a request type.
pub fn type_name(t: i32) -> String {
    match CriuReqType::try_from(t) {
        Ok(k) => k.as_str_name().to_string(),
        Err(_) => format!("unknown request type {t}"),
    }
}

/// Decode one request: the schema check first (required fields, wire
/// errors, nesting: the message names the field), then the typed decode.
pub fn decode_request(buf: &[u8]) -> Result<CriuReq, String> {
    if buf.len() > MAX_MSG {
        return Err(format!("criu_req of {} bytes is over the limit of {MAX_MSG}", buf.len()));
    }
    images_proto::json::decode(buf, &images_proto::schema::M_RPC__CRIU_REQ, false).map_err(|e| format!("malformed criu_req: {e}"))?;
    CriuReq::decode(buf).map_err(|e| format!("malformed criu_req: {e}"))
}

/// What a request asks, mapped.
pub struct Mapped {
    /// The command line it amounts to.
    opts: Opts,
    /// `notify_scripts`.
    notify: bool,
}

/// A path field: not empty, no NUL (prost already refused bad UTF-8), at
/// most PATH_MAX.
fn path_field(name: &str, p: &str) -> Result<String, Refusal> {
    if p.is_empty() {
        return Err(bad(format!("criu_opts.{name}: empty path")));
    }
    if p.len() > MAX_PATH {
        return Err(bad(format!("criu_opts.{name}: path of {} bytes (at most {MAX_PATH})", p.len())));
    }
    if p.contains('\0') {
        return Err(bad(format!("criu_opts.{name}: path with a NUL byte")));
    }
    Ok(p.to_string())
}

/// A fd number of the client's: 0..=i32::MAX (where it is -1 for "none",
/// the caller handles that first).
fn fd_field(name: &str, n: i32) -> Result<i32, Refusal> {
    if n < 0 {
        return Err(bad(format!("criu_opts.{name}: bad fd number {n}")));
    }
    Ok(n)
}

/// Map `criu_opts` to the command line's options for request `kind`.
/// `open_dir(field, fd)` opens a directory fd of the client and gives the
/// path the engine uses for it (the service: through /proc/PEER/fd/N; the
/// fuzz target: a stand-in). `peer` is the client's pid (the dump target
/// when `pid` is absent, as upstream).
pub fn map_request(kind: CriuReqType, c: &CriuOpts, peer: i32, open_dir: &mut dyn FnMut(&str, i32) -> Result<String, String>) -> Result<Mapped, String> {
    map_opts(kind, c, peer, open_dir).map_err(|r| r.msg)
}

fn map_opts(kind: CriuReqType, c: &CriuOpts, peer: i32, open_dir: &mut dyn FnMut(&str, i32) -> Result<String, String>) -> Result<Mapped, Refusal> {
    use CriuReqType as T;
    let mut o = Opts {
        command: Some(
            match kind {
                T::Dump => "dump",
                T::Restore => "restore",
                T::Check => "check",
                T::CpuinfoDump | T::CpuinfoCheck => "cpuinfo",
                T::Tfork => "tfork",
                _ => return Err(bad(format!("{} takes no options here", kind.as_str_name()))),
            }
            .to_string(),
        ),
        // (the command line's defaults: cpu_cap fpu as upstream's)
        ..Opts::new()
    };
    match kind {
        T::CpuinfoDump => o.args.push("dump".into()),
        T::CpuinfoCheck => o.args.push("check".into()),
        _ => {}
    }
    // every field set to what is not done here, named (all of them at once)
    let mut refused: Vec<String> = Vec::new();
    let mut no = |set: bool, field: &str, why: &str| {
        if set {
            refused.push(format!("criu_opts.{field}: {why}"));
        }
    };
    let t = |b: Option<bool>| b == Some(true);
    no(c.parent_img.is_some(), "parent_img", "no incremental dumps (no pre-dump)");
    no(t(c.track_mem), "track_mem", "no memory tracking (no pre-dump)");
    no(t(c.auto_dedup), "auto_dedup", "no image deduplication");
    no(c.ps.is_some(), "ps", "no page server");
    no(!c.veths.is_empty(), "veths", "veth pairs are not restored (a network namespace holding only lo is)");
    no(!c.exec_cmd.is_empty(), "exec_cmd", "not supported");
    no(t(c.ext_sharing) || t(c.ext_masters), "ext_sharing/ext_masters", "shared and slave mounts are not supported yet");
    no(!c.skip_mnt.is_empty(), "skip_mnt", "skipping mounts is not supported yet");
    no(!c.enable_fs.is_empty(), "enable_fs", "file systems criu-rs does not mount anew are external mounts (ext_mnt)");
    no(!c.inherit_fd.is_empty() && kind != T::Restore, "inherit_fd", "only a RESTORE takes it");
    no(!c.unix_sk_ino.is_empty(), "unix_sk_ino", "external unix sockets by inode are not supported (ext_unix_sk is)");
    no(!c.join_ns.is_empty(), "join_ns", "joining namespaces is not supported");
    no(c.cgroup_props.is_some(), "cgroup_props", "only the default cgroup properties are dumped and restored");
    no(c.cgroup_props_file.is_some(), "cgroup_props_file", "only the default cgroup properties are dumped and restored");
    no(!c.cgroup_dump_controller.is_empty(), "cgroup_dump_controller", "every hierarchy of criu's is dumped");
    no(c.cgroup_yard.is_some(), "cgroup_yard", "the hierarchies are used where criu's mount namespace has them");
    no(t(c.lazy_pages), "lazy_pages", "no lazy pages");
    no(c.status_fd.is_some(), "status_fd", "no page server or lazy pages to report on");
    no(c.lsm_profile.is_some(), "lsm_profile", "LSM profiles are not restored");
    no(c.lsm_mount_context.is_some(), "lsm_mount_context", "mounts are not restored");
    for (v, f) in [(&c.tls_cacert, "tls_cacert"), (&c.tls_cacrl, "tls_cacrl"), (&c.tls_cert, "tls_cert"), (&c.tls_key, "tls_key")] {
        no(v.is_some(), f, "no page server (TLS)");
    }
    no(t(c.tls), "tls", "no page server (TLS)");
    no(t(c.tls_no_cn_verify), "tls_no_cn_verify", "no page server (TLS)");
    no(c.pidfd_store_sk.is_some(), "pidfd_store_sk", "no pidfd store (it serves pre-dumps)");
    no(t(c.skip_file_rwx_check), "skip_file_rwx_check", "not supported");
    no(t(c.unprivileged), "unprivileged", "not supported (criu-rs runs as root)");
    no(t(c.leave_stopped), "leave_stopped", "not supported");
    no(t(c.allow_uprobes), "allow_uprobes", "uprobes are not dumped");
    no(c.file_validation_method.is_some(), "file_validation_method", "not supported (the build id is checked when the image has one)");
    no(c.empty_ns.is_some_and(|n| n & !(libc::CLONE_NEWNET as u32) != 0), "empty_ns", "only CLONE_NEWNET (taken as --empty-ns net); other namespaces are not supported");
    if let Some(f) = &c.config_file {
        let f = path_field("config_file", f)?;
        no(std::path::Path::new(&f).exists(), "config_file", &format!("{f}: reading a config file over RPC is not supported"));
    }
    // (net[INODE]:KEY and tty[RDEV:DEV] on a DUMP are taken below;
    // anything else named)
    for (k, e) in c.external.iter().enumerate() {
        if !(kind == T::Dump && (e.starts_with("net[") || e.starts_with("tty["))) {
            refused.push(format!("criu_opts.external[{k}]: {e:?}: external resources other than a network namespace (net[INODE]:KEY) or a terminal (tty[RDEV:DEV]), on DUMP, are not supported"));
        }
    }
    if c.tfork.is_some() && kind != T::Tfork {
        refused.push(format!("criu_opts.tfork: only a TFORK request takes it, not {}", kind.as_str_name()));
    }
    if !refused.is_empty() {
        return Err(unsupported(refused.join("; ")));
    }
    for (v, f) in [(&c.pre_dump_mode, "pre_dump_mode"), (&c.network_lock, "network_lock"), (&c.manage_cgroups_mode, "manage_cgroups_mode")] {
        let known = match f {
            "pre_dump_mode" => v.is_none_or(|v| images_proto::rpc::CriuPreDumpMode::try_from(v).is_ok()),
            "network_lock" => v.is_none_or(|v| images_proto::rpc::CriuNetworkLockMethod::try_from(v).is_ok()),
            _ => v.is_none_or(|v| images_proto::rpc::CriuCgMode::try_from(v).is_ok()),
        };
        if !known {
            return Err(bad(format!("criu_opts.{f}: unknown value {}", v.unwrap_or_default())));
        }
    }

    dirs_and_log(kind, c, &mut o, open_dir)?;
    if matches!(kind, T::Dump | T::Tfork) {
        let pid = c.pid.unwrap_or(peer);
        if pid <= 0 {
            return Err(bad(format!("criu_opts.pid: invalid pid {pid}")));
        }
        o.tree = Some(pid.to_string());
    }
    o.leave_running = t(c.leave_running);
    o.shell_job = t(c.shell_job);
    // a pty slave whose master is outside the tree: dumped, and given a
    // new pair at restore whose master goes to the client (notify
    // `orphan-pts-master` with the fd)
    o.orphan_pts_master = t(c.orphan_pts_master) && matches!(kind, T::Dump | T::Restore);
    o.ext_unix_sk = t(c.ext_unix_sk);
    o.file_locks = t(c.file_locks);
    o.link_remap = t(c.link_remap);
    o.tcp_close = t(c.tcp_close);
    o.tcp_established = t(c.tcp_established);
    // CLONE_NEWNET: `--empty-ns net` (the only bit accepted above)
    o.empty_net = c.empty_ns.is_some_and(|n| n & libc::CLONE_NEWNET as u32 != 0);
    // manage_cgroups: soft, or ignore when false; manage_cgroups_mode
    // (checked below to be known) says which; neither: soft, as upstream
    if c.manage_cgroups == Some(false) {
        o.manage_cgroups = crate::cgroups::Mode::Ignore;
    }
    if let Some(m) = c.manage_cgroups_mode.and_then(crate::cgroups::Mode::from_rpc) {
        o.manage_cgroups = m;
    }
    // (paths checked by the restore, naming the option)
    o.cgroup_root = c.cg_root.iter().map(|r| (r.ctrl.clone(), r.path.clone())).collect();
    // (checked above to be a known method; the command line's rules apply)
    o.network_lock = c.network_lock.and_then(|v| images_proto::rpc::CriuNetworkLockMethod::try_from(v).ok()).map(|m| {
        use images_proto::rpc::CriuNetworkLockMethod as N;
        match m {
            N::Iptables => "iptables",
            N::Nftables => "nftables",
            N::Skip => "skip",
        }
        .to_string()
    });
    o.display_stats = t(c.display_stats);
    o.ghost_limit = c.ghost_limit.map(u64::from);
    if let Some(f) = &c.freeze_cgroup {
        o.freeze_cgroup = Some(path_field("freeze_cgroup", f)?);
    }
    if let Some(s) = c.timeout {
        if s == 0 {
            return Err(bad("criu_opts.timeout: 0 (want seconds, > 0)"));
        }
        o.timeout = Some(u64::from(s));
    }
    for (k, e) in c.ext_mnt.iter().enumerate() {
        if e.key.is_empty() || e.val.is_empty() || e.key.len() > MAX_PATH || e.val.len() > MAX_PATH {
            return Err(bad(format!("criu_opts.ext_mnt[{k}]: key and val must be 1..={MAX_PATH} bytes")));
        }
        o.ext_mnt.push((e.key.clone(), e.val.clone()));
    }
    o.auto_ext_mnt = c.auto_ext_mnt == Some(true);
    // inherit_fd: criu's own fds (the service inherited them from the
    // client), checked open when the restore starts
    if c.inherit_fd.len() > crate::inherit::MAX_INHERIT {
        return Err(bad(format!("criu_opts.inherit_fd: {} entries (at most {})", c.inherit_fd.len(), crate::inherit::MAX_INHERIT)));
    }
    for (k, e) in c.inherit_fd.iter().enumerate() {
        if e.fd < 0 {
            return Err(bad(format!("criu_opts.inherit_fd[{k}].fd: bad fd number {}", e.fd)));
        }
        crate::inherit::classify(&e.key).map_err(|m| {
            let r = format!("criu_opts.inherit_fd[{k}].key: {m}");
            // (a kind not carried is a refusal, a malformed key bad input)
            if m.contains("not supported") { unsupported(r) } else { bad(r) }
        })?;
        o.inherit_fd.push((e.fd, e.key.clone()));
    }
    for (k, e) in c.external.iter().enumerate() {
        let mut probe = Opts::new();
        if let Some(p) = probe.parse(&["--external".to_string(), e.clone()], false).into_iter().next() {
            return Err(bad(format!("criu_opts.external[{k}]: {}", p.msg)));
        }
        if e.starts_with("net[") {
            o.ext_net = probe.ext_net;
        }
        o.ext_tty.extend(probe.ext_tty);
    }
    if let Some(r) = &c.root {
        let r = path_field("root", r)?;
        // a dump's root is the dumped mount namespace's (see ACCEPTED)
        if kind == T::Restore {
            o.root = Some(r);
        }
    }
    if let Some(v) = c.cpu_cap {
        o.cpu_cap = v & (cpuinfo::CAP_ALL | cpuinfo::CAP_IMAGE);
    }
    if kind == T::Restore {
        o.restore_sibling = t(c.rst_sibling);
        // the service answers once the tree runs: it never waits for it
        o.detached = true;
    }
    if kind == T::Tfork {
        let Some(tf) = &c.tfork else {
            return Err(bad("criu_opts.tfork: a TFORK request needs its options (copies at least)"));
        };
        match tf.copies {
            None | Some(0) => return Err(bad("criu_opts.tfork.copies: missing or 0 (want a count, > 0)")),
            Some(n) if n > MAX_TFORK_COPIES => return Err(bad(format!("criu_opts.tfork.copies: {n} is too many (at most {MAX_TFORK_COPIES})"))),
            Some(n) => o.copies = Some(n.to_string()),
        }
        if let Some(p) = &tf.persist {
            if !matches!(p.as_str(), "none" | "sync" | "async") {
                return Err(bad(format!("criu_opts.tfork.persist: unknown mode {p:?} (none, sync, async)")));
            }
            if p != "none" && o.images_dir.is_none() {
                return Err(bad(format!("criu_opts.tfork.persist: {p} needs an images dir (images_dir_fd or images_dir)")));
            }
            o.persist = Some(p.clone());
        }
        if let Some(r) = &tf.root_snapshot {
            if r.len() > MAX_PATH {
                return Err(bad(format!("criu_opts.tfork.root_snapshot: {} bytes (at most {MAX_PATH})", r.len())));
            }
            crate::root_snapshot::Mode::parse(r).map_err(|e| bad(format!("criu_opts.tfork.root_snapshot: {e}")))?;
            if o.images_dir.is_none() {
                return Err(bad("criu_opts.tfork.root_snapshot: needs an images dir (images_dir_fd or images_dir)"));
            }
            o.root_snapshot = Some(r.clone());
        }
        // connections to peers outside the tree closed in the clones: as
        // criu_opts.tcp_close (upstream's field 52) or criu_opts.tfork.tcp_close
        if t(tf.tcp_close) {
            o.tcp_close = true;
        }
        if o.tcp_established {
            return Err(unsupported("criu_opts.tcp_established: does not apply to a TFORK request (a clone can't carry the source's live connection; tcp_close closes it in the clones)"));
        }
    }
    Ok(Mapped { opts: o, notify: t(c.notify_scripts) })
}

/// The images dir, work dir and log of a request (also for the log of a
/// refused one): `o`'s images_dir, work_dir, log_file, loglevel.
fn dirs_and_log(kind: CriuReqType, c: &CriuOpts, o: &mut Opts, open_dir: &mut dyn FnMut(&str, i32) -> Result<String, String>) -> Result<(), Refusal> {
    use CriuReqType as T;
    let t = |b: Option<bool>| b == Some(true);
    // the images dir: the client's fd, else a path
    let needs_dir = matches!(kind, T::Dump | T::Restore | T::CpuinfoDump | T::CpuinfoCheck);
    if c.images_dir_fd != -1 {
        let n = fd_field("images_dir_fd", c.images_dir_fd)?;
        if kind != T::Check {
            o.images_dir = Some(open_dir("images_dir_fd", n).map_err(|e| bad(format!("criu_opts.images_dir_fd: {e}")))?);
        }
    } else if let Some(p) = &c.images_dir {
        o.images_dir = Some(path_field("images_dir", p)?);
    } else if needs_dir {
        return Err(bad("criu_opts.images_dir_fd: -1 and no images_dir: where are the images?"));
    }
    if let Some(n) = c.work_dir_fd {
        let n = fd_field("work_dir_fd", n)?;
        o.work_dir = Some(open_dir("work_dir_fd", n).map_err(|e| bad(format!("criu_opts.work_dir_fd: {e}")))?);
    }
    if t(c.log_to_stderr) {
        o.log_file = Some("-".into());
    } else if let Some(f) = &c.log_file {
        let f = path_field("log_file", f)?;
        // as upstream: a name in the work dir, no subdirectories
        if f.contains('/') || f == "." || f == ".." {
            return Err(bad(format!("criu_opts.log_file: {f:?}: no subdirectories allowed in the log file name")));
        }
        o.log_file = Some(f);
    }
    if let Some(l) = c.log_level {
        if l < 0 {
            return Err(bad(format!("criu_opts.log_level: {l} is negative")));
        }
        o.loglevel = Some(l.min(4) as u32);
    }
    Ok(())
}

/// The path the engine uses for a directory fd the service opened: its
/// own path when that still names the same directory, else the fd itself
/// through /proc (kept open for the request's life in `held`).
fn dir_path(fd: OwnedFd, held: &mut Vec<OwnedFd>) -> String {
    let proc = format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd());
    let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| {
        use std::os::unix::fs::MetadataExt;
        (a.dev(), a.ino()) == (b.dev(), b.ino())
    };
    let named = std::fs::read_link(&proc).ok().and_then(|p| {
        let (a, b) = (std::fs::metadata(&p).ok()?, std::fs::metadata(&proc).ok()?);
        (same(&a, &b) && p.is_absolute()).then(|| p.to_str().map(str::to_string))?
    });
    held.push(fd);
    named.unwrap_or(proc)
}

fn reply(kind: i32, success: bool) -> CriuResp {
    CriuResp { r#type: kind, success, ..CriuResp::default() }
}

fn failed(kind: i32, r: &Refusal) -> CriuResp {
    CriuResp { cr_errno: Some(r.errno), cr_errmsg: Some(r.msg.clone()), ..reply(kind, false) }
}

fn send(sock: BorrowedFd<'_>, r: &CriuResp) -> std::io::Result<()> {
    crate::sys::rpc::send_packet(sock, &r.encode_to_vec())
}

/// The client's answer to one NOTIFY.
fn ask(sock: BorrowedFd<'_>, script: &str, pid: Option<i32>, fd: Option<BorrowedFd<'_>>) -> Result<(), String> {
    let n = CriuResp { notify: Some(CriuNotify { script: Some(script.to_string()), pid }), ..reply(CriuReqType::Notify as i32, true) };
    match fd {
        None => send(sock, &n).map_err(|e| format!("sending the notification: {e}"))?,
        // (upstream's orphan-pts-master: the fd with the message)
        Some(fd) => {
            let buf = n.encode_to_vec();
            let sent = crate::sys::sock::send_fds(sock, &buf, libc::MSG_NOSIGNAL, None, &[fd]).map_err(|e| format!("sending the notification with its fd: {e}"))?;
            if sent != buf.len() {
                return Err(format!("sending the notification: {sent} of {} bytes sent", buf.len()));
            }
        }
    }
    let mut buf = vec![0u8; MAX_MSG];
    let (len, trunc) = match crate::sys::rpc::recv_packet(sock, &mut buf) {
        Ok(Some(x)) => x,
        Ok(None) => return Err("the client closed the connection instead of answering".into()),
        Err(e) => return Err(format!("reading the client's answer: {e}")),
    };
    if trunc {
        return Err(format!("the client's answer is over the limit of {MAX_MSG} bytes"));
    }
    let a = decode_request(&buf[..len])?;
    if a.r#type != CriuReqType::Notify as i32 {
        return Err(format!("the client answered with a {} request, not NOTIFY", type_name(a.r#type)));
    }
    // (upstream takes external files named in the answer to
    // query-ext-files: none are supported here, so they are refused)
    if a.opts.as_ref().is_some_and(|o| !o.external.is_empty()) {
        return Err("the client's answer names criu_opts.external resources, which are not supported".into());
    }
    match a.notify_success {
        Some(true) => Ok(()),
        _ => Err("the client answered notify_success=false".into()),
    }
}

/// Run one decoded request: its reply.
fn handle(sock: BorrowedFd<'_>, peer: i32, req: &CriuReq) -> CriuResp {
    use CriuReqType as T;
    let kind = req.r#type;
    let Ok(k) = T::try_from(kind) else {
        return failed(kind, &bad(format!("criu_req.type: unknown request type {kind}")));
    };
    match k {
        T::Version => {
            // upstream's "4.2", no gitid (clients would round it up)
            let (major, minor) = VERSION.split_once('.').unwrap_or(("4", "2"));
            return CriuResp {
                version: Some(CriuVersion { major_number: major.parse().unwrap_or(4), minor_number: minor.parse().unwrap_or(2), ..CriuVersion::default() }),
                ..reply(kind, true)
            };
        }
        T::FeatureCheck => {
            // none of the three is supported: no memory tracking (pre-dump),
            // no lazy pages, no pidfd store
            return CriuResp { features: Some(CriuFeatures { mem_track: Some(false), lazy_pages: Some(false), pidfd_store: Some(false) }), ..reply(kind, true) };
        }
        T::Empty => return failed(kind, &bad("criu_req.type: EMPTY is no request")),
        T::Notify => return failed(kind, &bad("criu_req.type: NOTIFY is an answer to a notification, sent while a DUMP or RESTORE runs, not a request")),
        T::PreDump | T::SinglePreDump => return failed(kind, &unsupported(format!("{}: no pre-dump (iterative or single) in criu-rs", k.as_str_name()))),
        T::PageServer | T::PageServerChld => return failed(kind, &unsupported(format!("{}: no page server in criu-rs", k.as_str_name()))),
        T::WaitPid => return failed(kind, &unsupported("WAIT_PID: not supported by criu-rs (it waits for a page server or lazy-pages child)")),
        T::Dump | T::Restore | T::Check | T::CpuinfoDump | T::CpuinfoCheck | T::Tfork => {}
    }
    let default_opts = CriuOpts { images_dir_fd: -1, ..CriuOpts::default() };
    let copts = req.opts.as_ref().unwrap_or(&default_opts);
    let mut held: Vec<OwnedFd> = Vec::new();
    let mut open_dir = |field: &str, n: i32| -> Result<String, String> {
        let fd = crate::sys::rpc::open_peer_dir(peer, n).map_err(|e| format!("the client's fd {n} (/proc/{peer}/fd/{n}): {e}"))?;
        crate::pr_debug!("{field}: the client's fd {n}");
        Ok(dir_path(fd, &mut held))
    };
    let m = match map_opts(k, copts, peer, &mut open_dir) {
        Ok(m) => m,
        Err(r) => {
            // into the request's log too, where it has a usable one (as
            // upstream's refusals are: runc points at dump.log)
            let mut lo = Opts::new();
            // (`main` logs the reply's cr_errmsg)
            if dirs_and_log(k, copts, &mut lo, &mut open_dir).is_ok() && lo.log_file.is_some() {
                let _ = setup_log(&lo);
            }
            return failed(kind, &r);
        }
    };
    let o = m.opts;
    // the log, as the command line's (relative to the work dir)
    if let Err(e) = setup_log(&o) {
        return failed(kind, &bad(format!("criu_opts.log_file: {e}")));
    }
    // inherit_fd names the service's own fds (inherited from the client):
    // each open here, named by field (the restore checks them again)
    for (k, e) in copts.inherit_fd.iter().enumerate() {
        if let Err(err) = crate::inherit::check_open(&[(e.fd, e.key.clone())]) {
            return failed(kind, &bad(format!("criu_opts.inherit_fd[{k}]: {err} (criu swrk's own fd, which it inherited from the client)")));
        }
    }
    crate::pr_info!("swrk: {} request from pid {peer}", k.as_str_name());
    if m.notify && matches!(k, T::Dump | T::Restore) {
        // (a duplicate of the socket, owned by the handler)
        match sock.try_clone_to_owned() {
            Ok(s) => crate::notify::set_handler(Some(Box::new(move |script: &str, pid: Option<i32>, fd: Option<BorrowedFd<'_>>| ask(s.as_fd(), script, pid, fd)))),
            Err(e) => return failed(kind, &bad(format!("criu_opts.notify_scripts: duplicating the socket: {e}"))),
        }
    }
    let res: Result<CriuResp, (Failure, &str)> = match k {
        T::Dump => run_dump(&o).map(|()| CriuResp { dump: Some(CriuDumpResp { restored: Some(false) }), ..reply(kind, true) }).map_err(|e| (e, "Dumping FAILED.")),
        T::Restore => restore_root(&o).map(|pid| CriuResp { restore: Some(CriuRestoreResp { pid }), ..reply(kind, true) }).map_err(|e| (e, "Restoring FAILED.")),
        T::Check => run_check(&o).map(|()| reply(kind, true)).map_err(|e| (e, "")),
        T::CpuinfoDump | T::CpuinfoCheck => run_cpuinfo(&o).map(|()| reply(kind, true)).map_err(|e| (e, "")),
        _ => {
            tfork_clones(&o).map(|pids| CriuResp { tfork: Some(CriuTforkResp { pids }), ..reply(kind, true) }).map_err(|e| (e, "tfork FAILED."))
        }
    };
    crate::notify::set_handler(None);
    drop(held);
    match res {
        Ok(r) => r,
        Err((e, what)) => {
            report(&o, &e, what);
            let msg = format!("Error ({}:{}): {}", e.loc.file(), e.loc.line(), e.msg);
            CriuResp { cr_errmsg: Some(msg), ..reply(kind, false) }
        }
    }
}

/// `criu swrk FD`: serve requests until one without `keep_open` is done
/// or the client closes; exit 0 when the last request succeeded, else 1.
pub fn main(o: &Opts) -> i32 {
    let fd: i32 = match o.args.as_slice() {
        [n] => match n.parse() {
            Ok(n) => n,
            Err(_) => {
                eprintln!("Error: swrk: bad fd number {n:?}");
                return 1;
            }
        },
        _ => {
            eprintln!("Error: usage: criu swrk FD (the SOCK_SEQPACKET socket, inherited)");
            return 1;
        }
    };
    let sock = match crate::sys::rpc::take_inherited_seqpacket(fd) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("Error: swrk: fd {fd}: {e}");
            return 1;
        }
    };
    let peer = match crate::sys::rpc::peer_cred(sock.as_fd()) {
        Ok((pid, _, _)) if pid > 0 => pid,
        Ok((pid, _, _)) => {
            eprintln!("Error: swrk: fd {fd}: no peer process (SO_PEERCRED pid {pid})");
            return 1;
        }
        Err(e) => {
            eprintln!("Error: swrk: fd {fd}: SO_PEERCRED: {e}");
            return 1;
        }
    };
    let mut buf = vec![0u8; MAX_MSG];
    let mut code = 1;
    loop {
        let (len, trunc) = match crate::sys::rpc::recv_packet(sock.as_fd(), &mut buf) {
            Ok(Some(x)) => x,
            Ok(None) => return code,
            Err(e) => {
                eprintln!("Error: swrk: reading a request: {e}");
                return 1;
            }
        };
        let (resp, keep) = if trunc {
            (failed(0, &bad(format!("criu_req over the limit of {MAX_MSG} bytes"))), false)
        } else {
            match decode_request(&buf[..len]) {
                Err(e) => (failed(0, &bad(e)), false),
                Ok(req) => (handle(sock.as_fd(), peer, &req), req.keep_open == Some(true)),
            }
        };
        code = if resp.success { 0 } else { 1 };
        if !resp.success {
            if let Some(m) = &resp.cr_errmsg {
                crate::pr_err!("swrk: {} failed: {m}", type_name(resp.r#type));
            }
        }
        if let Err(e) = send(sock.as_fd(), &resp) {
            eprintln!("Error: swrk: sending the reply: {e}");
            return 1;
        }
        if !keep || resp.r#type == 0 {
            return code;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kind: CriuReqType, c: &CriuOpts) -> Result<Mapped, String> {
        map_request(kind, c, 77, &mut |_, n| Ok(format!("/dir{n}")))
    }

    #[test]
    fn defaults_are_the_command_line_s() {
        let m = map(CriuReqType::Dump, &CriuOpts { images_dir_fd: 5, ..CriuOpts::default() }).unwrap();
        let cli = Opts::new();
        assert_eq!(m.opts.cpu_cap, cli.cpu_cap, "the fpu check stays on, as `criu dump`'s");
        assert_eq!(m.opts.tree.as_deref(), Some("77"), "no pid: the client itself, as upstream");
        assert_eq!(m.opts.images_dir.as_deref(), Some("/dir5"));
        assert!(!m.opts.leave_running && !m.notify);
        let m = map(CriuReqType::Restore, &CriuOpts { images_dir_fd: 5, rst_sibling: Some(true), ..CriuOpts::default() }).unwrap();
        assert!(m.opts.restore_sibling && m.opts.detached && m.opts.tree.is_none());
    }

    #[test]
    fn orphan_pts_master_on_dump_and_restore() {
        // (runc sends it on every DUMP and RESTORE)
        for k in [CriuReqType::Dump, CriuReqType::Restore] {
            let m = map(k, &CriuOpts { images_dir_fd: 5, orphan_pts_master: Some(true), ..CriuOpts::default() }).unwrap();
            assert!(m.opts.orphan_pts_master, "{k:?}");
            let m = map(k, &CriuOpts { images_dir_fd: 5, ..CriuOpts::default() }).unwrap();
            assert!(!m.opts.orphan_pts_master, "{k:?}");
        }
    }

    #[test]
    fn refusals_name_every_field() {
        let c = CriuOpts { images_dir_fd: 5, track_mem: Some(true), parent_img: Some("x".into()), inherit_fd: vec![images_proto::rpc::InheritFd { key: "x".into(), fd: 1 }], ..CriuOpts::default() };
        let e = map(CriuReqType::Dump, &c).err().unwrap();
        for f in ["criu_opts.track_mem", "criu_opts.parent_img", "criu_opts.inherit_fd"] {
            assert!(e.contains(f), "{f} in {e}");
        }
    }

    #[test]
    fn inherit_fd_and_external_net() {
        use images_proto::rpc::InheritFd;
        let fd = |key: &str, fd: i32| InheritFd { key: key.into(), fd };
        let c = CriuOpts { images_dir_fd: 5, inherit_fd: vec![fd("pipe:[374532]", 1), fd("pipe:[374533]", 2), fd("extRootNetNS", 6)], ..CriuOpts::default() };
        let m = map(CriuReqType::Restore, &c).unwrap();
        assert_eq!(m.opts.inherit_fd, [(1, "pipe:[374532]".to_string()), (2, "pipe:[374533]".to_string()), (6, "extRootNetNS".to_string())]);
        for (bad, field) in [(fd("pipe:[x]", 1), "inherit_fd[0].key"), (fd("", 1), "inherit_fd[0].key"), (fd("socket:[5]", 1), "inherit_fd[0].key"), (fd("pipe:[1]", -3), "inherit_fd[0].fd")] {
            let e = map(CriuReqType::Restore, &CriuOpts { images_dir_fd: 5, inherit_fd: vec![bad], ..CriuOpts::default() }).err().unwrap();
            assert!(e.contains(&format!("criu_opts.{field}")), "{e}");
        }
        let d = map(CriuReqType::Dump, &CriuOpts { images_dir_fd: 5, external: vec!["net[4026532469]:extRootNetNS".into()], ..CriuOpts::default() }).unwrap();
        assert_eq!(d.opts.ext_net, Some((4026532469, "extRootNetNS".to_string())));
        let d = map(CriuReqType::Dump, &CriuOpts { images_dir_fd: 5, external: vec!["tty[8800:2b]".into()], ..CriuOpts::default() }).unwrap();
        assert_eq!(d.opts.ext_tty, [(0x8800, 0x2b)]);
        for e in ["net[x]:k", "net[5]:", "mnt[a]:b", "unix[5]", "tty[x:1]"] {
            let r = map(CriuReqType::Dump, &CriuOpts { images_dir_fd: 5, external: vec![e.into()], ..CriuOpts::default() }).err().unwrap();
            assert!(r.contains("criu_opts.external[0]"), "{r}");
        }
    }

    #[test]
    fn cgroup_modes() {
        use crate::cgroups::Mode;
        let mode = |mc: Option<bool>, m: Option<images_proto::rpc::CriuCgMode>| {
            map(CriuReqType::Dump, &CriuOpts { images_dir_fd: 5, manage_cgroups: mc, manage_cgroups_mode: m.map(|m| m as i32), ..CriuOpts::default() }).unwrap().opts.manage_cgroups
        };
        assert_eq!(mode(None, None), Mode::Soft);
        assert_eq!(mode(Some(true), None), Mode::Soft);
        assert_eq!(mode(Some(false), None), Mode::Ignore);
        assert_eq!(mode(Some(true), Some(images_proto::rpc::CriuCgMode::Ignore)), Mode::Ignore);
        assert_eq!(mode(Some(true), Some(images_proto::rpc::CriuCgMode::Strict)), Mode::Strict);
        assert_eq!(mode(None, Some(images_proto::rpc::CriuCgMode::Default)), Mode::Soft);
    }
}
