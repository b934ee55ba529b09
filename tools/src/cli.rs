//! The `crit` command line, the same as upstream crit 4.2's:
//! `decode`, `encode`, `info`, `x`, `show`.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use images_proto::image::{decode_image, encode_image, parse_header};
use images_proto::magic::Layout;
use images_proto::ImageError;
use serde_json::Value;

use crate::explore::{self, What};
use crate::{nopl, pyjson};

#[derive(Parser, Debug)]
#[command(
    name = "crit",
    about = "CRiu Image Tool",
    version,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// convert criu image from binary type to json
    Decode {
        /// Multiline with indents and some numerical fields in field-specific format
        #[arg(long)]
        pretty: bool,
        /// criu image in binary format to be decoded (stdin by default)
        #[arg(short = 'i', long = "in")]
        input: Option<PathBuf>,
        /// where to put criu image in json format (stdout by default)
        #[arg(short = 'o', long = "out")]
        out: Option<PathBuf>,
        /// do not show entry payload (if exists)
        #[arg(long)]
        nopl: bool,
        /// accepted for compatibility; encrypted images are not supported
        #[arg(long = "tls-key", hide = true)]
        tls_key: Option<PathBuf>,
    },
    /// convert criu image from json type to binary
    Encode {
        /// criu image in json format to be encoded (stdin by default)
        #[arg(short = 'i', long = "in")]
        input: Option<PathBuf>,
        /// where to put criu image in binary format (stdout by default)
        #[arg(short = 'o', long = "out")]
        out: Option<PathBuf>,
    },
    /// show info about image
    Info {
        #[arg(value_name = "in")]
        input: PathBuf,
    },
    /// explore image dir
    X {
        dir: PathBuf,
        #[arg(value_parser = ["ps", "fds", "mems", "rss"])]
        what: String,
        #[arg(long = "tls-key", hide = true)]
        tls_key: Option<PathBuf>,
    },
    /// convert criu image from binary to human-readable json
    Show {
        #[arg(value_name = "in")]
        input: PathBuf,
        /// do not show entry payload (if exists)
        #[arg(long)]
        nopl: bool,
        #[arg(long = "tls-key", hide = true)]
        tls_key: Option<PathBuf>,
    },
}

/// Why a command failed; `Display` is the message for stderr.
#[derive(Debug)]
pub enum CritError {
    /// Upstream's exact text for an unknown magic (decode/show).
    UnknownMagic(u32),
    Image(ImageError),
    Other(String),
}

impl std::fmt::Display for CritError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CritError::UnknownMagic(m) => {
                // Upstream reads the magic as a signed int and prints `%#x`.
                let v = *m as i32;
                let hex = if v < 0 {
                    format!("-{:#x}", v.unsigned_abs())
                } else {
                    format!("{v:#x}")
                };
                write!(f, "Unknown magic {hex}.\nMaybe you are feeding me an image with raw data(i.e. pages.img)?")
            }
            CritError::Image(e) => {
                write!(f, "{e}")?;
                let mut src = std::error::Error::source(e);
                while let Some(s) = src {
                    write!(f, ": {s}")?;
                    src = s.source();
                }
                Ok(())
            }
            CritError::Other(s) => f.write_str(s),
        }
    }
}

impl From<ImageError> for CritError {
    fn from(e: ImageError) -> Self {
        CritError::Image(e)
    }
}

type Result<T> = std::result::Result<T, CritError>;

/// Parse the command line and run it; returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(io::stderr(), "{}", prefix(&e));
            1
        }
    }
}

fn prefix(e: &CritError) -> String {
    match e {
        CritError::UnknownMagic(_) => e.to_string(),
        _ => format!("crit: {e}"),
    }
}

fn read_input(input: Option<&Path>) -> Result<(Vec<u8>, PathBuf)> {
    match input {
        Some(p) => {
            let buf = std::fs::read(p)
                .map_err(|e| CritError::Other(format!("cannot read {}: {e}", p.display())))?;
            Ok((buf, p.to_path_buf()))
        }
        None => {
            let mut buf = Vec::new();
            io::stdin()
                .lock()
                .read_to_end(&mut buf)
                .map_err(|e| CritError::Other(format!("cannot read <stdin>: {e}")))?;
            Ok((buf, PathBuf::from("<stdin>")))
        }
    }
}

/// Write `data` to `out` or stdout. A closed stdout pipe is not an error.
fn write_output(out: Option<&Path>, data: &[u8]) -> Result<()> {
    match out {
        Some(p) => std::fs::write(p, data)
            .map_err(|e| CritError::Other(format!("cannot write {}: {e}", p.display()))),
        None => {
            let stdout = io::stdout();
            let mut w = io::BufWriter::with_capacity(1 << 16, stdout.lock());
            let r = w.write_all(data).and_then(|()| w.flush());
            match r {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
                Err(e) => Err(CritError::Other(format!("cannot write <stdout>: {e}"))),
            }
        }
    }
}

