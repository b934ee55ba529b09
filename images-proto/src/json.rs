//! Schema-driven conversion of one protobuf message to crit's JSON and back.
//!
//! Rendering follows upstream crit: fields in number order, only fields that
//! are present, enums by name, bytes as MIME base64 (or quoted-printable for
//! `conv = "unix_name"`), and with `pretty` the `(criu)` options: hex
//! (inherited by nested messages), dev, flags, dict, ipadd.
//! Encoding writes fields in number order, repeated fields packed when the
//! schema says so: the same bytes protobuf-c writes.

use serde_json::{Map, Number, Value};

use crate::render;
use crate::schema::{FieldDesc, FieldType, Label, MsgDesc};
use crate::wire::{self, Raw, Reader, WT_I32, WT_I64, WT_LEN, WT_VARINT};

/// Nesting limit against hostile input (CRIU messages nest a few levels).
const MAX_DEPTH: usize = 32;

/// A conversion error with the dotted path of the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub what: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.what)
        } else {
            write!(f, "field {}: {}", self.field, self.what)
        }
    }
}

fn err(path: &[&str], what: impl Into<String>) -> FieldError {
    FieldError { field: path.join("."), what: what.into() }
}

/// Decode `buf` as `desc` into crit's JSON object.
pub fn decode(buf: &[u8], desc: &'static MsgDesc, pretty: bool) -> Result<Map<String, Value>, FieldError> {
    let mut path = Vec::new();
    decode_msg(buf, desc, pretty, false, &mut path, 0)
}

fn decode_msg(
    buf: &[u8],
    desc: &'static MsgDesc,
    pretty: bool,
    hex: bool,
    path: &mut Vec<&'static str>,
    depth: usize,
) -> Result<Map<String, Value>, FieldError> {
    if depth > MAX_DEPTH {
        return Err(err(path, "messages nested too deep"));
    }
    // Gather raw occurrences per field first (repeated fields may be split,
    // a singular field's last occurrence wins).
    let mut slots: Vec<Vec<Raw<'_>>> = vec![Vec::new(); desc.fields.len()];
    let mut rd = Reader::new(buf);
    loop {
        let (num, raw) = match rd.field() {
            Ok(Some(x)) => x,
            Ok(None) => break,
            Err(e) => return Err(err(path, format!("{} ({})", e, desc.name))),
        };
        let Some((idx, f)) = desc.field_by_number(num) else {
            // Unknown field: skipped, as protobuf readers do.
            continue;
        };
        if f.label != Label::Repeated {
            slots[idx].clear();
        }
        slots[idx].push(raw);
    }

    let mut out = Map::new();
    for (f, raws) in desc.fields.iter().zip(slots.iter()) {
        path.push(f.name);
        if raws.is_empty() {
            if f.label == Label::Required {
                return Err(err(path, format!("required field missing in {}", desc.name)));
            }
            path.pop();
            continue;
        }
        let fhex = hex || f.opts.hex;
        let v = if f.label == Label::Repeated {
            let mut items = Vec::new();
            for raw in raws {
                expand_packed(f, *raw, path, &mut items)?;
            }
            if items.is_empty() {
                // An empty packed run: the field has no elements and, as in
                // protobuf's own readers, is not present.
                path.pop();
                continue;
            }
            if pretty && f.opts.ipadd {
                let words: Vec<u32> = items
                    .iter()
                    .map(|r| match r {
                        Raw::Varint(v) => *v as u32,
                        Raw::I32(v) => *v,
                        Raw::I64(v) => *v as u32,
                        Raw::Len(_) => 0,
                    })
                    .collect();
                match render::ip_to_string(&words) {
                    Some(s) => Value::Array(vec![Value::String(s)]),
                    None => return Err(err(path, format!("{} words are no IP address", words.len()))),
                }
            } else {
                let mut arr = Vec::with_capacity(items.len());
                for raw in items {
                    arr.push(scalar_to_json(f, raw, pretty, fhex, path, depth)?);
                }
                Value::Array(arr)
            }
        } else {
            scalar_to_json(f, raws[raws.len() - 1], pretty, fhex, path, depth)?
        };
        out.insert(f.name.to_string(), v);
        path.pop();
    }
    Ok(out)
}

