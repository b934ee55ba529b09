//! The `criu` command line: upstream's commands and flags, upstream's exit
//! codes (0 success, 1 failure or bad usage).
//!
//! Options may come before or after the command, as with upstream's
//! getopt. `-v`/`-vv`/`-vN`/`--verbosity[=N]` are resolved here as upstream
//! does (default 2; each bare `v` adds one). Every upstream option this
//! engine does not implement is refused by name ("--tcp-established is not
//! supported yet"), never ignored; `--no-X` forms of upstream's boolean
//! options ask for the default and are accepted.
//!
//! Paths: the log (`-o`) and a relative `--pidfile` are relative to the
//! work dir (`-W`), which defaults to the images dir (`-D`, default `.`).
//!
//! `restore` without `-d` waits for the restored root task to exit and
//! then exits 0, as upstream's `reap_zombies()` + `return ret != 0` do (the
//! root's own exit status is not passed on by upstream either).

use crate::mem_source::ProcessMem;
use crate::model::{FileDesc, Tree};
use crate::restore::RestoreOpts;
use crate::{dump, images_io, log, pr_err, pr_info, pr_msg, pr_warn, restore};
use clap::Parser;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The version we report. Container engines check CRIU's version before
/// using it (runc and podman through go-criu, crun through libcriu; the
/// newest minimum among them is 3.15, encoded 31500): we speak upstream
/// 4.2's image format and command line, so we report 4.2 (40200). No
/// `GitID:` line: upstream prints one only when built from its own git
/// tree, and a GitID of ours would name no upstream commit.
pub const VERSION: &str = "4.2";

/// Upstream long options (criu/config.c, 4.2) this engine does not implement.
const REFUSED_LONG: &[&str] = &[
    "leave-stopped", "restore-sibling", "daemon", "join-ns", "ext-unix-sk", "tcp-established", "close",
    "log-pid", "evasive-devices", "veth-pair", "action-script", "link-remap", "file-locks", "page-server",
    "address", "port", "prev-images-dir", "ms", "track-mem", "auto-dedup", "libdir", "cpu-cap", "force-irmap",
    "ext-mount-map", "exec-cmd", "manage-cgroups", "cgroup-root", "inherit-fd", "feature", "skip-mnt",
    "enable-fs", "enable-external-sharing", "enable-external-masters", "ghost-limit",
    "irmap-scan-path", "lsm-profile", "lsm-mount-context", "timeout", "external", "empty-ns", "lazy-pages",
    "cgroup-props", "cgroup-props-file", "cgroup-dump-controller", "cgroup-yard", "skip-in-flight",
    "deprecated", "display-stats", "weak-sysctls", "status-fd", "tcp-close", "ps-socket", "remote",
    "relative-timestamps", "config", "no-default-config", "tls-cacert", "tls-cacrl", "tls-cert", "tls-key",
    "tls", "tls-no-cn-verify", "stream", "mntns-compat-mode", "network-lock", "file-validation",
    "pre-dump-mode", "skip-file-rwx-check", "allow-uprobes", "unprivileged", "images-dir-fd",
];

/// Upstream boolean options whose `--no-X` form means "the default".
const BOOL_OPTS: &[&str] = &[
    "restore-detached", "restore-sibling", "daemon", "tcp-established", "log-pid", "evasive-devices",
    "link-remap", "shell-job", "file-locks", "page-server", "track-mem", "auto-dedup", "force-irmap", "extra",
    "experimental", "skip-in-flight", "deprecated", "display-stats", "weak-sysctls", "tcp-close", "remote",
    "relative-timestamps", "tls", "tls-no-cn-verify", "stream", "mntns-compat-mode", "unprivileged",
    "skip-file-rwx-check", "allow-uprobes",
];

