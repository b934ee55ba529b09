//! The uts and ipc namespaces a tree's root owns, with tests/progs/utsipc.c
//! (pid 1 of its own pid namespace, `unshare --pid --uts --ipc --fork`):
//! its hostname, domain name and SysV objects (shm segments with their
//! contents, a semaphore set, a message queue with messages) are checked
//! by the program itself every tick and by the test from outside
//! (nsenter). Dump + restore by ours twice, both ways with upstream 4.2,
//! `tfork --copies 2` (each clone in new namespaces of its own, with the
//! same contents and no shared segment), a nested uts namespace refused by
//! name, hostile images refused naming image and field. Needs root, gcc,
//! unshare, setsid, nsenter; upstream's tests its binary too.
//!
//! On main the dump fails ("dumping namespaces other than a pid
//! namespace is not supported yet"): every test but the refusals fails.

mod common;

use common::*;
use images_proto::image::{read_all, write_all};
use images_proto::magic as mg;
use images_proto::pb;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn why_not() -> Option<String> {
    why_not_here().or_else(|| why_not_tool("nsenter"))
}

/// A running utsipc (pid 1 of its own pid, uts and ipc namespaces); every
/// utsipc of this test killed on drop.
struct Prog(OwnNsProg);

impl std::ops::Deref for Prog {
    type Target = OwnNsProg;
    fn deref(&self) -> &OwnNsProg {
        &self.0
    }
}

impl std::ops::DerefMut for Prog {
    fn deref_mut(&mut self) -> &mut OwnNsProg {
        &mut self.0
    }
}

impl Prog {
    /// `unshare --pid --uts --ipc --fork setsid [pre...] utsipc run HOST DOMAIN words...`
    fn start(tag: &str, pre: &[&str], host: &str, words: &[&str]) -> Prog {
        Self::start_in(tag, &["--pid", "--uts", "--ipc", "--fork"], pre, host, words)
    }

    /// [`Prog::start`] with other `unshare` options.
    fn start_in(tag: &str, unshare: &[&str], pre: &[&str], host: &str, words: &[&str]) -> Prog {
        Prog(OwnNsProg::launch(&format!("nsuts-{tag}"), "utsipc", Find::OneProcess, |bin| {
            let mut c = Command::new("unshare");
            c.args(unshare)
                .arg("setsid")
                .args(pre)
                .arg(bin)
                .args(["run", host, &format!("{host}.example")])
                .args(words)
                .env("UTSIPC_HOST_UTS", ns_link(std::process::id() as i32, "uts"));
            c
        }))
    }

    /// Restore `img` with `criu` (ours or upstream's) in the working dir.
    fn restore(&mut self, criu: &Path, img: &Path) {
        self.restore_in_work(criu, img, &[]);
    }

    /// What the test sees from outside: the namespaces are not the
    /// host's, the hostname is HOST, the shm marker is `marker`.
    fn check_outside(&self, host: &str, marker: Option<&str>) {
        let me = std::process::id() as i32;
        for kind in ["uts", "ipc"] {
            assert_ne!(ns_link(self.pid, kind), ns_link(me, kind), "{} must be in a {kind} namespace of its own", self.pid);
        }
        assert_eq!(nsenter(self.pid, &["--uts"], &["hostname"]), host);
        if let Some(m) = marker {
            assert_eq!(nsenter(self.pid, &["--ipc"], &[self.bin.to_str().unwrap(), "peek"]), m);
        }
    }
}

fn ours(dir: &Path) -> PathBuf {
    engine_under_test(dir)
}

/// Ours dumps and restores twice (what a restore made must dump again):
/// hostname, domain name, two shm segments (one with a hole, kept
/// attached: the attachment is made again at its address, and shares the
/// segment), a semaphore set and a message queue, checked by the program
/// every tick.
#[test]
fn uts_and_ipc_namespaces_survive_dump_and_restore_twice() {
    test_support::require!(why_not());
    let mut p = Prog::start("rt", &[], "box1", &["shm", "sem", "msg", "attach"]);
    let criu = ours(&p.dir);
    for round in 0..2 {
        let img = p.images(&format!("img-{round}"));
        criu_ok(&criu, &["dump", "-t", &p.pid.to_string()], &img, "dump.log");
        for f in ["utsns-11.img", "ipcns-var-10.img", "ipcns-shm-10.img", "ipcns-sem-10.img", "ipcns-msg-10.img", "pagemap-shmem-0.img"] {
            assert!(img.join(f).exists(), "round {round}: no {f} (upstream 4.2 writes it)");
        }
        p.gone();
        p.restore(&criu, &img);
        p.check_outside("box1", Some("1"));
    }
}

