//! JSON text exactly as python's `json.dump` writes it with crit's settings:
//! `ensure_ascii=True`, separators `", "`/`": "` without indent and
//! `","`/`": "` with it, floats as python's `repr`, `NaN`/`Infinity`.

use std::io::{self, Write};

use serde_json::Value;

/// Write `v` like `json.dump(v, f, indent=indent)`.
pub fn write<W: Write>(w: &mut W, v: &Value, indent: Option<usize>) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    emit(&mut buf, v, indent, 0);
    w.write_all(&buf)
}

/// `json.dumps(v, indent=indent)` as a byte vector.
pub fn to_vec(v: &Value, indent: Option<usize>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(4096);
    emit(&mut buf, v, indent, 0);
    buf
}

fn newline(out: &mut Vec<u8>, indent: usize, level: usize) {
    out.push(b'\n');
    out.resize(out.len() + indent * level, b' ');
}

fn emit(out: &mut Vec<u8>, v: &Value, indent: Option<usize>, level: usize) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(f) = n.as_f64() {
                out.extend_from_slice(float_repr(f).as_bytes());
            }
        }
        Value::String(s) => string(out, s),
        Value::Array(a) => {
            if a.is_empty() {
                out.extend_from_slice(b"[]");
                return;
            }
            out.push(b'[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                    if indent.is_none() {
                        out.push(b' ');
                    }
                }
                if let Some(n) = indent {
                    newline(out, n, level + 1);
                }
                emit(out, item, indent, level + 1);
            }
            if let Some(n) = indent {
                newline(out, n, level);
            }
            out.push(b']');
        }
        Value::Object(m) => {
            if m.is_empty() {
                out.extend_from_slice(b"{}");
                return;
            }
            out.push(b'{');
            for (i, (k, item)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                    if indent.is_none() {
                        out.push(b' ');
                    }
                }
                if let Some(n) = indent {
                    newline(out, n, level + 1);
                }
                string(out, k);
                out.extend_from_slice(b": ");
                emit(out, item, indent, level + 1);
            }
            if let Some(n) = indent {
                newline(out, n, level);
            }
            out.push(b'}');
        }
    }
}

/// A string with python's `ensure_ascii` escaping.
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Fast path: copy runs of printable ASCII that need no escape.
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            continue;
        }
        if b >= 0x80 {
            // Part of a multi-byte char: handled below by char iteration.
            continue;
        }
        flush_run(out, &s[start..i]);
        escape_ascii(out, b);
        start = i + 1;
    }
    flush_run(out, &s[start..]);
    out.push(b'"');
}

/// Copy a run that holds no ASCII needing escapes; non-ASCII chars become
/// `\uXXXX` (surrogate pairs above the BMP).
fn flush_run(out: &mut Vec<u8>, run: &str) {
    if run.is_ascii() {
        out.extend_from_slice(run.as_bytes());
        return;
    }
    for c in run.chars() {
        if c.is_ascii() {
            out.push(c as u8);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{:04x}", u);
            }
        }
    }
}

fn escape_ascii(out: &mut Vec<u8>, b: u8) {
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => {
            let _ = write!(out, "\\u{:04x}", b);
        }
    }
}

/// Python's `float.__repr__`, as json uses it (`NaN`, `Infinity`).
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // Shortest round-trip digits and decimal exponent from Rust's `{:e}`.
    let e = format!("{:e}", f);
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let neg = mant.starts_with('-');
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    let sign = if neg { "-" } else { "" };
    if (-4..16).contains(&exp) {
        // Fixed notation.
        let n = digits.len() as i32;
        let s = if exp >= 0 {
            if n > exp + 1 {
                format!(
                    "{}.{}",
                    &digits[..(exp + 1) as usize],
                    &digits[(exp + 1) as usize..]
                )
            } else {
                format!("{}{}.0", digits, "0".repeat((exp + 1 - n) as usize))
            }
        } else {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        };
        format!("{sign}{s}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let es = if exp < 0 { "-" } else { "+" };
        format!("{sign}{m}e{es}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_like_python() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (123456789012345.6, "123456789012345.6"),
            (0.0001, "0.0001"),
            (-2.5, "-2.5"),
            (1e100, "1e+100"),
        ] {
            assert_eq!(float_repr(f), s);
        }
    }

    #[test]
    fn compact_and_indented() {
        let v = json!({"a": [1, 2, {}], "b": "x\u{e9}\u{1f600}\"\n\u{7f}", "c": []});
        assert_eq!(
            String::from_utf8(to_vec(&v, None)).unwrap(),
            r#"{"a": [1, 2, {}], "b": "x\u00e9\ud83d\ude00\"\n\u007f", "c": []}"#
        );
        assert_eq!(
            String::from_utf8(to_vec(&json!({"a": [1], "b": {"c": null}}), Some(4))).unwrap(),
            "{\n    \"a\": [\n        1\n    ],\n    \"b\": {\n        \"c\": null\n    }\n}"
        );
    }
}
