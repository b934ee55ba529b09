//! A container runtime pointed at our binary, unchanged: `runc --criu
//! target/release/criu checkpoint` and `restore` of a busybox container
//! (its own pid, mount, uts, ipc and network namespaces, pivot_root'ed,
//! masked paths, runc's cgroups; a shell loop forking a `sleep` a tick),
//! through the swrk RPC as runc speaks it: the container runs on after
//! the restore, in its cgroups, twice (the second checkpoint with
//! --leave-running).

mod common;

use common::runc_support::{busybox_bundle, pid_of, runc, Container};
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn why_not() -> Option<String> {
    why_not_root().or_else(|| why_not_tools(&["runc", "busybox"]))
}

/// A bundle: rootfs with busybox, `runc spec` made non-terminal, the
/// process a loop appending `tick N ok` to /tmp/progress.log.
fn bundle(dir: &Path) -> PathBuf {
    busybox_bundle(dir, &["sh", "sleep"], false, r#"i=0; while true; do i=$((i+1)); echo \"tick $i ok\" >> /tmp/progress.log; sleep 0.1; done"#)
}

fn last(bundle: &Path) -> u64 {
    last_tick(&bundle.join("rootfs/tmp/progress.log"))
}

fn ticks_on(bundle: &Path, n: u64, what: &str) {
    let t = last(bundle);
    wait_until(&format!("{n} ticks {what}"), Duration::from_secs(20), || last(bundle) >= t + n);
}

#[test]
fn runc_checkpoint_and_restore_with_our_criu() {
    require!(why_not());
    let tmp = test_dir("runc");
    let criu = private_criu(&tmp);
    let criu = criu.to_str().unwrap().to_string();
    let b = bundle(&tmp);
    let id = format!("criu-rs-test-{}", std::process::id());
    let c = Container { bundle: &b, id: id.clone() };
    // (the container's stdio are runc's: /dev/null, which a restore opens
    // again by path)
    let st = Command::new("runc").args(["run", "-d", &id]).current_dir(&b).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
    assert!(st.success(), "runc run -d failed");
    ticks_on(&b, 3, "after runc run");
    for round in 0..2 {
        let img = tmp.join(format!("ck{round}"));
        let img_s = img.to_str().unwrap();
        let mut args = vec!["--criu", &criu, "checkpoint", "--image-path", img_s];
        if round == 1 {
            args.push("--leave-running");
        }
        args.push(&id);
        let (ok, err) = runc(&b, &args);
        let log = std::fs::read_to_string(img.join("dump.log")).unwrap_or_default();
        assert!(ok, "round {round}: runc checkpoint: {err}\n{log}");
        assert!(img.join("inventory.img").exists() && img.join("cgroup.img").exists(), "round {round}: no image set with the container's cgroups");
        if round == 1 {
            // left running: it ticks on, then is removed for the restore
            ticks_on(&b, 2, "after checkpoint --leave-running");
            let _ = runc(&b, &["delete", "-f", &id]);
        }
        let (ok, err) = runc(&b, &["--criu", &criu, "restore", "-d", "--image-path", img_s, &id]);
        let log = std::fs::read_to_string(img.join("restore.log")).unwrap_or_default();
        assert!(ok, "round {round}: runc restore: {err}\n{log}");
        ticks_on(&b, 5, &format!("after round {round}'s restore"));
        let pid = pid_of(&b, &id);
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(cg.lines().any(|l| l.ends_with(&format!(":/{id}"))), "round {round}: the restored container is not in its cgroups:\n{cg}");
        let text = std::fs::read_to_string(b.join("rootfs/tmp/progress.log")).unwrap();
        assert!(!text.contains("FAIL"), "{text}");
    }
    drop(c);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Lines read from one pipe (a container's stdout or stderr), and whether
/// it reached end of file.
#[derive(Clone, Default)]
struct Lines(std::sync::Arc<std::sync::Mutex<(Vec<String>, bool)>>);

impl Lines {
    fn read(rd: std::os::fd::OwnedFd) -> Lines {
        let l = Lines::default();
        let seen = l.0.clone();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(std::fs::File::from(rd)).lines() {
                let Ok(line) = line else { break };
                seen.lock().unwrap().0.push(line);
            }
            seen.lock().unwrap().1 = true;
        });
        l
    }

    fn ticks(&self) -> Vec<u64> {
        self.0.lock().unwrap().0.iter().filter_map(|l| l.strip_prefix("tick ")?.split_whitespace().next()?.parse().ok()).collect()
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().0.join("\n")
    }

    fn eof(&self) -> bool {
        self.0.lock().unwrap().1
    }
}

/// A pipe: its lines as they come, and its write end.
fn pipe_lines() -> (Lines, std::os::fd::OwnedFd) {
    let (rd, wr) = engine::sys::process::pipe().unwrap();
    (Lines::read(rd), wr)
}

/// runc with its stdout and stderr on `out` and `err` (a container it
/// runs detached keeps them as its stdio).
fn runc_stdio(bundle: &Path, args: &[&str], out: std::os::fd::OwnedFd, err: std::os::fd::OwnedFd) -> bool {
    Command::new("runc").args(args).current_dir(bundle).stdin(Stdio::null()).stdout(Stdio::from(out)).stderr(Stdio::from(err)).status().unwrap().success()
}

/// [`bundle`] whose loop also says each tick on its stdout, and
/// something on its stderr.
fn talking_bundle(tmp: &Path) -> PathBuf {
    let b = bundle(tmp);
    let cfg = b.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(r#"echo \"tick $i ok\" >> /tmp/progress.log;"#, r#"echo \"tick $i ok\" >> /tmp/progress.log; echo \"tick $i ok\"; echo \"err $i\" >&2;"#);
    assert!(text.contains(r#"echo \"err $i\""#), "config.json's loop not replaced:\n{text}");
    std::fs::write(&cfg, text).unwrap();
    b
}

/// The container's stdio are pipes (runc run -d with the caller's
/// stdout and stderr pipes, as conmon and shells start containers): runc
/// records them (descriptors.json) and `runc restore -d` asks criu to
/// inherit them (`inherit_fd` {pipe:[INO], 1 and 2}: criu's own stdio,
/// which runc hands down). After the restore the container's output
/// arrives on the restoring caller's new pipes, numbered on; the old
/// ones end.
#[test]
fn runc_restore_with_stdio_pipes() {
    require!(why_not());
    let tmp = test_dir("runc-stdio");
    let criu = private_criu(&tmp);
    let criu = criu.to_str().unwrap().to_string();
    let b = talking_bundle(&tmp);
    let id = format!("criu-rs-stdio-{}", std::process::id());
    let c = Container { bundle: &b, id: id.clone() };
    let (out1, w1) = pipe_lines();
    let (err1, e1) = pipe_lines();
    assert!(runc_stdio(&b, &["run", "-d", &id], w1, e1), "runc run -d failed: {}", err1.text());
    wait_until("ticks on the container's stdout", Duration::from_secs(20), || out1.ticks().len() >= 3);
    let img = tmp.join("ck");
    let img_s = img.to_str().unwrap();
    let (ok, err) = runc(&b, &["--criu", &criu, "checkpoint", "--image-path", img_s, &id]);
    assert!(ok, "runc checkpoint: {err}\n{}", std::fs::read_to_string(img.join("dump.log")).unwrap_or_default());
    wait_until("the old stdout pipe's end", Duration::from_secs(10), || out1.eof() && err1.eof());
    let before = *out1.ticks().last().unwrap();
    let (out2, w2) = pipe_lines();
    let (err2, e2) = pipe_lines();
    let ok = runc_stdio(&b, &["--criu", &criu, "restore", "-d", "--image-path", img_s, &id], w2, e2);
    let log = std::fs::read_to_string(img.join("restore.log")).unwrap_or_default();
    assert!(ok, "runc restore: {}\n{log}", err2.text());
    assert!(log.contains("inherit fd 1") && log.contains("inherit fd 2"), "runc asked for its stdio pipes to be inherited:\n{log}");
    wait_until(&format!("ticks on the new stdout pipe (stderr: {})", err2.text()), Duration::from_secs(20), || out2.ticks().len() >= 5);
    let t = out2.ticks();
    assert!(t[0] > before && t.windows(2).all(|w| w[1] == w[0] + 1), "the ticks go on from {before}: {t:?}");
    assert!(err2.text().lines().any(|l| l.starts_with("err ")), "the container's stderr on the new pipe:\n{}", err2.text());
    assert_eq!(*out1.ticks().last().unwrap(), before, "nothing more on the old pipe");
    // its init's fd 1 is the new pipe, reopened (runc's own ended)
    let pid = pid_of(&b, &id);
    let link = std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap();
    assert!(link.to_string_lossy().starts_with("pipe:["), "{link:?}");
    // the container was the new pipes' only writer: neither runc nor criu
    // kept a copy
    drop(c);
    wait_until("end of file on the new pipes once the container is gone", Duration::from_secs(10), || out2.eof() && err2.eof());
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The container's stdout and stderr one pipe (`runc run -d ... 2>&1`):
/// runc asks for the key twice (fds 1 and 2) and the first is used, as
/// upstream's lookup; the restoring caller's stdout and stderr are one new
/// pipe too, and both streams arrive on it.
#[test]
fn runc_restore_with_stdout_and_stderr_on_one_pipe() {
    require!(why_not());
    let tmp = test_dir("runc-onepipe");
    let criu = private_criu(&tmp);
    let criu = criu.to_str().unwrap().to_string();
    let b = talking_bundle(&tmp);
    let id = format!("criu-rs-onepipe-{}", std::process::id());
    let c = Container { bundle: &b, id: id.clone() };
    let (out1, w1) = pipe_lines();
    let e1 = w1.try_clone().unwrap();
    assert!(runc_stdio(&b, &["run", "-d", &id], w1, e1), "runc run -d failed: {}", out1.text());
    wait_until("ticks on the container's stdout", Duration::from_secs(20), || out1.ticks().len() >= 3);
    let img = tmp.join("ck");
    let img_s = img.to_str().unwrap();
    let (ok, err) = runc(&b, &["--criu", &criu, "checkpoint", "--image-path", img_s, &id]);
    assert!(ok, "runc checkpoint: {err}\n{}", std::fs::read_to_string(img.join("dump.log")).unwrap_or_default());
    wait_until("the old pipe's end", Duration::from_secs(10), || out1.eof());
    let before = *out1.ticks().last().unwrap();
    let (out2, w2) = pipe_lines();
    let e2 = w2.try_clone().unwrap();
    let ok = runc_stdio(&b, &["--criu", &criu, "restore", "-d", "--image-path", img_s, &id], w2, e2);
    let log = std::fs::read_to_string(img.join("restore.log")).unwrap_or_default();
    assert!(ok, "runc restore: {}\n{log}", out2.text());
    assert!(log.contains("the key is given again; fd 1 is used"), "runc sent the key twice:\n{log}");
    wait_until("ticks and errs on the new pipe", Duration::from_secs(20), || out2.ticks().len() >= 5 && out2.text().lines().any(|l| l.starts_with("err ")));
    assert!(out2.ticks()[0] > before, "the ticks go on from {before}");
    let pid = pid_of(&b, &id);
    assert!(engine::sys::process::kcmp_file(pid, 1, pid, 2).unwrap_or(false) || std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap() == std::fs::read_link(format!("/proc/{pid}/fd/2")).unwrap(), "stdout and stderr on one pipe again");
    drop(c);
    wait_until("end of file on the new pipe once the container is gone", Duration::from_secs(10), || out2.eof());
    let _ = std::fs::remove_dir_all(&tmp);
}
