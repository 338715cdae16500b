//! Durable replacement of a file or a directory: a reader sees the old content or the new, never
//! a mix, and after the call returns the new content survives a power cut.
//!
//! The sequence is: a temporary sibling in the same directory (so the rename cannot cross file
//! systems) → write → fsync the file → rename over the target → fsync the directory (without
//! that the rename itself may be lost, leaving the old file, or on some file systems an empty
//! one). Directories this creates on the way are fsynced into their parents too.
//!
//! Replaces the hand-written copies in agent/src/model_mirror.rs (two, no directory fsync),
//! agent/src/spool/mod.rs (the `ack` file), aggregator/src/consume/checkpoint.rs,
//! aggregator/src/lake/store.rs, model-export/src/onnx.rs (no directory fsync) and
//! model-export/src/publish.rs (neither fsync).
//!
//! The temporary file comes from `tempfile` (a unique `O_EXCL` name, so two writers of one path,
//! two threads or an old and a new pod during a rollout, never share a temporary file, and it is
//! removed if the write fails). Its name starts with `.`, so listings of `*.parquet` or of model
//! versions never pick it up. These calls block: from async code, use `spawn_blocking`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A step of a durable write that failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}", path.display())]
pub struct AtomicWriteError {
    /// What was being done: `creating`, `writing`, `syncing`, `renaming into`, ...
    pub op: &'static str,
    /// The file or directory it was done to.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> AtomicWriteError + 'a {
    move |source| AtomicWriteError {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Replaces `path` with `bytes`, durably. The parent directory is created if missing.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), AtomicWriteError> {
    write_with(path, |f| f.write_all(bytes))
}

/// Replaces `path` with `bytes`, durably, readable and writable by its owner only (mode 0600
/// from its creation, so a secret is never readable by anyone else, not even while empty).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AtomicWriteError> {
    use std::os::unix::fs::PermissionsExt;
    write_mode(path, std::fs::Permissions::from_mode(0o600), |f| {
        f.write_all(bytes)
    })
}

/// Replaces `path` with what `fill` writes into the (empty, temporary) file, durably: for
/// content streamed by an encoder instead of held in memory. If `fill` fails, `path` is left
/// as it was and the temporary file is removed.
pub fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), AtomicWriteError> {
    write_mode(path, default_permissions(), fill)
}

fn write_mode(
    path: &Path,
    permissions: std::fs::Permissions,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), AtomicWriteError> {
    let dir = parent(path);
    create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(permissions)
        .tempfile_in(dir)
        .map_err(io("creating a temporary file in", dir))?;
    fill(tmp.as_file_mut()).map_err(io("writing", tmp.path()))?;
    tmp.as_file()
        .sync_all()
        .map_err(io("syncing", tmp.path()))?;
    tmp.persist(path)
        .map_err(|e| io("renaming into", path)(e.error))?;
    sync_dir(dir)
}

/// Renames the directory `from` (filled by the caller) to `to`, durably (an existing `to` is
/// refused unless it is empty, which is what `rename(2)` does):
/// every regular file directly in `from` and `from` itself are fsynced first, then `to`'s parent
/// after the rename. A reader that finds `to` finds all of it.
pub fn rename_dir(from: &Path, to: &Path) -> Result<(), AtomicWriteError> {
    for entry in std::fs::read_dir(from).map_err(io("listing", from))? {
        let entry = entry.map_err(io("listing", from))?;
        let p = entry.path();
        if entry.file_type().map_err(io("listing", &p))?.is_file() {
            File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(io("syncing", &p))?;
        }
    }
    sync_dir(from)?;
    let dir = parent(to);
    create_dir_all(dir)?;
    std::fs::rename(from, to).map_err(io("renaming into", to))?;
    sync_dir(dir)
}

/// fsyncs a directory, making the creations, renames and removals in it durable.
pub fn sync_dir(dir: &Path) -> Result<(), AtomicWriteError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing directory", dir))
}

/// Creates `dir` and its missing ancestors, fsyncing each new one into its parent.
pub fn create_dir_all(dir: &Path) -> Result<(), AtomicWriteError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cur = dir;
    while !cur.as_os_str().is_empty() && !cur.exists() {
        missing.push(cur);
        match cur.parent() {
            Some(p) => cur = p,
            None => break,
        }
    }
    std::fs::create_dir_all(dir).map_err(io("creating directory", dir))?;
    for created in missing.iter().rev() {
        sync_dir(parent(created))?;
    }
    Ok(())
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// What `File::create` would give (0666 less the umask): `tempfile` defaults to 0600, which
/// would make a lake object or a published model unreadable to the trainer or agent running as
/// another user.
fn default_permissions() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(0o666)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_write_replaces_the_file_and_leaves_no_temporary() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("a/b/checkpoint");
        write(&path, b"one").expect("first write creates the directories");
        write(&path, b"two").expect("second write replaces");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        assert_eq!(names(&tmp.path().join("a/b")), ["checkpoint"]);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o644, 0o644, "readable like File::create: {mode:o}");
    }

    #[test]
    fn a_private_write_is_owner_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("token");
        write(&path, b"public").expect("write");
        write_private(&path, b"secret").expect("private write replaces");
        assert_eq!(std::fs::read(&path).expect("read"), b"secret");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        assert_eq!(names(tmp.path()), ["token"]);
    }

    #[test]
    fn a_failed_fill_keeps_the_old_content_and_cleans_up() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("latest");
        write(&path, b"v1\n").expect("write");
        let e = write_with(&path, |f| {
            f.write_all(b"v2 half")?;
            Err(std::io::Error::other("encoder failed"))
        })
        .expect_err("fill failed");
        assert_eq!(e.op, "writing");
        assert_eq!(std::fs::read(&path).expect("read"), b"v1\n");
        assert_eq!(names(tmp.path()), ["latest"]);
    }

    #[test]
    fn a_write_into_a_file_where_a_directory_should_be_names_the_step() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("file"), b"x").expect("write");
        let e = write(&tmp.path().join("file/inner"), b"y").expect_err("parent is a file");
        assert_eq!(e.op, "creating directory");
        assert!(e.to_string().contains("file"), "{e}");
    }

    #[test]
    fn a_directory_lands_whole_or_not_at_all() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let staging = tmp.path().join(".v1.tmp");
        std::fs::create_dir(&staging).expect("mkdir");
        std::fs::write(staging.join("model.onnx"), b"m").expect("write");
        std::fs::write(staging.join("manifest.json"), b"{}").expect("write");
        let dest = tmp.path().join("cpu/v1");
        rename_dir(&staging, &dest).expect("rename");
        assert_eq!(names(&dest), ["manifest.json", "model.onnx"]);
        assert!(!staging.exists());
        // The destination exists now: a second rename onto it must not merge or replace.
        std::fs::create_dir(&staging).expect("mkdir");
        std::fs::write(staging.join("model.onnx"), b"other").expect("write");
        assert!(rename_dir(&staging, &dest).is_err());
        assert_eq!(std::fs::read(dest.join("model.onnx")).expect("read"), b"m");
    }

    #[test]
    fn concurrent_writers_of_one_path_do_not_share_a_temporary() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("obj");
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..20 {
                        write(path, &[i; 4096]).expect("write");
                    }
                });
            }
        });
        let content = std::fs::read(&path).expect("read");
        assert_eq!(content.len(), 4096);
        assert!(
            content.iter().all(|&b| b == content[0]),
            "one writer's bytes"
        );
        assert_eq!(names(tmp.path()), ["obj"]);
    }
}