/// An ipc namespace with no object: only its sysctls (ipcns-var), as
/// upstream writes it; msgmni, sem and mqueue's msg_max set by the
/// program stay as it set them.
#[test]
fn empty_ipc_namespace_survives() {
    test_support::require!(why_not());
    let mut p = Prog::start("empty", &[], "empty-box", &["sysctl"]);
    let criu = ours(&p.dir);
    let img = p.images("img");
    criu_ok(&criu, &["dump", "-t", &p.pid.to_string()], &img, "dump.log");
    assert!(img.join("ipcns-var-10.img").exists() && !img.join("ipcns-shm-10.img").exists());
    p.gone();
    p.restore(&criu, &img);
    p.check_outside("empty-box", None);
}

/// A uts namespace of its own in criu's ipc namespace (the brief's
/// `unshare --pid --uts --fork`): utsns only, and the restored tree is in
/// criu's ipc namespace again.
#[test]
fn uts_namespace_alone_survives() {
    test_support::require!(why_not());
    let mut p = Prog::start_in("utsonly", &["--pid", "--uts", "--fork"], &[], "uts-only", &[]);
    let criu = ours(&p.dir);
    let img = p.images("img");
    criu_ok(&criu, &["dump", "-t", &p.pid.to_string()], &img, "dump.log");
    let ns: Vec<String> = std::fs::read_dir(&img)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("utsns-") || n.starts_with("ipcns-"))
        .collect();
    assert_eq!(ns.len(), 1, "one utsns image and no ipcns one expected: {ns:?}");
    assert!(ns[0].starts_with("utsns-"));
    p.gone();
    p.restore(&criu, &img);
    assert_eq!(nsenter(p.pid, &["--uts"], &["hostname"]), "uts-only");
    let me = std::process::id() as i32;
    assert_ne!(ns_link(p.pid, "uts"), ns_link(me, "uts"));
    assert_eq!(ns_link(p.pid, "ipc"), ns_link(me, "ipc"), "the ipc namespace is criu's again");
}

/// Upstream 4.2's images of such a tree restore here, and ours there
/// (the kept attachment: a VMA of status SYSVIPC, the segment's id as
/// shmid, in both).
#[test]
fn uts_and_ipc_images_restore_both_ways_with_upstream() {
    test_support::require!(why_not_upstream());
    test_support::require!(why_not());
    let mut p = Prog::start("upstream", &[], "box2", &["shm", "sem", "msg", "attach"]);
    let criu = ours(&p.dir);
    let theirs = p.images("img-upstream");
    upstream_ok(&["dump", "-t", &p.pid.to_string()], &theirs, "dump.log");
    p.gone();
    p.restore(&criu, &theirs);
    p.check_outside("box2", Some("1"));
    let img = p.images("img-ours");
    criu_ok(&criu, &["dump", "-t", &p.pid.to_string()], &img, "dump.log");
    same_namespace_images(&theirs, &img);
    p.gone();
    p.restore(&upstream(), &img);
    p.check_outside("box2", Some("1"));
}

/// Ours and upstream's image sets of the same namespaces (one restored
/// from the other, so the same state): the same namespace image files, the
/// same entries in them (crit's JSON), and the same SysV attachment VMA.
fn same_namespace_images(theirs: &Path, ours: &Path) {
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("utsns-") || n.starts_with("ipcns-") || n.starts_with("pagemap-shmem-"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(ours), names(theirs), "namespace image files, ours vs upstream's");
    let json = |d: &Path, n: &str| images_proto::image::decode_image(&std::fs::read(d.join(n)).unwrap(), Path::new(n), false).unwrap();
    for n in names(theirs) {
        assert_eq!(json(ours, &n), json(theirs, &n), "{n}: ours vs upstream's");
    }
    let sysv_vma = |d: &Path| {
        let mm: Vec<pb::MmEntry> = read_all(d, "mm-1.img", &mg::MM).unwrap();
        let v = mm[0].vmas.iter().find(|v| v.status & (1 << 10) != 0).cloned().expect("a SYSVIPC vma");
        (v.end - v.start, v.shmid, v.prot, v.flags, v.status, v.fdflags)
    };
    assert_eq!(sysv_vma(ours), sysv_vma(theirs), "the attachment's VMA, ours vs upstream's");
}

