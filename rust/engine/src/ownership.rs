//! Who wrote this? The engine's own line of defence (the Python layer checks first, with the
//! same rule and friendlier messages): an existing output path is replaced only when it is a
//! folder holding the plan's manifest file, which only gslice writes, or a GGUF file whose
//! metadata holds the plan's manifest key. Never a file, a special
//! file or a symbolic link, never the source or a folder that holds it or lies inside it, never
//! the current directory or one of its parents. Checked before the run and again right before
//! the finished output takes the old one's place.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use crate::error::{Error, Result};

/// Refuses `dest` unless it does not exist, or it may be replaced (`overwrite`) and is a folder
/// that gslice wrote (it holds `manifest`, a regular file). `source` is the checkpoint read.
pub fn check_replaceable(dest: &Path, overwrite: bool, manifest: Option<&str>, source: &Path) -> Result<()> {
    let meta = match dest.symlink_metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dest, "inspect", e)),
    };
    let refuse = |why: String| Err(Error::Protected(format!("output path {} {why}; refusing to replace it", dest.display())));
    // A dangling symbolic link resolves to nothing: it is refused below as a link.
    if let Ok(real) = fs::canonicalize(dest) {
        if let Ok(cwd) = std::env::current_dir().and_then(fs::canonicalize) {
            if cwd.starts_with(&real) {
                return refuse("is the current directory or one of its parents".into());
            }
        }
        let source = fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
        if source.starts_with(&real) {
            return refuse("holds the source checkpoint".into());
        }
        if real.starts_with(&source) {
            return refuse("lies inside the source checkpoint".into());
        }
    }
    if !overwrite {
        return Err(Error::Exists(dest.to_path_buf()));
    }
    let kind = meta.file_type();
    if kind.is_symlink() {
        return refuse("is a symbolic link".into());
    }
    if kind.is_file() {
        // A single-file output (GGUF) is gslice's when its metadata holds the manifest key.
        return match manifest {
            Some(key) if crate::gguf::file_has_key(dest, key) => Ok(()),
            _ => refuse("is a file gslice did not write".into()),
        };
    }
    if !kind.is_dir() {
        return refuse("is a special file (a device, FIFO or socket)".into());
    }
    let Some(name) = manifest else {
        return refuse("exists and this output writes no manifest by which gslice could have recognised it".into());
    };
    match dest.join(name).symlink_metadata() {
        Ok(m) if m.file_type().is_file() => Ok(()),
        _ => refuse(format!("is a folder gslice did not write (it has no {name})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(dest: &Path, source: &Path) -> String {
        check_replaceable(dest, true, Some("m.json"), source).unwrap_err().to_string()
    }

    #[test]
    fn only_a_folder_with_the_manifest_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        let out = tmp.path().join("out");
        assert!(check_replaceable(&out, false, Some("m.json"), &src).is_ok());
        fs::create_dir(&out).unwrap();
        assert!(matches!(check_replaceable(&out, false, Some("m.json"), &src), Err(Error::Exists(_))));
        assert!(refused(&out, &src).ends_with("is a folder gslice did not write (it has no m.json); refusing to replace it"));
        fs::write(out.join("m.json"), "{}").unwrap();
        assert!(check_replaceable(&out, true, Some("m.json"), &src).is_ok());
        let file = tmp.path().join("f");
        fs::write(&file, "x").unwrap();
        assert!(refused(&file, &src).contains("is a file gslice did not write"));
        #[cfg(unix)] // symbolic links need privileges on Windows
        {
            let link = tmp.path().join("link");
            std::os::unix::fs::symlink(&out, &link).unwrap();
            assert!(refused(&link, &src).contains("is a symbolic link"));
        }
    }

    #[test]
    fn the_source_and_its_parents_are_never_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("a").join("src");
        fs::create_dir_all(src.join("inner")).unwrap();
        for p in [&src, &tmp.path().join("a")] {
            fs::write(p.join("m.json"), "{}").unwrap();
            assert!(refused(p, &src).contains("holds the source checkpoint"), "{}", p.display());
        }
        fs::write(src.join("inner").join("m.json"), "{}").unwrap();
        assert!(refused(&src.join("inner"), &src).contains("lies inside the source checkpoint"));
    }
}
