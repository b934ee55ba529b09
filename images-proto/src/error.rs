//! Errors of the image layer. Every error says which image file, which entry
//! (0-based index; the header counts as no entry) and which field it is about.

use std::path::PathBuf;

/// Where in an image something went wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// Image file (or "<stdin>", "<memory>").
    pub file: PathBuf,
    /// Entry index, `None` for the header/magic.
    pub entry: Option<usize>,
    /// Dotted field path inside the entry (`thread_info.gpregs.ip`), if known.
    pub field: Option<String>,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        match self.entry {
            Some(i) => write!(f, ": entry {i}")?,
            None => write!(f, ": header")?,
        }
        if let Some(field) = &self.field {
            write!(f, ", field {field}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{at}: {what}")]
    Format { at: Location, what: String },
    #[error("{at}: unknown image magic {magic:#x}")]
    UnknownMagic { at: Location, magic: u32 },
    #[error("{at}: image is {found}, expected {expected}")]
    WrongMagic { at: Location, expected: &'static str, found: String },
    #[error("{at}: truncated: wanted {wanted} bytes, {left} left")]
    Truncated { at: Location, wanted: u64, left: u64 },
    #[error("{at}: entry of {len} bytes exceeds the {limit} byte limit")]
    TooLarge { at: Location, len: u64, limit: u64 },
    #[error("{at}: cannot decode protobuf")]
    Decode {
        at: Location,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{at}: {what}")]
    Json { at: Location, what: String },
}

impl ImageError {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io { op, path: path.into(), source }
    }
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;
