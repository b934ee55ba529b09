//! The `criu` command line: upstream's commands and flags. A flag upstream
//! has but this engine doesn't implement yet is refused by name, never
//! ignored. Exit codes as upstream: 0 success, 1 failure.

use crate::mem_source::ProcessMem;
use crate::restore::RestoreOpts;
use crate::{dump, images_io, log, pr_err, pr_info, restore};
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Upstream flags that are recognised but not implemented yet.
const NOT_IMPLEMENTED: &[&str] = &[
    "--freeze-cgroup", "--tcp-established", "--tcp-close", "--ext-unix-sk", "--file-locks", "--link-remap",
    "--ghost-limit", "--evasive-devices", "--page-server", "--address", "--port", "--prev-images-dir",
    "--track-mem", "--lazy-pages", "--auto-dedup", "--manage-cgroups", "--cgroup-root", "--cgroup-props",
    "--inherit-fd", "--external", "--ext-mount-map", "--enable-external-sharing", "--enable-external-masters",
    "--network-lock", "--skip-in-flight", "--timeout", "--stream", "--mntns-compat-mode", "--empty-ns",
    "--namespaces", "--veth-pair", "--action-script", "--exec-cmd", "--unprivileged", "--display-stats",
    "--pre-dump-mode", "--skip-mnt", "--force-irmap", "--irmap-scan-path", "--lsm-profile", "--lsm-mount-context",
    "--remote", "--config", "--no-default-config", "--status-fd", "--weak-sysctls", "--tls", "--tls-cacert",
    "--tls-cacrl", "--tls-cert", "--tls-key", "--tls-no-cn-verify", "--allow-uprobes", "--cpu-cap",
    "--file-validation", "--log-pid", "--restore-sibling", "--leave-stopped", "--shell-job-tty", "-s",
    "--external-sharing", "-x", "-J", "-M", "-n", "-l",
];

#[derive(Parser, Debug)]
#[command(name = "criu", disable_version_flag = true, disable_help_subcommand = true)]
struct Cli {
    /// Print the version.
    #[arg(short = 'V', long = "version")]
    version: bool,
    /// Directory of the image files.
    #[arg(short = 'D', long = "images-dir", global = true)]
    images_dir: Option<PathBuf>,
    /// Directory for the log (default: the images directory).
    #[arg(short = 'W', long = "work-dir", global = true)]
    work_dir: Option<PathBuf>,
    /// Log file, relative to the work dir ("-" for stderr).
    #[arg(short = 'o', long = "log-file", global = true)]
    log_file: Option<String>,
    /// Log level 0..4 (`-v4`); also `-v`, `-vv`.
    #[arg(long = "verbosity", global = true)]
    verbosity: Option<u32>,
    /// Write the root task's pid here.
    #[arg(long = "pidfile", global = true)]
    pidfile: Option<PathBuf>,
    /// The tree is a shell job: keep the terminal fds.
    #[arg(short = 'j', long = "shell-job", global = true)]
    shell_job: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Checkpoint a process tree.
    Dump {
        #[arg(short = 't', long = "tree")]
        tree: i32,
        /// Leave the tree running after the dump.
        #[arg(short = 'R', long = "leave-running")]
        leave_running: bool,
    },
    /// Restore a process tree.
    Restore {
        /// Detach from the restored tree.
        #[arg(short = 'd', long = "restore-detached")]
        detached: bool,
        /// Root directory the tree is restored under.
        #[arg(short = 'r', long = "root")]
        root: Option<PathBuf>,
    },
    /// Check that the kernel has what the engine needs.
    Check,
}

/// `-v4` -> `--verbosity=4`, `-vv` -> `--verbosity=4` (2 + count).
fn normalize(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let mut out = Vec::with_capacity(args.len());
    for (i, a) in args.into_iter().enumerate() {
        let s = a.to_string_lossy().to_string();
        if i > 0 {
            let name = s.split('=').next().unwrap_or("");
            if NOT_IMPLEMENTED.contains(&name) {
                return Err(format!("option {name} is not implemented yet"));
            }
            if let Some(rest) = s.strip_prefix("-v") {
                if rest.is_empty() || rest.chars().all(|c| c == 'v') {
                    out.push(OsString::from(format!("--verbosity={}", (2 + 1 + rest.len() as u32).min(4))));
                    continue;
                }
                if let Ok(n) = rest.parse::<u32>() {
                    out.push(OsString::from(format!("--verbosity={}", n.min(4))));
                    continue;
                }
            }
        }
        out.push(a);
    }
    Ok(out)
}