/// Split a packed run into single values; other occurrences pass through.
fn expand_packed<'a>(
    f: &FieldDesc,
    raw: Raw<'a>,
    path: &[&str],
    items: &mut Vec<Raw<'a>>,
) -> Result<(), FieldError> {
    match raw {
        Raw::Len(b) if f.ty.is_packable() => {
            let mut rd = Reader::new(b);
            while !rd.is_empty() {
                let r = match wire_type_of(&f.ty) {
                    WT_VARINT => rd.varint().map(Raw::Varint),
                    WT_I64 => rd.fixed64().map(Raw::I64),
                    _ => rd.fixed32().map(Raw::I32),
                };
                items.push(r.map_err(|e| err(path, format!("packed values: {e}")))?);
            }
        }
        other => items.push(other),
    }
    Ok(())
}

fn wire_type_of(ty: &FieldType) -> u8 {
    match ty {
        FieldType::Double | FieldType::Fixed64 | FieldType::Sfixed64 => WT_I64,
        FieldType::Float | FieldType::Fixed32 | FieldType::Sfixed32 => WT_I32,
        FieldType::String | FieldType::Bytes | FieldType::Message(_) => WT_LEN,
        _ => WT_VARINT,
    }
}

/// An integer value as python holds it.
#[derive(Clone, Copy)]
enum Int {
    U(u64),
    I(i64),
}

impl Int {
    fn to_json(self) -> Value {
        match self {
            Int::U(v) => Value::Number(Number::from(v)),
            Int::I(v) => Value::Number(Number::from(v)),
        }
    }
    fn hex(self) -> String {
        match self {
            Int::U(v) => format!("{v:#x}"),
            Int::I(v) if v < 0 => format!("-{:#x}", v.unsigned_abs()),
            Int::I(v) => format!("{v:#x}"),
        }
    }
    fn bits(self) -> u64 {
        match self {
            Int::U(v) => v,
            Int::I(v) => v as u64,
        }
    }
}

