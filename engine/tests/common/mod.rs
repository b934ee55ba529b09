//! Helpers shared by the real-process tests (faults, pids): build a fixture
//! from ../shared/fixtures/progs, start it, watch its progress.log, run our
//! `criu`, and look at what is left running. Needs root, gcc, unshare,
//! setsid and the shared fixtures: a test starts with
//! `require!(why_not_here())`, which skips with the reason outside CI and
//! fails under CI=true (see the test-support crate).
#![allow(dead_code, unused_imports)]

pub mod runc_support;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use test_support::{require, skip, why_not_cpu_flag, why_not_fixture, why_not_root, why_not_tool, why_not_tools};

pub const CRIU: &str = env!("CARGO_BIN_EXE_criu");

/// Why a real-process test cannot run here: not root, no gcc, unshare or
/// setsid, or no shared fixture programs.
pub fn why_not_here() -> Option<String> {
    why_not_root().or_else(|| why_not_tools(&["gcc", "unshare", "setsid"])).or_else(|| why_not_fixture("progs"))
}

/// The old form of [`why_not_here`], for tests that print and return
/// themselves: it already records the skip (and fails under CI=true), so
/// such a test does not pass silently. New tests use
/// `require!(why_not_here())`.
pub fn skip_reason() -> Option<String> {
    let why = why_not_here()?;
    skip(&why);
    Some(why)
}

/// A fresh scratch directory for one test.
pub fn test_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("criu-rs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A private copy of the engine binary: processes running it (restore
/// children before their exec image is replaced) are this test's alone.
pub fn private_criu(dir: &Path) -> PathBuf {
    let p = dir.join("criu");
    std::fs::copy(CRIU, &p).expect("copy criu");
    p
}

/// The shared fixture programs (`shared/fixtures/progs`).
pub fn progs_dir() -> PathBuf {
    test_support::fixture("progs")
}

pub fn build(name: &str, out: &Path) -> PathBuf {
    let bin = out.join(format!("fx-{name}"));
    let st = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&bin)
        .arg(progs_dir().join(format!("{name}.c")))
        .args(["-lpthread", "-lrt"])
        .status()
        .expect("gcc");
    assert!(st.success(), "building fx-{name}");
    bin
}

/// Last `tick N ok` of a progress log; panics on a FAIL line.
pub fn last_tick(log: &Path) -> u64 {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    assert!(!s.contains("FAIL"), "fixture reported a failure:\n{s}");
    s.lines().filter_map(|l| l.strip_prefix("tick ")?.split_whitespace().next()?.parse().ok()).next_back().unwrap_or(0)
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids of live (not zombie) processes whose executable is `exe`.
pub fn live_with_exe(exe: &Path) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_deref() == Some(exe) && alive(pid) {
            v.push(pid);
        }
    }
    v.sort_unstable();
    v
}

/// The live processes running `exe` whose parent does not: the roots of
/// the trees of a fixture (one process, or a tree of them).
pub fn roots_with_exe(exe: &Path) -> Vec<i32> {
    let all = live_with_exe(exe);
    let ppid = |p: i32| -> i32 {
        let st = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        st.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    all.iter().copied().filter(|&p| !all.contains(&ppid(p))).collect()
}

/// The process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z') || r.starts_with('X')),
        Err(_) => false,
    }
}

/// `SigBlk` of every thread of `pid`, by tid.
pub fn sigmasks(pid: i32) -> Vec<(i32, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let st = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let m = st.lines().find_map(|l| l.strip_prefix("SigBlk:")).unwrap_or("").trim().to_string();
        v.push((tid, m));
    }
    v.sort();
    v
}

