//! A container with a terminal: `runc run -d --console-socket S` of a
//! busybox container with `"terminal": true` (runc makes a pty in the
//! container's own devpts, gives the container its slave, binds it on
//! /dev/console, and hands the master to whoever listens on S). Its
//! processes hold a pty slave whose master is outside the tree; runc
//! sends `orphan_pts_master` on DUMP and RESTORE, and at restore passes
//! the master criu hands it (notify `orphan-pts-master`, the fd attached)
//! on over the new console socket.
//!
//! The test is the console socket's other end: it receives the master by
//! SCM_RIGHTS, reads the container's output from it and types lines into
//! it. After each restore the ticks go on, numbered on, on the new
//! master; a line typed there reaches the container's shell (`got LINE`);
//! the container's init has the slave as its controlling terminal with
//! its group in the foreground. With our criu both ways, twice (the
//! second checkpoint `--leave-running`), and across engines with
//! upstream 4.2 (our dump restored by it, its dump restored by ours).

mod common;

use common::runc_support::{busybox_bundle, pid_of, runc, Container};
use common::*;
use std::io::{Read as _, Write as _};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn why_not() -> Option<String> {
    why_not_root().or_else(|| why_not_tools(&["runc", "busybox"]))
}

/// A bundle: busybox rootfs, `runc spec` (terminal), the process a shell
/// saying `tick N` and answering each line it reads with `got LINE`.
fn bundle(dir: &Path) -> PathBuf {
    busybox_bundle(dir, &["sh"], true, r#"i=0; while true; do i=$((i+1)); echo \"tick $i\"; if read -t 0.2 l; then echo \"got $l\"; fi; done"#)
}

/// The console socket's receiving end: the master it is given, what the
/// container writes on it, and whether it has ended (EIO/EOF: the
/// container's slave is gone).
struct Console {
    path: PathBuf,
    text: Arc<Mutex<(String, bool)>>,
    master: Arc<Mutex<Option<std::fs::File>>>,
}

impl Console {
    fn listen(path: PathBuf) -> Console {
        let _ = std::fs::remove_file(&path);
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let text = Arc::new(Mutex::new((String::new(), false)));
        let master = Arc::new(Mutex::new(None));
        let (t, m) = (text.clone(), master.clone());
        std::thread::spawn(move || {
            let Ok((conn, _)) = l.accept() else { return };
            let mut buf = [0u8; 4096];
            let fd = loop {
                match engine::sys::sock::recv_rights(conn.as_fd(), &mut buf) {
                    Ok(Some(mut got)) if !got.fds.is_empty() => break got.fds.remove(0),
                    Ok(Some(_)) => return,
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                    Err(_) => return,
                }
            };
            let mut f = std::fs::File::from(fd);
            *m.lock().unwrap() = Some(f.try_clone().unwrap());
            let mut b = [0u8; 4096];
            loop {
                match f.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => t.lock().unwrap().0.push_str(&String::from_utf8_lossy(&b[..n])),
                }
            }
            t.lock().unwrap().1 = true;
        });
        Console { path, text, master }
    }

    fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }

    fn lines(&self) -> Vec<String> {
        self.text.lock().unwrap().0.split('\n').map(|l| l.trim_end_matches('\r').to_string()).collect()
    }

    fn ticks(&self) -> Vec<u64> {
        self.lines().iter().filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok()).collect()
    }

    fn ended(&self) -> bool {
        self.text.lock().unwrap().1
    }

    /// Type `line` and wait for the container's `got LINE`.
    fn type_line(&self, line: &str) {
        wait_until("the console's master", Duration::from_secs(10), || self.master.lock().unwrap().is_some());
        self.master.lock().unwrap().as_mut().unwrap().write_all(format!("{line}\n").as_bytes()).unwrap();
        let want = format!("got {line}");
        wait_until(&format!("{want:?} on the console"), Duration::from_secs(10), || self.lines().contains(&want));
    }
}

