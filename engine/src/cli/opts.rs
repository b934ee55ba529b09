//! Upstream's option syntax, parsed as its getopt_long does: short options
//! cluster (`-Rj`), take their value attached or as the next argument
//! (`-t123`, `-t 123`), `-v` takes an optional attached value (`-v4`, `-vvv`,
//! and `-verbosity=0` is `-v` with the value `erbosity=0`, read as 0 the way
//! atoi reads it); long options take `--name=value` or `--name value`, may be
//! abbreviated to any unambiguous prefix, and upstream's boolean options
//! have a `--no-NAME` form. Options and the command's words may come in any
//! order; `--` ends the options.
//!
//! Config files (upstream's format): one option per line, its name with or
//! without the leading `--`, then its value after a space or `=`; `#` starts
//! a comment; a value may be quoted. Files read, in order (later ones win,
//! the command line wins over all): `/etc/criu/default.conf` and
//! `$HOME/.criu/default.conf` (unless `--no-default-config` or `--config`
//! is given), `$CRIU_CONFIG_FILE`, then the last `--config FILE`. A file
//! that does not exist is skipped, as upstream does.

use crate::cpuinfo;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum HasArg {
    No,
    Req,
    Opt,
}

/// What an option does here.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Act {
    Tree,
    LeaveRunning,
    Detached,
    ImagesDir,
    WorkDir,
    LogFile,
    Verbosity,
    Pidfile,
    FreezeCgroup,
    ShellJob,
    /// `--ext-unix-sk`: datagram peers outside the tree (without a value).
    ExtUnixSk,
    RestoreSibling,
    Root,
    Extra,
    Experimental,
    All,
    Feature,
    CpuCap,
    Config,
    NoDefaultConfig,
    DisplayStats,
    Help,
    Version,
    /// Accepted: changes nothing in what this engine does (see [`ACCEPTED`]).
    Accepted,
    /// `--tcp-close`: TCP connections dumped, and restored closed.
    TcpClose,
    TcpEstablished,
    /// Accepted after its value is checked as upstream checks it.
    PreDumpMode,
    NetworkLock,
    /// `--manage-cgroups[=MODE]`.
    ManageCgroups,
    /// `--cgroup-root [CTRL:]PATH`.
    CgroupRoot,
    /// `--empty-ns net`: the tree's network namespace left to the runtime.
    EmptyNs,
    Timeout,
    /// `--ghost-limit SIZE`: the most bytes an unlinked open file may hold.
    GhostLimit,
    /// `-l`/`--file-locks`: dump the file locks processes hold.
    FileLocks,
    /// `--link-remap`: link files unlinked-but-linked-elsewhere beside their path.
    LinkRemap,
    /// Ours (tfork): `--copies N`, `--persist MODE`, `--root-snapshot MODE`.
    Copies,
    RootSnapshot,
    Persist,
    /// `--external mnt[A]:B` and `--ext-mount-map A:B` (dump: mount
    /// point A, key B; restore: key A, path B); other `--external`
    /// kinds refused by name.
    ExtMount,
    /// `--inherit-fd fd[N]:KEY` (crate::inherit).
    InheritFd,
    /// Upstream's option, not implemented: refused by name.
    Refused,
}

struct Spec {
    long: &'static str,
    short: Option<char>,
    arg: HasArg,
    act: Act,
    /// Upstream has a `--no-NAME` form.
    boolean: bool,
}

const fn o(long: &'static str, short: Option<char>, arg: HasArg, act: Act, boolean: bool) -> Spec {
    Spec { long, short, arg, act, boolean }
}

use Act::*;
use HasArg::{No, Opt, Req};