/// `tfork --copies 2` of the namespace init: each clone is in new uts and
/// ipc namespaces of its own (not the source's, not the other's) with the
/// same hostname and segment contents; a write into one clone's segment is
/// seen neither by the source nor by the other clone.
#[test]
fn tfork_clones_get_their_own_uts_and_ipc_namespaces() {
    test_support::require!(why_not());
    let mut p = Prog::start("tfork", &[], "box3", &["shm", "sem", "msg", "attach"]);
    let criu = ours(&p.dir);
    let img = p.images("tfork");
    let (clones, _) = tfork_ok(&criu, p.pid, 2, &["--persist=sync"], &img, &[]);
    p.ticks_on(3, "after tfork (source and clones)");
    for kind in ["uts", "ipc"] {
        let links: Vec<String> = [p.pid].iter().chain(&clones).map(|&c| ns_link(c, kind)).collect();
        assert!(links[0] != links[1] && links[0] != links[2] && links[1] != links[2], "{kind} namespaces must all differ: {links:?}");
    }
    for &c in &clones {
        assert_eq!(nsenter(c, &["--uts"], &["hostname"]), "box3");
        assert_eq!(nsenter(c, &["--ipc"], &[p.bin.to_str().unwrap(), "peek"]), "1");
    }
    nsenter(clones[0], &["--ipc"], &[p.bin.to_str().unwrap(), "poke", "77"]);
    assert_eq!(nsenter(clones[0], &["--ipc"], &[p.bin.to_str().unwrap(), "peek"]), "77");
    assert_eq!(nsenter(p.pid, &["--ipc"], &[p.bin.to_str().unwrap(), "peek"]), "1", "the source saw a clone's write");
    assert_eq!(nsenter(clones[1], &["--ipc"], &[p.bin.to_str().unwrap(), "peek"]), "1", "a clone saw another's write");
    p.ticks_on(3, "after the write into a clone's segment");
    for c in clones {
        // SAFETY: kill(2) of a clone this test made.
        unsafe { libc::kill(c, libc::SIGKILL) };
    }
    // the image set of the frozen moment (--persist=sync) has the
    // namespaces too, and restores with them
    for f in ["utsns-11.img", "ipcns-var-10.img", "ipcns-shm-10.img", "pagemap-shmem-0.img"] {
        assert!(img.join(f).exists(), "the persisted image set lacks {f}");
    }
    let src = p.pid;
    // SAFETY: kill(2) of the source this test started.
    unsafe { libc::kill(src, libc::SIGKILL) };
    p.gone();
    p.restore(&criu, &img);
    p.check_outside("box3", Some("1"));
}

/// A process of the tree in another uts namespace than its root's is
/// refused by name, and the tree runs on.
#[test]
fn nested_uts_namespace_is_refused() {
    test_support::require!(why_not());
    // sh (pid 1, the root) in one uts namespace, utsipc its child in another
    let p = Prog::start("nested", &["sh", "-c", "unshare --uts \"$@\"; exit", "sh"], "inner", &[]);
    let root = std::fs::read_to_string(format!("/proc/{}/status", p.pid))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("PPid:").map(|v| v.trim().parse::<i32>().unwrap()))
        .unwrap();
    assert_ne!(ns_link(root, "uts"), ns_link(p.pid, "uts"), "the root sh and utsipc must be in different uts namespaces");
    let criu = ours(&p.dir);
    let img = p.images("img");
    let (st, log) = criu_env(&criu, &["dump", "-t", &root.to_string()], &img, "dump.log", &[]);
    assert_eq!(st.code(), Some(1), "the dump must fail:\n{log}");
    assert!(log.contains("nested uts namespaces are not supported"), "the error should name the nested uts namespace:\n{log}");
    assert!(!img.join("inventory.img").exists());
    p.ticks_on(3, "after the refused dump");
}

/// An attachment split in two VMAs (mprotect of its last page) is refused
/// by name: restore attaches whole segments.
#[test]
fn partial_sysv_attachment_is_refused() {
    test_support::require!(why_not());
    let p = Prog::start("split", &[], "box6", &["shm", "attach", "split"]);
    let criu = ours(&p.dir);
    let img = p.images("img");
    let (st, log) = criu_env(&criu, &["dump", "-t", &p.pid.to_string()], &img, "dump.log", &[]);
    assert_eq!(st.code(), Some(1), "the dump must fail:\n{log}");
    assert!(log.contains("partial attachments") && log.contains("SysV shm segment 0"), "the error should name the partial attachment:\n{log}");
    assert!(!img.join("inventory.img").exists());
    p.ticks_on(3, "after the refused dump");
}

