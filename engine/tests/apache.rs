//! Debian's apache2 with the prefork MPM, started as a user would
//! (`apache2 -f CONF -DFOREGROUND` under `unshare --pid --fork setsid`),
//! with a configuration of the test's own: two listeners on 127.0.0.1
//! (free ports of this run), so that the workers take turns through the
//! accept mutex (`Mutex file:DIR`: an fcntl lock on a file apache unlinks
//! at once, held by the worker waiting in accept, the others blocked in
//! F_SETLKW), its PidFile, ErrorLog and runtime dir under the test dir,
//! `User`/`Group www-data`, three servers. The scoreboard is a shared
//! anonymous mapping of the master and every worker; the master and the
//! workers share the pipe of death.
//!
//! Dumped with `-l --tcp-established` while a client holds a keep-alive
//! connection, restored by ours, twice: the master (root) and its workers
//! (www-data) have the same pids and uids, one worker holds the accept
//! lock again, the held connection and new ones are answered correctly on
//! both ports, mod_status's access count goes on from the dumped
//! scoreboard, and SIGTERM shuts it down cleanly (the master reaps its
//! restored workers). Also: ours dumps, upstream CRIU 4.2 restores, ours
//! dumps that again. Needs root, apache2 (Debian's package, with its
//! modules in /usr/lib/apache2/modules), iptables (the network lock).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const MODULES: &str = "/usr/lib/apache2/modules";

fn why_not() -> Option<String> {
    why_not_here()
        .or_else(|| why_not_tools(&["/usr/sbin/apache2", "iptables", "iptables-restore", "ip6tables-restore"]))
        .or_else(|| why_not_tool(&format!("{MODULES}/mod_mpm_prefork.so")))
        .or_else(|| why_not_tool(&format!("{MODULES}/mod_status.so")))
        .or_else(|| www_data().is_none().then(|| "no www-data user in /etc/passwd".to_string()))
}

