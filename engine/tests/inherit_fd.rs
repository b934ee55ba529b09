//! `--inherit-fd fd[N]:KEY` and RPC `criu_opts.inherit_fd`, on real
//! processes: `tests/progs/stdoutticks.c` writes `tick N` lines on its
//! stdout, a pipe this test reads (the other end outside the dumped tree,
//! as a container's stdio with conmon or a runtime's caller). It is
//! dumped (killed: the old pipe's reader sees end of file), then restored
//! with `--inherit-fd fd[K]:pipe:[INO]` where fd K of the restoring criu
//! is the write end of a new pipe: the ticks go on, numbered on, in the
//! new pipe. The same through `criu swrk` (the new pipe as the service's
//! fd 1, as runc hands its stdio down), both ways with upstream CRIU 4.2,
//! a restore without `--inherit-fd` (a fresh pipe nobody reads, as
//! upstream's), the refusals, and an external network namespace
//! (`--external net[INO]:extRootNetNS` at dump, `--inherit-fd
//! fd[N]:extRootNetNS` at restore: the tree is in that namespace again).
//!
//! Needs root, gcc, setsid and the shared fixtures (upstream CRIU for the
//! interop cases, `ip` for the network namespace); otherwise skips with
//! the reason, or fails under CI=true.

mod common;

use common::*;
use images_proto::rpc::{CriuOpts, CriuReq, CriuReqType as T, CriuResp, InheritFd};
use prost::Message as _;
use std::io::BufRead as _;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The fd number the restoring criu gets the new pipe's write end on.
const K: i32 = 7;

/// The ticks read from one pipe, and whether it reached end of file.
#[derive(Clone, Default)]
struct Ticks {
    seen: Arc<Mutex<(Vec<u64>, bool)>>,
    /// The `ctick N` lines of a forked child (`stdoutticks fork`).
    kids: Arc<Mutex<Vec<u64>>>,
}

impl Ticks {
    fn read(rd: OwnedFd) -> Ticks {
        let t = Ticks::default();
        let seen = t.seen.clone();
        let kids = t.kids.clone();
        std::thread::spawn(move || {
            let r = std::io::BufReader::new(std::fs::File::from(rd));
            for l in r.lines() {
                let Ok(l) = l else { break };
                if let Some(n) = l.strip_prefix("tick ").and_then(|n| n.parse().ok()) {
                    seen.lock().unwrap().0.push(n);
                } else if let Some(n) = l.strip_prefix("ctick ").and_then(|n| n.parse().ok()) {
                    kids.lock().unwrap().push(n);
                }
            }
            seen.lock().unwrap().1 = true;
        });
        t
    }

    fn last(&self) -> u64 {
        self.seen.lock().unwrap().0.last().copied().unwrap_or(0)
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().0.len()
    }

    fn eof(&self) -> bool {
        self.seen.lock().unwrap().1
    }

    /// Wait for `n` more ticks.
    fn more(&self, n: usize, what: &str) {
        let c = self.count();
        wait_until(what, Duration::from_secs(15), || self.count() >= c + n);
    }
}

/// A started `stdoutticks`, its stdout a pipe read by [`Ticks`]; killed
/// (by pid: the restored one too) on drop.
struct Prog {
    dir: PathBuf,
    bin: PathBuf,
    pid: i32,
    child: Option<Child>,
    ticks: Ticks,
    /// The pipe's inode (its key: pipe:[INO]).
    ino: u64,
}

fn build_prog(dir: &Path) -> PathBuf {
    let bin = dir.join("stdoutticks");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/stdoutticks.c");
    let st = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("gcc");
    assert!(st.success(), "building {}", src.display());
    bin
}

impl Prog {
    /// Started in a session of its own; `netns`: in that network
    /// namespace (a path under /run/netns).
    fn start(name: &str, netns: Option<&Path>) -> Prog {
        Self::start_args(name, netns, &[])
    }

