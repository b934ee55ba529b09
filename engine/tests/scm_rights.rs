//! Regular files in flight (passed with SCM_RIGHTS in queued messages of
//! unix sockets, not received yet) through dump and restore, with
//! tests/progs/scmflight.c, which receives each tick what the last tick
//! passed and checks every fd (file, access mode, O_APPEND, offset):
//! plain and `--leave-running` rounds, upstream CRIU 4.2 both ways, the
//! sk-queues scm entries upstream's shape, hostile images (rights naming
//! no file, or a file that is not a regular one) refused. Needs root,
//! gcc, unshare, setsid.

use std::path::{Path, PathBuf};

mod common;

use images_proto::{image, magic, pb};

use common::{copy_images, criu_ok, private_criu, require, why_not_here, why_not_upstream, OwnNsProg};


/// The messages of `img` that carry files: (rights count) per entry.
fn scm_counts(img: &Path) -> Vec<usize> {
    let mut r = image::ImageReader::open(img, "sk-queues.img", &magic::SK_QUEUES).unwrap();
    let mut out = Vec::new();
    while let Some(e) = r.next_entry::<pb::SkPacketEntry>().unwrap() {
        r.read_payload(u64::from(e.length)).unwrap();
        out.push(e.scm.iter().map(|s| s.rights.len()).sum());
    }
    out.sort();
    out
}

/// Plain and `--leave-running` rounds: every file in flight arrives after
/// restore as it was passed (the images hold them: two messages with
/// files, one without).
#[test]
fn files_in_flight_round_trip() {
    require!(why_not_here());
    let mut s = OwnNsProg::start("scm-round", "scmflight", &[]);
    let criu = private_criu(&s.dir);
    s.two_rounds(&criu, |img| assert_eq!(scm_counts(img), vec![0, 1, 2], "messages with files in flight in the image"), |_| {});
}

/// Our images restored by upstream CRIU 4.2, and upstream's dump restored
/// by ours: the files in flight arrive either way.
#[test]
fn files_in_flight_with_upstream() {
    require!(why_not_upstream());
    let mut s = OwnNsProg::start("scm-upstream", "scmflight", &[]);
    let criu = private_criu(&s.dir);
    s.upstream_both_ways(&criu, |img| assert_eq!(scm_counts(img), vec![0, 1, 2], "upstream's messages with files in flight"));
}

/// Hostile sk-queues: rights naming a file files.img lacks, rights naming
/// a file that is not a regular one, ancillary data of another type.
#[test]
fn hostile_files_in_flight_are_refused() {
    require!(why_not_here());
    let s = OwnNsProg::start("scm-hostile", "scmflight", &[]);
    let criu = private_criu(&s.dir);
    s.ticks_on(2, "before the dump");
    let img = s.images("img");
    criu_ok(&criu, &["dump", "-t", &s.pid.to_string()], &img, "dump.log");
    s.gone();
    let files: Vec<pb::FileEntry> = image::read_all(&img, "files.img", &magic::FILES).unwrap();
    let sock_id = files.iter().find(|f| f.usk.is_some()).unwrap().id;
    let edit = |name: &str, f: &dyn Fn(&mut pb::SkPacketEntry)| -> PathBuf {
        let out = copy_images(&img, name);
        let mut r = image::ImageReader::open(&img, "sk-queues.img", &magic::SK_QUEUES).unwrap();
        let mut w = image::ImageWriter::create(&out, "sk-queues.img", &magic::SK_QUEUES).unwrap();
        while let Some(mut e) = r.next_entry::<pb::SkPacketEntry>().unwrap() {
            let data = r.read_payload(u64::from(e.length)).unwrap();
            if !e.scm.is_empty() {
                f(&mut e);
            }
            w.write_entry(&e).unwrap();
            w.write_payload(&data).unwrap();
        }
        w.finish().unwrap();
        out
    };
    let cases: Vec<(&str, PathBuf, String)> = vec![
        ("nowhere", edit("bad-nowhere", &|e| e.scm[0].rights[0] = 9999), "scm[0].rights: file 9999 is not in files.img".to_string()),
        ("socket", edit("bad-socket", &|e| e.scm[0].rights[0] = sock_id), format!("file {sock_id} in flight is a UNIXSK")),
        ("type", edit("bad-type", &|e| e.scm[0].r#type = 2), "ancillary data of type 2".to_string()),
    ];
    common::refused_restores(&criu, &s.bin, cases);
}