/// Lines of /proc/PID/maps.
pub fn maps(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Every open fd of `pid` with what it points to, sorted.
pub fn fd_links(pid: i32) -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let fd = e.file_name().to_str()?.parse().ok()?;
                    Some((fd, std::fs::read_link(e.path()).ok()?.to_string_lossy().into_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `Cpus_allowed_list` of every thread of `pid`, by tid.
pub fn cpu_masks(pid: i32) -> Vec<(i32, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse().ok()) else { continue };
        let st = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let m = st.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap_or("").trim().to_string();
        v.push((tid, m));
    }
    v.sort();
    v
}

pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim_end().to_string()
}

/// Leave the started program only its stdio: every other fd this test
/// process inherited (cargo's jobserver pipe, a CI runner's socket) is
/// marked close-on-exec, so what gets dumped does not depend on where the
/// tests run.
pub fn only_stdio(cmd: &mut Command) -> &mut Command {
    // SAFETY: close_range is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            const CLOSE_RANGE_CLOEXEC: u32 = 4;
            if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// How the fixture is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    /// `setsid unshare --pid --fork fx`: pid 1 of its own pid namespace.
    OwnPidNs,
    /// `setsid fx`: in the host pid namespace.
    Host,
}

/// A running fixture; killed on drop.
pub struct Fixture {
    pub bin: PathBuf,
    pub work: PathBuf,
    pub pid: i32,
}

impl Fixture {
    pub fn start(name: &str, dir: &Path, ns: Ns) -> Fixture {
        let bin = build(name, dir);
        Self::start_bin(bin, dir, ns)
    }

    /// [`Fixture::start`] of a program of engine/tests/progs.
    pub fn start_ours(name: &str, dir: &Path, ns: Ns) -> Fixture {
        let bin = dir.join(name);
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs").join(format!("{name}.c"));
        let st = Command::new("gcc").args(["-O2", "-static", "-o"]).arg(&bin).arg(&src).args(["-lpthread", "-lrt"]).status().expect("gcc");
        assert!(st.success(), "building {}", src.display());
        Self::start_bin(bin, dir, ns)
    }

    fn start_bin(bin: PathBuf, dir: &Path, ns: Ns) -> Fixture {
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let mut cmd = Command::new("setsid");
        if ns == Ns::OwnPidNs {
            cmd.args(["unshare", "--pid", "--fork"]);
        }
        let mut child = only_stdio(&mut cmd).arg(&bin).current_dir(&work).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start fixture");
        // setsid forks when it is a process group leader; reap whatever exits
        std::thread::spawn(move || child.wait());
        wait_until("ready", Duration::from_secs(10), || work.join("ready").exists());
        let log = work.join("progress.log");
        wait_until("first tick", Duration::from_secs(10), || last_tick(&log) >= 1);
        let pids = roots_with_exe(&bin);
        assert_eq!(pids.len(), 1, "one fixture root {} expected, found {pids:?}", bin.display());
        Fixture { bin, work, pid: pids[0] }
    }

    pub fn log(&self) -> PathBuf {
        self.work.join("progress.log")
    }

    pub fn tick(&self) -> u64 {
        last_tick(&self.log())
    }

    /// Wait for `n` more ok ticks (and no FAIL).
    pub fn ticks_on(&self, n: u64, what: &str) {
        let t = self.tick();
        wait_until(&format!("{n} ticks {what}"), Duration::from_secs(15), || self.tick() >= t + n);
    }

    /// The fixture's pid again (after a restore).
    pub fn refind(&mut self) {
        let pids = roots_with_exe(&self.bin);
        assert_eq!(pids.len(), 1, "one fixture root expected, found {pids:?}");
        self.pid = pids[0];
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for p in live_with_exe(&self.bin) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
        }
    }
}

/// Run `criu args -D dir -v4 -o <log>` with extra environment; the exit
/// status and the log.
pub fn criu_env(criu: &Path, args: &[&str], dir: &Path, log: &str, env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut cmd = Command::new(criu);
    cmd.args(args).arg("-D").arg(dir).args(["-v4", "-o", log]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run criu");
    let mut log = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
    log.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status, log)
}

