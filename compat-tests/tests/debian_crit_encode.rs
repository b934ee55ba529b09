//! What our encoder writes, Debian's crit (CRIU 3.17.1, python) reads back
//! to the same JSON. For every image kind a synthetic image with every field
//! set (and consistent extra payloads) is encoded by us, decoded by Debian's
//! pycriu and by us; Debian's JSON must equal ours except for fields Debian's
//! older schema does not have. Needs Debian's `criu` package; without it the
//! test skips with the reason, or fails under CI=true.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use images_proto::image::{decode_image, encode_image};
use images_proto::magic::{self, Layout, Payload};
use images_proto::schema::{self, FieldType, Label, MsgDesc};
use serde_json::{json, Map, Value};

fn sample(f: &schema::FieldDesc, depth: usize) -> Option<Value> {
    Some(match f.ty {
        FieldType::Message(m) => {
            if depth > 4 {
                return None;
            }
            Value::Object(sample_msg(m, depth + 1))
        }
        FieldType::Bool => json!(true),
        FieldType::String => json!("str"),
        FieldType::Bytes => {
            if f.opts.conv.is_some() {
                json!("=00sock")
            } else {
                json!("AAEC\n")
            }
        }
        FieldType::Enum(e) => json!(e.values.last().map(|v| v.0).unwrap_or_default()),
        FieldType::Double | FieldType::Float => json!(1.5),
        FieldType::Int32 | FieldType::Int64 | FieldType::Sint32 | FieldType::Sint64 | FieldType::Sfixed32 | FieldType::Sfixed64 => {
            json!(-7)
        }
        _ => json!(7),
    })
}

fn sample_msg(m: &'static MsgDesc, depth: usize) -> Map<String, Value> {
    let mut o = Map::new();
    for f in m.fields {
        let Some(v) = sample(f, depth) else {
            if f.label == Label::Required {
                // Keep required nested messages minimal but present.
                if let FieldType::Message(mm) = f.ty {
                    o.insert(f.name.into(), Value::Object(required_only(mm)));
                }
            }
            continue;
        };
        let v = if f.label == Label::Repeated {
            if f.opts.ipadd {
                json!([16777343u32]) // 127.0.0.1 in network order, one word
            } else {
                json!([v.clone(), v])
            }
        } else {
            v
        };
        o.insert(f.name.into(), v);
    }
    o
}

fn required_only(m: &'static MsgDesc) -> Map<String, Value> {
    let mut o = Map::new();
    for f in m.fields.iter().filter(|f| f.label == Label::Required) {
        let v = match f.ty {
            FieldType::Message(mm) => Value::Object(required_only(mm)),
            _ => sample(f, 99).unwrap_or(json!(0)),
        };
        o.insert(f.name.into(), v);
    }
    o
}

fn msg(name: &str) -> &'static MsgDesc {
    schema::message_by_name(name).unwrap_or_else(|| panic!("no message {name}"))
}

/// A synthetic image of `kind` as crit JSON.
fn synthetic(kind: &magic::ImageKind) -> Value {
    let mut entries = Vec::new();
    match kind.layout {
        Layout::Pagemap => {
            entries.push(Value::Object(sample_msg(msg("pagemap_head"), 0)));
            let mut e = sample_msg(msg("pagemap_entry"), 0);
            e.insert("vaddr".into(), json!(4096));
            entries.push(Value::Object(e));
        }
        Layout::GhostFile => {
            let mut g = sample_msg(msg("ghost_file_entry"), 0);
            g.insert("chunks".into(), json!(false));
            g.insert("extra".into(), json!("aGVsbG8=\n"));
            entries.push(Value::Object(g));
        }
        Layout::Entries => {
            let mut e = sample_msg(msg(kind.message), 0);
            let set = |e: &mut Map<String, Value>, k: &str, v: Value| {
                e.insert(k.into(), v);
            };
            match kind.payload {
                Payload::None => {}
                Payload::PipeData => {
                    set(&mut e, "bytes", json!(3));
                    set(&mut e, "extra", json!("YWJj\n"));
                }
                Payload::SkQueue => {
                    set(&mut e, "length", json!(3));
                    set(&mut e, "extra", json!("YWJj\n"));
                }
                Payload::TcpStream => {
                    set(&mut e, "inq_len", json!(2));
                    set(&mut e, "outq_len", json!(1));
                    set(&mut e, "extra", json!({"inq": "YWI=\n", "outq": "Yw==\n"}));
                }
                Payload::BpfmapData => {
                    set(&mut e, "keys_bytes", json!(1));
                    set(&mut e, "values_bytes", json!(2));
                    set(&mut e, "extra", json!("YWJj\n"));
                }
                Payload::IpcSem => {
                    set(&mut e, "nsems", json!(2));
                    set(&mut e, "extra", json!([1, 2]));
                }
                Payload::IpcShm => {
                    set(&mut e, "size", json!(5));
                    e.remove("in_pagemaps");
                    set(&mut e, "extra", json!("aGVsbG8=\n"));
                }
                Payload::IpcMsg => {
                    set(&mut e, "qnum", json!(1));
                    set(&mut e, "extra", json!([{"mtype": 1, "msize": 3}, "YWJj\n"]));
                }
            }
            entries.push(Value::Object(e));
        }
    }
    json!({"magic": kind.name, "entries": entries})
}

/// Debian's JSON must equal ours, except keys Debian's schema lacks.
fn compare(ours: &Value, theirs: &Value, path: &str, problems: &mut Vec<String>) {
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, bv) in b {
                match a.get(k) {
                    Some(av) => compare(av, bv, &format!("{path}.{k}"), problems),
                    None => problems.push(format!("{path}.{k}: only in Debian's decode")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                compare(x, y, &format!("{path}[{i}]"), problems);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        _ if ours == theirs => {}
        _ => problems.push(format!("{path}: ours {ours}, Debian {theirs}")),
    }
}

#[test]
fn debian_crit_reads_what_we_encode() {
    if !Path::new("/usr/lib/python3/dist-packages/pycriu").is_dir() {
        test_support::skip("Debian's criu package (pycriu) is not installed (apt-get install criu)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("deb-encode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for kind in magic::ALL {
        // Upstream's crit (3.17 and 4.2 alike) has no handler for these two
        // kinds; ours decodes them.
        if ["SIGNAL", "BINFMT_MISC"].contains(&kind.name) {
            continue;
        }
        let img = synthetic(kind);
        let p = dir.join(format!("{}.img", kind.name));
        let bytes = encode_image(&img, &p).unwrap_or_else(|e| panic!("encode {}: {e}", kind.name));
        std::fs::write(&p, &bytes).unwrap();
        files.push((p, bytes));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/debian_decode_all.py");
    let out = Command::new("/usr/bin/python3").arg(&script).args(files.iter().map(|f| &f.0)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut problems = Vec::new();
    for (p, bytes) in &files {
        let t = &theirs[&*p.to_string_lossy()];
        if let Some(e) = t.get("error") {
            problems.push(format!("{}: Debian crit failed: {e}", p.display()));
            continue;
        }
        let ours = decode_image(bytes, p, false).unwrap();
        compare(&ours, t, &p.file_name().unwrap().to_string_lossy(), &mut problems);
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}