/// Every option of upstream CRIU 4.2's command line (argument kinds as its
/// getopt table has them) and what it does here.
const SPECS: &[Spec] = &[
    o("tree", Some('t'), Req, Tree, false),
    o("leave-running", Some('R'), No, LeaveRunning, false),
    o("restore-detached", Some('d'), No, Detached, true),
    o("images-dir", Some('D'), Req, ImagesDir, false),
    o("work-dir", Some('W'), Req, WorkDir, false),
    o("log-file", Some('o'), Req, LogFile, false),
    o("verbosity", Some('v'), Opt, Verbosity, false),
    o("pidfile", None, Req, Pidfile, false),
    o("freeze-cgroup", None, Req, FreezeCgroup, false),
    o("shell-job", Some('j'), No, ShellJob, true),
    o("root", Some('r'), Req, Root, false),
    o("extra", None, No, Extra, true),
    o("experimental", None, No, Experimental, true),
    o("all", None, No, All, false),
    o("feature", None, Req, Feature, false),
    o("cpu-cap", None, Opt, CpuCap, false),
    o("config", None, Req, Config, false),
    o("no-default-config", None, No, NoDefaultConfig, false),
    o("display-stats", None, No, DisplayStats, true),
    o("help", Some('h'), No, Help, false),
    o("version", Some('V'), No, Version, false),
    o("timeout", None, Req, Timeout, false),
    // ours, for `criu tfork` (not upstream's)
    o("copies", None, Req, Copies, false),
    o("persist", None, Req, Persist, false),
    o("root-snapshot", None, Req, RootSnapshot, false),
    o("pre-dump-mode", None, Req, PreDumpMode, false),
    o("network-lock", None, Req, NetworkLock, false),
    o("skip-in-flight", None, No, Accepted, true),
    o("tcp-close", None, No, TcpClose, true),
    o("weak-sysctls", None, No, Accepted, true),
    o("deprecated", None, No, Accepted, true),
    o("mntns-compat-mode", None, No, Accepted, true),
    o("leave-stopped", Some('s'), No, Refused, false),
    o("restore-sibling", Some('S'), No, RestoreSibling, true),
    // upstream's --daemon is -d too
    o("daemon", None, No, Detached, true),
    o("join-ns", Some('J'), Req, Refused, false),
    o("ext-unix-sk", Some('x'), Opt, ExtUnixSk, false),
    o("tcp-established", None, No, TcpEstablished, true),
    o("close", None, Req, Refused, false),
    o("log-pid", None, No, Refused, true),
    o("evasive-devices", None, No, Refused, true),
    o("veth-pair", None, Req, Refused, false),
    o("action-script", None, Req, Refused, false),
    o("link-remap", None, No, LinkRemap, true),
    o("file-locks", Some('l'), No, FileLocks, true),
    o("page-server", None, No, Refused, true),
    o("address", None, Req, Refused, false),
    o("port", None, Req, Refused, false),
    o("prev-images-dir", None, Req, Refused, false),
    o("ms", None, No, Refused, false),
    o("track-mem", None, No, Refused, true),
    o("auto-dedup", None, No, Refused, true),
    o("libdir", Some('L'), Req, Refused, false),
    o("force-irmap", None, No, Accepted, true),
    o("ext-mount-map", Some('M'), Req, ExtMount, false),
    o("exec-cmd", None, No, Refused, false),
    o("manage-cgroups", None, Opt, ManageCgroups, false),
    o("cgroup-root", None, Req, CgroupRoot, false),
    o("inherit-fd", None, Req, InheritFd, false),
    o("skip-mnt", None, Req, Refused, false),
    o("enable-fs", None, Req, Refused, false),
    o("enable-external-sharing", None, No, Refused, false),
    o("enable-external-masters", None, No, Refused, false),
    o("ghost-limit", None, Req, GhostLimit, false),
    o("irmap-scan-path", None, Req, Accepted, false),
    o("lsm-profile", None, Req, Refused, false),
    o("lsm-mount-context", None, Req, Refused, false),
    o("external", None, Req, ExtMount, false),
    o("empty-ns", None, Req, EmptyNs, false),
    o("lazy-pages", None, No, Refused, false),
    o("cgroup-props", None, Req, Refused, false),
    o("cgroup-props-file", None, Req, Refused, false),
    o("cgroup-dump-controller", None, Req, Refused, false),
    o("cgroup-yard", None, Req, Refused, false),
    o("status-fd", None, Req, Refused, false),
    o("ps-socket", None, Req, Refused, false),
    o("tls-cacert", None, Req, Refused, false),
    o("tls-cacrl", None, Req, Refused, false),
    o("tls-cert", None, Req, Refused, false),
    o("tls-key", None, Req, Refused, false),
    o("tls", None, No, Refused, true),
    o("tls-no-cn-verify", None, No, Refused, true),
    o("stream", None, No, Refused, true),
    o("file-validation", None, Req, Refused, false),
    o("skip-file-rwx-check", None, No, Refused, true),
    o("allow-uprobes", None, No, Refused, true),
    o("unprivileged", None, No, Refused, true),
];