/// uid and gid of www-data.
fn www_data() -> Option<(u32, u32)> {
    let pw = std::fs::read_to_string("/etc/passwd").ok()?;
    let l = pw.lines().find(|l| l.starts_with("www-data:"))?;
    let f: Vec<&str> = l.split(':').collect();
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

/// A port free now on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The big file served: bytes no two runs of the test share by accident.
fn big_body() -> Vec<u8> {
    (0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect()
}

struct Apache {
    dir: PathBuf,
    work: PathBuf,
    ports: [u16; 2],
}

impl Apache {
    fn start(tag: &str) -> Apache {
        let dir = test_dir(tag);
        let work = dir.join("work");
        for d in ["work", "htdocs", "run", "logs"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("htdocs/index.html"), format!("hello from {tag}\n")).unwrap();
        std::fs::write(dir.join("htdocs/big.bin"), big_body()).unwrap();
        let ports = [free_port(), free_port()];
        let d = dir.display();
        let conf = format!(
            "ServerRoot {d}\n\
             ServerName 127.0.0.1\n\
             Listen 127.0.0.1:{}\n\
             Listen 127.0.0.1:{}\n\
             LoadModule mpm_prefork_module {MODULES}/mod_mpm_prefork.so\n\
             LoadModule authz_core_module {MODULES}/mod_authz_core.so\n\
             LoadModule status_module {MODULES}/mod_status.so\n\
             User www-data\n\
             Group www-data\n\
             PidFile {d}/run/httpd.pid\n\
             DefaultRuntimeDir {d}/run\n\
             Mutex file:{d}/run default\n\
             ErrorLog {d}/logs/error.log\n\
             LogLevel info\n\
             DocumentRoot {d}/htdocs\n\
             <Directory {d}/htdocs>\n  Require all granted\n</Directory>\n\
             <Location /server-status>\n  SetHandler server-status\n  Require all granted\n</Location>\n\
             ExtendedStatus On\n\
             StartServers 3\n\
             MinSpareServers 1\n\
             MaxSpareServers 10\n\
             KeepAlive On\n\
             KeepAliveTimeout 300\n\
             MaxKeepAliveRequests 0\n",
            ports[0], ports[1]
        );
        let conf_path = dir.join("httpd.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let t = Command::new("/usr/sbin/apache2").arg("-f").arg(&conf_path).arg("-t").output().expect("apache2 -t");
        assert!(t.status.success(), "apache2 -t: {}", String::from_utf8_lossy(&t.stderr));
        let mut child = only_stdio(Command::new("unshare").args(["--pid", "--fork", "setsid", "/usr/sbin/apache2", "-f"]))
            .arg(&conf_path)
            .arg("-DFOREGROUND")
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start apache2");
        std::thread::spawn(move || child.wait());
        let a = Apache { dir, work, ports };
        wait_until("apache2's master and 3 workers", Duration::from_secs(20), || a.pids().0.len() >= 4);
        for p in ports {
            wait_until("apache2 answering", Duration::from_secs(20), || try_get(p, "/index.html").is_some());
        }
        a
    }

    /// The live processes working in our work dir (apache does not chdir
    /// when it stays in the foreground), and the master: pid 1 of its
    /// namespace.
    fn pids(&self) -> (Vec<i32>, Option<i32>) {
        let mut all = Vec::new();
        let mut root = None;
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            if std::fs::read_link(format!("/proc/{pid}/cwd")).ok().as_deref() != Some(self.work.as_path()) || !alive(pid) {
                continue;
            }
            let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let ns: Vec<&str> = st.lines().find(|l| l.starts_with("NSpid:")).map(|l| l.split_whitespace().collect()).unwrap_or_default();
            if ns.len() != 3 {
                continue; // the unshare process
            }
            all.push(pid);
            if ns[2] == "1" {
                root = Some(pid);
            }
        }
        all.sort_unstable();
        (all, root)
    }

    fn master(&self) -> i32 {
        self.pids().1.expect("apache2's master")
    }

    /// (pid in its namespace, comm, real/effective/saved uid, gid) of every
    /// process, sorted.
    fn shape(&self) -> Vec<(i32, String, String, String)> {
        let mut v: Vec<_> = self
            .pids()
            .0
            .into_iter()
            .map(|p| {
                let st = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
                let field = |k: &str| st.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default();
                let nspid = st.lines().find(|l| l.starts_with("NSpid:")).and_then(|l| l.split_whitespace().last()?.parse().ok()).unwrap_or(0);
                (nspid, comm(p), field("Uid:"), field("Gid:"))
            })
            .collect();
        v.sort();
        v
    }

    /// The worker holding the accept mutex's fcntl lock (its fdinfo's
    /// `lock:` line on the unlinked `mpm-accept` file), if exactly one does.
    fn lock_holders(&self) -> Vec<i32> {
        let mut v = Vec::new();
        for p in self.pids().0 {
            for (fd, target) in fd_links(p) {
                if target.contains("/run/mpm-accept") && target.ends_with("(deleted)") {
                    let info = std::fs::read_to_string(format!("/proc/{p}/fdinfo/{fd}")).unwrap_or_default();
                    if info.lines().any(|l| l.starts_with("lock:") && l.contains("POSIX") && l.contains(&format!(" {p} "))) {
                        v.push(p);
                    }
                }
            }
        }
        v
    }

    /// No connection to our ports held by a process in a state
    /// `--tcp-established` refuses: only established ones and ones whose
    /// end here shut its writing side (a lingering close); a client that
    /// closed first leaves apache's end in CLOSE_WAIT for a moment.
    fn quiet(&self) -> bool {
        let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        tcp.lines().skip(1).all(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f.get(1).and_then(|a| a.split(':').nth(1)).and_then(|p| u16::from_str_radix(p, 16).ok());
            let ours = local_port.is_some_and(|p| self.ports.contains(&p));
            // LISTEN, ESTABLISHED, FIN_WAIT1, FIN_WAIT2 (a lingering close)
            !ours || f.get(9) == Some(&"0") || matches!(f.get(3), Some(&"0A") | Some(&"01") | Some(&"04") | Some(&"05"))
        })
    }

    /// `Total Accesses` of mod_status (summed over the scoreboard).
    fn accesses(&self) -> u64 {
        let (_, body) = get(self.ports[0], "/server-status?auto");
        let s = String::from_utf8_lossy(&body).into_owned();
        s.lines().find_map(|l| l.strip_prefix("Total Accesses:")).and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("no Total Accesses in {s}"))
    }

    fn images(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/error.log")).unwrap_or_default()
    }

    /// Dump the tree with `dumper` (`-l --tcp-established`), wait until it
    /// is gone, restore it with `restorer` in the work dir.
    fn round(&self, dumper: &Path, restorer: &Path, name: &str) {
        wait_until("apache2's connections settled", Duration::from_secs(10), || self.quiet());
        let img = self.images(name);
        criu_ok(dumper, &["dump", "-t", &self.master().to_string(), "-l", "--tcp-established"], &img, "dump.log");
        wait_until("the dumped apache2 gone", Duration::from_secs(5), || self.pids().0.is_empty());
        let out = Command::new(restorer)
            .args(["restore", "-d", "-l", "--tcp-established", "-D"])
            .arg(&img)
            .args(["-v4", "-o", "restore.log"])
            .current_dir(&self.work)
            .stdin(Stdio::null())
            .output()
            .expect("restore");
        assert!(
            out.status.success(),
            "{name}: restore by {} failed:\n{}{}",
            restorer.display(),
            std::fs::read_to_string(img.join("restore.log")).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What must hold after a restore: the same processes with the same
    /// credentials (the master root, the workers www-data), one worker
    /// holding the accept lock, both ports answering (the big file whole,
    /// from several clients at once), the held connection answering, the
    /// scoreboard's count going on from `before`.
    fn serves(&self, shape: &[(i32, String, String, String)], held: &mut Held, before: u64, what: &str) {
        let now = self.shape();
        assert_eq!(now, shape, "{what}: the restored tree's processes and credentials");
        wait_until(&format!("{what}: one worker holding the accept lock"), Duration::from_secs(10), || self.lock_holders().len() == 1);
        let (head, body) = held.ask("/index.html");
        assert!(head.contains(" 200 ") && body.starts_with(b"hello from "), "{what}: the held connection: {head}");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let ports = self.ports;
                std::thread::spawn(move || {
                    for i in 0..10 {
                        let port = ports[(t + i) % 2];
                        let (head, body) = get(port, "/big.bin");
                        assert!(head.contains(" 200 "), "port {port}: {head}");
                        assert!(body == big_body(), "port {port}: big.bin differs ({} bytes)", body.len());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap_or_else(|_| panic!("{what}: a client failed"));
        }
        let after = self.accesses();
        assert!(after > before + 40, "{what}: {before} accesses counted before the dump, {after} now: the scoreboard did not go on");
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        for p in self.pids().0 {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).stderr(Stdio::null()).status();
        }
    }
}

/// The state (/proc/net/tcp's code: "05" is FIN_WAIT2) of the socket of
/// 127.0.0.1:`port` whose peer is port `peer`, if a process holds it.
fn tcp_state(port: u16, peer: u16) -> Option<String> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    tcp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let p = |a: &str| a.split(':').nth(1).and_then(|v| u16::from_str_radix(v, 16).ok());
        (p(f.get(1)?)? == port && p(f.get(2)?)? == peer && *f.get(9)? != "0").then(|| f[3].to_string())
    })
}

