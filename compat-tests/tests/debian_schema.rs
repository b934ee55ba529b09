//! Our proto definitions against Debian's crit (CRIU 3.17.1) descriptors:
//! every message and field Debian knows must exist in ours with the same
//! number, type, label, packing and `(criu)` options. Ours may have more
//! (fields added up to 4.2). Needs Debian's `criu` package (python crit);
//! without it the test skips with the reason, or fails under CI=true.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use images_proto::schema::{FieldType, Label, ALL_MESSAGES};

fn type_code(t: &FieldType) -> u64 {
    // google.protobuf.FieldDescriptor TYPE_* numbers.
    match t {
        FieldType::Double => 1,
        FieldType::Float => 2,
        FieldType::Int64 => 3,
        FieldType::Uint64 => 4,
        FieldType::Int32 => 5,
        FieldType::Fixed64 => 6,
        FieldType::Fixed32 => 7,
        FieldType::Bool => 8,
        FieldType::String => 9,
        FieldType::Message(_) => 11,
        FieldType::Bytes => 12,
        FieldType::Uint32 => 13,
        FieldType::Enum(_) => 14,
        FieldType::Sfixed32 => 15,
        FieldType::Sfixed64 => 16,
        FieldType::Sint32 => 17,
        FieldType::Sint64 => 18,
    }
}

/// Fields whose definition changed on purpose between 3.17 and 4.2.
const CHANGED_SINCE_317: &[(&str, &str)] = &[
    // 4.x renamed field 2 to compat_nr_pages and added nr_pages = 5.
    ("pagemap_entry", "nr_pages"),
];

#[test]
fn our_schema_covers_debian_crit() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/debian_descriptors.py");
    let out = match Command::new("/usr/bin/python3").arg(&script).output() {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            test_support::skip(format!(
                "Debian's pycriu not usable (apt-get install criu): {}",
                String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
            ));
            return;
        }
        Err(e) => {
            test_support::skip(format!("/usr/bin/python3: {e}"));
            return;
        }
    };
    let theirs: BTreeMap<String, BTreeMap<String, serde_json::Value>> = serde_json::from_slice(&out.stdout).unwrap();
    let ours: BTreeMap<&str, _> = ALL_MESSAGES.iter().map(|m| (m.name, *m)).collect();
    let mut problems = Vec::new();
    let mut compared = 0;
    for (msg, fields) in &theirs {
        // rpc.proto is in package rpc on our side.
        let ours_m = ours.get(msg.as_str()).or_else(|| ours.get(format!("rpc.{msg}").as_str()));
        let Some(m) = ours_m else {
            problems.push(format!("message {msg} missing"));
            continue;
        };
        for (fname, spec) in fields {
            if CHANGED_SINCE_317.contains(&(msg.as_str(), fname.as_str())) {
                continue;
            }
            let Some(f) = m.fields.iter().find(|f| f.name == fname) else {
                problems.push(format!("{msg}.{fname} missing"));
                continue;
            };
            let s = spec.as_array().unwrap();
            let label = match f.label {
                Label::Optional => 1,
                Label::Required => 2,
                Label::Repeated => 3,
            };
            let mine = (u64::from(f.number), type_code(&f.ty), label, f.packed);
            let deb = (s[0].as_u64().unwrap(), s[1].as_u64().unwrap(), s[2].as_u64().unwrap(), s[3].as_bool().unwrap());
            if mine != deb {
                problems.push(format!("{msg}.{fname}: ours (number,type,label,packed) {mine:?}, Debian {deb:?}"));
            }
            let o = s[4].as_object().unwrap();
            let flag = |k: &str| o.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
            let text = |k: &str| o.get(k).and_then(|v| v.as_str()).map(str::to_string);
            let theirs_opts = (flag("hex"), flag("ipadd"), text("flags"), flag("dev"), flag("odev"), text("dict"), text("conv"));
            let my_opts = (
                f.opts.hex,
                f.opts.ipadd,
                f.opts.flags.map(str::to_string),
                f.opts.dev,
                f.opts.odev,
                f.opts.dict.map(str::to_string),
                f.opts.conv.map(str::to_string),
            );
            if theirs_opts != my_opts {
                problems.push(format!("{msg}.{fname}: criu options ours {my_opts:?}, Debian {theirs_opts:?}"));
            }
            compared += 1;
        }
    }
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    eprintln!("compared {compared} fields of {} messages", theirs.len());
}
