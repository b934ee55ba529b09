//! Differential tests against upstream CRIU 4.2's image sets in
//! `../shared/fixtures/upstream`: our decode equals crit 4.2's JSON, and
//! decode -> encode gives back the original bytes.

use std::path::PathBuf;

use images_proto::image::{decode_image, encode_image};

/// Every (image, crit-json) pair of the fixture sets; `None` (after a
/// skip, or a failure under CI=true) without the shared fixtures.
fn pairs() -> Option<Vec<(PathBuf, PathBuf)>> {
    test_support::require!(test_support::why_not_fixture("upstream"));
    let root = test_support::fixture("upstream");
    let mut out = Vec::new();
    let mut sets: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
    sets.sort();
    for set in sets {
        let mut imgs: Vec<_> = std::fs::read_dir(set.join("images")).unwrap().map(|e| e.unwrap().path()).collect();
        imgs.sort();
        for img in imgs {
            let name = img.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".img") || name.starts_with("pages-") {
                continue;
            }
            let json = set.join("json").join(name.replace(".img", ".json"));
            out.push((img, json));
        }
    }
    assert!(out.len() > 100, "only {} fixture images", out.len());
    Some(out)
}

#[test]
fn decode_matches_crit_json() {
    let mut failures = Vec::new();
    let Some(pairs) = pairs() else { return };
    for (img, json) in &pairs {
        let bytes = std::fs::read(img).unwrap();
        let ours = match decode_image(&bytes, img, true) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{}: {e}", img.display()));
                continue;
            }
        };
        let theirs: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
        if ours != theirs {
            failures.push(format!("{}: JSON differs from {}", img.display(), json.display()));
        }
    }
    assert!(failures.is_empty(), "{} of {} images differ:\n{}", failures.len(), pairs.len(), failures.join("\n"));
}

#[test]
fn decode_encode_is_byte_identical() {
    let mut failures = Vec::new();
    let Some(pairs) = pairs() else { return };
    for (img, _) in pairs {
        let bytes = std::fs::read(&img).unwrap();
        for pretty in [false, true] {
            let r = decode_image(&bytes, &img, pretty).and_then(|v| encode_image(&v, &img));
            match r {
                Ok(b) if b == bytes => {}
                Ok(_) => failures.push(format!("{} (pretty={pretty}): bytes differ", img.display())),
                Err(e) => failures.push(format!("{} (pretty={pretty}): {e}", img.display())),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