/// The options accepted without effect, and why they change nothing here
/// (listed by `--help` and the README).
pub const ACCEPTED: &[(&str, &str)] = &[
    ("--pre-dump-mode splice|read", "applies to pre-dump, which is not implemented"),
    ("--network-lock iptables|nftables|skip", "only with --tcp-established: iptables is the lock it uses (upstream's default), skip leaves the connections unlocked, nftables is refused"),
    ("--skip-in-flight", "about connections not yet accepted; a listener with such connections is refused"),
    ("--weak-sysctls", "lets upstream skip a namespace sysctl it can't write; here such a write still fails the restore, naming it"),
    ("--mntns-compat-mode", "chooses between upstream's two ways of restoring mount namespaces; there is one here"),
    ("--force-irmap, --irmap-scan-path DIR", "find the paths of inotify watches by scanning; here a watch is named by its file handle, its path looked up from it"),
    ("--deprecated", "allows deprecated upstream features; none exists here"),
    ("--no-NAME of upstream's boolean options", "asks for the default"),
];

/// Everything the command line and config files said.
#[derive(Debug, Default, Clone)]
pub struct Opts {
    pub command: Option<String>,
    /// Words after the command (`cpuinfo dump`, `swrk 3`).
    pub args: Vec<String>,
    pub help: bool,
    pub version: bool,
    pub tree: Option<String>,
    pub leave_running: bool,
    pub detached: bool,
    pub images_dir: Option<String>,
    pub work_dir: Option<String>,
    pub log_file: Option<String>,
    pub loglevel: Option<u32>,
    pub pidfile: Option<String>,
    pub freeze_cgroup: Option<String>,
    pub shell_job: bool,
    /// RPC `orphan_pts_master` (no command-line option, as upstream).
    pub orphan_pts_master: bool,
    /// `--ext-unix-sk`: a datagram socket connected to a named socket
    /// outside the dumped tree is dumped, and connected again on restore.
    pub ext_unix_sk: bool,
    /// `--restore-sibling`: the restored root is a child of criu's parent.
    pub restore_sibling: bool,
    pub root: Option<String>,
    pub extra: bool,
    pub experimental: bool,
    pub all: bool,
    pub feature: Option<String>,
    pub cpu_cap: u32,
    pub config: Option<String>,
    pub no_default_config: bool,
    pub display_stats: bool,
    /// `--tcp-close`: TCP connections are dumped and restored closed.
    pub tcp_close: bool,
    pub tcp_established: bool,
    /// `--network-lock`: iptables (the default), nftables, skip.
    pub network_lock: Option<String>,
    /// `--empty-ns net`: the tree's network namespace is neither dumped
    /// nor restored; restore makes an empty one.
    pub empty_net: bool,
    /// `--manage-cgroups[=MODE]` (default soft, as upstream).
    pub manage_cgroups: crate::cgroups::Mode,
    /// `--cgroup-root [CTRL:]PATH`, each time given.
    pub cgroup_root: Vec<(Option<String>, String)>,
    /// `--timeout`: seconds to wait for `--freeze-cgroup` to freeze.
    pub timeout: Option<u64>,
    /// `--ghost-limit SIZE` in bytes (dump; default: upstream's 1 MiB).
    pub ghost_limit: Option<u64>,
    /// `--file-locks`: dump held file locks (restore takes the image's
    /// locks whenever it has them).
    pub file_locks: bool,
    /// `--link-remap` (dump).
    pub link_remap: bool,
    /// tfork: `--copies N` (checked by the command).
    pub copies: Option<String>,
    /// tfork: `--persist none|sync|async`.
    pub persist: Option<String>,
    /// tfork: `--root-snapshot overlay[:DIR]` (checked by the command).
    pub root_snapshot: Option<String>,
    /// `--external mnt[A]:B`, `--ext-mount-map A:B`: (A, B) pairs.
    pub ext_mnt: Vec<(String, String)>,
    /// `--external mnt[]`, `--ext-mount-map auto`.
    pub auto_ext_mnt: bool,
    /// `--inherit-fd fd[N]:KEY`, each time given: (N, KEY).
    pub inherit_fd: Vec<(i32, String)>,
    /// `--external net[INO]:KEY` (dump): (INO, KEY).
    pub ext_net: Option<(u64, String)>,
    /// `--external tty[RDEV:DEV]` (dump): terminals outside the tree.
    pub ext_tty: Vec<(u64, u64)>,
    /// Config files read (for the log).
    pub configs_read: Vec<String>,
    /// Config files that were not there.
    pub configs_missing: Vec<String>,
}