/// Run criu and require success.
pub fn criu_ok(criu: &Path, args: &[&str], dir: &Path, log: &str) -> String {
    let (st, log) = criu_env(criu, args, dir, log, &[]);
    assert!(st.success(), "criu {args:?} failed ({st:?}):\n{log}");
    log
}

/// The engine killed itself at the fault point (and did not just finish).
pub fn assert_killed(st: ExitStatus, point: &str, log: &str) {
    assert_eq!(st.signal(), Some(libc::SIGKILL), "engine did not die at fault point {point} ({st:?}):\n{log}");
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

/// Upstream CRIU 4.2, beside the workspace (`shared/upstream-criu`).
pub fn upstream() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/upstream-criu/criu-4.2")
}

/// Why a test that also runs upstream CRIU cannot run here.
pub fn why_not_upstream() -> Option<String> {
    why_not_here().or_else(|| (!upstream().exists()).then(|| format!("{} not found", upstream().display())))
}

/// Run upstream CRIU with `args` on images dir `dir`; require success.
pub fn upstream_ok(args: &[&str], dir: &Path, log: &str) {
    let (st, text) = criu_env(&upstream(), args, dir, log, &[]);
    assert!(st.success(), "upstream criu {args:?} failed ({st:?}):\n{text}");
}

/// How a test program's processes are found again (after a restore).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Find {
    /// One live process runs the binary.
    OneProcess,
    /// One tree of processes runs it: its root.
    OneTree,
    /// The one process running it that is pid 1 of its pid namespace
    /// (its children may run the same binary).
    NsInit,
}

/// A test program `tests/progs/NAME.c` running in namespaces of its own
/// (by default pid 1 of a pid namespace of its own, `unshare --pid --fork
/// setsid NAME WORDS...`, so a restore finds its pids free and upstream
/// CRIU dumps it too), in `work`; it writes `./ready`, then ticks in
/// `./progress.log`. Every process running the binary (also once it is
/// deleted) is killed on drop, and the test dir removed.
pub struct OwnNsProg {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub work: PathBuf,
    pub pid: i32,
    pub find: Find,
}

/// `gcc -O2 -static -Wall -o DIR/NAME tests/progs/NAME.c`: the binary.
pub fn build_test_prog(name: &str, dir: &Path) -> PathBuf {
    build_test_prog_with(name, dir, &[])
}

/// [`build_test_prog`] with more gcc arguments after the source (`-lrt`).
pub fn build_test_prog_with(name: &str, dir: &Path, extra: &[&str]) -> PathBuf {
    let bin = dir.join(name);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/progs/{name}.c"));
    let out = Command::new("gcc").args(["-O2", "-static", "-Wall", "-o"]).arg(&bin).arg(&src).args(extra).output().expect("gcc");
    assert!(out.status.success(), "building {name}: {}", String::from_utf8_lossy(&out.stderr));
    bin
}

