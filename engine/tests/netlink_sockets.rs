//! Netlink sockets through dump and restore, with tests/progs/nlsk.c
//! (NETLINK_ROUTE with groups in and past the address's 32, one bound to
//! a port id of its own and connected to the kernel, a uevent listener,
//! an unbound generic one), which checks ports and memberships and talks
//! to the kernel through each route socket every tick: plain and
//! `--leave-running` rounds, upstream CRIU 4.2 both ways (without a group
//! past 32: upstream's restore refuses those), hostile images. Needs
//! root, gcc, unshare, setsid.

use std::path::{Path, PathBuf};

mod common;

use images_proto::pb;
use engine::kinds::Kind;
use engine::model::FileDesc;

use common::{criu_ok, private_criu, require, why_not_here, why_not_upstream, OwnNsProg};


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
    let first = |img: &Path| {
        let nl = netlinks(img);
        assert_eq!(nl.len(), 4, "{nl:?}");
        assert_eq!(nl[0].groups, vec![1, 1], "groups 1 and 33");
        assert_eq!(nl[2].protocol, 15, "the uevent socket");
    };
    s.two_rounds(&criu, first, |_| {});
}

#[test]
fn netlink_sockets_with_upstream() {
    require!(why_not_upstream());
    let mut s = OwnNsProg::start("nl-upstream", "nlsk", &["low"]);
    let criu = private_criu(&s.dir);
    s.upstream_both_ways(&criu, |_| {});
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
    let edit = |name: &str, f: &dyn Fn(&mut pb::NetlinkSkEntry)| common::edited_files(&img, name, |e| e.nlsk.iter_mut().for_each(f));
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("protocol", edit("bad-proto", &|e| e.protocol = 40), "nlsk.protocol: 40 is not a netlink protocol"),
        ("groups", edit("bad-groups", &|e| e.groups = vec![1; 100]), "nlsk.groups: 100 bitmap words"),
        ("dst_group", edit("bad-dst", &|e| e.dst_group = u32::MAX), "nlsk.dst_group: 4294967295 is past the groups"),
    ];
    common::refused_restores(&criu, &s.bin, cases);
}