fn refuse_encrypted(input: &Path) -> Result<()> {
    let dir = input.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = input.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !["cipher.img", "stats-dump", "stats-restore"].contains(&name)
        && dir.join("cipher.img").exists()
    {
        return Err(CritError::Other(format!(
            "{}: the images of this directory are encrypted (cipher.img), which this crit does not support",
            input.display()
        )));
    }
    Ok(())
}

/// Decode an image in memory to crit's JSON (with `nopl`: payloads as sizes).
pub fn decode_value(buf: &[u8], path: &Path, pretty: bool, nopl: bool) -> Result<Value> {
    let mut img = decode_image(buf, path, pretty).map_err(|e| match e {
        ImageError::UnknownMagic { magic, .. } => CritError::UnknownMagic(magic),
        e => CritError::Image(e),
    })?;
    if nopl {
        let (kind, _) = parse_header(buf, path)?;
        let raw = if pretty {
            decode_image(buf, path, false)?
        } else {
            img.clone()
        };
        nopl::strip_payloads(kind, &mut img, &raw);
    }
    Ok(img)
}

/// `crit decode`: the JSON text, with the trailing newline upstream adds
/// when writing to stdout.
pub fn decode_to_text(
    buf: &[u8],
    path: &Path,
    pretty: bool,
    nopl: bool,
    newline: bool,
) -> Result<Vec<u8>> {
    let img = decode_value(buf, path, pretty, nopl)?;
    let mut text = pyjson::to_vec(&img, pretty.then_some(4));
    if newline {
        text.push(b'\n');
    }
    Ok(text)
}

/// `crit encode`: JSON text to image bytes.
pub fn encode_text(buf: &[u8], path: &Path) -> Result<Vec<u8>> {
    if std::str::from_utf8(buf).is_err() {
        return Err(CritError::Other(
            "Cannot read JSON.\nMaybe you are feeding me an image with protobuf data? Encode expects JSON input.".into(),
        ));
    }
    let img: Value = serde_json::from_slice(buf)
        .map_err(|e| CritError::Other(format!("{}: invalid JSON: {e}", path.display())))?;
    Ok(encode_image(&img, path)?)
}

/// `crit info`: `{"magic": NAME, "count": N}` as upstream prints it.
pub fn info_text(buf: &[u8], path: &Path) -> Result<Vec<u8>> {
    let (kind, _) = parse_header(buf, path)?;
    let img = decode_image(buf, path, false)?;
    let n = img
        .get("entries")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    // Upstream counts the pagemap head out.
    let count = if kind.layout == Layout::Pagemap {
        n.saturating_sub(1)
    } else {
        n
    };
    let mut m = serde_json::Map::new();
    m.insert("magic".into(), Value::String(kind.name.into()));
    m.insert("count".into(), Value::from(count));
    let mut text = pyjson::to_vec(&Value::Object(m), Some(4));
    text.push(b'\n');
    Ok(text)
}

pub fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Decode {
            pretty,
            input,
            out,
            nopl,
            tls_key: _,
        } => {
            if let Some(p) = &input {
                refuse_encrypted(p)?;
            }
            let (buf, path) = read_input(input.as_deref())?;
            let text = decode_to_text(&buf, &path, pretty, nopl, out.is_none())?;
            write_output(out.as_deref(), &text)
        }
        Cmd::Show {
            input,
            nopl,
            tls_key: _,
        } => {
            refuse_encrypted(&input)?;
            let (buf, path) = read_input(Some(&input))?;
            let text = decode_to_text(&buf, &path, true, nopl, true)?;
            write_output(None, &text)
        }
        Cmd::Encode { input, out } => {
            let (buf, path) = read_input(input.as_deref())?;
            let bytes = encode_text(&buf, &path)?;
            write_output(out.as_deref(), &bytes)
        }
        Cmd::Info { input } => {
            let (buf, path) = read_input(Some(&input))?;
            let text = info_text(&buf, &path)?;
            write_output(None, &text)
        }
        Cmd::X {
            dir,
            what,
            tls_key: _,
        } => {
            if dir.join("cipher.img").exists() {
                return Err(CritError::Other(format!(
                    "{}: encrypted images are not supported",
                    dir.display()
                )));
            }
            let what: What = what.parse().map_err(CritError::Other)?;
            let mut text = String::new();
            let r = explore::explore(&dir, what, &mut text);
            write_output(None, text.as_bytes())?;
            r.map_err(|e| CritError::Other(e.to_string()))
        }
    }
}