impl OwnNsProg {
    /// Build `name` into a test dir of `tag` and start it with `words`
    /// as pid 1 of a pid namespace of its own.
    pub fn start(tag: &str, name: &str, words: &[&str]) -> OwnNsProg {
        Self::launch(tag, name, Find::OneProcess, |bin| {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "setsid"]).arg(bin).args(words);
            c
        })
    }

    /// Build `name` into a test dir of `tag` and run the command
    /// `launcher` makes of the binary's path (in `work`, stdio on
    /// /dev/null, no fd but 0-2 inherited); wait for `./ready` (or a FAIL
    /// line) and the first tick, and find its pid as `find` says.
    pub fn launch(tag: &str, name: &str, find: Find, launcher: impl FnOnce(&Path) -> Command) -> OwnNsProg {
        let dir = test_dir(tag);
        let bin = build_test_prog(name, &dir);
        Self::run(dir, bin, find, launcher)
    }

    /// [`OwnNsProg::launch`] of a binary already built into test dir `dir`.
    pub fn run(dir: PathBuf, bin: PathBuf, find: Find, launcher: impl FnOnce(&Path) -> Command) -> OwnNsProg {
        let name = bin.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let work = dir.join("work");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let mut cmd = launcher(&bin);
        let mut child = only_stdio(&mut cmd)
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        std::thread::spawn(move || child.wait());
        let mut s = OwnNsProg { dir, bin, work, pid: 0, find };
        wait_until("ready", Duration::from_secs(10), || s.work.join("ready").exists() || s.log_text().contains("FAIL"));
        wait_until("first tick", Duration::from_secs(10), || s.tick() >= 1 || s.log_text().contains("FAIL"));
        assert!(!s.log_text().contains("FAIL"), "{name} at start: {}", s.log_text());
        s.refind();
        s
    }

    /// `work/progress.log`.
    pub fn log(&self) -> PathBuf {
        self.work.join("progress.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Restore `img` with `criu` (ours or upstream's) from the working
    /// dir (`restore -d -v4 -o restore.log -D IMG EXTRA...`); the
    /// program's pid found again, 5 ticks after.
    pub fn restore_in_work(&mut self, criu: &Path, img: &Path, extra: &[&str]) {
        let st = Command::new(criu)
            .args(["restore", "-d", "-v4", "-o", "restore.log", "-D"])
            .arg(img)
            .args(extra)
            .current_dir(&self.work)
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "restore by {} failed:\n{}", criu.display(), std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
        self.refind();
        self.ticks_on(5, "after restore");
    }

    /// The program's pid again (after a restore).
    pub fn refind(&mut self) {
        let pids = match self.find {
            Find::OneProcess => live_with_exe(&self.bin),
            Find::OneTree => roots_with_exe(&self.bin),
            Find::NsInit => live_with_exe(&self.bin).into_iter().filter(|&p| ns_pid(p) == Some(1)).collect(),
        };
        assert_eq!(pids.len(), 1, "one {} ({:?}) expected, found {pids:?}", self.bin.display(), self.find);
        self.pid = pids[0];
    }

    pub fn tick(&self) -> u64 {
        last_tick(&self.log())
    }

    /// `n` more ticks, and no FAIL line meanwhile.
    pub fn ticks_on(&self, n: u64, what: &str) {
        let t = self.tick();
        let fails = || self.log_text().lines().filter(|l| l.starts_with("FAIL")).map(str::to_string).collect::<Vec<_>>();
        wait_until(&format!("{n} ticks {what}"), Duration::from_secs(20), || self.tick() >= t + n || !fails().is_empty());
        assert!(fails().is_empty(), "{what}: {:?}", fails());
    }

    /// A fresh images directory `name` in the test dir.
    pub fn images(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Kill every process running the binary, and wait until they are gone.
    pub fn kill_all(&self) {
        for p in live_with_exe(&self.bin) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).stderr(Stdio::null()).status();
        }
        self.gone();
    }

    /// Wait until the dumped program is gone.
    pub fn gone(&self) {
        wait_until("the dumped program gone", Duration::from_secs(5), || live_with_exe(&self.bin).is_empty());
    }

    /// Two rounds with `criu`: a dump (its images checked by `first`),
    /// restore, then a `--leave-running` dump (its images checked by
    /// `second`), the program killed, restore; ticks after each step.
    pub fn two_rounds(&mut self, criu: &Path, first: impl FnOnce(&Path), second: impl FnOnce(&Path)) {
        self.ticks_on(2, "before the dump");
        let img = self.images("img1");
        criu_ok(criu, &["dump", "-t", &self.pid.to_string()], &img, "dump.log");
        first(&img);
        self.gone();
        criu_ok(criu, &["restore", "-d"], &img, "restore.log");
        self.refind();
        self.ticks_on(4, "after restore");
        let img = self.images("img2");
        criu_ok(criu, &["dump", "-t", &self.pid.to_string(), "--leave-running"], &img, "dump.log");
        second(&img);
        self.ticks_on(3, "after a --leave-running dump");
        for p in live_with_exe(&self.bin) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
        }
        self.gone();
        criu_ok(criu, &["restore", "-d"], &img, "restore.log");
        self.refind();
        self.ticks_on(4, "after the second restore");
    }

    /// Both ways with upstream CRIU 4.2: our dump restored by upstream,
    /// then upstream's dump (its images checked by `theirs`) restored by
    /// `criu`; ticks after each restore.
    pub fn upstream_both_ways(&mut self, criu: &Path, theirs: impl FnOnce(&Path)) {
        self.ticks_on(2, "before the dump");
        let img = self.images("ours");
        criu_ok(criu, &["dump", "-t", &self.pid.to_string()], &img, "dump.log");
        self.gone();
        upstream_ok(&["restore", "-d"], &img, "restore-upstream.log");
        self.refind();
        self.ticks_on(4, "after upstream's restore of our images");
        let img = self.images("theirs");
        upstream_ok(&["dump", "-t", &self.pid.to_string()], &img, "dump-upstream.log");
        theirs(&img);
        self.gone();
        criu_ok(criu, &["restore", "-d"], &img, "restore.log");
        self.refind();
        self.ticks_on(4, "after our restore of upstream's dump");
    }
}

