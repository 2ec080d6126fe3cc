//! One error type for the whole engine. Every variant renders as a single line that names the
//! offending file or tensor, because the Python layer shows it to users verbatim.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub enum Error {
    /// A source file or index breaks the safetensors format.
    Format { file: PathBuf, msg: String },
    /// The plan asks for something the source cannot provide.
    Plan(String),
    /// The operating system refused a read or write.
    Io { path: PathBuf, action: &'static str, err: io::Error },
    /// The destination filesystem cannot hold the output.
    NoSpace { dir: PathBuf, need: u64 },
    /// Output already exists and the plan did not allow replacing it.
    Exists(PathBuf),
    /// The output path names something gslice must never replace (see `ownership`).
    Protected(String),
    /// The caller asked to stop (Ctrl-C in Python, or a progress callback that raised).
    Cancelled,
    /// A bug: a worker panicked. Caught so that it never unwinds into Python.
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn format(file: &Path, msg: impl Into<String>) -> Self {
        Error::Format { file: file.to_path_buf(), msg: msg.into() }
    }

    pub fn io(path: &Path, action: &'static str, err: io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), action, err }
    }

    /// Short machine-readable category; the Python layer maps it to an exception class.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Format { .. } => "format",
            Error::Plan(_) => "plan",
            Error::NoSpace { .. } => "disk_full",
            Error::Io { err, .. } if crate::io::is_disk_full(err) => "disk_full",
            Error::Io { .. } => "io",
            Error::Exists(_) => "exists",
            Error::Protected(_) => "protected",
            Error::Cancelled => "cancelled",
            Error::Internal(_) => "internal",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Format { file, msg } => write!(f, "{}: {}", file.display(), msg),
            Error::Plan(msg) | Error::Protected(msg) => f.write_str(msg),
            Error::Io { path, action, err } => {
                write!(f, "cannot {} {}: {}", action, path.display(), err)
            }
            Error::NoSpace { dir, need } => write!(
                f,
                "not enough free space in {} for the output ({need} bytes of shards); nothing was written",
                dir.display()
            ),
            Error::Exists(path) => write!(f, "output path {} already exists", path.display()),
            Error::Cancelled => f.write_str("cancelled"),
            Error::Internal(msg) => write!(f, "internal error (please report): {msg}"),
        }
    }
}

impl std::error::Error for Error {}