fn setup_log(cli: &Cli) -> Result<(), String> {
    let level = cli.verbosity.unwrap_or(2);
    let out: Box<dyn std::io::Write + Send> = match cli.log_file.as_deref() {
        None | Some("-") => Box::new(std::io::stderr()),
        Some(f) => {
            let base = cli.work_dir.clone().or_else(|| cli.images_dir.clone()).unwrap_or_else(|| PathBuf::from("."));
            let p = if Path::new(f).is_absolute() { PathBuf::from(f) } else { base.join(f) };
            Box::new(std::fs::File::create(&p).map_err(|e| format!("can't create log file {}: {e}", p.display()))?)
        }
    };
    log::init(level, out);
    pr_info!("Version: 4.2 (criu-rs {})", env!("CARGO_PKG_VERSION"));
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

fn run_dump(cli: &Cli, pid: i32, leave_running: bool) -> Result<(), String> {
    let dir = cli.images_dir.clone().unwrap_or_else(|| PathBuf::from("."));
    if !dir.is_dir() {
        return Err(format!("images directory {} does not exist", dir.display()));
    }
    let t0 = std::time::Instant::now();
    let (tree, mut frozen) = dump::collect(pid).map_err(|e| error_chain(&e))?;
    let mem = ProcessMem::open(pid).map_err(|e| format!("opening memory of {pid}: {e}"))?;
    let run_id = format!("criu-rs-{}-{}", std::process::id(), t0.elapsed().as_nanos());
    images_io::write_images(&tree, &dir, &mem, &run_id).map_err(|e| error_chain(&e))?;
    if !leave_running {
        frozen.kill_on_release = true;
    }
    drop(frozen);
    pr_info!("Dumping finished successfully");
    Ok(())
}

fn run_restore(cli: &Cli, detached: bool, root: Option<PathBuf>) -> Result<i32, String> {
    let dir = cli.images_dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let (tree, pages) = images_io::read_images(&dir).map_err(|e| error_chain(&e))?;
    let opts = RestoreOpts { detached, pidfile: cli.pidfile.clone(), shell_job: cli.shell_job, root };
    let pid = restore::restore(&tree, &pages, &opts).map_err(|e| error_chain(&e))?;
    if detached {
        return Ok(0);
    }
    match crate::sys::ptrace::wait_flags(pid, 0) {
        Ok(Some(crate::sys::ptrace::Wait::Exited(c))) => Ok(c),
        Ok(Some(crate::sys::ptrace::Wait::Signaled(s))) => Ok(128 + s),
        other => Err(format!("waiting for the restored task {pid}: {other:?}")),
    }
}

fn run_check() -> Result<(), String> {
    let mut problems = Vec::new();
    if !Path::new("/proc/self/ns/pid").exists() {
        problems.push("no pid namespaces");
    }
    if crate::sys::mmap::zero_page_pfn().unwrap_or(0) == 0 {
        problems.push("pagemap PFNs are hidden (need CAP_SYS_ADMIN)");
    }
    if problems.is_empty() {
        println!("Looks good.");
        Ok(())
    } else {
        Err(problems.join("; "))
    }
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
        println!("Version: 4.2");
        return 0;
    }
    if let Err(e) = setup_log(&cli) {
        eprintln!("Error: {e}");
        return 1;
    }
    let res = match &cli.cmd {
        None => Err("no command given (dump, restore, check)".to_string()),
        Some(Cmd::Dump { tree, leave_running }) => run_dump(&cli, *tree, *leave_running).map(|()| 0),
        Some(Cmd::Restore { detached, root }) => run_restore(&cli, *detached, root.clone()),
        Some(Cmd::Check) => run_check().map(|()| 0),
    };
    match res {
        Ok(c) => c,
        Err(e) => {
            pr_err!("{e}");
            if !log::enabled(log::LOG_ERROR) || cli.log_file.as_deref().is_some_and(|f| f != "-") {
                eprintln!("Error: {e}");
            }
            1
        }
    }
}