/// A copy of image set `img` named `name` beside it (replaced if there),
/// for a test to make hostile.
pub fn copy_images(img: &Path, name: &str) -> PathBuf {
    let out = img.with_file_name(name);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    for e in std::fs::read_dir(img).unwrap().flatten() {
        std::fs::copy(e.path(), out.join(e.file_name())).unwrap();
    }
    out
}

/// A copy of image set `img` named `name` with image `file`'s entries
/// changed by `edit`.
pub fn edited_image<M: prost::Message + Default>(
    img: &Path,
    name: &str,
    file: &str,
    kind: &'static images_proto::magic::ImageKind,
    edit: impl FnOnce(&mut Vec<M>),
) -> PathBuf {
    let out = copy_images(img, name);
    let mut v: Vec<M> = images_proto::image::read_all(&out, file, kind).unwrap();
    edit(&mut v);
    images_proto::image::write_all(&out, file, kind, &v).unwrap();
    out
}

/// [`edited_image`] of files.img: `edit` applied to every file entry.
pub fn edited_files(img: &Path, name: &str, edit: impl Fn(&mut images_proto::pb::FileEntry)) -> PathBuf {
    edited_image(img, name, "files.img", &images_proto::magic::FILES, |v: &mut Vec<images_proto::pb::FileEntry>| v.iter_mut().for_each(edit))
}

/// Hostile image sets: `criu restore -d` of each case's set (what it
/// is, its directory, what the error must say) fails with exit code 1,
/// saying so, and starts no process running `bin`.
pub fn refused_restores<S: AsRef<str>>(criu: &Path, bin: &Path, cases: Vec<(&str, PathBuf, S)>) {
    for (what, dir, want) in cases {
        let want = want.as_ref();
        let (st, log) = criu_env(criu, &["restore", "-d"], &dir, "restore.log", &[]);
        assert_eq!(st.code(), Some(1), "{what}: the restore must fail:\n{log}");
        assert!(log.contains(want), "{what}: the error must say {want:?}:\n{log}");
        assert!(live_with_exe(bin).is_empty(), "{what}: a refused image must not start anything");
    }
}