/// One request on a fresh connection (`Connection: close`), read to the
/// end; `None` if it could not connect.
fn try_get(port: u16, path: &str) -> Option<(String, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut all = Vec::new();
    let mut b = [0u8; 65536];
    loop {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    let at = all.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((String::from_utf8_lossy(&all[..at]).into_owned(), all[at + 4..].to_vec()))
}

fn get(port: u16, path: &str) -> (String, Vec<u8>) {
    try_get(port, path).unwrap_or_else(|| panic!("GET {path} on port {port} failed"))
}

/// A keep-alive connection held by the test across the dumps.
struct Held(TcpStream);

impl Held {
    fn open(port: u16) -> Held {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Held(s)
    }

    /// One request, its response read by its Content-Length.
    fn ask(&mut self, path: &str) -> (String, Vec<u8>) {
        self.0.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).expect("send on the held connection");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = match self.0.read(&mut b) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => r.expect("reading the response head on the held connection"),
            };
            assert_eq!(n, 1, "end of file on the held connection: {}", String::from_utf8_lossy(&head));
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        assert!(!head.to_ascii_lowercase().contains("connection: close"), "apache closes the held connection: {head}");
        let len: usize = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())).expect("Content-Length");
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).expect("reading the body on the held connection");
        (head, body)
    }
}

/// Before anything is dumped: the master root, three workers www-data,
/// one of them holding the accept lock; both ports answer.
fn started(a: &Apache) -> Vec<(i32, String, String, String)> {
    let (uid, gid) = www_data().unwrap();
    let want = |nspid: i32| {
        let (u, g) = if nspid == 1 { (0, 0) } else { (uid, gid) };
        (format!("{u} {u} {u}"), format!("{g} {g} {g}"))
    };
    // (a worker just forked is root until it drops to www-data)
    let settled = || a.shape().iter().all(|(nspid, comm, uids, gids)| comm == "apache2" && (uids.clone(), gids.clone()) == want(*nspid));
    wait_until("the workers running as www-data", Duration::from_secs(10), settled);
    let shape = a.shape();
    assert_eq!(shape.len(), 4, "the master and 3 workers: {shape:?}");
    assert!(shape.iter().all(|(nspid, comm, uids, gids)| comm == "apache2" && (uids.clone(), gids.clone()) == want(*nspid)), "credentials: {shape:?}");
    wait_until("one worker holding the accept lock", Duration::from_secs(10), || a.lock_holders().len() == 1);
    for p in a.ports {
        assert_eq!(get(p, "/big.bin").1, big_body(), "port {p} before the dump");
    }
    shape
}

