//! `--nopl`: replace entry payloads by `... <SIZE>` as upstream crit does.

use images_proto::magic::{ImageKind, Layout, Payload};
use images_proto::schema;
use serde_json::Value;

/// Upstream's `human_readable`: `512B`, `1.5KB`, `2MB`.
pub fn human_readable(num: u64) -> String {
    let mut n = num as f64;
    for unit in ["", "K", "M", "G", "T", "P", "E", "Z"] {
        if n < 1024.0 {
            return if n.trunc() == n {
                format!("{}{unit}B", n as u64)
            } else {
                format!("{n:.1}{unit}B")
            };
        }
        n /= 1024.0;
    }
    format!("{n:.1}YB")
}

fn field(raw: &Value, key: &str) -> u64 {
    raw.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Size upstream reports for the payload of one entry, from the entry as
/// decoded without `--pretty` (`raw`) and its decoded payload (`extra`).
fn payload_size(payload: Payload, raw: &Value, extra: Option<&Value>) -> u64 {
    match payload {
        Payload::None => 0,
        Payload::PipeData => field(raw, "bytes"),
        Payload::SkQueue => field(raw, "length"),
        Payload::TcpStream => field(raw, "inq_len").saturating_add(field(raw, "outq_len")),
        // Upstream reads a `bytes` field bpfmap_data_entry does not have (and
        // fails); the payload is keys_bytes + values_bytes long.
        Payload::BpfmapData => field(raw, "keys_bytes").saturating_add(field(raw, "values_bytes")),
        Payload::IpcSem => field(raw, "nsems").saturating_mul(2),
        Payload::IpcShm => field(raw, "size"),
        Payload::IpcMsg => {
            // Sum of each message's protobuf length and its msize.
            let desc = schema::message_by_name("ipc_msg");
            let mut total = 0u64;
            if let (Some(Value::Array(list)), Some(desc)) = (extra, desc) {
                for m in list.iter().step_by(2) {
                    if let Some(obj) = m.as_object() {
                        let len = images_proto::json::encode(obj, desc)
                            .map(|b| b.len() as u64)
                            .unwrap_or(0);
                        total = total.saturating_add(len).saturating_add(field(m, "msize"));
                    }
                }
            }
            total
        }
    }
}

/// Rewrite the `extra` of every entry of `img` (decoded with the caller's
/// prettiness) using `raw` (the same image decoded without `--pretty`).
pub fn strip_payloads(kind: &ImageKind, img: &mut Value, raw: &Value) {
    let Some(entries) = img.get_mut("entries").and_then(Value::as_array_mut) else {
        return;
    };
    let raw_entries = raw.get("entries").and_then(Value::as_array);
    match kind.layout {
        Layout::Pagemap => {}
        // Upstream skips ghost file contents without a note.
        Layout::GhostFile => {
            for e in entries.iter_mut() {
                if let Some(o) = e.as_object_mut() {
                    o.remove("extra");
                }
            }
        }
        Layout::Entries => {
            if kind.payload == Payload::None {
                return;
            }
            for (i, e) in entries.iter_mut().enumerate() {
                let Some(r) = raw_entries.and_then(|r| r.get(i)) else {
                    continue;
                };
                let size = payload_size(kind.payload, r, r.get("extra"));
                if let Some(o) = e.as_object_mut() {
                    o.insert(
                        "extra".into(),
                        Value::String(format!("... <{}>", human_readable(size))),
                    );
                }
            }
            // Upstream's tcp-stream skip seeks to the end of the image.
            if kind.payload == Payload::TcpStream {
                entries.truncate(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_python() {
        assert_eq!(human_readable(0), "0B");
        assert_eq!(human_readable(1023), "1023B");
        assert_eq!(human_readable(1024), "1KB");
        assert_eq!(human_readable(1536), "1.5KB");
        assert_eq!(human_readable(4 << 20), "4MB");
        assert_eq!(human_readable(1100), "1.1KB");
    }
}