/// Upstream short options not implemented, with their long names.
const REFUSED_SHORT: &[(char, &str)] = &[
    ('s', "leave-stopped"), ('S', "restore-sibling"), ('x', "ext-unix-sk"), ('J', "join-ns"), ('l', "file-locks"),
    ('L', "libdir"), ('M', "ext-mount-map"),
];

/// Options of ours that take a separate value (so the value is not read as a flag).
const WITH_VALUE: &[&str] = &["-t", "--tree", "-D", "--images-dir", "-W", "--work-dir", "-o", "--log-file", "--pidfile", "-r", "--root"];

/// Upstream commands we don't implement.
const REFUSED_COMMANDS: &[&str] =
    &["pre-dump", "show", "page-server", "service", "swrk", "dedup", "lazy-pages", "cpuinfo", "exec", "image-cache", "image-proxy"];

const DEFAULT_LOGLEVEL: u32 = log::LOG_WARN;

#[derive(Parser, Debug)]
#[command(name = "criu", disable_version_flag = true, about = "Checkpoint/restore of process trees (CRIU-compatible)")]
struct Cli {
    /// dump | restore | check
    command: Option<String>,
    /// Print the version.
    #[arg(short = 'V', long = "version")]
    version: bool,
    /// Checkpoint the process tree rooted at PID.
    #[arg(short = 't', long = "tree", value_name = "PID", allow_hyphen_values = true)]
    tree: Option<String>,
    /// Leave the tree running after the dump.
    #[arg(short = 'R', long = "leave-running")]
    leave_running: bool,
    /// Detach from the restored tree.
    #[arg(short = 'd', long = "restore-detached")]
    detached: bool,
    /// Directory of the image files (default: .).
    #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
    images_dir: Option<PathBuf>,
    /// Directory for the log and a relative pidfile (default: the images dir).
    #[arg(short = 'W', long = "work-dir", value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Log file, relative to the work dir (default: stderr).
    #[arg(short = 'o', long = "log-file", value_name = "FILE")]
    log_file: Option<String>,
    /// Log level, resolved from -v forms before parsing.
    #[arg(long = "loglevel-resolved", hide = true)]
    loglevel: Option<u32>,
    /// Write the restored root task's pid here (relative to the work dir).
    #[arg(long = "pidfile", value_name = "FILE")]
    pidfile: Option<PathBuf>,
    /// dump: freeze this cgroup (v2 or v1 freezer) while seizing the tree.
    #[arg(long = "freeze-cgroup", value_name = "PATH")]
    freeze_cgroup: Option<PathBuf>,
    /// Allow a tree attached to a terminal (a shell job).
    #[arg(short = 'j', long = "shell-job")]
    shell_job: bool,
    /// Root directory the tree is restored under.
    #[arg(short = 'r', long = "root", value_name = "PATH")]
    root: Option<PathBuf>,
    /// check: also extra features (we always check everything we use).
    #[arg(long = "extra")]
    extra: bool,
    /// check: also experimental features (as --extra).
    #[arg(long = "experimental")]
    experimental: bool,
    /// check: --extra --experimental.
    #[arg(long = "all")]
    all: bool,
}