/// SIGTERM to the restored master: it stops its workers, reaps them and
/// exits, removing its pid file.
fn stops(a: &Apache) {
    let m = a.master();
    let _ = Command::new("kill").args(["-TERM", &m.to_string()]).status();
    wait_until("apache2 stopped by SIGTERM", Duration::from_secs(20), || a.pids().0.is_empty());
    assert!(!a.dir.join("run/httpd.pid").exists(), "the pid file left");
    assert!(a.error_log().contains("caught SIGTERM, shutting down"), "{}", a.error_log());
    let _ = std::fs::remove_dir_all(&a.dir);
}

#[test]
fn apache_prefork_two_rounds() {
    require!(why_not());
    let a = Apache::start("apache-ours");
    let shape = started(&a);
    let criu = private_criu(&a.dir);
    // the worker in accept holds a file lock: refused by name without -l,
    // and left running
    let img = a.images("refused");
    let (st, log) = criu_env(&criu, &["dump", "-t", &a.master().to_string(), "--tcp-established"], &img, "dump.log", &[]);
    assert!(!st.success() && log.contains("holds a file lock") && log.contains("--file-locks"), "a dump without -l: {st:?}\n{log}");
    assert_eq!(a.shape(), shape, "after the refused dump");
    assert_eq!(get(a.ports[1], "/index.html").1, b"hello from apache-ours\n", "after the refused dump");
    let mut held = Held::open(a.ports[0]);
    let (head, _) = held.ask("/index.html");
    assert!(head.contains(" 200 "), "{head}");
    // a worker in its lingering close: it answered `Connection: close`,
    // shut its writing side (FIN_WAIT2) and reads what the client still
    // sends until its end of file; the client sends a byte now and then
    let mut linger = TcpStream::connect(("127.0.0.1", a.ports[0])).unwrap();
    linger.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    linger.write_all(b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    linger.read_to_end(&mut answer).expect("the answer and apache's end of file");
    assert!(answer.starts_with(b"HTTP/1.1 200 "), "{}", String::from_utf8_lossy(&answer));
    let me = linger.local_addr().unwrap().port();
    wait_until("the worker's end in FIN_WAIT2", Duration::from_secs(10), || tcp_state(a.ports[0], me).as_deref() == Some("05"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut dribble = Some({
        let (stop, mut l) = (stop.clone(), linger.try_clone().unwrap());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = l.write_all(b"x");
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    });
    for (round, name) in ["img1", "img2"].into_iter().enumerate() {
        let before = a.accesses();
        a.round(&criu, &criu, name);
        if round == 0 {
            // the lingering worker's end restored in FIN_WAIT2 (its FIN sent
            // again, acknowledged again); the client's end of file ends it
            wait_until("the lingering worker's end in FIN_WAIT2 again", Duration::from_secs(20), || tcp_state(a.ports[0], me).as_deref() == Some("05"));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            dribble.take().unwrap().join().unwrap();
            linger.shutdown(std::net::Shutdown::Write).unwrap();
            wait_until("the lingering close ended", Duration::from_secs(20), || tcp_state(a.ports[0], me).is_none());
        }
        a.serves(&shape, &mut held, before, &format!("round {}", round + 1));
    }
    let bad: Vec<&str> = ["error]", "crit]", "alert]", "emerg]"].into_iter().filter(|l| a.error_log().contains(l)).collect();
    assert!(bad.is_empty(), "apache2 logged {bad:?}:\n{}", a.error_log());
    stops(&a);
}

/// Ours dumps, upstream 4.2 restores, ours dumps and restores that again.
/// (Upstream's own dump of this tree fails here: it reads every process's
/// rlimits with prlimit(2), which for a www-data worker needs
/// CAP_SYS_RESOURCE, and this container's root lacks it.)
#[test]
fn apache_restored_by_upstream() {
    require!(why_not().or_else(why_not_upstream));
    let a = Apache::start("apache-upstream");
    let shape = started(&a);
    let criu = private_criu(&a.dir);
    let mut held = Held::open(a.ports[1]);
    assert!(held.ask("/index.html").0.contains(" 200 "));
    let before = a.accesses();
    a.round(&criu, &upstream(), "ours-to-upstream");
    a.serves(&shape, &mut held, before, "restored by upstream");
    let before = a.accesses();
    a.round(&criu, &criu, "upstream-restored-to-ours");
    a.serves(&shape, &mut held, before, "dumped after upstream's restore, restored by ours");
    stops(&a);
}
