//! The `criu` command line: version, check, refused options and commands,
//! exit codes, log format and placement, restore without -d. Tests that
//! start processes need root (`require!` skips with the reason, or fails
//! under CI=true); the rest don't.

mod fdsupport;

use fdsupport::{last_tick, require, wait_until, why_not_here, why_not_root, Scene, CRIU};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn criu(args: &[&str]) -> Output {
    Command::new(CRIU).args(args).output().expect("run criu")
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("criu-rs-clitest-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `(SS.uuuuuu) ` at the start of a line.
fn timestamped(l: &str) -> bool {
    let b = l.as_bytes();
    b.len() >= 12
        && b[0] == b'('
        && b[1..3].iter().all(u8::is_ascii_digit)
        && b[3] == b'.'
        && b[4..10].iter().all(u8::is_ascii_digit)
        && b[10] == b')'
        && b[11] == b' '
}

/// Item 16: the first line stays upstream's "Version: X.Y" (runtimes parse
/// it, and need >= 3.15); the lines after it say what this binary is and
/// what it lacks.
#[test]
fn version() {
    for flag in ["--version", "-V"] {
        let out = criu(&[flag]);
        assert_eq!(out.status.code(), Some(0));
        let s = String::from_utf8(out.stdout).unwrap();
        let mut lines = s.lines();
        let first = lines.next().unwrap();
        assert_eq!(first, "Version: 4.2", "{flag}");
        let v: Vec<u32> = first.strip_prefix("Version: ").unwrap().split('.').map(|x| x.parse().unwrap()).collect();
        assert!(v[0] * 10000 + v[1] * 100 >= 31500);
        let rest: String = lines.collect::<Vec<_>>().join("\n");
        assert!(rest.starts_with(&format!("Implementation: criu_rs {}", env!("CARGO_PKG_VERSION"))), "{flag}: {s}");
        assert!(!rest.contains("one process at a time") && rest.contains("no predump") && !rest.contains("no RPC"), "{flag}: {s}");
        assert!(!rest.contains("GitID"), "no GitID: it would name no upstream commit");
        // runc reads any '-' in the output as upstream's git format and
        // then fails without a GitID line
        assert!(!s.contains('-'), "{flag}: a '-' breaks runc's version parser: {s}");
    }
}

/// Item 16: `criu service` is refused by name (not with a parser's
/// "unexpected argument"); `criu swrk 3` is served (tests/swrk.rs), and
/// without a socket on fd 3 says so naming the fd.
#[test]
fn service_is_refused_by_name() {
    let out = criu(&["service"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the service command") && err.contains("is not supported"), "{err}");
    let out = criu(&["swrk", "3"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("swrk: fd 3") && !err.contains("not supported"), "{err}");
    assert!(!err.contains("unexpected argument"), "{err}");
}

/// Item 16: --help claims only what the binary does.
#[test]
fn help_claims_only_what_exists() {
    let out = criu(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let h = String::from_utf8_lossy(&out.stdout);
    assert!(h.contains("dump and restore of process trees"), "{h}");
    assert!(!h.contains("restoring trees"), "{h}");
    // every option --help lists as working is accepted (with --help, an
    // accepted option prints the help, a refused one fails)
    for opt in ["-t", "-R", "-d", "-D", "-W", "-o", "--pidfile", "-j", "-r", "--freeze-cgroup", "--feature", "--config"] {
        assert!(h.contains(opt), "{opt} missing from --help");
        let o = criu(&["--help", opt, "x"]);
        assert_eq!(o.status.code(), Some(0), "{opt}: {}", String::from_utf8_lossy(&o.stderr));
    }
    for opt in ["--cpu-cap", "--display-stats", "--extra", "--all", "--no-default-config", "--timeout=3", "--pre-dump-mode=read", "-v4"] {
        let o = criu(&["--help", opt]);
        assert_eq!(o.status.code(), Some(0), "{opt}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn refused_options_name_themselves() {
    let cases: &[(&[&str], &str)] = &[
        (&["dump", "-t", "1", "--evasive-devices"], "--evasive-devices is not supported yet"),
        (&["restore", "--ext-unix-sk=123"], "--ext-unix-sk with socket inodes (one-sided stream connections) is not supported yet"),
        (&["dump", "--track-mem", "-t", "1"], "--track-mem is not supported yet"),
        (&["dump", "--page-server", "-t", "1"], "--page-server is not supported yet"),
        (&["restore", "--lazy-pages"], "--lazy-pages is not supported yet"),
        (&["dump", "-t", "1", "-s"], "-s/--leave-stopped is not supported yet"),
        (&["restore", "-x5,6"], "-x with socket inodes (one-sided stream connections) is not supported yet"),
        (&["pre-dump", "-t", "1"], "the pre-dump command"),
        (&["page-server"], "the page-server command"),
    ];
    for (args, msg) in cases {
        let out = criu(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "{args:?}: stderr {err:?} lacks {msg:?}");
        assert!(err.contains("not supported"), "{args:?}: {err}");
    }
}

#[test]
fn bad_usage_exits_1() {
    let cases: &[&[&str]] = &[&[], &["frobnicate"], &["dump", "--no-such-option"], &["dump", "-t", "0", "-D", "/tmp"], &["dump", "-D", "/tmp"]];
    for args in cases {
        let out = criu(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // --no-X of upstream booleans asks for the default and is fine
    let out = criu(&["--no-tcp-established", "--version"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn log_format_and_placement() {
    let d = scratch("log");
    let imgs = d.join("imgs");
    let wd = d.join("wd");
    std::fs::create_dir_all(&imgs).unwrap();
    std::fs::create_dir_all(&wd).unwrap();
    let imgs_s = imgs.to_str().unwrap();
    // -v4: every line timestamped; -o relative to the images dir by default
    let out = criu(&["restore", "-D", imgs_s, "-v4", "-o", "r.log"]);
    assert_eq!(out.status.code(), Some(1), "restore from an empty dir fails");
    let log = std::fs::read_to_string(imgs.join("r.log")).expect("log in the images dir");
    assert!(!log.is_empty());
    for l in log.lines() {
        assert!(timestamped(l), "line without timestamp: {l:?}");
    }
    assert!(log.lines().any(|l| l[12..].starts_with("Error (")), "{log}");
    assert!(log.contains("Restoring FAILED."), "{log}");
    assert!(log.lines().next().unwrap()[12..].starts_with("Version: 4.2"), "{log}");
    // -W moves the log; -v (bare) is level 3: still timestamps
    let out = criu(&["restore", "-D", imgs_s, "-W", wd.to_str().unwrap(), "-v", "--log-file", "w.log"]);
    assert_eq!(out.status.code(), Some(1));
    let log = std::fs::read_to_string(wd.join("w.log")).expect("log in the work dir");
    assert!(log.lines().all(timestamped), "{log}");
    // default level 2: no timestamps, errors only, on stderr without -o
    let out = criu(&["restore", "-D", imgs_s]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.lines().next().is_some_and(|l| l.starts_with("Error (")), "{err}");
    assert!(!err.lines().any(timestamped), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn check_looks_good() {
    require!(why_not_root());
    let out = criu(&["check"]);
    let so = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout {so} stderr {}", String::from_utf8_lossy(&out.stderr));
    assert!(so.starts_with("Looks good"), "{so}");
    let out = criu(&["check", "--all", "-v4"]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ptrace + clone3 set_tid is supported"), "{err}");
}

#[test]
fn dump_of_missing_pid_fails() {
    let d = scratch("nopid");
    let out = criu(&["dump", "-t", "999999", "-D", d.to_str().unwrap(), "-o", "d.log", "-v4"]);
    assert_eq!(out.status.code(), Some(1));
    let log = std::fs::read_to_string(d.join("d.log")).unwrap();
    assert!(log.contains("Dumping FAILED."), "{log}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Without -d, restore waits for the restored task, then exits 0 as
/// upstream does (the task's own status, 3 here, is not passed on).
#[test]
fn restore_without_detach_waits() {
    require!(why_not_here());
    let s = Scene::start("exiter", "wait");
    let dir = s.images(0);
    s.criu_ok(&["dump", "-t", &s.pid.to_string()], &dir, "dump.log");
    let t = last_tick(&s.log());
    let pidfile = "restored.pid";
    let mut child = Command::new(CRIU)
        .args(["restore", "-D"])
        .arg(&dir)
        .args(["-v4", "-o", "restore.log", "--pidfile", pidfile])
        .current_dir(&s.work)
        .spawn()
        .unwrap();
    wait_until("ticks after restore", Duration::from_secs(10), || last_tick(&s.log()) > t + 3);
    assert!(child.try_wait().unwrap().is_none(), "restore must wait for the tree");
    // --pidfile is relative to the work dir (= images dir)
    let pid: i32 = std::fs::read_to_string(dir.join(pidfile)).unwrap().trim().parse().unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    std::fs::write(s.work.join("stop"), "").unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(0), "{}", std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default());
}

/// As upstream: `--pidfile` is created with O_EXCL (mode 0600). An existing
/// file makes the restore fail naming it, with nothing left running and the
/// file untouched; without it the restore writes the pid.
#[test]
fn pidfile_is_never_overwritten() {
    require!(why_not_here());
    let mut s = Scene::start("exiter", "pidfile");
    let dir = s.images(0);
    s.criu_ok(&["dump", "-t", &s.pid.to_string()], &dir, "dump.log");
    let pf = s.tmp.join("taken.pid");
    std::fs::write(&pf, "keep me").unwrap();
    let t = last_tick(&s.log());
    let out = s.criu(&["restore", "-d", "--pidfile", pf.to_str().unwrap()], &dir, "restore.log");
    let log = std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default();
    assert_eq!(out.status.code(), Some(1), "restore over an existing pidfile must fail:\n{log}");
    assert!(log.contains("Can't open pidfile") && log.contains("taken.pid"), "the error must name the pidfile:\n{log}");
    assert_eq!(std::fs::read_to_string(&pf).unwrap(), "keep me");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(last_tick(&s.log()), t, "a failed restore must leave nothing running");
    assert!(fdsupport::pid_of(&s.bin).is_none(), "a failed restore left the program running");
    std::fs::remove_file(&pf).unwrap();
    s.restore(&dir, &["--pidfile", pf.to_str().unwrap()]);
    let pid: i32 = std::fs::read_to_string(&pf).unwrap().trim().parse().unwrap();
    assert_eq!(pid, s.pid);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&pf).unwrap().permissions().mode() & 0o777, 0o600);
}

/// `criu` with `args` in `cwd` with a private HOME and no CRIU_CONFIG_FILE.
fn criu_env(args: &[&str], home: &Path, cfg_env: Option<&Path>) -> Output {
    let mut c = Command::new(CRIU);
    c.args(args).env("HOME", home).env_remove("CRIU_CONFIG_FILE");
    if let Some(f) = cfg_env {
        c.env("CRIU_CONFIG_FILE", f);
    }
    c.output().expect("run criu")
}

/// Item 17: upstream's config files are read (the defaults under $HOME,
/// CRIU_CONFIG_FILE, --config; --no-default-config), a refused option in
/// one is refused by name with the file named, a missing --config file is
/// skipped as upstream skips it.
#[test]
fn config_files_are_read() {
    let d = scratch("config");
    let imgs = d.join("imgs");
    std::fs::create_dir_all(d.join("home/.criu")).unwrap();
    std::fs::create_dir_all(&imgs).unwrap();
    let home = d.join("home");
    let imgs_s = imgs.to_str().unwrap();
    std::fs::write(home.join(".criu/default.conf"), "# defaults\nlog-file home.log   # in the images dir\nverbosity 4\n").unwrap();
    // the default file: its log file, its level (timestamps from 3 on)
    let out = criu_env(&["restore", "-D", imgs_s], &home, None);
    assert_eq!(out.status.code(), Some(1), "restore from an empty dir fails");
    let log = std::fs::read_to_string(imgs.join("home.log")).expect("the default config's log file");
    assert!(log.lines().all(timestamped) && log.contains("Restoring FAILED."), "{log}");
    assert!(log.contains("Read config file") && log.contains(".criu/default.conf"), "{log}");
    std::fs::remove_file(imgs.join("home.log")).unwrap();
    // --no-default-config: not read
    let out = criu_env(&["restore", "-D", imgs_s, "--no-default-config"], &home, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(!imgs.join("home.log").exists(), "--no-default-config read the default file");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Error ("), "the error goes to stderr then");
    // --config FILE replaces the defaults; the command line wins over it
    let cfg = d.join("my.conf");
    std::fs::write(&cfg, "--log-file=cfg.log\n").unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let out = criu_env(&["restore", "-D", imgs_s, "--config", cfg_s], &home, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(imgs.join("cfg.log").exists() && !imgs.join("home.log").exists());
    let out = criu_env(&["restore", "-D", imgs_s, "--config", cfg_s, "-o", "cmd.log"], &home, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(imgs.join("cmd.log").exists(), "the command line wins over the config file");
    // CRIU_CONFIG_FILE is read after the defaults
    std::fs::write(&cfg, "log-file env.log\n").unwrap();
    let out = criu_env(&["restore", "-D", imgs_s], &home, Some(&cfg));
    assert_eq!(out.status.code(), Some(1));
    assert!(imgs.join("env.log").exists());
    // a missing --config file is skipped (upstream does the same)
    let out = criu_env(&["--version", "--config", "/nonexistent/criu.conf"], &home, None);
    assert_eq!(out.status.code(), Some(0));
    // refusals and bad lines name the file
    std::fs::write(&cfg, "evasive-devices\n").unwrap();
    let out = criu_env(&["restore", "-D", imgs_s, "--config", cfg_s], &home, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains(cfg_s) && err.contains("--evasive-devices is not supported yet"), "{err}");
    std::fs::write(&cfg, "log-file a b\n").unwrap();
    let out = criu_env(&["restore", "-D", imgs_s, "--config", cfg_s], &home, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && err.contains("line 1"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Item 17: options that change nothing here are accepted on every dump
/// (the dump then fails on the missing pid, not on them); refusals and
/// usage errors are written to the -o log too.
#[test]
fn noop_options_accepted_refusals_logged() {
    let d = scratch("noop");
    let ds = d.to_str().unwrap();
    let out = criu(&[
        "dump", "-t", "999999", "-D", ds, "-o", "d.log", "--no-default-config", "--timeout", "10", "--pre-dump-mode", "splice",
        "--pre-dump-mode=read", "--skip-in-flight", "--network-lock", "skip",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let log = std::fs::read_to_string(d.join("d.log")).expect("log written");
    assert!(log.contains("999999") && log.contains("Dumping FAILED.") && !log.contains("not supported"), "{log}");
    // a bad value of an accepted option is still an error
    let out = criu(&["dump", "-t", "1", "-D", ds, "--pre-dump-mode", "bogus"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pre-dump-mode"));
    // a refusal reaches the log file
    let out = criu(&["dump", "-t", "1", "-D", ds, "-o", "r.log", "--evasive-devices"]);
    assert_eq!(out.status.code(), Some(1));
    let log = std::fs::read_to_string(d.join("r.log")).expect("the refusal is logged");
    assert!(log.lines().any(|l| l.starts_with("Error (") && l.contains("--evasive-devices is not supported yet")), "{log}");
    let out = criu(&["service", "-o", "s.log", "-D", ds]);
    assert_eq!(out.status.code(), Some(1));
    assert!(std::fs::read_to_string(d.join("s.log")).unwrap_or_default().contains("service"));
    let _ = std::fs::remove_dir_all(&d);
}

/// Item 17: short options as upstream's getopt reads them.
#[test]
fn short_options_as_getopt() {
    let d = scratch("getopt");
    let ds = d.to_str().unwrap();
    // -v with an attached value: -verbosity=0 is level 0 (atoi("erbosity=0"))
    let out = criu(&["--version", "-verbosity=0"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // attached values and clusters: -D<dir> -o<log> -vvv
    let out = criu(&["restore", &format!("-D{ds}"), "-or.log", "-vvv"]);
    assert_eq!(out.status.code(), Some(1));
    let log = std::fs::read_to_string(d.join("r.log")).expect("-o with an attached value");
    assert!(log.lines().all(timestamped) && log.contains("Restoring FAILED."), "{log}");
    // a cluster of flags with a value at the end: -Rjt999999
    let out = criu(&["dump", "-Rjt999999", "-D", ds, "-o", "d.log"]);
    assert_eq!(out.status.code(), Some(1));
    let log = std::fs::read_to_string(d.join("d.log")).unwrap();
    assert!(log.contains("999999"), "{log}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Item 17: each error line names where it arose: different failures
/// carry different source locations.
#[test]
fn error_lines_name_their_source() {
    let d = scratch("errloc");
    let ds = d.to_str().unwrap();
    let loc = |args: &[&str], log: &str| -> String {
        let out = criu(args);
        assert_eq!(out.status.code(), Some(1));
        let l = std::fs::read_to_string(d.join(log)).unwrap();
        let first = l.lines().find(|x| x.starts_with("Error (")).unwrap_or_else(|| panic!("no error line: {l}")).to_string();
        first[7..first.find("): ").unwrap()].to_string()
    };
    let a = loc(&["restore", "-D", ds, "-o", "a.log"], "a.log");
    let b = loc(&["dump", "-t", "999999", "-D", ds, "-o", "b.log"], "b.log");
    let c = loc(&["dump", "-D", ds, "-o", "c.log"], "c.log");
    assert!(a.contains(".rs:") && b.contains(".rs:") && c.contains(".rs:"), "{a} {b} {c}");
    assert!(a != b && b != c && a != c, "all failures report one location: {a} {b} {c}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Item 17: `check --feature NAME` answers per feature, with upstream's
/// names: exit 0 and "NAME is supported", or a message and exit 1.
#[test]
fn check_feature() {
    for (name, why) in [("mem_dirty_track", "pre-dump"), ("uffd-noncoop", "lazy-pages"), ("userns", "user namespaces")] {
        let out = criu(&["check", "--feature", name]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(err.contains(name) && err.contains(why) && err.contains("not supported"), "{name}: {err}");
    }
    let out = criu(&["check", "--feature", "no_such_feature"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unknown feature no_such_feature"));
    require!(why_not_root());
    for name in [
        "clone3_set_tid", "seccomp_filters", "get_rseq_conf", "loginuid", "seccomp_suspend", "timens", "openat2", "timerfd", "kcmp_epoll", "fdinfo_lock",
        "sockopt_buf_lock", "memfd_hugetlb", "ipv6_freebind", "aio_remap",
    ] {
        let out = criu(&["check", "--feature", name]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{name} is supported\n"));
    }
}

fn stats(dir: &Path, what: &str) -> images_proto::pb::StatsEntry {
    use images_proto::{image::read_one, magic as mg};
    read_one(dir, &mg::STATS.file_name(what), &mg::STATS).unwrap_or_else(|e| panic!("stats-{what}: {e}"))
}

/// Item 17: stats-dump and stats-restore are written as upstream writes
/// them; --display-stats prints them.
#[test]
fn stats_images() {
    require!(why_not_here());
    let mut s = Scene::start("exiter", "stats");
    let dir = s.images(0);
    let out = s.criu(&["dump", "-t", &s.pid.to_string(), "--display-stats"], &dir, "dump.log");
    assert!(out.status.success(), "{}", std::fs::read_to_string(dir.join("dump.log")).unwrap_or_default());
    // the pages file holds exactly the pages written
    let pages = std::fs::metadata(dir.join("pages-1.img")).unwrap().len() / 4096;
    let st = stats(&dir, "dump").dump.expect("a dump entry");
    assert_eq!(st.pages_written, pages);
    assert!(st.pages_scanned >= pages && st.frozen_time > 0, "{st:?}");
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(so.contains("Displaying dump stats:") && so.contains(&format!("Memory pages written: {pages} ({pages:#x})")), "{so}");
    s.restore(&dir, &["--display-stats"]);
    let st = stats(&dir, "restore").restore.expect("a restore entry");
    assert_eq!(st.pages_restored, Some(pages));
    assert!(st.restore_time > 0);
}

/// Item 17: an error that arose inside the engine names where it arose
/// (here restore/mod.rs, creating the pidfile), not the command-line step
/// that called the restore (cli.rs).
#[test]
fn engine_errors_name_where_they_arose() {
    require!(why_not_here());
    let s = Scene::start("exiter", "errloc");
    let dir = s.images(0);
    s.criu_ok(&["dump", "-t", &s.pid.to_string()], &dir, "dump.log");
    let out = s.criu(&["restore", "-d", "--pidfile", "/nonexistent-criu-rs-dir/x/pid"], &dir, "restore.log");
    assert_eq!(out.status.code(), Some(1));
    let log = std::fs::read_to_string(dir.join("restore.log")).unwrap();
    let line = log.lines().find(|l| l.contains("Can't open pidfile")).unwrap_or_else(|| panic!("no pidfile error:\n{log}"));
    assert!(line.contains("Error (engine/src/restore/mod.rs:"), "{line}");
}

/// Item 16: every option the README's `criu` synopsis shows is one the
/// binary accepts (with --help, an accepted option prints the help and
/// exits 0, a refused or unknown one fails).
#[test]
fn readme_synopsis_options_are_accepted() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let sec = &readme[readme.find("\n## criu\n").expect("a criu section")..];
    let block = sec.split("```").nth(1).expect("a synopsis block");
    let mut seen = 0;
    for tok in block.split(|c: char| c.is_whitespace() || "[]|".contains(c)) {
        let opt = tok.split('=').next().unwrap_or("");
        if !opt.starts_with('-') || opt.contains("..") {
            continue;
        }
        seen += 1;
        // (an option whose value is a word: the one the README shows)
        let val = match opt {
            "--empty-ns" => "net",
            "--external" => "net[1]:k",
            "--inherit-fd" => "fd[0]:pipe:[1]",
            _ => "1",
        };
        let out = criu(&["--help", opt, val]);
        assert_eq!(out.status.code(), Some(0), "README shows {opt}, the binary says: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(seen >= 15, "only {seen} options found in the README synopsis");
    for cmd in ["dump", "restore", "check", "cpuinfo"] {
        assert!(block.contains(&format!("criu {cmd}")), "{cmd} missing from the README synopsis");
    }
}
