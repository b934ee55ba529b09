//! Hostile input: truncated, bit-flipped, oversized and random images must
//! give an error that names the file (and entry where there is one), never a
//! panic. A deterministic mutation pass over the upstream fixtures; the
//! coverage-guided fuzzers in fuzz/ go further.

use std::path::{Path, PathBuf};

use images_proto::image::{decode_image, encode_image, ImageReader};
use images_proto::{magic, ImageError};

/// The upstream fixtures' protobuf images; `None` (after a skip, or a
/// failure under CI=true) without the shared fixtures.
fn fixture_images() -> Option<Vec<PathBuf>> {
    test_support::require!(test_support::why_not_fixture("upstream"));
    let sets = std::fs::read_dir(test_support::fixture("upstream")).unwrap();
    let mut v = Vec::new();
    for set in sets {
        let dir = set.unwrap().path().join("images");
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            if n.ends_with(".img") && !n.starts_with("pages-") {
                v.push(p);
            }
        }
    }
    v.sort();
    assert!(v.len() > 100, "only {} fixture images", v.len());
    Some(v)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn every_truncation_is_an_error_naming_the_file() {
    let Some(imgs) = fixture_images() else { return };
    for img in imgs {
        let bytes = std::fs::read(&img).unwrap();
        // Ghost files carry their contents to the end: any cut is valid there.
        if img.to_string_lossy().contains("ghost-file") {
            continue;
        }
        for cut in 0..bytes.len() {
            match decode_image(&bytes[..cut], &img, true) {
                Ok(_) => {
                    // A cut exactly between entries is a valid shorter image.
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains(&*img.to_string_lossy()), "{msg}");
                }
            }
        }
    }
}

#[test]
fn mutated_images_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let Some(imgs) = fixture_images() else { return };
    for img in imgs {
        let orig = std::fs::read(&img).unwrap();
        for _ in 0..300 {
            let mut b = orig.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len());
                match rng.below(3) {
                    0 => b[i] ^= 1 << rng.below(8),
                    1 => b[i] = rng.next() as u8,
                    _ => b[i] = 0xff,
                }
            }
            for pretty in [false, true] {
                if let Ok(v) = decode_image(&b, &img, pretty) {
                    // Whatever decodes must encode again without panicking.
                    let _ = encode_image(&v, &img);
                }
            }
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(42);
    let p = Path::new("random.img");
    for _ in 0..20_000 {
        let n = rng.below(64);
        let mut b: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        // Half the time start with a valid header so the entry parser runs.
        if rng.below(2) == 0 && b.len() >= 8 {
            let k = &magic::ALL[rng.below(magic::ALL.len())];
            b[..4].copy_from_slice(&magic::IMG_COMMON.to_le_bytes());
            b[4..8].copy_from_slice(&k.magic.to_le_bytes());
        }
        let _ = decode_image(&b, p, true);
    }
}

#[test]
fn oversized_entry_is_refused_without_allocating() {
    let dir = std::env::temp_dir().join(format!("hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut b = Vec::new();
    b.extend_from_slice(&magic::IMG_COMMON.to_le_bytes());
    b.extend_from_slice(&magic::CORE.magic.to_le_bytes());
    b.extend_from_slice(&0xffff_fff0u32.to_le_bytes());
    b.extend_from_slice(&[0u8; 16]);
    std::fs::write(dir.join("core-1.img"), &b).unwrap();
    let mut r = ImageReader::open(&dir, "core-1.img", &magic::CORE).unwrap();
    let e = r.next_raw().unwrap_err();
    assert!(matches!(e, ImageError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("core-1.img: entry 0"), "{e}");
    // Whole-image decode: the length is checked against what is left.
    let e = decode_image(&b, &dir.join("core-1.img"), true).unwrap_err();
    assert!(e.to_string().contains("entry 0"), "{e}");
    // Wrong magic for the expected kind.
    let e = ImageReader::open(&dir, "core-1.img", &magic::MM).err().unwrap();
    assert!(e.to_string().contains("expected MM"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_field_is_named() {
    // A core image whose first entry lacks the required `mtype`.
    let mut b = Vec::new();
    b.extend_from_slice(&magic::IMG_COMMON.to_le_bytes());
    b.extend_from_slice(&magic::CORE.magic.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    let e = decode_image(&b, Path::new("core-9.img"), true).unwrap_err().to_string();
    assert!(e.contains("core-9.img: entry 0, field mtype"), "{e}");
}

#[test]
fn fuzz_regressions_stay_fixed() {
    // Reproducers found by fuzz/ (see fuzz/regressions): decoding must not
    // panic, and what decodes must re-encode and decode to the same JSON.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let rd = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut n = 0;
    for e in rd {
        n += 1;
        let p = e.unwrap().path();
        let b = std::fs::read(&p).unwrap();
        if let Ok(v) = decode_image(&b, &p, false) {
            let again = encode_image(&v, &p).unwrap();
            assert_eq!(decode_image(&again, &p, false).unwrap(), v, "{}", p.display());
        }
    }
    assert!(n > 0, "no fuzz regressions in {}", dir.display());
}

#[test]
fn empty_packed_field_is_absent() {
    // An empty packed run (valid wire form even for fields the schema does
    // not pack) decodes to no field at all (as protobuf's readers
    // do), so decode -> encode -> decode is stable.
    let (desc, f) = images_proto::schema::ALL_MESSAGES
        .iter()
        .find_map(|m| m.fields.iter().find(|f| f.ty.is_packable() && f.label == images_proto::schema::Label::Repeated).map(|f| (*m, f)))
        .expect("the schema has repeated scalar fields");
    let mut body = Vec::new();
    images_proto::wire::put_len(&mut body, f.number, &[]);
    // Required fields may be missing; decode the bare field through a
    // message that only checks what is present.
    match images_proto::json::decode(&body, desc, false) {
        Ok(m) => assert!(!m.contains_key(f.name), "{}.{} present", desc.name, f.name),
        Err(e) => assert!(e.what.contains("required"), "{}: {e}", desc.name),
    }
}
