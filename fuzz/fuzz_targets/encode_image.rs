//! `images_proto::image::encode_image` over arbitrary JSON (bytes that do not
//! parse as JSON are skipped). Must never panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let _ = images_proto::image::encode_image(&v, Path::new("fuzz.json"));
});