/// The container's init: its fds 0-2 are one pty slave, which is its
/// controlling terminal, its own group in the foreground.
fn check_terminal(pid: i32, what: &str) {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(format!("/proc/{pid}/fd/0")).unwrap().rdev();
    assert!((136..=143).contains(&libc::major(rdev)), "{what}: fd 0 of {pid} is a pty slave ({rdev:#x})");
    for fd in 1..3 {
        assert_eq!(std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).unwrap().rdev(), rdev, "{what}: fd {fd} of {pid} is the same slave");
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let (pgrp, sid, tty, tpgid): (i32, i32, u64, i32) = (f[2].parse().unwrap(), f[3].parse().unwrap(), f[4].parse().unwrap(), f[5].parse().unwrap());
    assert_eq!((sid, tty, tpgid), (pid, rdev, pgrp), "{what}: {pid} leads its session, the slave its controlling terminal, its group ({pgrp}) in the foreground");
}

/// Run the container, then per round checkpoint with `dumper` (and
/// `--leave-running` when asked) and restore with `restorer` onto a new
/// console socket, checking output, input and the terminal each time.
fn rounds(tag: &str, rounds: &[(&Path, &Path, bool)]) {
    let tmp = test_dir(tag);
    let b = bundle(&tmp);
    let id = format!("criu-rs-{tag}-{}", std::process::id());
    let c = Container { bundle: &b, id: id.clone() };
    let mut con = Console::listen(tmp.join("console0.sock"));
    let (ok, err) = runc(&b, &["run", "-d", "--console-socket", con.arg(), &id]);
    assert!(ok, "runc run -d --console-socket: {err}");
    wait_until("ticks on the console", Duration::from_secs(20), || con.ticks().len() >= 3);
    con.type_line("before");
    check_terminal(pid_of(&b, &id), "before the checkpoints");
    for (round, (dumper, restorer, leave)) in rounds.iter().enumerate() {
        let img = tmp.join(format!("ck{round}"));
        let img_s = img.to_str().unwrap();
        let dumper_s = dumper.to_str().unwrap();
        let mut args = vec!["--criu", dumper_s, "checkpoint", "--image-path", img_s];
        if *leave {
            args.push("--leave-running");
        }
        args.push(&id);
        // (left running, it ticks on past the dumped moment: the restored
        // one goes on from that moment, past what was seen before)
        let seen = *con.ticks().last().unwrap();
        let (ok, err) = runc(&b, &args);
        assert!(ok, "round {round}: runc checkpoint ({dumper_s}): {err}\n{}", std::fs::read_to_string(img.join("dump.log")).unwrap_or_default());
        if *leave {
            // it runs on, on its old console
            let t = *con.ticks().last().unwrap();
            wait_until("ticks after checkpoint --leave-running", Duration::from_secs(20), || con.ticks().last().is_some_and(|&n| n >= t + 2));
            con.type_line(&format!("left{round}"));
            let _ = runc(&b, &["delete", "-f", &id]);
        }
        wait_until("the old console's end", Duration::from_secs(10), || con.ended());
        let last_old = *con.ticks().last().unwrap();
        let before = if *leave { seen } else { last_old };
        let next = Console::listen(tmp.join(format!("console{}.sock", round + 1)));
        let restorer_s = restorer.to_str().unwrap();
        let (ok, err) = runc(&b, &["--criu", restorer_s, "restore", "-d", "--console-socket", next.arg(), "--image-path", img_s, &id]);
        assert!(ok, "round {round}: runc restore ({restorer_s}): {err}\n{}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
        wait_until(&format!("round {round}: ticks on the new console"), Duration::from_secs(20), || next.ticks().len() >= 3);
        let t = next.ticks();
        assert!(t[0] > before && t.windows(2).all(|w| w[1] == w[0] + 1), "round {round}: the ticks go on from {before} on the new master: {t:?}");
        next.type_line(&format!("after{round}"));
        check_terminal(pid_of(&b, &id), &format!("round {round}'s restore"));
        assert_eq!(*con.ticks().last().unwrap(), last_old, "round {round}: nothing more on the old console");
        con = next;
    }
    drop(c);
    wait_until("the last console's end once the container is gone", Duration::from_secs(10), || con.ended());
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Our criu both ways, twice (the second checkpoint `--leave-running`).
#[test]
fn runc_terminal_container_with_our_criu() {
    require!(why_not());
    let tmp = test_dir("runc-tty-bin");
    let criu = private_criu(&tmp);
    rounds("runc-tty", &[(&criu, &criu, false), (&criu, &criu, true)]);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Across engines: our dump restored by upstream 4.2 (the images as it
/// writes them: tty-info's full entry of the orphan slave), then its dump
/// restored by ours.
#[test]
fn runc_terminal_container_across_engines() {
    require!(why_not().or_else(why_not_upstream));
    let tmp = test_dir("runc-tty-x-bin");
    let criu = private_criu(&tmp);
    let up = upstream();
    rounds("runc-tty-x", &[(&criu, &up, false), (&up, &criu, false)]);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Hostile images: the orphan slave's `tty_info_entry` is checked as a
/// pair's (a window size past 16 bits, a line discipline past a byte, a
/// session that is no pid): runc's restore fails naming the field,
/// nothing is left, and the intact image restores after.
#[test]
fn runc_terminal_hostile_tty_info_is_refused() {
    require!(why_not());
    let tmp = test_dir("runc-tty-bad");
    let criu = private_criu(&tmp);
    let criu_s = criu.to_str().unwrap();
    let b = bundle(&tmp);
    let id = format!("criu-rs-runc-tty-bad-{}", std::process::id());
    let c = Container { bundle: &b, id: id.clone() };
    let con = Console::listen(tmp.join("console0.sock"));
    let (ok, err) = runc(&b, &["run", "-d", "--console-socket", con.arg(), &id]);
    assert!(ok, "runc run -d --console-socket: {err}");
    wait_until("ticks on the console", Duration::from_secs(20), || con.ticks().len() >= 3);
    let img = tmp.join("ck");
    let (ok, err) = runc(&b, &["--criu", criu_s, "checkpoint", "--image-path", img.to_str().unwrap(), &id]);
    assert!(ok, "runc checkpoint: {err}\n{}", std::fs::read_to_string(img.join("dump.log")).unwrap_or_default());
    type Edit = fn(&mut images_proto::pb::TtyInfoEntry);
    let edits: [(&str, Edit, &str); 3] = [
        ("winsize", |i| i.winsize.as_mut().unwrap().ws_row = 70000, "winsize.ws_row"),
        ("line", |i| i.termios.as_mut().unwrap().c_line = 300, "tty_info.termios"),
        ("sid", |i| i.sid = u32::MAX, "tty_info.sid"),
    ];
    for (k, (name, edit, field)) in edits.iter().enumerate() {
        let bad = edited_image(&img, &format!("bad-{name}"), "tty-info.img", &images_proto::magic::TTY_INFO, |v: &mut Vec<images_proto::pb::TtyInfoEntry>| {
            assert_eq!(v.len(), 1, "one terminal: the container's slave");
            edit(&mut v[0]);
        });
        let next = Console::listen(tmp.join(format!("bad{k}.sock")));
        let (ok, _) = runc(&b, &["--criu", criu_s, "restore", "-d", "--console-socket", next.arg(), "--image-path", bad.to_str().unwrap(), &id]);
        let log = std::fs::read_to_string(bad.join("restore.log")).unwrap_or_default();
        assert!(!ok, "{name}: the hostile image was restored");
        assert!(log.contains(field) && log.contains("files.img: fd 0"), "{name}: the error names {field}:\n{log}");
        let _ = runc(&b, &["delete", "-f", &id]);
    }
    let next = Console::listen(tmp.join("good.sock"));
    let (ok, err) = runc(&b, &["--criu", criu_s, "restore", "-d", "--console-socket", next.arg(), "--image-path", img.to_str().unwrap(), &id]);
    assert!(ok, "the intact image after the refusals: {err}\n{}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
    wait_until("ticks on the new console", Duration::from_secs(20), || next.ticks().len() >= 3);
    next.type_line("intact");
    drop(c);
    let _ = std::fs::remove_dir_all(&tmp);
}
