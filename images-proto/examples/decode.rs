//! Minimal decoder for debugging: `cargo run --example decode FILE`.
fn main() {
    let path = std::env::args().nth(1).expect("usage: decode FILE");
    let buf = std::fs::read(&path).expect("read");
    match images_proto::image::decode_image(&buf, path.as_ref(), true) {
        Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    }
}