/// Resolve `-v` forms into one `--loglevel-resolved=N`, drop `--no-X` of
/// upstream booleans, refuse upstream options we lack.
fn normalize(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let mut out = Vec::with_capacity(args.len() + 1);
    let mut level: Option<u32> = None;
    let mut it = args.into_iter();
    if let Some(a0) = it.next() {
        out.push(a0);
    }
    let mut value_next = false;
    let mut rest_positional = false;
    for a in it {
        let s = a.to_string_lossy().to_string();
        if value_next || rest_positional {
            value_next = false;
            out.push(a);
            continue;
        }
        if s == "--" {
            rest_positional = true;
            out.push(a);
            continue;
        }
        if WITH_VALUE.contains(&s.as_str()) {
            value_next = true;
            out.push(a);
            continue;
        }
        if let Some(long) = s.strip_prefix("--") {
            let (name, val) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            if name == "verbosity" {
                level = Some(match val {
                    Some(v) => v.parse().map_err(|_| format!("invalid argument for --verbosity: {v}"))?,
                    None => level.unwrap_or(DEFAULT_LOGLEVEL) + 1,
                });
                continue;
            }
            if let Some(b) = name.strip_prefix("no-") {
                if BOOL_OPTS.contains(&b) {
                    continue;
                }
            }
            if REFUSED_LONG.contains(&name) {
                return Err(format!("--{name} is not supported yet"));
            }
            out.push(a);
            continue;
        }
        if let Some(short) = s.strip_prefix('-') {
            if let Some(v) = short.strip_prefix('v') {
                level = Some(if v.is_empty() {
                    level.unwrap_or(DEFAULT_LOGLEVEL) + 1
                } else if v.chars().all(|c| c == 'v') {
                    level.unwrap_or(DEFAULT_LOGLEVEL) + v.len() as u32 + 1
                } else {
                    v.parse().map_err(|_| format!("invalid argument for -v: {v}"))?
                });
                continue;
            }
            if let Some(c) = short.chars().next() {
                if let Some((_, long)) = REFUSED_SHORT.iter().find(|(x, _)| *x == c) {
                    return Err(format!("-{c}/--{long} is not supported yet"));
                }
            }
        }
        out.push(a);
    }
    if let Some(l) = level {
        out.push(OsString::from(format!("--loglevel-resolved={l}")));
    }
    Ok(out)
}

fn images_dir(cli: &Cli) -> PathBuf {
    cli.images_dir.clone().unwrap_or_else(|| PathBuf::from("."))
}

fn work_dir(cli: &Cli) -> PathBuf {
    cli.work_dir.clone().unwrap_or_else(|| images_dir(cli))
}

fn in_work_dir(cli: &Cli, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        work_dir(cli).join(p)
    }
}

