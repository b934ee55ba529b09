//! The typed streaming readers over a file: `ImageReader` (entries decoded as
//! the prost types the engine uses, payload reads) and `PagemapReader` +
//! `PagesFile::check`. The first byte picks the kind and mode; the rest is
//! the file. Must never panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use images_proto::image::ImageReader;
use images_proto::magic;
use images_proto::pb;
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("images-proto-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    })
}

fn typed<M: prost::Message + Default>(r: &mut ImageReader, payload: Option<u64>) {
    for _ in 0..10_000 {
        match r.next_entry::<M>() {
            Ok(Some(_)) => {
                if let Some(n) = payload {
                    let _ = r.read_payload(n);
                }
            }
            _ => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, file)) = data.split_first() else { return };
    let d = dir();
    let kinds = magic::ALL;
    let kind = &kinds[usize::from(sel) % kinds.len()];
    let name = "fuzz.img";
    if std::fs::write(d.join(name), file).is_err() {
        return;
    }
    if sel >= 0xf0 {
        // Pagemap walk, checking each run against a pages file of 0..15 pages.
        let pages_len = u64::from(sel & 0x0f) * images_proto::pages::PAGE_SIZE;
        let _ = std::fs::write(d.join("pages-1.img"), vec![0u8; pages_len as usize]);
        if let Ok(mut pm) = images_proto::pages::PagemapReader::open(d, name) {
            let pages = images_proto::pages::PagesFile::open(d, pm.pages_id()).ok();
            for _ in 0..10_000 {
                match pm.next_run() {
                    Ok(Some(run)) => {
                        if let Some(p) = &pages {
                            let _ = p.check(&run);
                        }
                    }
                    _ => break,
                }
            }
        }
        return;
    }
    let Ok(mut r) = ImageReader::open(d, name, kind) else { return };
    match kind.name {
        "CORE" => typed::<pb::CoreEntry>(&mut r, None),
        "PSTREE" => typed::<pb::PstreeEntry>(&mut r, None),
        "MM" => typed::<pb::MmEntry>(&mut r, None),
        "FDINFO" => typed::<pb::FdinfoEntry>(&mut r, None),
        "FILES" => typed::<pb::FileEntry>(&mut r, None),
        "INVENTORY" => typed::<pb::InventoryEntry>(&mut r, None),
        "PIPES_DATA" | "FIFO_DATA" => typed::<pb::PipeDataEntry>(&mut r, Some(u64::from(sel))),
        "GHOST_FILE" => {
            typed::<pb::GhostFileEntry>(&mut r, None);
            let _ = r.read_rest();
        }
        _ => {
            // Raw entries, then a payload of a fuzz-chosen size.
            for _ in 0..10_000 {
                match r.next_raw() {
                    Ok(Some(b)) => {
                        if let Some(desc) = images_proto::schema::message_by_name(kind.message) {
                            let _ = images_proto::json::decode(&b, desc, sel & 1 == 1);
                        }
                    }
                    _ => break,
                }
            }
            let _ = r.read_payload(u64::from(sel) << 20);
        }
    }
});
