//! Writing a run's result files so that a measurement is never lost: the
//! destination is checked before anything is attached (the file itself and
//! the temporary file the atomic write goes through), and if the final
//! write still fails the results go to a fallback file whose path is
//! printed.

use std::{
    ffi::OsString,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// The temporary file an atomic write of `path` goes through (renamed over
/// `path` once complete): beside it, so the rename stays in one file system.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(OsString::from).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Fails early, before anything is attached, when `path` cannot be written:
/// a directory, a missing parent, no permission, or a directory where the
/// temporary file cannot be created (e.g. `/proc/version`). `flag` names
/// the option in the message.
pub fn check_writable(flag: &str, path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        anyhow::bail!("{flag} {}: is a directory; give a file path", path.display());
    }
    let existed = path.exists();
    fs::OpenOptions::new().append(true).create(true).open(path).with_context(|| {
        format!(
            "{flag} {}: cannot write there (check the directory exists and is writable)",
            path.display()
        )
    })?;
    if !existed {
        // Leave no empty file behind if we fail before writing results.
        let _ = fs::remove_file(path);
    }
    let tmp = temp_path(path);
    let tmp_existed = tmp.exists();
    fs::OpenOptions::new().write(true).create(true).truncate(false).open(&tmp).with_context(
        || {
            format!(
                "{flag} {}: cannot create the temporary file {} beside it (the results are \
                 written there, then renamed): give a path in a writable directory",
                path.display(),
                tmp.display()
            )
        },
    )?;
    if !tmp_existed {
        let _ = fs::remove_file(&tmp);
    }
    Ok(())
}

/// Writes `contents` to `path` atomically (a temporary file beside it,
/// synced, then renamed over it).
pub fn write_atomic(path: &Path, contents: &str) -> anyhow::Result<()> {
    let tmp = temp_path(path);
    let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(contents.as_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to it", tmp.display()))
}

/// Where a result file ended up.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    AtPath,
    /// `path` could not be written; the results are in this file instead.
    Fallback(PathBuf),
}

/// The fallback directories: `$TMPDIR` (else `/tmp`), then the current one.
pub fn fallback_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![std::env::temp_dir()];
    dirs.extend(std::env::current_dir().ok());
    dirs
}

/// The name of a fallback for `name` (a file, or the profiles' directory):
/// `perf-agent-<pid>-<unix s>-<name>`, unique to this run.
pub fn fallback_name(name: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("perf-agent-{}-{secs}-{name}", std::process::id())
}

/// Writes `contents` to `path`; if that fails, to
/// `<dir>/perf-agent-<pid>-<unix s>-<file name>` in the first of
/// `fallback_dirs` that works, saying so on stderr. An error only when
/// every place failed.
pub fn write_results(
    path: &Path,
    contents: &str,
    fallback_dirs: &[PathBuf],
) -> anyhow::Result<Written> {
    let err = match write_atomic(path, contents) {
        Ok(()) => return Ok(Written::AtPath),
        Err(e) => e,
    };
    let _ = fs::remove_file(temp_path(path));
    let name = path.file_name().map_or_else(|| "results.json".into(), |n| n.to_string_lossy());
    let file = fallback_name(&name);
    let mut tried = Vec::new();
    for dir in fallback_dirs {
        let fallback = dir.join(&file);
        match write_atomic(&fallback, contents) {
            Ok(()) => {
                eprintln!(
                    "perf-agent: error: cannot write {}: {err:#}; the results are in {} instead",
                    path.display(),
                    fallback.display()
                );
                return Ok(Written::Fallback(fallback));
            }
            Err(e) => tried.push(format!("{}: {e:#}", fallback.display())),
        }
    }
    Err(err.context(format!(
        "writing {} (fallbacks failed too: {})",
        path.display(),
        tried.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("perf-agent-output-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn check_writable_rejects_directories_missing_parents_and_no_room_for_the_temp_file() {
        let dir = std::env::temp_dir();
        let e = check_writable("--out", &dir).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let e = check_writable("--out", Path::new("/nonexistent-dir/x.json")).unwrap_err();
        assert!(e.to_string().contains("cannot write"), "{e}");
        // procfs: the file opens for writing (as root), no file can be
        // created beside it.
        if Path::new("/proc/version").exists() {
            let e = check_writable("--out", Path::new("/proc/version")).unwrap_err().to_string();
            assert!(e.contains("cannot") && e.contains("/proc/version"), "{e}");
        }
        let ok = scratch("check").join("x.json");
        check_writable("--out", &ok).unwrap();
        assert!(!ok.exists() && !temp_path(&ok).exists(), "the check leaves no file behind");
    }

    #[test]
    fn results_go_to_the_path_else_to_the_first_fallback_that_works() {
        let dir = scratch("write");
        let out = dir.join("bench.json");
        assert_eq!(write_results(&out, "{}\n", &[]).unwrap(), Written::AtPath);
        assert_eq!(fs::read_to_string(&out).unwrap(), "{}\n");
        assert!(!temp_path(&out).exists());

        let gone = dir.join("removed-dir").join("bench.json");
        let fallbacks = [dir.join("missing-too"), dir.clone()];
        let Written::Fallback(f) = write_results(&gone, "{\"a\":1}\n", &fallbacks).unwrap() else {
            panic!("expected a fallback");
        };
        assert_eq!(f.parent(), Some(dir.as_path()));
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("perf-agent-") && name.ends_with("-bench.json"), "{name}");
        assert_eq!(fs::read_to_string(&f).unwrap(), "{\"a\":1}\n");

        let e = write_results(&gone, "{}", &[dir.join("missing-too")]).unwrap_err();
        assert!(format!("{e:#}").contains("fallbacks failed too"), "{e:#}");
    }
}