fn setup_log(cli: &Cli) -> Result<(), String> {
    let level = cli.loglevel.unwrap_or(DEFAULT_LOGLEVEL);
    let out: Box<dyn std::io::Write + Send> = match cli.log_file.as_deref() {
        None | Some("-") => Box::new(std::io::stderr()),
        Some(f) => {
            let p = in_work_dir(cli, Path::new(f));
            Box::new(std::fs::File::create(&p).map_err(|e| format!("can't create log file {}: {e}", p.display()))?)
        }
    };
    log::init(level, out);
    pr_info!("Version: {VERSION} (criu-rs {})", env!("CARGO_PKG_VERSION"));
    let k = |f: &str| std::fs::read_to_string(format!("/proc/sys/kernel/{f}")).unwrap_or_default().trim().to_string();
    pr_info!("Running on {} Linux {} {} {}", k("hostname"), k("osrelease"), k("version"), std::env::consts::ARCH);
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A terminal among the dumped fds, refused unless `--shell-job`.
fn check_ttys(tree: &Tree, shell_job: bool) -> Result<(), String> {
    if shell_job {
        return Ok(());
    }
    for t in &tree.tasks {
        for fd in &t.fds {
            if let FileDesc::Tty { path, .. } = &fd.file {
                return Err(format!(
                    "fd {} of {} is a terminal ({path}). Task attached to shell job? Consider using --shell-job option.",
                    fd.fd, t.pid
                ));
            }
        }
    }
    Ok(())
}

fn run_dump(cli: &Cli) -> Result<(), String> {
    let pid: i32 = match cli.tree.as_deref() {
        None => return Err("pid not specified (-t PID)".into()),
        Some(t) => t.parse().ok().filter(|&p| p > 0).ok_or_else(|| format!("invalid argument for -t: {t}"))?,
    };
    let dir = images_dir(cli);
    if !dir.is_dir() {
        return Err(format!("images directory {} does not exist", dir.display()));
    }
    pr_info!("========================================");
    pr_info!("Dumping processes (pid: {pid})");
    pr_info!("========================================");
    let t0 = std::time::Instant::now();
    let (tree, mut frozen) = dump::collect_with(pid, cli.freeze_cgroup.as_deref()).map_err(|e| error_chain(&e))?;
    check_ttys(&tree, cli.shell_job)?;
    let dump_bytes: u64 = tree.tasks.iter().flat_map(|t| &t.mm.pages).map(|r| r.nr_pages * crate::sys::PAGE_SIZE).sum();
    let pump = if std::env::var("CRIU_RS_DUMP_READ").is_ok() || !dump::page_pump::pays_off(dump_bytes) {
        None
    } else {
        match dump::page_pump::PagePump::start(&frozen) {
            Ok(p) => Some(p),
            Err(e) => {
                pr_warn!("page pump of {pid} unavailable ({e}); reading its memory instead");
                None
            }
        }
    };
    let plain;
    let mem: &dyn crate::mem_source::MemSource = match &pump {
        Some(p) => p,
        None => {
            plain = ProcessMem::open(pid).map_err(|e| format!("opening memory of {pid}: {e}"))?;
            &plain
        }
    };
    let run_id = format!("criu-rs-{}-{}", std::process::id(), t0.elapsed().as_nanos());
    // images become visible only when complete (inventory last)
    let staging = dump::staging::Staging::new(&dir).map_err(|e| error_chain(&e))?;
    images_io::write_images(&tree, staging.path(), mem, &run_id).map_err(|e| error_chain(&e))?;
    // the pump's pipe closed and its injection session ended before the
    // images are published and the source is released
    drop(pump);
    staging.publish().map_err(|e| error_chain(&e))?;
    if !cli.leave_running {
        frozen.kill_on_release = true;
    }
    drop(frozen);
    pr_info!("Dumping finished successfully");
    Ok(())
}

fn run_restore(cli: &Cli) -> Result<i32, String> {
    let dir = images_dir(cli);
    let (tree, pages) = images_io::read_images(&dir).map_err(|e| error_chain(&e))?;
    let pidfile = cli.pidfile.as_deref().map(|p| in_work_dir(cli, p));
    let opts = RestoreOpts { detached: cli.detached, pidfile, shell_job: cli.shell_job, root: cli.root.clone() };
    let pid = restore::restore(&tree, &pages, &opts).map_err(|e| error_chain(&e))?;
    if cli.detached {
        return Ok(0);
    }
    // as upstream: wait for the tree, then exit 0 whatever its status
    match crate::sys::ptrace::wait_flags(pid, 0) {
        Ok(Some(w)) => {
            pr_info!("Restored task {pid} ended: {w:?}");
            Ok(0)
        }
        other => Err(format!("waiting for the restored task {pid}: {other:?}")),
    }
}

/// One feature probe: Ok, or what is missing.
type Probe = (&'static str, bool, fn() -> Result<(), String>);

fn probe_ptrace_and_set_tid() -> Result<(), String> {
    use crate::sys::process as p;
    use crate::sys::ptrace;
    // PTRACE_SEIZE of a child
    let child = p::fork3(0, &[], libc::SIGCHLD, || p::pause_forever()).map_err(|e| format!("clone3: {e}"))?;
    let seized = ptrace::seize(child, 0).map_err(|e| format!("PTRACE_SEIZE: {e}"));
    let _ = p::kill(child, libc::SIGKILL);
    let _ = ptrace::wait_flags(child, 0);
    seized?;
    // clone3 with set_tid: a pid well above the last one handed out
    let last: i32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1000);
    let max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(32768);
    let mut err = String::new();
    for i in 0..20 {
        // in 300..pid_max (a pid at or past pid_max is EINVAL, not EEXIST)
        let want = 300 + (last + 5000 + i * 97) % (max.max(1301) - 300);
        if Path::new(&format!("/proc/{want}")).exists() {
            continue;
        }
        match p::fork3(0, &[want], libc::SIGCHLD, || p::exit_now(0)) {
            Ok(c) => {
                let _ = ptrace::wait_flags(c, 0);
                return if c == want { Ok(()) } else { Err(format!("clone3 set_tid={want} gave pid {c}")) };
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => err = format!("clone3 with set_tid: {e}"),
        }
        break;
    }
    Err(if err.is_empty() { "clone3 with set_tid: no free pid found to try".into() } else { err })
}

fn probe_mm_map() -> Result<(), String> {
    let size = crate::sys::process::mm_map_size().map_err(|e| format!("prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE): {e}"))?;
    if size == 0 {
        return Err("PR_SET_MM_MAP_SIZE returned 0".into());
    }
    Ok(())
}

static PROBE_WORD: u64 = 0x5a5a_1234_abcd_0042;

fn probe_proc_mem() -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open("/proc/self/mem").map_err(|e| format!("open /proc/self/mem: {e}"))?;
    let mut b = [0u8; 8];
    f.read_at(&mut b, &PROBE_WORD as *const u64 as u64).map_err(|e| format!("reading /proc/self/mem: {e}"))?;
    if u64::from_ne_bytes(b) != PROBE_WORD {
        return Err("/proc/self/mem returned the wrong bytes".into());
    }
    Ok(())
}

fn probe_pagemap_scan() -> Result<(), String> {
    let f = std::fs::File::open("/proc/self/pagemap").map_err(|e| format!("open /proc/self/pagemap: {e}"))?;
    crate::sys::pagemap::probe_scan(&f).map_err(|e| format!("PAGEMAP_SCAN ioctl: {e} (kernel older than 6.7?)"))
}

fn probe_pidfd() -> Result<(), String> {
    crate::sys::process::pidfd_open(std::process::id() as i32).map(drop).map_err(|e| format!("pidfd_open: {e}"))
}

fn probe_userfaultfd() -> Result<(), String> {
    crate::sys::process::probe_userfaultfd(libc::O_CLOEXEC | libc::O_NONBLOCK).map_err(|e| format!("userfaultfd: {e}"))
}

fn probe_vdso() -> Result<(), String> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| format!("reading /proc/self/maps: {e}"))?;
    if !maps.lines().any(|l| l.ends_with("[vdso]")) {
        return Err("no [vdso] mapping".into());
    }
    if !maps.lines().any(|l| l.ends_with("[vvar]")) {
        return Err("no [vvar] mapping next to the vdso".into());
    }
    Ok(())
}