impl Drop for OwnNsProg {
    /// Every process running the binary killed (also once it is deleted:
    /// `NAME (deleted)`), then the test directory removed.
    fn drop(&mut self) {
        let deleted = format!("{} (deleted)", self.bin.display());
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map(|l| l.to_string_lossy().into_owned()).unwrap_or_default();
            if Path::new(&exe) == self.bin || exe == deleted {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).stderr(Stdio::null()).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `criu tfork -t PID --copies N EXTRA... -D IMG -v4 -o tfork.log` with
/// `env`, asserted to succeed: the N clone pids it prints, and its log.
pub fn tfork_ok(criu: &Path, pid: i32, n: usize, extra: &[&str], img: &Path, env: &[(&str, &str)]) -> (Vec<i32>, String) {
    let out = Command::new(criu)
        .args(["tfork", "-t", &pid.to_string(), "--copies", &n.to_string()])
        .args(extra)
        .arg("-D")
        .arg(img)
        .args(["-v4", "-o", "tfork.log"])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = std::fs::read_to_string(img.join("tfork.log")).unwrap_or_default();
    assert!(out.status.success(), "tfork failed:\n{log}{}", String::from_utf8_lossy(&out.stderr));
    let clones: Vec<i32> = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(clones.len(), n, "{n} clone pids expected:\n{log}");
    (clones, log)
}

/// tools/bench/treehog.c built in `tmp` and started as pid 1 of a pid
/// namespace of its own (`unshare --pid --fork setsid`, in `tmp/work`):
/// a root and CHILDREN children of MIB MiB each (THP 1: huge pages),
/// every process checking its memory every tick; ready once it ticked.
/// Every process of it killed on drop.
pub struct TreeHog {
    pub bin: PathBuf,
    pub work: PathBuf,
}

impl TreeHog {
    pub fn start(tmp: &Path, children: usize, mib: u64, thp: bool) -> TreeHog {
        let bin = tmp.join("treehog");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/bench/treehog.c");
        let st = Command::new("gcc").args(["-O2", "-o"]).arg(&bin).arg(&src).status().expect("gcc");
        assert!(st.success(), "building treehog");
        let work = tmp.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let mut cmd = Command::new("unshare");
        only_stdio(&mut cmd).args(["--pid", "--fork", "setsid"]).arg(&bin).args([children.to_string(), mib.to_string(), u8::from(thp).to_string()]).current_dir(&work);
        let mut starter = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start treehog");
        std::thread::spawn(move || starter.wait());
        let h = TreeHog { bin, work };
        wait_until("treehog ready", Duration::from_secs(30), || h.work.join("ready").exists() && h.ticks() >= 1);
        h
    }

    /// Its `tick N ok` lines so far.
    pub fn ticks(&self) -> usize {
        std::fs::read_to_string(self.work.join("progress.log")).unwrap_or_default().lines().filter(|l| l.starts_with("tick ") && l.ends_with(" ok")).count()
    }

    /// Its FAIL lines.
    pub fn fails(&self) -> Vec<String> {
        std::fs::read_to_string(self.work.join("progress.log")).unwrap_or_default().lines().filter(|l| l.contains("FAIL")).map(String::from).collect()
    }

    /// Its root: pid 1 of its namespace.
    pub fn root(&self) -> Option<i32> {
        live_with_exe(&self.bin).into_iter().find(|&p| ns_pid(p) == Some(1))
    }

    pub fn gone(&self) {
        wait_until("treehog's processes gone", Duration::from_secs(10), || live_with_exe(&self.bin).is_empty());
    }

    /// Kill every process of it and wait for them to be gone.
    pub fn kill_all(&self) {
        for p in live_with_exe(&self.bin) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).stderr(Stdio::null()).status();
        }
        self.gone();
    }
}

impl Drop for TreeHog {
    fn drop(&mut self) {
        for p in live_with_exe(&self.bin) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).stderr(Stdio::null()).status();
        }
    }
}

/// The process's pid in its own pid namespace (NSpid's last field).
pub fn ns_pid(pid: i32) -> Option<i32> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    st.lines().find(|l| l.starts_with("NSpid:"))?.split_whitespace().last()?.parse().ok()
}