/// A POSIX message queue in the namespace's mqueue file system (no fd
/// open: only the namespace holds it) is refused by name.
#[test]
fn posix_message_queue_is_refused() {
    test_support::require!(why_not());
    let p = Prog::start("mq", &[], "box7", &["mq"]);
    let criu = ours(&p.dir);
    let img = p.images("img");
    let (st, log) = criu_env(&criu, &["dump", "-t", &p.pid.to_string()], &img, "dump.log", &[]);
    assert_eq!(st.code(), Some(1), "the dump must fail:\n{log}");
    assert!(log.contains("POSIX message queues (/utsipc)"), "the error should name the queue:\n{log}");
    assert!(!img.join("inventory.img").exists());
    p.ticks_on(3, "after the refused dump");
}

/// A tree in the host's pid namespace that owns uts and ipc namespaces
/// (restored with its pid, set_tid, then new namespaces) round-trips; its
/// tfork (a single process, which fork-made clones would share the
/// namespaces with) clones it by restore: the clone in new uts and ipc
/// namespaces of its own with the same hostname.
#[test]
fn host_pid_namespace_owner_round_trips_and_its_tfork_clones_by_restore() {
    test_support::require!(why_not());
    let mut p = Prog::start_in("hostpid", &["--uts", "--ipc", "--fork"], &[], "box8", &["sem", "msg", "sysctl"]);
    let criu = ours(&p.dir);
    let img = p.images("tfork");
    let out = Command::new(&criu)
        .args(["tfork", "-t", &p.pid.to_string(), "--copies", "1", "-D"])
        .arg(&img)
        .args(["-v4", "-o", "tfork.log"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = std::fs::read_to_string(img.join("tfork.log")).unwrap_or_default();
    assert!(out.status.success(), "tfork failed:\n{log}{}", String::from_utf8_lossy(&out.stderr));
    assert!(log.contains("owns a uts namespace, which fork-made clones would share"), "the log says why it is cloned by restore:\n{log}");
    let clones: Vec<i32> = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(clones.len(), 1, "{log}");
    let c = clones[0];
    assert_eq!(nsenter(c, &["--uts"], &["hostname"]), "box8", "the clone's hostname");
    for kind in ["uts", "ipc"] {
        assert_ne!(ns_link(c, kind), ns_link(p.pid, kind), "the clone's {kind} namespace is its own");
    }
    p.ticks_on(3, "after the tfork");
    // SAFETY: kill(2) of the clone this test made.
    unsafe { libc::kill(c, libc::SIGKILL) };
    wait_until("the clone gone", Duration::from_secs(10), || !alive(c));
    assert_eq!(live_with_exe(&p.bin), vec![p.pid], "no clone may be left");
    let img = p.images("img");
    criu_ok(&criu, &["dump", "-t", &p.pid.to_string()], &img, "dump.log");
    p.gone();
    let pid = p.pid;
    p.restore(&criu, &img);
    assert_eq!(p.pid, pid, "the pid is kept");
    p.check_outside("box8", None);
}

/// Hostile images: each edit of a good image set is refused by restore
/// with an error naming the image and the field, and nothing is left
/// running.
#[test]
fn hostile_uts_and_ipc_images_are_refused_by_name() {
    test_support::require!(why_not());
    let p = Prog::start("hostile", &[], "box4", &["shm", "attach", "sem", "msg"]);
    let criu = ours(&p.dir);
    let good = p.images("good");
    criu_ok(&criu, &["dump", "--leave-running", "-t", &p.pid.to_string()], &good, "dump.log");
    type Edit = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Edit, &[&str])> = vec![
        (
            "oversize hostname",
            Box::new(|d: &Path| {
                let mut v: Vec<pb::UtsnsEntry> = read_all(d, "utsns-11.img", &mg::UTSNS).unwrap();
                v[0].nodename = "h".repeat(65);
                write_all(d, "utsns-11.img", &mg::UTSNS, &v).unwrap();
            }),
            &["utsns-11.img", "nodename"],
        ),
        (
            "shm size overflow",
            Box::new(|d: &Path| {
                let mut v: Vec<pb::IpcShmEntry> = read_all(d, "ipcns-shm-10.img", &mg::IPCNS_SHM).unwrap();
                v[0].size = u64::MAX - 4095;
                write_all(d, "ipcns-shm-10.img", &mg::IPCNS_SHM, &v).unwrap();
            }),
            &["ipcns-shm-10.img", "size"],
        ),
        (
            "shm id out of range",
            Box::new(|d: &Path| {
                let mut v: Vec<pb::IpcShmEntry> = read_all(d, "ipcns-shm-10.img", &mg::IPCNS_SHM).unwrap();
                v[1].desc.id = 0x8000_0000;
                write_all(d, "ipcns-shm-10.img", &mg::IPCNS_SHM, &v).unwrap();
            }),
            &["ipcns-shm-10.img", "desc.id"],
        ),
        (
            "shm pages beyond the segment",
            Box::new(|d: &Path| {
                let mut v: Vec<pb::IpcShmEntry> = read_all(d, "ipcns-shm-10.img", &mg::IPCNS_SHM).unwrap();
                v[0].size = 4096;
                write_all(d, "ipcns-shm-10.img", &mg::IPCNS_SHM, &v).unwrap();
            }),
            &["pagemap-shmem-0.img", "nr_pages"],
        ),
        (
            // (read back fine: the restored root fails writing it, and the
            // half-made tree goes with its namespaces)
            "a sysctl value the kernel refuses",
            Box::new(|d: &Path| {
                let mut v: Vec<pb::IpcVarEntry> = read_all(d, "ipcns-var-10.img", &mg::IPC_VAR).unwrap();
                v[0].msg_ctlmni = 1 << 30;
                write_all(d, "ipcns-var-10.img", &mg::IPC_VAR, &v).unwrap();
            }),
            &["/proc/sys/kernel/msgmni", "1073741824"],
        ),
        (
            "a semaphore set of no semaphores",
            Box::new(|d: &Path| {
                let mut w = images_proto::image::ImageWriter::create(d, "ipcns-sem-10.img", &mg::IPCNS_SEM).unwrap();
                let desc = pb::IpcDescEntry { key: 0, uid: 0, gid: 0, cuid: 0, cgid: 0, mode: 0o600, id: 0 };
                w.write_entry(&pb::IpcSemEntry { desc, nsems: 0 }).unwrap();
                w.finish().unwrap();
            }),
            &["ipcns-sem-10.img", "nsems"],
        ),
        (
            "messages over the queue's qbytes",
            Box::new(|d: &Path| {
                let mut w = images_proto::image::ImageWriter::create(d, "ipcns-msg-10.img", &mg::IPCNS_MSG).unwrap();
                let desc = pb::IpcDescEntry { key: 0, uid: 0, gid: 0, cuid: 0, cgid: 0, mode: 0o600, id: 0 };
                w.write_entry(&pb::IpcMsgEntry { desc, qbytes: 8, qnum: 1 }).unwrap();
                w.write_entry(&pb::IpcMsg { mtype: 1, msize: 16 }).unwrap();
                w.write_payload(&[7u8; 16]).unwrap();
                w.finish().unwrap();
            }),
            &["ipcns-msg-10.img", "qbytes"],
        ),
        (
            "an attachment of a segment the namespace lacks",
            Box::new(|d: &Path| {
                let mut v: Vec<pb::MmEntry> = read_all(d, "mm-1.img", &mg::MM).unwrap();
                let vma = v[0].vmas.iter_mut().find(|m| m.status & (1 << 10) != 0).expect("the SYSVIPC vma");
                vma.shmid = 5;
                write_all(d, "mm-1.img", &mg::MM, &v).unwrap();
            }),
            &["mm-1.img", "SysV shm segment 5"],
        ),
        (
            "uts namespace id without its image",
            Box::new(|d: &Path| {
                let mut v: Vec<pb::TaskKobjIdsEntry> = read_all(d, "ids-1.img", &mg::IDS).unwrap();
                v[0].uts_ns_id = Some(999);
                write_all(d, "ids-1.img", &mg::IDS, &v).unwrap();
            }),
            &["utsns-999.img", "uts_ns_id"],
        ),
    ];
    for (what, edit, names) in cases {
        let img = p.images("bad");
        for e in std::fs::read_dir(&good).unwrap().flatten() {
            std::fs::copy(e.path(), img.join(e.file_name())).unwrap();
        }
        edit(&img);
        let (st, log) = criu_env(&criu, &["restore", "-d"], &img, "restore.log", &[]);
        assert_eq!(st.code(), Some(1), "{what}: the restore must fail:\n{log}");
        for n in names {
            assert!(log.contains(n), "{what}: the error should name {n:?}:\n{log}");
        }
        assert_eq!(live_with_exe(&p.bin), vec![p.pid], "{what}: only the source may run");
    }
    p.ticks_on(2, "after the refused restores");
}