fn probe_zero_pfn() -> Result<(), String> {
    match crate::sys::mmap::zero_page_pfn() {
        Ok(pfn) if pfn != 0 => Ok(()),
        _ => Err("pagemap PFNs are hidden (need CAP_SYS_ADMIN)".into()),
    }
}

fn probe_kcmp() -> Result<(), String> {
    let me = std::process::id() as i32;
    crate::sys::process::kcmp_file(me, 0, me, 0).map(drop).map_err(|e| format!("kcmp(KCMP_FILE): {e}"))
}

/// (name, needed, probe): a missing needed feature fails the check; a
/// missing optional one is reported as upstream reports missing extras.
const PROBES: &[Probe] = &[
    ("ptrace + clone3 set_tid", true, probe_ptrace_and_set_tid),
    ("PR_SET_MM_MAP", true, probe_mm_map),
    ("/proc/PID/mem", true, probe_proc_mem),
    ("pidfd", true, probe_pidfd),
    ("vdso layout", true, probe_vdso),
    ("pagemap PFNs", true, probe_zero_pfn),
    ("PAGEMAP_SCAN", false, probe_pagemap_scan),
    ("userfaultfd", false, probe_userfaultfd),
    ("kcmp", false, probe_kcmp),
];

fn run_check() -> Result<(), String> {
    let mut failed = Vec::new();
    let mut missing_extra = false;
    for (name, needed, probe) in PROBES {
        match probe() {
            Ok(()) => pr_info!("{name} is supported"),
            Err(e) if *needed => {
                pr_err!("{name}: {e}");
                failed.push(*name);
            }
            Err(e) => {
                pr_warn!("{name}: {e}");
                missing_extra = true;
            }
        }
    }
    if !failed.is_empty() {
        return Err(format!("missing: {}", failed.join(", ")));
    }
    if missing_extra {
        pr_msg!("Looks good but some kernel features are missing\nwhich, depending on your process tree, may cause\ndump or restore failure.");
    } else {
        pr_msg!("Looks good.");
    }
    Ok(())
}