fn scalar_to_json(
    f: &'static FieldDesc,
    raw: Raw<'_>,
    pretty: bool,
    hex: bool,
    path: &mut Vec<&'static str>,
    depth: usize,
) -> Result<Value, FieldError> {
    let wrong = |path: &[&str]| err(path, format!("wrong wire type for a {:?} field", short_type(&f.ty)));
    let int = match (f.ty, raw) {
        (FieldType::Message(m), Raw::Len(b)) => {
            return Ok(Value::Object(decode_msg(b, m, pretty, hex, path, depth + 1)?));
        }
        (FieldType::Bytes, Raw::Len(b)) => {
            return Ok(Value::String(bytes_to_string(f, b)));
        }
        (FieldType::String, Raw::Len(b)) => {
            return match std::str::from_utf8(b) {
                Ok(s) => Ok(Value::String(s.to_string())),
                Err(_) => Err(err(path, "string is not valid UTF-8")),
            };
        }
        (FieldType::Enum(e), Raw::Varint(v)) => {
            let n = v as i32;
            return match e.name_of(n) {
                Some(s) => Ok(Value::String(s.to_string())),
                None => Err(err(path, format!("value {n} is not in enum {}", e.name))),
            };
        }
        (FieldType::Bool, Raw::Varint(v)) => return Ok(Value::Bool(v != 0)),
        (FieldType::Double, Raw::I64(v)) => return Ok(float_json(f64::from_bits(v))),
        (FieldType::Float, Raw::I32(v)) => return Ok(float_json(f64::from(f32::from_bits(v)))),
        (FieldType::Int32, Raw::Varint(v)) => Int::I(i64::from(v as i32)),
        (FieldType::Int64, Raw::Varint(v)) => Int::I(v as i64),
        (FieldType::Uint32, Raw::Varint(v)) => Int::U(u64::from(v as u32)),
        (FieldType::Uint64, Raw::Varint(v)) => Int::U(v),
        (FieldType::Sint32, Raw::Varint(v)) => Int::I(i64::from(wire::zigzag_decode(v) as i32)),
        (FieldType::Sint64, Raw::Varint(v)) => Int::I(wire::zigzag_decode(v)),
        (FieldType::Fixed32, Raw::I32(v)) => Int::U(u64::from(v)),
        (FieldType::Sfixed32, Raw::I32(v)) => Int::I(i64::from(v as i32)),
        (FieldType::Fixed64, Raw::I64(v)) => Int::U(v),
        (FieldType::Sfixed64, Raw::I64(v)) => Int::I(v as i64),
        _ => return Err(wrong(path)),
    };
    if !pretty {
        return Ok(int.to_json());
    }
    if hex {
        return Ok(Value::String(int.hex()));
    }
    if f.opts.dev {
        return Ok(Value::String(render::dev_to_string(int.bits(), f.opts.odev)));
    }
    if let Some(name) = f.opts.flags {
        return Ok(Value::String(match render::flags_table(name) {
            Some(t) => render::flags_to_string(int.bits(), t),
            None => int.hex(),
        }));
    }
    if let Some(dict) = f.opts.dict {
        let Some(table) = render::dict_table(dict, f.name) else {
            return Err(err(path, format!("no value table {dict}.{}", f.name)));
        };
        if let Some((name, _)) = table.iter().find(|(_, v)| *v == int.bits()) {
            return Ok(Value::String((*name).to_string()));
        }
    }
    Ok(int.to_json())
}

fn float_json(v: f64) -> Value {
    Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null)
}

fn bytes_to_string(f: &FieldDesc, b: &[u8]) -> String {
    if f.opts.conv == Some("unix_name") {
        let q = render::quopri_encode(b);
        // quoted-printable output is ASCII.
        String::from_utf8_lossy(&q).into_owned()
    } else {
        render::base64_mime(b)
    }
}

fn short_type(t: &FieldType) -> &'static str {
    match t {
        FieldType::Double => "double",
        FieldType::Float => "float",
        FieldType::Int64 => "int64",
        FieldType::Uint64 => "uint64",
        FieldType::Int32 => "int32",
        FieldType::Fixed64 => "fixed64",
        FieldType::Fixed32 => "fixed32",
        FieldType::Bool => "bool",
        FieldType::String => "string",
        FieldType::Bytes => "bytes",
        FieldType::Uint32 => "uint32",
        FieldType::Sfixed32 => "sfixed32",
        FieldType::Sfixed64 => "sfixed64",
        FieldType::Sint32 => "sint32",
        FieldType::Sint64 => "sint64",
        FieldType::Enum(_) => "enum",
        FieldType::Message(_) => "message",
    }
}

/// Encode crit's JSON object `obj` as message `desc`.
pub fn encode(obj: &Map<String, Value>, desc: &'static MsgDesc) -> Result<Vec<u8>, FieldError> {
    let mut out = Vec::new();
    let mut path = Vec::new();
    encode_msg(obj, desc, &mut path, &mut out, 0)?;
    Ok(out)
}

