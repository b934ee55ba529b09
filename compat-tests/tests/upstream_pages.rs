//! pagemap/pages of upstream's image sets: walking the runs accounts for
//! every byte of each pages file, and writing the runs back with our writer
//! gives byte-identical pagemap and pages images.

use std::path::Path;

use images_proto::pages::{PagemapReader, PagesFile, PagesWriter, PE_PRESENT};

#[test]
fn walk_and_rebuild_every_pagemap() {
    test_support::require!(test_support::why_not_fixture("upstream"));
    let sets = std::fs::read_dir(test_support::fixture("upstream")).unwrap();
    let out = std::env::temp_dir().join(format!("pages-rebuild-{}", std::process::id()));
    let mut checked = 0;
    for set in sets {
        let dir = set.unwrap().path().join("images");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("pagemap-"))
            .collect();
        names.sort();
        for name in names {
            let rd = PagemapReader::open(&dir, &name).unwrap();
            let pages_id = rd.pages_id();
            let runs = rd.runs().unwrap();
            let pf = PagesFile::open(&dir, pages_id).unwrap();
            let present: u64 = runs.iter().filter(|r| r.present()).map(|r| r.len()).sum();
            assert_eq!(present, pf.size(), "{}/{name}: runs account for the whole pages file", dir.display());
            // Rebuild both files from the runs and compare.
            let id = name.trim_start_matches("pagemap-").trim_end_matches(".img").to_string();
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&out).unwrap();
            let mut w = PagesWriter::create(&out, &id, pages_id).unwrap();
            for r in &runs {
                if r.present() {
                    pf.check(r).unwrap();
                    let mut buf = vec![0u8; r.len() as usize];
                    pf.read_at(r.offset, &mut buf).unwrap();
                    w.add(r.vaddr, &buf, r.flags & !PE_PRESENT).unwrap();
                } else {
                    w.add_header_only(r.vaddr, r.nr_pages, r.flags).unwrap();
                }
            }
            w.finish().unwrap();
            let same = |a: &Path, b: &Path| std::fs::read(a).unwrap() == std::fs::read(b).unwrap();
            assert!(same(&dir.join(&name), &out.join(&name)), "{}/{name} rebuilt differs", dir.display());
            let pn = format!("pages-{pages_id}.img");
            assert!(same(&dir.join(&pn), &out.join(&pn)), "{}/{pn} rebuilt differs", dir.display());
            checked += 1;
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    assert!(checked >= 7, "only {checked} pagemaps checked");
    eprintln!("checked {checked} pagemaps");
}
