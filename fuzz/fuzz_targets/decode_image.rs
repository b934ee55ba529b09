//! `images_proto::image::decode_image` over arbitrary bytes; the first byte
//! picks pretty (odd) or plain (even) rendering. Must never panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, img)) = data.split_first() else { return };
    let _ = images_proto::image::decode_image(img, Path::new("fuzz.img"), sel & 1 == 1);
});
