//! Property: whatever `decode_image` accepts (plain JSON), `encode_image`
//! accepts too, and decoding the result gives the same JSON again.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let p = Path::new("fuzz.img");
    let Ok(j) = images_proto::image::decode_image(data, p, false) else { return };
    let bytes = match images_proto::image::encode_image(&j, p) {
        Ok(b) => b,
        Err(e) => panic!("decoded image does not encode back: {e}"),
    };
    match images_proto::image::decode_image(&bytes, p, false) {
        Ok(j2) => {
            if let Some(d) = common::first_diff(&j, &j2, "") {
                panic!("decode(encode(decode(x))) != decode(x) at {d}");
            }
        }
        Err(e) => panic!("re-encoded image does not decode: {e}"),
    }
});
