//! Packet sockets through dump and restore, with tests/progs/pktsk.c (a
//! raw socket for a local ethertype bound to lo with aux data, timestamps
//! and a promiscuous membership added twice, which sends a frame on lo
//! and sees it come back every tick; a datagram socket for IP with
//! TPACKET_V2, a reserve and orig-dev; one with protocol 0): plain and
//! `--leave-running` rounds (the memberships read back from a second
//! dump), upstream CRIU 4.2 both ways (one membership: upstream's dump
//! refuses a repeated one), hostile images. Needs root, gcc, unshare,
//! setsid.

use std::path::{Path, PathBuf};

mod common;

use images_proto::pb;
use engine::kinds::Kind;
use engine::model::FileDesc;

use common::{criu_ok, private_criu, require, why_not_here, why_not_upstream, OwnNsProg};


/// The packet sockets of image set `img` as read back.
fn packets(img: &Path) -> Vec<engine::kinds::packet::Packet> {
    let files_id = std::fs::read_dir(img)
        .unwrap()
        .flatten()
        .find_map(|e| e.file_name().to_str()?.strip_prefix("fdinfo-")?.strip_suffix(".img")?.parse().ok())
        .expect("an fdinfo image");
    let (fds, _) = engine::images_io::read_fd_table(img, files_id).expect("reading the fd table");
    fds.into_iter()
        .filter_map(|f| match f.file {
            FileDesc::Kind(Kind::Packet(n)) => Some(n),
            _ => None,
        })
        .collect()
}

#[test]
fn packet_sockets_round_trip() {
    require!(why_not_here());
    let mut s = OwnNsProg::start("pk-round", "pktsk", &[]);
    let criu = private_criu(&s.dir);
    let first = std::cell::RefCell::new(Vec::new());
    s.two_rounds(
        &criu,
        |img| {
            let p = packets(img);
            assert_eq!(p.len(), 3, "{p:?}");
            assert_eq!((p[0].protocol, p[0].ifindex, p[0].aux_data, p[0].mclist.len()), (0x88b5, 1, true, 2), "{:?}", p[0]);
            assert_eq!((p[1].protocol, p[1].version, p[1].reserve, p[1].orig_dev), (0x0800, 1, 64, true), "{:?}", p[1]);
            *first.borrow_mut() = p;
        },
        |img2| {
            let again: Vec<_> = packets(img2).into_iter().map(|mut x| { x.ino = 0; x }).collect();
            let first: Vec<_> = first.borrow().iter().cloned().map(|mut x| { x.ino = 0; x }).collect();
            assert_eq!(again, first, "the packet sockets as restored, dumped again");
        },
    );
}

#[test]
fn packet_sockets_with_upstream() {
    require!(why_not_upstream());
    let mut s = OwnNsProg::start("pk-upstream", "pktsk", &["single"]);
    let criu = private_criu(&s.dir);
    s.upstream_both_ways(&criu, |_| {});
}

#[test]
fn hostile_packet_images_are_refused() {
    require!(why_not_here());
    let s = OwnNsProg::start("pk-hostile", "pktsk", &[]);
    let criu = private_criu(&s.dir);
    s.ticks_on(2, "before the dump");
    let img = s.images("img");
    criu_ok(&criu, &["dump", "-t", &s.pid.to_string()], &img, "dump.log");
    s.gone();
    let edit = |name: &str, f: &dyn Fn(&mut pb::PacketSockEntry)| common::edited_files(&img, name, |e| e.psk.iter_mut().for_each(f));
    let ring = pb::PacketRing { block_size: 4096, block_nr: 1, frame_size: 2048, frame_nr: 2, retire_tmo: 0, sizeof_priv: 0, features: 0 };
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("type", edit("bad-type", &|e| e.r#type = 7), "psk.type: 7 is neither SOCK_RAW nor SOCK_DGRAM"),
        ("protocol", edit("bad-proto", &|e| e.protocol = 0x10000), "psk.protocol: 0x10000 is past 16 bits"),
        ("ring", edit("bad-ring", &|e| e.rx_ring = Some(ring)), "psk.rx_ring: rings are not supported yet"),
        ("mclist addr", edit("bad-addr", &|e| e.mclist.iter_mut().for_each(|m| m.addr = vec![1; 40])), "bytes, more than a membership holds"),
    ];
    common::refused_restores(&criu, &s.bin, cases);
}
