//! `images_proto::json::decode` (and `encode` of what it returns) over every
//! message descriptor: the first byte picks the descriptor, the second bit of
//! it pretty rendering; the rest is the protobuf body. Must never panic.
#![no_main]

use std::sync::OnceLock;

use images_proto::schema::{self, FieldType, MsgDesc};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[path = "common.rs"]
mod common;

/// Every descriptor reachable from the image kinds' entry messages.
fn descriptors() -> &'static [&'static MsgDesc] {
    static ALL: OnceLock<Vec<&'static MsgDesc>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut todo: Vec<&'static MsgDesc> = images_proto::magic::ALL
            .iter()
            .map(|k| k.message)
            .chain(["pagemap_head", "ghost_chunk_entry", "ipc_msg", "CRIU_Opts"])
            .filter_map(schema::message_by_name)
            .collect();
        let mut seen: Vec<&'static MsgDesc> = Vec::new();
        while let Some(m) = todo.pop() {
            if seen.iter().any(|s| std::ptr::eq(*s, m)) {
                continue;
            }
            seen.push(m);
            for f in m.fields {
                if let FieldType::Message(sub) = f.ty {
                    todo.push(sub);
                }
            }
        }
        seen.sort_by_key(|m| m.name);
        seen
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    let all = descriptors();
    let desc = all[usize::from(sel >> 1) % all.len()];
    let pretty = sel & 1 == 1;
    if let Ok(obj) = images_proto::json::decode(body, desc, pretty) {
        // What decodes must encode (plain form round-trips exactly in JSON).
        let enc = images_proto::json::encode(&obj, desc);
        if !pretty {
            let bytes = enc.unwrap_or_else(|e| panic!("{}: decoded JSON does not encode: {e}", desc.name));
            let again = images_proto::json::decode(&bytes, desc, false)
                .unwrap_or_else(|e| panic!("{}: re-encoded body does not decode: {e}", desc.name));
            let (a, b) = (Value::Object(obj), Value::Object(again));
            if let Some(d) = common::first_diff(&a, &b, desc.name) {
                panic!("decode(encode(decode(x))) != decode(x) at {d}");
            }
        }
    }
});