fn encode_msg(
    obj: &Map<String, Value>,
    desc: &'static MsgDesc,
    path: &mut Vec<String>,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), FieldError> {
    let perr = |path: &[String], what: String| FieldError { field: path.join("."), what };
    if depth > MAX_DEPTH {
        return Err(perr(path, "messages nested too deep".into()));
    }
    for key in obj.keys() {
        if desc.field_by_name(key).is_none() {
            path.push(key.clone());
            return Err(perr(path, format!("no such field in {}", desc.name)));
        }
    }
    for f in desc.fields {
        let Some(v) = obj.get(f.name) else {
            if f.label == Label::Required {
                path.push(f.name.to_string());
                return Err(perr(path, format!("required field missing in {}", desc.name)));
            }
            continue;
        };
        path.push(f.name.to_string());
        if f.label == Label::Repeated {
            let Value::Array(items) = v else {
                return Err(perr(path, "expected a list".into()));
            };
            if f.opts.ipadd && matches!(items.first(), Some(Value::String(_))) {
                let Some(Value::String(s)) = items.first() else { unreachable!() };
                let words = render::ip_from_string(s)
                    .ok_or_else(|| perr(path, format!("{s:?} is not an IP address")))?;
                let vals: Vec<Scalar> = words.into_iter().map(|w| Scalar::U(u64::from(w))).collect();
                put_repeated(f, &vals, out);
            } else if let FieldType::Message(m) = f.ty {
                for (i, item) in items.iter().enumerate() {
                    path.push(i.to_string());
                    let Value::Object(o) = item else {
                        return Err(perr(path, "expected an object".into()));
                    };
                    let mut sub = Vec::new();
                    encode_msg(o, m, path, &mut sub, depth + 1)?;
                    wire::put_len(out, f.number, &sub);
                    path.pop();
                }
            } else {
                let mut vals = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    path.push(i.to_string());
                    vals.push(json_to_scalar(f, item).map_err(|w| perr(path, w))?);
                    path.pop();
                }
                put_repeated(f, &vals, out);
            }
        } else if let FieldType::Message(m) = f.ty {
            let Value::Object(o) = v else {
                return Err(perr(path, "expected an object".into()));
            };
            let mut sub = Vec::new();
            encode_msg(o, m, path, &mut sub, depth + 1)?;
            wire::put_len(out, f.number, &sub);
        } else {
            let s = json_to_scalar(f, v).map_err(|w| perr(path, w))?;
            put_scalar(f, &s, out);
        }
        path.pop();
    }
    Ok(())
}

/// A field value ready for the wire.
enum Scalar {
    U(u64),
    I(i64),
    F32(f32),
    F64(f64),
    Bytes(Vec<u8>),
}

fn json_to_scalar(f: &FieldDesc, v: &Value) -> Result<Scalar, String> {
    match f.ty {
        FieldType::Bytes => {
            let Value::String(s) = v else { return Err("expected a string".into()) };
            if f.opts.conv == Some("unix_name") {
                Ok(Scalar::Bytes(render::quopri_decode(s.as_bytes())))
            } else {
                render::base64_mime_decode(s).map(Scalar::Bytes).ok_or_else(|| "invalid base64".to_string())
            }
        }
        FieldType::String => match v {
            Value::String(s) => Ok(Scalar::Bytes(s.as_bytes().to_vec())),
            _ => Err("expected a string".into()),
        },
        FieldType::Enum(e) => match v {
            Value::String(s) => e
                .value_of(s)
                .map(|n| Scalar::I(i64::from(n)))
                .ok_or_else(|| format!("{s:?} is not a value of enum {}", e.name)),
            _ => Err(format!("expected a name of enum {}", e.name)),
        },
        FieldType::Bool => match v {
            Value::Bool(b) => Ok(Scalar::U(u64::from(*b))),
            Value::Number(n) => Ok(Scalar::U(u64::from(n.as_u64() != Some(0)))),
            _ => Err("expected true or false".into()),
        },
        FieldType::Double | FieldType::Float => match v.as_f64() {
            Some(x) if matches!(f.ty, FieldType::Float) => Ok(Scalar::F32(x as f32)),
            Some(x) => Ok(Scalar::F64(x)),
            None => Err("expected a number".into()),
        },
        FieldType::Message(_) => Err("expected an object".into()),
        _ => {
            let n: i128 = match v {
                Value::Number(n) => {
                    if let Some(u) = n.as_u64() {
                        i128::from(u)
                    } else if let Some(i) = n.as_i64() {
                        i128::from(i)
                    } else {
                        return Err("expected an integer".into());
                    }
                }
                Value::Bool(b) => i128::from(*b),
                Value::String(s) => string_to_int(f, s)?,
                _ => return Err("expected an integer".into()),
            };
            int_in_range(&f.ty, n)
        }
    }
}

