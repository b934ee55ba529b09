//! Helpers for the fd and CLI tests: build a C program (the shared fixtures
//! or ours in `progs/`), start it as the fixtures are started (`setsid
//! unshare --pid --fork`), run our `criu`, read /proc fd tables.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const CRIU: &str = env!("CARGO_BIN_EXE_criu");

#[path = "../common/mod.rs"]
mod common;
pub use common::{last_tick, only_stdio, require, wait_until, skip, skip_reason, upstream, why_not_fixture, why_not_here, why_not_root, why_not_tool, why_not_upstream};

/// The old form of `require!(why_not_root())`, for tests that print and
/// return themselves: when not root it already records the skip (and fails
/// under CI=true), so such a test does not pass silently.
pub fn is_root() -> bool {
    match common::why_not_root() {
        None => true,
        Some(why) => {
            common::skip(why);
            false
        }
    }
}

pub fn shared_progs() -> PathBuf {
    common::progs_dir()
}

/// Build `name`.c from our progs/ if it is there, else from the shared fixtures.
pub fn build(name: &str, out: &Path) -> PathBuf {
    let ours = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fdsupport/progs").join(format!("{name}.c"));
    let src = if ours.exists() { ours } else { shared_progs().join(format!("{name}.c")) };
    let bin = out.join(format!("fx-{name}"));
    let st = Command::new("gcc")
        .args(["-O2", "-static", "-I"])
        .arg(shared_progs())
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .args(["-lpthread", "-lrt"])
        .status()
        .expect("gcc");
    assert!(st.success(), "building {}", src.display());
    bin
}

/// Newest process whose argv[0] is `bin`.
pub fn pid_of(bin: &Path) -> Option<i32> {
    let mut found = None;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmd.split(|b| *b == 0).next() == Some(bin.as_os_str().as_encoded_bytes()) {
            found = Some(found.map_or(pid, |f: i32| f.max(pid)));
        }
    }
    found
}

/// How a [`Scene`]'s program is started.
pub enum Launch {
    /// `setsid unshare --pid --fork BIN`: pid 1 of a pid namespace of its
    /// own, in the launcher's session (its leader outside the namespace).
    SessionOutside,
    /// `unshare --pid --fork setsid BIN`: pid 1 and the leader of a session
    /// of its own, as the shared fixtures are started (upstream CRIU can
    /// dump it too).
    SessionLeader,
}

/// A scratch directory with `work/` (the program's cwd) and a built program.
pub struct Scene {
    pub tmp: PathBuf,
    pub work: PathBuf,
    pub bin: PathBuf,
    pub pid: i32,
    /// The `setsid unshare` launcher, reaped on drop.
    launcher: std::process::Child,
}

impl Scene {
    /// Build and start `name`; wait for its first tick.
    pub fn start(name: &str, tag: &str) -> Scene {
        Scene::start_args(name, tag, &[])
    }

    /// As `start`, with arguments for the program.
    pub fn start_args(name: &str, tag: &str, args: &[&str]) -> Scene {
        Scene::launch(name, tag, args, Launch::SessionOutside)
    }

    /// Build `name` and start it with `args` as `how` says; wait for its
    /// first tick.
    pub fn launch(name: &str, tag: &str, args: &[&str], how: Launch) -> Scene {
        let tmp = std::env::temp_dir().join(format!("criu-rs-fdtest-{name}-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let work = tmp.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let bin = build(name, &tmp);
        let words: &[&str] = match how {
            Launch::SessionOutside => &["setsid", "unshare", "--pid", "--fork"],
            Launch::SessionLeader => &["unshare", "--pid", "--fork", "setsid"],
        };
        let launcher = only_stdio(&mut Command::new(words[0]))
            .args(&words[1..])
            .arg(&bin)
            .args(args)
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start program");
        wait_until("ready", Duration::from_secs(10), || work.join("ready").exists());
        let log = work.join("progress.log");
        wait_until("first tick", Duration::from_secs(10), || last_tick(&log) >= 1);
        let pid = pid_of(&bin).expect("program running");
        Scene { tmp, work, bin, pid, launcher }
    }

    pub fn log(&self) -> PathBuf {
        self.work.join("progress.log")
    }

    pub fn images(&self, n: usize) -> PathBuf {
        let d = self.tmp.join(format!("img{n}"));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Run criu with `args` + `-D dir -v4 -o LOG`, cwd = work.
    pub fn criu(&self, args: &[&str], dir: &Path, logname: &str) -> Output {
        Command::new(CRIU).args(args).arg("-D").arg(dir).args(["-v4", "-o", logname]).current_dir(&self.work).output().expect("run criu")
    }

    /// As `criu`, panicking with the log on failure.
    pub fn criu_ok(&self, args: &[&str], dir: &Path, logname: &str) {
        let out = self.criu(args, dir, logname);
        if !out.status.success() {
            let log = std::fs::read_to_string(dir.join(logname)).unwrap_or_default();
            panic!("criu {args:?} failed ({}):\n{}\n{log}", out.status, String::from_utf8_lossy(&out.stderr));
        }
    }

    /// Restore detached from `dir` and wait for 3 more ticks; updates `pid`.
    pub fn restore(&mut self, dir: &Path, extra: &[&str]) {
        let t = last_tick(&self.log());
        let mut args = vec!["restore", "-d"];
        args.extend_from_slice(extra);
        self.criu_ok(&args, dir, "restore.log");
        wait_until("ticks after restore", Duration::from_secs(10), || last_tick(&self.log()) > t + 3);
        self.pid = pid_of(&self.bin).expect("restored program running");
    }

    pub fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).map(|s| !s.contains(") Z")).unwrap_or(false)
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        if let Some(p) = pid_of(&self.bin) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
        }
        let _ = self.launcher.kill();
        let _ = self.launcher.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// One fd as /proc shows it: target (pipes as "pipe", ghost suffixes cut),
/// offset and status flags (octal, as fdinfo prints them).
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct FdView {
    pub fd: i32,
    pub target: String,
    pub pos: u64,
    pub flags: u32,
}

pub fn fd_table(pid: i32) -> Vec<FdView> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let target = std::fs::read_link(e.path()).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let target = if target.starts_with("pipe:") { "pipe".to_string() } else { target };
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        let field = |k: &str| info.lines().find_map(|l| l.strip_prefix(k)).map(|s| s.trim().to_string()).unwrap_or_default();
        v.push(FdView { fd, target, pos: field("pos:").parse().unwrap_or(0), flags: u32::from_str_radix(&field("flags:"), 8).unwrap_or(0) });
    }
    v.sort_by_key(|f| f.fd);
    v
}