/// The namespace link `/proc/PID/ns/KIND` (empty if the process is gone).
pub fn ns_link(pid: i32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).map(|l| l.to_string_lossy().into_owned()).unwrap_or_default()
}

/// `nsenter -t PID FLAGS... CMD...`: its trimmed stdout (asserted to
/// succeed).
pub fn nsenter(pid: i32, flags: &[&str], cmd: &[&str]) -> String {
    let out = Command::new("nsenter").args(["-t", &pid.to_string()]).args(flags).args(cmd).output().expect("nsenter");
    assert!(out.status.success(), "nsenter -t {pid} {flags:?} {cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The engine under test, as a private copy in `dir`: ours, or the build
/// `CRIU_RS_TEST_ENGINE=PATH` names (to show a test fails without a
/// change). Waits out ETXTBSY: a fork of another test thread may hold the
/// copy's write fd for a moment, until it execs.
pub fn engine_under_test(dir: &Path) -> PathBuf {
    let criu = match std::env::var_os("CRIU_RS_TEST_ENGINE") {
        Some(p) => {
            let dst = dir.join("criu");
            std::fs::copy(p, &dst).expect("copy the engine under test");
            dst
        }
        None => private_criu(dir),
    };
    for _ in 0..100 {
        match Command::new(&criu).arg("--version").stdout(Stdio::null()).status() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => std::thread::sleep(Duration::from_millis(20)),
            _ => break,
        }
    }
    criu
}

/// The u64 at `addr` in `pid`'s memory (through /proc/PID/mem).
pub fn read_u64(pid: i32, addr: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, addr).unwrap();
    u64::from_le_bytes(b)
}

/// Write `v` at `addr` in `pid`'s memory (through /proc/PID/mem).
pub fn write_u64(pid: i32, addr: u64, v: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(format!("/proc/{pid}/mem")).unwrap();
    f.write_all_at(&v.to_le_bytes(), addr).unwrap();
}

/// Build the Go program `src` into `tmp/gotick`, with its caches in `tmp`.
pub fn build_go(tmp: &Path, src: &Path) -> PathBuf {
    let bin = tmp.join("gotick");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(src)
        .env("GOCACHE", tmp.join("gocache"))
        .env("GOPATH", tmp.join("gopath"))
        .env("HOME", tmp)
        .env("GOFLAGS", "-mod=mod")
        .env("GO111MODULE", "off")
        .output()
        .expect("go build");
    assert!(out.status.success(), "go build: {}", String::from_utf8_lossy(&out.stderr));
    bin
}

/// A btrfs file system in a 300 MiB image file in `dir`, loop-mounted at
/// `dir/mnt` for the guard's life (unmounted, lazily, on drop).
pub struct LoopBtrfs {
    pub mnt: PathBuf,
}

impl LoopBtrfs {
    /// Needs mkfs.btrfs, mount and umount (the caller checks:
    /// `why_not_tools(&["mkfs.btrfs", "btrfs", "mount", "umount"])`).
    pub fn new(dir: &Path) -> LoopBtrfs {
        let (file, mnt) = (dir.join("fs.btrfs"), dir.join("mnt"));
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::File::create(&file).unwrap().set_len(300 << 20).unwrap();
        let ok = |c: &mut Command| c.stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap().success();
        assert!(ok(Command::new("mkfs.btrfs").arg("-q").arg("-f").arg(&file)), "mkfs.btrfs");
        assert!(ok(Command::new("mount").args(["-o", "loop"]).arg(&file).arg(&mnt)), "mounting the btrfs image");
        LoopBtrfs { mnt }
    }

    /// `btrfs subvolume create MNT/NAME`: its path.
    pub fn subvolume(&self, name: &str) -> PathBuf {
        let vol = self.mnt.join(name);
        let st = Command::new("btrfs").args(["subvolume", "create"]).arg(&vol).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
        assert!(st.success(), "btrfs subvolume create {}", vol.display());
        vol
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}
