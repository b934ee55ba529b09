//! Netlink sockets through dump and restore, with tests/progs/nlsk.c
//! (NETLINK_ROUTE with groups in and past the address's 32, one bound to
//! a port id of its own and connected to the kernel, a uevent listener,
//! an unbound generic one), which checks ports and memberships and talks
//! to the kernel through each route socket every tick: plain and
//! `--leave-running` rounds, upstream CRIU 4.2 both ways (without a group
//! past 32: upstream's restore refuses those), hostile images. Needs
//! root, gcc, unshare, setsid.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use images_proto::{image, magic, pb};
use engine::kinds::Kind;
use engine::model::FileDesc;

use common::{criu_env, criu_ok, live_with_exe, private_criu, require, upstream_ok, why_not_here, why_not_upstream, OwnNsProg};


/// The netlink sockets of image set `img` as read back.
fn netlinks(img: &Path) -> Vec<engine::kinds::netlink::Netlink> {
    let files_id = std::fs::read_dir(img)
        .unwrap()
        .flatten()
        .find_map(|e| e.file_name().to_str()?.strip_prefix("fdinfo-")?.strip_suffix(".img")?.parse().ok())
        .expect("an fdinfo image");
    let (fds, _) = engine::images_io::read_fd_table(img, files_id).expect("reading the fd table");
    fds.into_iter()
        .filter_map(|f| match f.file {
            FileDesc::Kind(Kind::Netlink(n)) => Some(n),
            _ => None,
        })
        .collect()
}

#[test]
fn netlink_sockets_round_trip() {
    require!(why_not_here());
    let mut s = OwnNsProg::start("nl-round", "nlsk", &[]);
    let criu = private_criu(&s.dir);
    s.ticks_on(2, "before the dump");
    let img = s.images("img1");
    criu_ok(&criu, &["dump", "-t", &s.pid.to_string()], &img, "dump.log");
    let nl = netlinks(&img);
    assert_eq!(nl.len(), 4, "{nl:?}");
    assert_eq!(nl[0].groups, vec![1, 1], "groups 1 and 33");
    assert_eq!(nl[2].protocol, 15, "the uevent socket");
    s.gone();
    criu_ok(&criu, &["restore", "-d"], &img, "restore.log");
    s.refind();
    s.ticks_on(4, "after restore");
    let img = s.images("img2");
    criu_ok(&criu, &["dump", "-t", &s.pid.to_string(), "--leave-running"], &img, "dump.log");
    s.ticks_on(3, "after a --leave-running dump");
    for p in live_with_exe(&s.bin) {
        let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
    }
    s.gone();
    criu_ok(&criu, &["restore", "-d"], &img, "restore.log");
    s.refind();
    s.ticks_on(4, "after the second restore");
}

#[test]
fn netlink_sockets_with_upstream() {
    require!(why_not_upstream());
    let mut s = OwnNsProg::start("nl-upstream", "nlsk", &["low"]);
    let criu = private_criu(&s.dir);
    s.ticks_on(2, "before the dump");
    let img = s.images("ours");
    criu_ok(&criu, &["dump", "-t", &s.pid.to_string()], &img, "dump.log");
    s.gone();
    upstream_ok(&["restore", "-d"], &img, "restore-upstream.log");
    s.refind();
    s.ticks_on(4, "after upstream's restore of our images");
    let img = s.images("theirs");
    upstream_ok(&["dump", "-t", &s.pid.to_string()], &img, "dump-upstream.log");
    s.gone();
    criu_ok(&criu, &["restore", "-d"], &img, "restore.log");
    s.refind();
    s.ticks_on(4, "after our restore of upstream's dump");
}

#[test]
fn hostile_netlink_images_are_refused() {
    require!(why_not_here());
    let s = OwnNsProg::start("nl-hostile", "nlsk", &[]);
    let criu = private_criu(&s.dir);
    s.ticks_on(2, "before the dump");
    let img = s.images("img");
    criu_ok(&criu, &["dump", "-t", &s.pid.to_string()], &img, "dump.log");
    s.gone();
    let edit = |name: &str, f: &dyn Fn(&mut pb::NetlinkSkEntry)| -> PathBuf {
        let out = img.with_file_name(name);
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        for e in std::fs::read_dir(&img).unwrap().flatten() {
            std::fs::copy(e.path(), out.join(e.file_name())).unwrap();
        }
        let mut v: Vec<pb::FileEntry> = image::read_all(&out, "files.img", &magic::FILES).unwrap();
        v.iter_mut().filter_map(|e| e.nlsk.as_mut()).for_each(f);
        image::write_all(&out, "files.img", &magic::FILES, &v).unwrap();
        out
    };
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("protocol", edit("bad-proto", &|e| e.protocol = 40), "nlsk.protocol: 40 is not a netlink protocol"),
        ("groups", edit("bad-groups", &|e| e.groups = vec![1; 100]), "nlsk.groups: 100 bitmap words"),
        ("dst_group", edit("bad-dst", &|e| e.dst_group = u32::MAX), "nlsk.dst_group: 4294967295 is past the groups"),
    ];
    for (what, dir, want) in cases {
        let (st, log) = criu_env(&criu, &["restore", "-d"], &dir, "restore.log", &[]);
        assert_eq!(st.code(), Some(1), "{what}: the restore must fail:\n{log}");
        assert!(log.contains(want), "{what}: the error must say {want:?}:\n{log}");
        assert!(live_with_exe(&s.bin).is_empty(), "{what}: a refused image must not start anything");
    }
}