/// What went wrong in parsing: a refusal by name or bad usage, with the
/// place in this file that found it.
#[derive(Debug, Clone)]
pub struct Problem {
    pub msg: String,
    pub loc: &'static std::panic::Location<'static>,
}

impl Problem {
    #[track_caller]
    fn new(msg: impl Into<String>) -> Problem {
        Problem { msg: msg.into(), loc: std::panic::Location::caller() }
    }
}

/// C's atoi: optional blanks and sign, then digits; anything else gives 0.
fn atoi(s: &str) -> i64 {
    let s = s.trim_start();
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut v: i64 = 0;
    for c in digits.bytes().take_while(u8::is_ascii_digit) {
        v = v.saturating_mul(10).saturating_add(i64::from(c - b'0'));
    }
    if neg {
        -v
    } else {
        v
    }
}

/// Upstream's `--ghost-limit` syntax: a number of bytes, or of KiB, MiB
/// or GiB with a `K`, `M` or `G` after it (`512K`, `16M`, `2G`). Anything
/// else (a sign, other letters, a value that overflows) is `None`: upstream
/// reads such values with atol and gets a limit nobody asked for.
pub fn parse_size(s: &str) -> Option<u64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = s[..digits].parse().ok()?;
    let shift = match &s[digits..] {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

fn find_long(name: &str) -> Result<(&'static Spec, bool), String> {
    // exact first, then --no-NAME of a boolean, then a unique prefix
    if let Some(s) = SPECS.iter().find(|s| s.long == name) {
        return Ok((s, false));
    }
    if let Some(b) = name.strip_prefix("no-") {
        if let Some(s) = SPECS.iter().find(|s| s.boolean && s.long == b) {
            return Ok((s, true));
        }
    }
    let mut hits: Vec<(&'static Spec, bool)> = SPECS.iter().filter(|s| s.long.starts_with(name)).map(|s| (s, false)).collect();
    if let Some(b) = name.strip_prefix("no-") {
        hits.extend(SPECS.iter().filter(|s| s.boolean && s.long.starts_with(b)).map(|s| (s, true)));
    }
    match hits.len() {
        1 => Ok(hits[0]),
        0 => Err(format!("unrecognized option '--{name}'")),
        _ => Err(format!(
            "option '--{name}' is ambiguous; possibilities: {}",
            hits.iter().map(|(s, n)| format!("'--{}{}'", if *n { "no-" } else { "" }, s.long)).collect::<Vec<_>>().join(" ")
        )),
    }
}

impl Opts {
    pub fn new() -> Opts {
        Opts { cpu_cap: cpuinfo::CAP_DEFAULT, ..Default::default() }
    }

    /// Apply one option with its value.
    fn apply(&mut self, spec: &Spec, negated: bool, val: Option<String>, shown: &str) -> Result<(), Problem> {
        let v = || val.clone().unwrap_or_default();
        match spec.act {
            Tree => self.tree = Some(v()),
            LeaveRunning => self.leave_running = true,
            Detached => self.detached = !negated,
            ImagesDir => self.images_dir = Some(v()),
            WorkDir => self.work_dir = Some(v()),
            LogFile => self.log_file = Some(v()),
            Verbosity => {
                let cur = self.loglevel.unwrap_or(crate::log::LOG_WARN);
                self.loglevel = Some(match val.as_deref() {
                    None => cur + 1,
                    Some(s) if !s.is_empty() && s.bytes().all(|b| b == b'v') => cur + 1 + s.len() as u32,
                    Some(s) => u32::try_from(atoi(s).clamp(0, i64::from(u32::MAX))).unwrap_or(0),
                });
            }
            Pidfile => self.pidfile = Some(v()),
            FreezeCgroup => self.freeze_cgroup = Some(v()),
            ShellJob => self.shell_job = !negated,
            ExtUnixSk => match val.as_deref() {
                None | Some("") => self.ext_unix_sk = true,
                Some(_) => return Err(Problem::new(format!("{shown} with socket inodes (one-sided stream connections) is not supported yet"))),
            },
            RestoreSibling => self.restore_sibling = !negated,
            Root => self.root = Some(v()),
            Extra => self.extra = !negated,
            Experimental => self.experimental = !negated,
            All => self.all = true,
            Feature => self.feature = Some(v()),
            CpuCap => self.cpu_cap = cpuinfo::parse_cap(self.cpu_cap, val.as_deref()).map_err(Problem::new)?,
            Config => self.config = Some(v()),
            NoDefaultConfig => self.no_default_config = true,
            DisplayStats => self.display_stats = !negated,
            Help => self.help = true,
            Version => self.version = true,
            Accepted => {}
            TcpClose => self.tcp_close = !negated,
            TcpEstablished => self.tcp_established = !negated,
            Timeout => {
                match val.as_deref().and_then(|t| t.parse().ok()).filter(|&t: &u64| t > 0) {
                    Some(t) => self.timeout = Some(t),
                    None => return Err(Problem::new(format!("invalid argument for --timeout: {} (want seconds, > 0)", v()))),
                }
            }
            FileLocks => self.file_locks = !negated,
            LinkRemap => self.link_remap = !negated,
            GhostLimit => match parse_size(&v()) {
                Some(n) => self.ghost_limit = Some(n),
                None => return Err(Problem::new(format!("invalid argument for --ghost-limit: {} (want a size: digits with an optional K, M or G)", v()))),
            },
            Copies => self.copies = Some(v()),
            Persist => self.persist = Some(v()),
            RootSnapshot => self.root_snapshot = Some(v()),
            ExtMount => {
                let val = v();
                let pair = if spec.long == "ext-mount-map" {
                    if val == "auto" {
                        self.auto_ext_mnt = true;
                        return Ok(());
                    }
                    val.split_once(':').map(|(a, b)| (a.to_string(), b.to_string()))
                } else if let Some(rest) = val.strip_prefix("net[") {
                    // an external network namespace: net[INODE]:KEY
                    let ext = rest.split_once("]:").and_then(|(ino, key)| Some((ino.parse::<u64>().ok().filter(|&i| i > 0)?, key)));
                    match ext {
                        Some((ino, key)) if crate::inherit::classify(key).is_ok_and(|k| matches!(k, crate::inherit::Key::Name(_))) => {
                            self.ext_net = Some((ino, key.to_string()));
                            return Ok(());
                        }
                        _ => return Err(Problem::new(format!("{shown} {val}: want net[INODE]:KEY (the namespace's inode number, a name without / for --inherit-fd)"))),
                    }
                } else if val == "mnt[]" || val == "mnt[]:" {
                    self.auto_ext_mnt = true;
                    return Ok(());
                } else if let Some(flags) = val.strip_prefix("mnt[]:") {
                    return Err(Problem::new(format!("{shown} {val}: the flags {flags:?} (external shared and slave mounts) are not supported yet: shared and slave mounts are refused")));
                } else if let Some(rest) = val.strip_prefix("mnt[") {
                    rest.split_once("]:").map(|(a, b)| (a.to_string(), b.to_string()))
                } else if val.starts_with("tty[") {
                    // a terminal outside the tree (a pty slave whose master
                    // is elsewhere): tty[RDEV:DEV], hex, as upstream
                    match crate::inherit::classify(&val) {
                        Ok(crate::inherit::Key::Tty(rdev, dev)) => {
                            self.ext_tty.push((rdev, dev));
                            return Ok(());
                        }
                        _ => return Err(Problem::new(format!("{shown} {val}: want tty[RDEV:DEV] (the terminal's st_rdev and st_dev, hex)"))),
                    }
                } else {
                    let kind = val.split('[').next().unwrap_or_default();
                    return Err(Problem::new(format!("{shown} {val}: external {kind} objects are not supported yet (only mnt[A]:B, net[INODE]:KEY and tty[RDEV:DEV])")));
                };
                match pair {
                    Some((a, b)) if !a.is_empty() && !b.is_empty() => self.ext_mnt.push((a, b)),
                    _ => return Err(Problem::new(format!("{shown} {val}: want mnt[MOUNTPOINT]:KEY at dump, mnt[KEY]:PATH at restore (or mnt[] for the mounts criu's namespace shows)"))),
                }
            }
            InheritFd => {
                let (n, key) = crate::inherit::parse_arg(&v()).map_err(Problem::new)?;
                self.inherit_fd.push((n, key));
            }
            PreDumpMode => {
                if !matches!(val.as_deref(), Some("splice" | "read")) {
                    return Err(Problem::new(format!("invalid argument for --pre-dump-mode: {} (want splice or read)", v())));
                }
            }
            NetworkLock => {
                if !matches!(val.as_deref(), Some("iptables" | "nftables" | "skip")) {
                    return Err(Problem::new(format!("invalid argument for --network-lock: {} (want iptables, nftables or skip)", v())));
                }
                self.network_lock = val.clone();
            }
            ManageCgroups => {
                self.manage_cgroups = crate::cgroups::Mode::parse(val.as_deref())
                    .ok_or_else(|| Problem::new(format!("invalid argument for --manage-cgroups: {} (ignore, none, props, soft, full, strict)", v())))?;
            }
            CgroupRoot => {
                let v = val.clone().unwrap_or_default();
                // (a PATH starts with /: a CTRL: prefix is before it)
                self.cgroup_root.push(match v.split_once(':') {
                    Some((c, p)) if !v.starts_with('/') => (Some(c.to_string()), p.to_string()),
                    _ => (None, v),
                });
            }
            EmptyNs => {
                if val.as_deref() != Some("net") {
                    return Err(Problem::new(format!("invalid argument for --empty-ns: {} (only net is supported)", v())));
                }
                self.empty_net = true;
            }
            Refused if negated => {}
            Refused => return Err(Problem::new(format!("{shown} is not supported yet"))),
        }
        Ok(())
    }

    /// Parse one argument list (the command line, or a config file's
    /// options); positional words go to the command and its arguments.
    /// Parsing goes on after a problem so that later options (`-o`) still
    /// count; every problem is returned.
    pub fn parse(&mut self, args: &[String], positional: bool) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut i = 0;
        let mut only_positional = false;
        while i < args.len() {
            let a = &args[i];
            i += 1;
            if only_positional || a == "-" || !a.starts_with('-') {
                if !positional {
                    problems.push(Problem::new(format!("unexpected word '{a}'")));
                } else if self.command.is_none() {
                    self.command = Some(a.clone());
                } else {
                    self.args.push(a.clone());
                }
                continue;
            }
            if a == "--" {
                only_positional = true;
                continue;
            }
            if let Some(long) = a.strip_prefix("--") {
                let (name, inline) = match long.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_string())),
                    None => (long, None),
                };
                let (spec, negated) = match find_long(name) {
                    Ok(x) => x,
                    Err(e) => {
                        problems.push(Problem::new(e));
                        continue;
                    }
                };
                let shown = format!("--{}{}", if negated { "no-" } else { "" }, spec.long);
                let val = match (spec.arg, inline, negated) {
                    (No, Some(_), _) | (_, Some(_), true) => {
                        problems.push(Problem::new(format!("option '{shown}' doesn't allow an argument")));
                        continue;
                    }
                    (Req, None, false) => match args.get(i) {
                        Some(v) => {
                            i += 1;
                            Some(v.clone())
                        }
                        None => {
                            problems.push(Problem::new(format!("option '{shown}' requires an argument")));
                            continue;
                        }
                    },
                    (_, v, _) => v,
                };
                let shown = if spec.act == Refused { shown_refused(spec, negated) } else { shown };
                if let Err(e) = self.apply(spec, negated, val, &shown) {
                    problems.push(e);
                }
                continue;
            }
            // a cluster of short options
            let cluster: Vec<char> = a[1..].chars().collect();
            let mut k = 0;
            while k < cluster.len() {
                let c = cluster[k];
                k += 1;
                let Some(spec) = SPECS.iter().find(|s| s.short == Some(c)) else {
                    problems.push(Problem::new(format!("invalid option -- '{c}'")));
                    continue;
                };
                let rest: String = cluster[k..].iter().collect();
                let val = match spec.arg {
                    No => None,
                    Opt => {
                        k = cluster.len();
                        (!rest.is_empty()).then_some(rest)
                    }
                    Req => {
                        k = cluster.len();
                        if !rest.is_empty() {
                            Some(rest)
                        } else if let Some(v) = args.get(i) {
                            i += 1;
                            Some(v.clone())
                        } else {
                            problems.push(Problem::new(format!("option requires an argument -- '{c}'")));
                            continue;
                        }
                    }
                };
                let shown = if spec.act == Refused { shown_refused(spec, false) } else { format!("-{c}") };
                if let Err(e) = self.apply(spec, false, val, &shown) {
                    problems.push(e);
                }
            }
        }
        problems
    }
}