    /// [`Prog::start`] with arguments (`fork`: a child ticking too).
    fn start_args(name: &str, netns: Option<&Path>, args: &[&str]) -> Prog {
        let dir = test_dir(name);
        let bin = build_prog(&dir);
        let (rd, wr) = engine::sys::process::pipe().unwrap();
        let ino = std::fs::metadata(format!("/proc/self/fd/{}", rd.as_raw_fd()))
            .unwrap()
            .ino();
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let ns = netns.map(|p| std::fs::File::open(p).expect("open the netns"));
        let nsfd = ns.as_ref().map(|f| f.as_raw_fd());
        let mut cmd = Command::new(&bin);
        cmd.args(args);
        only_stdio(&mut cmd)
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::from(wr))
            .stderr(Stdio::null());
        // SAFETY: setsid and setns are async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(n) = nsfd {
                    if libc::setns(n, libc::CLONE_NEWNET) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            })
        };
        let child = cmd.spawn().expect("start stdoutticks");
        // (our copy of the write end went with `cmd`: only the program writes)
        drop(cmd);
        let ticks = Ticks::read(rd);
        wait_until("ready", Duration::from_secs(10), || {
            work.join("ready").exists()
        });
        ticks.more(3, "first ticks");
        let pid = child.id() as i32;
        Prog {
            dir,
            bin,
            pid,
            child: Some(child),
            ticks,
            ino,
        }
    }

    fn imgs(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// After a dump killed it: reaped (its pid free for the restore), and
    /// the old pipe at its end.
    fn dumped(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.wait().unwrap();
        }
        wait_until(
            "end of file on the old pipe",
            Duration::from_secs(10),
            || self.ticks.eof(),
        );
    }

    /// fd `n` of the (restored) program: its link.
    fn fd_link(&self, n: i32) -> String {
        std::fs::read_link(format!("/proc/{}/fd/{n}", self.pid))
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Prog {
    fn drop(&mut self) {
        for p in live_with_exe(&self.bin) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Run `criu args -D dir -v4 -o log` (ours or upstream's) with `fds`
/// (ours -> its number) given to it; its status and log.
fn criu_with_fds(
    criu: &Path,
    args: &[&str],
    dir: &Path,
    log: &str,
    fds: &[(i32, i32)],
) -> (std::process::ExitStatus, String) {
    let mut cmd = Command::new(criu);
    cmd.args(args)
        .arg("-D")
        .arg(dir)
        .args(["-v4", "-o", log])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let fds = fds.to_vec();
    // SAFETY: dup2/fcntl are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            for &(from, to) in &fds {
                let r = if from == to {
                    libc::fcntl(to, libc::F_SETFD, 0)
                } else {
                    libc::dup2(from, to)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
    let out = cmd.output().expect("run criu");
    let mut text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status, text)
}

/// A new pipe for the restored program's stdout: its ticks, and the write
/// end to hand to criu.
fn new_pipe() -> (Ticks, OwnedFd, u64) {
    let (rd, wr) = engine::sys::process::pipe().unwrap();
    let ino = std::fs::metadata(format!("/proc/self/fd/{}", rd.as_raw_fd()))
        .unwrap()
        .ino();
    (Ticks::read(rd), wr, ino)
}

/// Restore `imgs` with `criu` (ours or upstream's), `--inherit-fd
/// fd[K]:pipe:[old]` with a new pipe on K: the program ticks on into it,
/// numbered on from where it was.
fn restore_into_new_pipe(criu: &Path, p: &mut Prog, imgs: &Path) {
    let before = p.ticks.last();
    let (ticks, wr, ino) = new_pipe();
    let arg = format!("fd[{K}]:pipe:[{}]", p.ino);
    let (st, log) = criu_with_fds(
        criu,
        &["restore", "-d", "--inherit-fd", &arg],
        imgs,
        "restore.log",
        &[(wr.as_raw_fd(), K)],
    );
    assert!(
        st.success(),
        "{} restore --inherit-fd {arg} failed ({st:?}):\n{log}",
        criu.display()
    );
    drop(wr);
    assert_eq!(
        p.fd_link(1),
        format!("pipe:[{ino}]"),
        "the restored stdout is the new pipe"
    );
    ticks.more(5, "ticks on the new pipe");
    let first = ticks.seen.lock().unwrap().0[0];
    assert!(
        first > before,
        "the ticks go on from {before} (first on the new pipe: {first})"
    );
    assert!(
        p.ticks.eof() && p.ticks.last() == before,
        "nothing more on the old pipe"
    );
    // nothing of the restore left in it: its own three fds
    let fds: Vec<i32> = std::fs::read_dir(format!("/proc/{}/fd", p.pid))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    assert_eq!(fds.len(), 3, "the restored program holds fds {fds:?}");
    // the new pipe's only writer is the program: our criu held no copy
    p.ticks = ticks;
}

fn dump_ours(p: &mut Prog, imgs: &Path) {
    criu_ok(
        Path::new(CRIU),
        &["dump", "-t", &p.pid.to_string()],
        imgs,
        "dump.log",
    );
    p.dumped();
}

#[test]
fn pipe_inherited_cli() {
    require!(why_not_here());
    let mut p = Prog::start("inheritfd-cli", None);
    let imgs = p.imgs("imgs");
    dump_ours(&mut p, &imgs);
    restore_into_new_pipe(Path::new(CRIU), &mut p, &imgs);
    // twice: the restored one dumps (its stdout pipe outside again) and restores the same way
    let imgs2 = p.imgs("imgs2");
    p.ino = std::fs::metadata(format!("/proc/{}/fd/1", p.pid))
        .unwrap()
        .ino();
    p.child = None;
    criu_ok(
        Path::new(CRIU),
        &["dump", "-t", &p.pid.to_string()],
        &imgs2,
        "dump.log",
    );
    wait_until(
        "end of file on the second pipe",
        Duration::from_secs(10),
        || p.ticks.eof(),
    );
    restore_into_new_pipe(Path::new(CRIU), &mut p, &imgs2);
    // the program was the new pipe's only writer: criu kept no copy
    let _ = Command::new("kill")
        .args(["-9", &p.pid.to_string()])
        .status();
    wait_until(
        "end of file on the new pipe once the program is gone",
        Duration::from_secs(10),
        || p.ticks.eof(),
    );
}

/// Without --inherit-fd the pipe is made anew with nobody reading it, as
/// upstream's restore makes it: the program's writes fail (EPIPE) and it
/// runs on; a key naming nothing of the image is ignored.
#[test]
fn pipe_without_inherit_and_unmatched_key() {
    require!(why_not_here());
    let mut p = Prog::start("inheritfd-none", None);
    let imgs = p.imgs("imgs");
    dump_ours(&mut p, &imgs);
    // an unused key (another pipe) on an open fd: ignored, logged
    let (_t, wr, _) = new_pipe();
    let (st, log) = criu_with_fds(
        Path::new(CRIU),
        &[
            "restore",
            "-d",
            "--inherit-fd",
            &format!("fd[{K}]:pipe:[1]"),
        ],
        &imgs,
        "restore.log",
        &[(wr.as_raw_fd(), K)],
    );
    assert!(st.success(), "restore failed ({st:?}):\n{log}");
    assert!(
        log.contains("the image has no pipe:[1]"),
        "the unused key is named in the log:\n{log}"
    );
    let link = p.fd_link(1);
    assert!(
        link.starts_with("pipe:[") && link != format!("pipe:[{}]", p.ino),
        "a fresh pipe: {link}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(p.pid), "the program runs on");
}

#[test]
fn refusals_name_the_value() {
    require!(why_not_here());
    let dir = test_dir("inheritfd-refusals");
    for (arg, want) in [
        (
            "fd[3]:socket:[5]",
            "inheriting sockets is not supported yet",
        ),
        ("fd[x]:pipe:[5]", "want fd[N]:KEY"),
        ("fd[3]:pipe:[five]", "want pipe:[INODE]"),
        (
            "fd[3]:/etc/passwd",
            "without the leading /",
        ),
        ("debug[3]:hello", "debug[N]:TEXT"),
    ] {
        let (st, log) = criu_env(
            Path::new(CRIU),
            &["restore", "--inherit-fd", arg],
            &dir,
            "r.log",
            &[],
        );
        assert!(!st.success(), "{arg} taken");
        assert!(
            log.contains(arg) && log.contains(want),
            "{arg}: the refusal names it and says {want:?}:\n{log}"
        );
    }
    // an fd criu does not have: named before anything is read or made
    let mut p = Prog::start("inheritfd-badfd", None);
    let imgs = p.imgs("imgs");
    dump_ours(&mut p, &imgs);
    let (st, log) = criu_env(
        Path::new(CRIU),
        &[
            "restore",
            "-d",
            "--inherit-fd",
            &format!("fd[77]:pipe:[{}]", p.ino),
        ],
        &imgs,
        "r.log",
        &[],
    );
    assert!(
        !st.success() && log.contains("fd 77 is not open in criu"),
        "{st:?}:\n{log}"
    );
    assert!(!alive(p.pid), "nothing restored");
}

/// A tree: the program and a child it forked, both writing on the one
/// open file description of the outside pipe. Restored with the pipe
/// inherited (ours, and upstream's restore of our dump): both tick on
/// into the new pipe through one description again (kcmp), holding
/// nothing else of the restore.
#[test]
fn pipe_inherited_by_a_tree() {
    require!(why_not_here());
    for restorer in [PathBuf::from(CRIU), upstream()] {
        if restorer != Path::new(CRIU) && why_not_upstream().is_some() {
            // (upstream's half: pipe_inherited_upstream_both_ways requires it)
            continue;
        }
        let mut p = Prog::start_args("inheritfd-tree", None, &["fork"]);
        wait_until("the child's ticks", Duration::from_secs(10), || p.ticks.kids.lock().unwrap().len() >= 3);
        let kid: i32 = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", p.pid)).unwrap().trim().parse().expect("one child");
        let imgs = p.imgs("imgs");
        dump_ours(&mut p, &imgs);
        let kid_before = *p.ticks.kids.lock().unwrap().last().unwrap();
        let (ticks, wr, ino) = new_pipe();
        let arg = format!("fd[{K}]:pipe:[{}]", p.ino);
        let (st, log) = criu_with_fds(&restorer, &["restore", "-d", "--inherit-fd", &arg], &imgs, "restore.log", &[(wr.as_raw_fd(), K)]);
        assert!(st.success(), "{} restore --inherit-fd {arg} failed ({st:?}):\n{log}", restorer.display());
        drop(wr);
        ticks.more(5, "the parent's ticks on the new pipe");
        wait_until("the child's ticks on the new pipe", Duration::from_secs(10), || ticks.kids.lock().unwrap().len() >= 5);
        assert!(ticks.kids.lock().unwrap()[0] > kid_before, "the child ticks on");
        for pid in [p.pid, kid] {
            assert_eq!(std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap().to_string_lossy(), format!("pipe:[{ino}]"), "{pid}");
            assert_eq!(std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count(), 3, "{pid} holds only its own fds");
        }
        assert!(engine::sys::process::kcmp_file(p.pid, 1, kid, 1).unwrap(), "parent and child share one description of the pipe");
        let _ = Command::new("kill").args(["-9", &p.pid.to_string(), &kid.to_string()]).status();
        wait_until("end of file on the new pipe once the tree is gone", Duration::from_secs(10), || ticks.eof());
    }
}

/// A regular file: the program's stdout a log file; restored with
/// `--inherit-fd fd[K]:PATH` (the log's path without its leading /) and a
/// new log open on K: its ticks go on in the new file (the inherited
/// description itself, as upstream dups it), nothing more in the old one.
#[test]
fn regular_file_inherited() {
    require!(why_not_here());
    reg_round("inheritfd-reg", Path::new(CRIU));
}

/// [`regular_file_inherited`], our dump restored by upstream 4.2.
#[test]
fn regular_file_inherited_upstream() {
    require!(why_not_upstream_here());
    reg_round("inheritfd-reg-up", &upstream());
}

fn reg_round(name: &str, restorer: &Path) {
    let dir = test_dir(name);
    let bin = build_prog(&dir);
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let old = dir.join("old.log");
    let mut cmd = Command::new(&bin);
    only_stdio(&mut cmd).current_dir(&work).stdin(Stdio::null()).stdout(std::fs::File::create(&old).unwrap()).stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    let ticks_in = |f: &Path| -> Vec<u64> { std::fs::read_to_string(f).unwrap_or_default().lines().filter_map(|l| l.strip_prefix("tick ")?.parse().ok()).collect() };
    wait_until("ticks in the old log", Duration::from_secs(10), || ticks_in(&old).len() >= 3);
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    criu_ok(Path::new(CRIU), &["dump", "-t", &pid.to_string()], &imgs, "dump.log");
    child.wait().unwrap();
    let before = *ticks_in(&old).last().unwrap();
    let new = dir.join("new.log");
    let nf = std::fs::File::create(&new).unwrap();
    let key = format!("fd[{K}]:{}", old.to_str().unwrap().trim_start_matches('/'));
    let (st, log) = criu_with_fds(restorer, &["restore", "-d", "--inherit-fd", &key], &imgs, "restore.log", &[(nf.as_raw_fd(), K)]);
    let _guard = KillOnDrop(pid);
    assert!(st.success(), "restore --inherit-fd {key} failed ({st:?}):\n{log}");
    wait_until("ticks in the new log", Duration::from_secs(10), || ticks_in(&new).len() >= 3);
    assert!(ticks_in(&new)[0] > before, "the ticks go on from {before}");
    assert_eq!(*ticks_in(&old).last().unwrap(), before, "nothing more in the old log");
    assert!(engine::sys::process::kcmp_file(std::process::id() as i32, nf.as_raw_fd(), pid, 1).unwrap(), "the restored stdout is the inherited description itself");
}

/// Kills a pid on drop.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-9", &self.0.to_string()]).status();
    }
}

fn why_not_upstream_here() -> Option<String> {
    why_not_upstream()
}

#[test]
fn pipe_inherited_upstream_both_ways() {
    require!(why_not_upstream_here());
    // upstream's dump, our restore with --inherit-fd
    let mut p = Prog::start("inheritfd-up1", None);
    let imgs = p.imgs("imgs");
    upstream_ok(&["dump", "-t", &p.pid.to_string()], &imgs, "dump.log");
    p.dumped();
    restore_into_new_pipe(Path::new(CRIU), &mut p, &imgs);
    drop(p);
    // our dump, upstream's restore with --inherit-fd
    let mut p = Prog::start("inheritfd-up2", None);
    let imgs = p.imgs("imgs");
    dump_ours(&mut p, &imgs);
    restore_into_new_pipe(&upstream(), &mut p, &imgs);
}

// ---- through criu swrk, as runc restores a container with stdio pipes ----

/// `criu swrk 3` with our end of its socket; its fd 1 the write end of
/// `stdout` (runc hands its stdio down: the request names criu's fd 1).
fn swrk_call(r: &CriuReq, stdout: OwnedFd) -> CriuResp {
    let (ours, theirs) = engine::sys::sock::socketpair(libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC)
        .expect("socketpair");
    engine::sys::sock::set_timeval(ours.as_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, 120, 0)
        .unwrap();
    let n = theirs.as_raw_fd();
    let mut cmd = Command::new(CRIU);
    cmd.args(["swrk", "3"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::piped());
    // SAFETY: dup2/fcntl are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            let r = if n == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(n, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = cmd.spawn().expect("start criu swrk");
    drop(cmd);
    drop(theirs);
    engine::sys::rpc::send_packet(ours.as_fd(), &r.encode_to_vec()).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let (len, _) = engine::sys::rpc::recv_packet(ours.as_fd(), &mut buf)
        .expect("a reply")
        .expect("a reply before the service closed");
    let resp = CriuResp::decode(&buf[..len]).unwrap();
    drop(ours);
    let _ = child.wait();
    resp
}

#[test]
fn pipe_inherited_swrk() {
    require!(why_not_here());
    let mut p = Prog::start("inheritfd-swrk", None);
    let imgs = p.imgs("imgs");
    dump_ours(&mut p, &imgs);
    let before = p.ticks.last();
    let (ticks, wr, ino) = new_pipe();
    let dir = std::fs::File::open(&imgs).unwrap();
    let o = CriuOpts {
        images_dir_fd: dir.as_raw_fd(),
        log_file: Some("restore.log".into()),
        log_level: Some(4),
        rst_sibling: Some(true),
        // (a key of the image and one it lacks, as runtimes send both stdio pipes)
        inherit_fd: vec![
            InheritFd {
                key: format!("pipe:[{}]", p.ino),
                fd: 1,
            },
            InheritFd {
                key: "pipe:[1]".into(),
                fd: 1,
            },
            // (the key again, on the service's stderr, a pipe too: as runc
            // sends it when stdout and stderr were one pipe; the first is used)
            InheritFd {
                key: format!("pipe:[{}]", p.ino),
                fd: 2,
            },
        ],
        ..CriuOpts::default()
    };
    let r = swrk_call(
        &CriuReq {
            r#type: T::Restore as i32,
            opts: Some(o),
            ..CriuReq::default()
        },
        wr,
    );
    let log = std::fs::read_to_string(imgs.join("restore.log")).unwrap_or_default();
    assert!(r.success, "RESTORE failed: {:?}\n{log}", r.cr_errmsg);
    assert_eq!(r.restore.as_ref().map(|x| x.pid), Some(p.pid));
    assert_eq!(p.fd_link(1), format!("pipe:[{ino}]"));
    ticks.more(5, "ticks on the new pipe");
    assert!(ticks.seen.lock().unwrap().0[0] > before);
    let _ = Command::new("kill")
        .args(["-9", &p.pid.to_string()])
        .status();
    wait_until(
        "end of file on the new pipe once the program is gone",
        Duration::from_secs(10),
        || ticks.eof(),
    );
    // a bad key is bad input naming the field
    let (_t2, wr2, _) = new_pipe();
    let o = CriuOpts {
        images_dir_fd: dir.as_raw_fd(),
        inherit_fd: vec![InheritFd {
            key: "pipe:[x]".into(),
            fd: 1,
        }],
        ..CriuOpts::default()
    };
    let r = swrk_call(
        &CriuReq {
            r#type: T::Restore as i32,
            opts: Some(o),
            ..CriuReq::default()
        },
        wr2,
    );
    assert!(
        !r.success
            && r.cr_errmsg
                .as_deref()
                .unwrap_or("")
                .contains("criu_opts.inherit_fd[0].key"),
        "{:?}",
        r.cr_errmsg
    );
    // an fd the service does not have: named by field
    let (_t3, wr3, _) = new_pipe();
    let o = CriuOpts { images_dir_fd: dir.as_raw_fd(), inherit_fd: vec![InheritFd { key: format!("pipe:[{}]", p.ino), fd: 57 }], ..CriuOpts::default() };
    let r = swrk_call(&CriuReq { r#type: T::Restore as i32, opts: Some(o), ..CriuReq::default() }, wr3);
    let m = r.cr_errmsg.as_deref().unwrap_or("");
    assert!(!r.success && m.contains("criu_opts.inherit_fd[0]") && m.contains("fd 57 is not open"), "{m}");
    // (the restored one, our child through rst_sibling, is reaped by Drop's kill)
    p.child = None;
}

// ---- an external network namespace ----

/// A named network namespace (`ip netns add`), deleted on drop.
struct NetNs(String);

impl NetNs {
    fn add(name: &str) -> NetNs {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        let st = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .expect("ip netns add");
        assert!(st.success(), "ip netns add {name}");
        NetNs(name.to_string())
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }

    fn ino(&self) -> u64 {
        std::fs::metadata(self.path()).unwrap().ino()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn netns_of(pid: i32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .ino()
}

/// Dump with --external net[INO]:extRootNetNS (by `dumper`), restore with
/// --inherit-fd fd[N]:extRootNetNS (by `restorer`): the program is in the
/// test's namespace again, its stdout pipe inherited too.
fn ext_netns_round(name: &str, dumper: &Path, restorer: &Path) {
    let ns = NetNs::add(&format!("criu-rs-{name}-{}", std::process::id()));
    let mut p = Prog::start(name, Some(&ns.path()));
    assert_eq!(netns_of(p.pid), ns.ino());
    let imgs = p.imgs("imgs");
    let ext = format!("net[{}]:extRootNetNS", ns.ino());
    let (st, log) = criu_with_fds(
        dumper,
        &["dump", "-t", &p.pid.to_string(), "--external", &ext],
        &imgs,
        "dump.log",
        &[],
    );
    assert!(
        st.success(),
        "dump --external {ext} failed ({st:?}):\n{log}"
    );
    p.dumped();
    // the image names the key, and nothing else of the namespace
    let names: Vec<String> = std::fs::read_dir(&imgs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("netns-")), "{names:?}");
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("netdev-") || n.starts_with("ifaddr-")),
        "{names:?}"
    );
    // without the namespace's fd: refused, naming the key (ours; upstream
    // fails too: "Unable to find an external netns")
    let (st, log) = criu_with_fds(restorer, &["restore", "-d"], &imgs, "restore0.log", &[]);
    assert!(
        !st.success() && log.contains("extRootNetNS"),
        "{st:?}:\n{log}"
    );
    // (gone, not only dead: upstream's failed root may be a zombie for a moment)
    wait_until(
        &format!("nothing left of the failed restore:\n{log}"),
        Duration::from_secs(10),
        || !Path::new(&format!("/proc/{}", p.pid)).exists(),
    );
    let nsf = std::fs::File::open(ns.path()).unwrap();
    let (ticks, wr, _) = new_pipe();
    let args = [
        "restore",
        "-d",
        "--inherit-fd",
        "fd[9]:extRootNetNS",
        "--inherit-fd",
        &format!("fd[{K}]:pipe:[{}]", p.ino),
    ];
    let (st, log) = criu_with_fds(
        restorer,
        &args,
        &imgs,
        "restore.log",
        &[(nsf.as_raw_fd(), 9), (wr.as_raw_fd(), K)],
    );
    assert!(st.success(), "restore {args:?} failed ({st:?}):\n{log}");
    drop(wr);
    assert_eq!(
        netns_of(p.pid),
        ns.ino(),
        "the restored program is in the inherited network namespace"
    );
    // the dump's lock of the namespace (upstream's CRIU chain, both engines
    // lock an external one too) lifted by the restore
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "iptables", "-S"])
        .output()
        .expect("iptables -S");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("CRIU"),
        "the namespace is still locked:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    ticks.more(3, "ticks after the restore");
}

fn why_not_ip() -> Option<String> {
    why_not_here().or_else(|| why_not_tool("ip"))
}

#[test]
fn external_netns_inherited() {
    require!(why_not_ip());
    ext_netns_round("inheritfd-net", Path::new(CRIU), Path::new(CRIU));
}

#[test]
fn external_netns_upstream_both_ways() {
    require!(why_not_upstream_here().or_else(why_not_ip));
    ext_netns_round("inheritfd-net-up1", &upstream(), Path::new(CRIU));
    ext_netns_round("inheritfd-net-up2", Path::new(CRIU), &upstream());
}
