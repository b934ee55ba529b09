//! The engine's whole restore-side reading of an image set,
//! `engine::images_io::read_images`: every image of a directory parsed,
//! cross-checked (VMAs, pagemaps against VMAs, shared memory pagemaps,
//! pages files against their pagemaps) and turned into the model, as
//! `criu restore` does before it forks anything. Must never panic; with
//! `-a` (fuzz/run.sh) an arithmetic overflow is a crash too.
//!
//! Input: a directory as a sequence of files, each
//! `[u8 name length][name][u32 LE length][contents]`. A file whose name
//! starts with `pages-` holds a u32 LE page count instead of contents and
//! is created sparse with that many pages (at most 65536), so that inputs
//! stay small while the pages files match their pagemaps.
//! `--tcp-established` is on, so that an established connection's
//! `tcp-stream-INO.img` (queues, window, options) is read and checked too.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        base.join(format!("criu-rs-fuzz-read-images-{}", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    engine::kinds::inet::set_tcp_established(true);
    let d = dir();
    let _ = std::fs::remove_dir_all(d);
    if std::fs::create_dir_all(d).is_err() {
        return;
    }
    let mut rest = data;
    while let Some((&nlen, r)) = rest.split_first() {
        let nlen = usize::from(nlen);
        if r.len() < nlen + 4 {
            break;
        }
        let (name, r) = r.split_at(nlen);
        let len = u32::from_le_bytes(r[..4].try_into().expect("4 bytes")) as usize;
        let r = &r[4..];
        let body = &r[..len.min(r.len())];
        rest = &r[body.len()..];
        // one plain file name, nothing that leaves the directory
        let Ok(name) = std::str::from_utf8(name) else { continue };
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            continue;
        }
        let path = d.join(name);
        if name.starts_with("pages-") {
            let pages = body.get(..4).map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes"))).min(65536);
            if let Ok(f) = std::fs::File::create(&path) {
                let _ = f.set_len(u64::from(pages) * 4096);
            }
        } else {
            let _ = std::fs::write(&path, body);
        }
    }
    let _ = engine::images_io::read_images(d);
});