fn shown_refused(spec: &Spec, negated: bool) -> String {
    match (spec.short, negated) {
        (Some(c), false) => format!("-{c}/--{}", spec.long),
        _ => format!("--{}", spec.long),
    }
}

/// Split one config line into words: blanks separate, `"..."`/`'...'`
/// quote, `#` outside quotes ends the line.
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut have = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                have = true;
            }
            None if c == '#' => break,
            None if c.is_whitespace() => {
                if have {
                    out.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            None => {
                cur.push(c);
                have = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    if have {
        out.push(cur);
    }
    Ok(out)
}

/// A config file's text as command-line arguments.
pub fn config_args(text: &str) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let w = words(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        let name = |s: &str| format!("--{}", s.strip_prefix("--").unwrap_or(s));
        match w.as_slice() {
            [] => {}
            [opt] => args.push(name(opt)),
            [opt, val] if !opt.contains('=') => {
                let n = name(opt);
                // an optional value must be attached on a command line; in
                // a file "verbosity 4" can only mean --verbosity=4
                // (upstream drops the 4)
                if find_long(&n[2..]).is_ok_and(|(s, _)| s.arg == Opt) {
                    args.push(format!("{n}={val}"));
                } else {
                    args.push(n);
                    args.push(val.clone());
                }
            }
            _ => return Err(format!("line {}: want one option and at most one value: {}", n + 1, line.trim())),
        }
    }
    Ok(args)
}

/// The config files to read for this command line, in order.
pub fn config_files(cmdline: &Opts) -> Vec<String> {
    let mut v = Vec::new();
    if !cmdline.no_default_config && cmdline.config.is_none() {
        v.push("/etc/criu/default.conf".to_string());
        if let Some(home) = std::env::var_os("HOME") {
            v.push(format!("{}/.criu/default.conf", home.to_string_lossy()));
        }
    }
    if let Some(f) = std::env::var_os("CRIU_CONFIG_FILE") {
        v.push(f.to_string_lossy().into_owned());
    }
    if let Some(f) = &cmdline.config {
        v.push(f.clone());
    }
    v
}

/// Command line plus config files: the options, and every problem found
/// (each naming where it came from).
pub fn resolve(cmdline: &[String]) -> (Opts, Vec<Problem>) {
    // a first pass finds --config and --no-default-config
    let mut first = Opts::new();
    let _ = first.parse(cmdline, true);
    let mut opts = Opts::new();
    let mut problems = Vec::new();
    for f in config_files(&first) {
        match std::fs::read_to_string(&f) {
            Ok(text) => match config_args(&text) {
                Ok(args) => {
                    for p in opts.parse(&args, false) {
                        problems.push(Problem { msg: format!("config file {f}: {}", p.msg), loc: p.loc });
                    }
                    opts.configs_read.push(f);
                }
                Err(e) => problems.push(Problem::new(format!("config file {f}: {e}"))),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => opts.configs_missing.push(f),
            Err(e) => problems.push(Problem::new(format!("config file {f}: {e}"))),
        }
    }
    let (read, missing) = (std::mem::take(&mut opts.configs_read), std::mem::take(&mut opts.configs_missing));
    problems.extend(opts.parse(cmdline, true));
    opts.configs_read = read;
    opts.configs_missing = missing;
    (opts, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> (Opts, Vec<String>) {
        let mut o = Opts::new();
        let v: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        let pr = o.parse(&v, true);
        (o, pr.into_iter().map(|p| p.msg).collect())
    }

    #[test]
    fn verbosity_forms() {
        assert_eq!(p(&["dump", "-v4"]).0.loglevel, Some(4));
        assert_eq!(p(&["-v"]).0.loglevel, Some(3));
        assert_eq!(p(&["-vv"]).0.loglevel, Some(4));
        assert_eq!(p(&["-v", "-v"]).0.loglevel, Some(4));
        assert_eq!(p(&["--verbosity=1"]).0.loglevel, Some(1));
        assert_eq!(p(&["--verbosity"]).0.loglevel, Some(3));
        assert_eq!(p(&["-v0"]).0.loglevel, Some(0));
        // getopt: -v with the attached value "erbosity=0", atoi gives 0
        let (o, pr) = p(&["-verbosity=0"]);
        assert_eq!((o.loglevel, pr.len()), (Some(0), 0));
    }

    #[test]
    fn short_clusters_and_values() {
        let (o, pr) = p(&["dump", "-Rjt123", "-D/tmp/x", "-o", "-s"]);
        assert!(pr.is_empty(), "{pr:?}");
        assert_eq!((o.leave_running, o.shell_job), (true, true));
        assert_eq!(o.tree.as_deref(), Some("123"));
        assert_eq!(o.images_dir.as_deref(), Some("/tmp/x"));
        assert_eq!(o.log_file.as_deref(), Some("-s"));
        let (o, _) = p(&["-t", "-5", "--leave-run", "--images=/a"]);
        assert_eq!(o.tree.as_deref(), Some("-5"));
        assert!(o.leave_running);
        assert_eq!(o.images_dir.as_deref(), Some("/a"));
    }

    #[test]
    fn refused_by_name() {
        assert_eq!(p(&["dump", "--evasive-devices"]).1, ["--evasive-devices is not supported yet"]);
        assert!(p(&["dump", "--tcp-established"]).0.tcp_established);
        assert_eq!(p(&["--ghost-limit=5M"]).0.ghost_limit, Some(5 << 20));
        assert_eq!(p(&["--ghost-limit", "300"]).0.ghost_limit, Some(300));
        assert_eq!(p(&["--ghost-limit", "2G"]).0.ghost_limit, Some(2 << 30));
        assert_eq!(p(&["--ghost-limit", "7K"]).0.ghost_limit, Some(7 << 10));
        for bad in ["-1", "M", "5MB", "5k", "", "99999999999999999999G", "18014398509481984K"] {
            assert_eq!(p(&["--ghost-limit", bad]).1.len(), 1, "{bad}");
        }
        assert!(p(&["--link-remap"]).0.link_remap);
        assert!(p(&["dump", "-lR"]).0.file_locks);
        assert!(p(&["--file-locks"]).0.file_locks);
        assert!(!p(&["-l", "--no-file-locks"]).0.file_locks);
        assert!(p(&["-x"]).1.is_empty());
        assert!(p(&["dump", "--ext-unix-sk"]).0.ext_unix_sk);
        assert_eq!(p(&["--ext-unix-sk=123"]).1.len(), 1);
        assert!(p(&["--no-tcp-established", "restore"]).1.is_empty());
        assert!(p(&["--daemon"]).0.detached);
        assert!(p(&["--timeout", "5", "--pre-dump-mode", "splice", "--no-default-config"]).1.is_empty());
        assert_eq!(p(&["--pre-dump-mode=x"]).1.len(), 1);
        assert_eq!(p(&["--timeout", "7"]).0.timeout, Some(7));
        assert_eq!(p(&["--timeout=0"]).1.len(), 1);
        assert_eq!(p(&["--frob"]).1, ["unrecognized option '--frob'"]);
        assert_eq!(p(&["-Q"]).1, ["invalid option -- 'Q'"]);
    }

    #[test]
    fn config_syntax() {
        let a = config_args("# c\n  log-file /x/y.log # why\n--verbosity=4\nshell-job\ntree \"12\"\n\ncpu-cap fpu\n").unwrap();
        assert_eq!(a, ["--log-file", "/x/y.log", "--verbosity=4", "--shell-job", "--tree", "12", "--cpu-cap=fpu"]);
        assert!(config_args("log-file a b").is_err());
        let mut o = Opts::new();
        assert!(o.parse(&a, false).is_empty());
        assert_eq!((o.loglevel, o.shell_job, o.tree.as_deref()), (Some(4), true, Some("12")));
    }
}