fn string_to_int(f: &FieldDesc, s: &str) -> Result<i128, String> {
    if f.opts.dev {
        return render::dev_from_string(s, f.opts.odev)
            .map(i128::from)
            .ok_or_else(|| format!("{s:?} is not a major:minor device"));
    }
    if let Some(table) = f.opts.flags.and_then(render::flags_table) {
        return render::flags_from_string(s, table)
            .map(i128::from)
            .ok_or_else(|| format!("{s:?} is not a set of flags"));
    }
    if let Some(dict) = f.opts.dict {
        if let Some(table) = render::dict_table(dict, f.name) {
            if let Some((_, v)) = table.iter().find(|(n, _)| *n == s) {
                return Ok(i128::from(*v));
            }
        }
    }
    render::parse_int_literal(s).ok_or_else(|| format!("{s:?} is not an integer"))
}

fn int_in_range(ty: &FieldType, n: i128) -> Result<Scalar, String> {
    let (lo, hi): (i128, i128) = match ty {
        FieldType::Int32 | FieldType::Sint32 | FieldType::Sfixed32 => (i128::from(i32::MIN), i128::from(i32::MAX)),
        FieldType::Uint32 | FieldType::Fixed32 => (0, i128::from(u32::MAX)),
        FieldType::Int64 | FieldType::Sint64 | FieldType::Sfixed64 => (i128::from(i64::MIN), i128::from(i64::MAX)),
        _ => (0, i128::from(u64::MAX)),
    };
    if n < lo || n > hi {
        return Err(format!("{n} is out of range"));
    }
    Ok(if n < 0 { Scalar::I(n as i64) } else { Scalar::U(n as u64) })
}

fn scalar_bits(ty: &FieldType, s: &Scalar) -> u64 {
    match (ty, s) {
        (FieldType::Sint32 | FieldType::Sint64, Scalar::I(v)) => wire::zigzag_encode(*v),
        (FieldType::Sint32 | FieldType::Sint64, Scalar::U(v)) => wire::zigzag_encode(*v as i64),
        (_, Scalar::U(v)) => *v,
        (_, Scalar::I(v)) => *v as u64,
        (_, Scalar::F32(v)) => u64::from(v.to_bits()),
        (_, Scalar::F64(v)) => v.to_bits(),
        (_, Scalar::Bytes(_)) => 0,
    }
}

fn put_value(ty: &FieldType, s: &Scalar, out: &mut Vec<u8>) {
    match wire_type_of(ty) {
        WT_VARINT => wire::put_varint(out, scalar_bits(ty, s)),
        WT_I64 => out.extend_from_slice(&scalar_bits(ty, s).to_le_bytes()),
        WT_I32 => out.extend_from_slice(&(scalar_bits(ty, s) as u32).to_le_bytes()),
        _ => {
            if let Scalar::Bytes(b) = s {
                wire::put_varint(out, b.len() as u64);
                out.extend_from_slice(b);
            }
        }
    }
}

fn put_scalar(f: &FieldDesc, s: &Scalar, out: &mut Vec<u8>) {
    wire::put_key(out, f.number, wire_type_of(&f.ty));
    put_value(&f.ty, s, out);
}

fn put_repeated(f: &FieldDesc, vals: &[Scalar], out: &mut Vec<u8>) {
    if f.packed && f.ty.is_packable() {
        if vals.is_empty() {
            return;
        }
        let mut body = Vec::new();
        for v in vals {
            put_value(&f.ty, v, &mut body);
        }
        wire::put_len(out, f.number, &body);
    } else {
        for v in vals {
            put_scalar(f, v, out);
        }
    }
}