/// Run the CLI; returns the process exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let args = match normalize(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("Error: {e}");
            return 1;
        }
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 1 } else { 0 };
        }
    };
    if cli.version {
        println!("Version: {VERSION}");
        return 0;
    }
    let cmd = match cli.command.as_deref() {
        None => {
            eprintln!("Error: no command given (dump, restore, check)\n\nTry -h|--help for more info");
            return 1;
        }
        Some(c) if REFUSED_COMMANDS.contains(&c) => {
            eprintln!("Error: the {c} command is not supported yet");
            return 1;
        }
        Some(c @ ("dump" | "restore" | "check")) => c.to_string(),
        Some(c) => {
            eprintln!("Error: unknown command: {c}\n\nTry -h|--help for more info");
            return 1;
        }
    };
    if let Err(e) = setup_log(&cli) {
        eprintln!("Error: {e}");
        return 1;
    }
    let res = match cmd.as_str() {
        "dump" => run_dump(&cli).map(|()| 0).map_err(|e| (e, "Dumping FAILED.")),
        "restore" => run_restore(&cli).map_err(|e| (e, "Restoring FAILED.")),
        _ => run_check().map(|()| 0).map_err(|e| (e, "")),
    };
    match res {
        Ok(c) => c,
        Err((e, failed)) => {
            pr_err!("{e}");
            if !failed.is_empty() {
                pr_err!("{failed}");
            }
            // with a log file, say it on the terminal too
            if cli.log_file.as_deref().is_some_and(|f| f != "-") {
                eprintln!("Error: {e}");
            }
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(a: &[&str]) -> Result<Vec<String>, String> {
        let v = std::iter::once("criu").chain(a.iter().copied()).map(OsString::from).collect();
        normalize(v).map(|v| v.into_iter().skip(1).map(|s| s.to_string_lossy().into_owned()).collect())
    }

    #[test]
    fn verbosity_forms() {
        assert_eq!(norm(&["dump", "-v4"]).unwrap(), ["dump", "--loglevel-resolved=4"]);
        assert_eq!(norm(&["-v"]).unwrap(), ["--loglevel-resolved=3"]);
        assert_eq!(norm(&["-vv"]).unwrap(), ["--loglevel-resolved=4"]);
        assert_eq!(norm(&["-v", "-v"]).unwrap(), ["--loglevel-resolved=4"]);
        assert_eq!(norm(&["--verbosity=1"]).unwrap(), ["--loglevel-resolved=1"]);
        assert_eq!(norm(&["-v0"]).unwrap(), ["--loglevel-resolved=0"]);
    }

    #[test]
    fn refused_by_name() {
        assert_eq!(norm(&["dump", "--tcp-established"]).unwrap_err(), "--tcp-established is not supported yet");
        assert_eq!(norm(&["--ghost-limit=5M"]).unwrap_err(), "--ghost-limit is not supported yet");
        assert_eq!(norm(&["-x"]).unwrap_err(), "-x/--ext-unix-sk is not supported yet");
        assert_eq!(norm(&["--no-tcp-established", "restore"]).unwrap(), ["restore"]);
    }

    #[test]
    fn values_are_not_flags() {
        assert_eq!(norm(&["-o", "-s", "-D", "-l"]).unwrap(), ["-o", "-s", "-D", "-l"]);
    }
}
