//! Helpers shared by the fuzz targets.
#![allow(dead_code)]

use serde_json::Value;

/// Path and values of the first difference between two JSON values.
pub fn first_diff(a: &Value, b: &Value, path: &str) -> Option<String> {
    let short = |v: &Value| {
        let s = v.to_string();
        if s.len() > 200 {
            format!("{}...", &s[..s.char_indices().nth(200).map_or(s.len(), |(i, _)| i)])
        } else {
            s
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                match y.get(k) {
                    None => return Some(format!("{path}.{k}: {} vs absent", short(va))),
                    Some(vb) => {
                        if let Some(d) = first_diff(va, vb, &format!("{path}.{k}")) {
                            return Some(d);
                        }
                    }
                }
            }
            y.iter().find(|(k, _)| !x.contains_key(*k)).map(|(k, vb)| format!("{path}.{k}: absent vs {}", short(vb)))
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("{path}: {} items vs {}", x.len(), y.len()));
            }
            x.iter().zip(y).enumerate().find_map(|(i, (va, vb))| first_diff(va, vb, &format!("{path}.{i}")))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: {} vs {}", short(a), short(b))),
    }
}
