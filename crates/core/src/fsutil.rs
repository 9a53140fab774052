//! File helpers shared by the stages and the runner: atomic publication and content hashing.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The temporary name a file is written under before it is renamed into place. It lives in the
/// same folder so that the rename is atomic, and carries the pid so that two writers never share it.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `path` through `write` under a temporary name, fsyncs it and renames it into place, so
/// that a reader (or a crash) sees either no file or the complete file.
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> Result<()>,
{
    let tmp = temp_path_for(path);
    let file = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    let mut out = BufWriter::new(file);
    let result = write(&mut out).and_then(|()| {
        let file = out
            .into_inner()
            .map_err(|e| Error::io("flush", &tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io("fsync", &tmp, e))
    });
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path).map_err(|e| Error::io("rename into place", path, e))
}

/// Writes bytes atomically (see [`write_atomic`]).
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| {
        w.write_all(bytes).map_err(|e| Error::io("write", path, e))
    })
}

/// blake3 of a whole file, as lowercase hex.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// blake3 of a byte string, as lowercase hex.
pub fn hash_bytes(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Creates a folder and its parents, naming the folder on failure.
pub fn create_dir_all(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|e| Error::io("create folder", path, e))
}

/// The name of the checksum file kept beside a checksummed file: `<name>.blake3`.
pub fn checksum_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{name}.{CHECKSUM_EXTENSION}"))
}

/// The extension of checksum files (see [`checksum_path`]).
pub const CHECKSUM_EXTENSION: &str = "blake3";

/// The folder, beside a damaged file, that [`quarantine`] moves it into.
pub const QUARANTINE_DIR: &str = "quarantine";

/// Writes a file that carries its own checksum: `write` fills a temporary name, its blake3 goes
/// into `<name>.blake3` (atomically), and only then is the file renamed into place. So a file in
/// place always has its checksum, and a file without one was never completed.
pub fn write_checksummed<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let tmp = temp_path_for(path);
    let result = write(&tmp).and_then(|()| {
        let hash = hash_file(&tmp)?;
        write_bytes_atomic(&checksum_path(path), format!("{hash}\n").as_bytes())
    });
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path).map_err(|e| Error::io("rename into place", path, e))
}

/// Checks a file written by [`write_checksummed`] in full against its checksum. The error says
/// what is wrong, in words fit for a warning.
pub fn verify_checksummed(path: &Path) -> std::result::Result<(), String> {
    let sidecar = checksum_path(path);
    let expected = match fs::read_to_string(&sidecar) {
        Ok(s) => s.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "no checksum file {} (the write that made it never completed)",
                sidecar.display()
            ));
        }
        Err(e) => return Err(format!("cannot read {}: {e}", sidecar.display())),
    };
    let actual = hash_file(path).map_err(|e| e.to_string())?;
    if actual != expected {
        return Err(format!(
            "content does not match its checksum (blake3 {actual}, {} says {expected})",
            sidecar.display()
        ));
    }
    Ok(())
}

/// Moves a damaged file (and its checksum file, if any) into `quarantine/` beside it, under a
/// name that does not collide with earlier quarantined copies, and returns where it went. The
/// file is kept for inspection rather than deleted; nothing reads from `quarantine/`.
pub fn quarantine(path: &Path) -> Result<PathBuf> {
    let parent = path.parent().unwrap_or_else(|| Path::new("."));
    let dir = parent.join(QUARANTINE_DIR);
    create_dir_all(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dest = dir.join(format!("{name}.{}", unique_suffix()));
    fs::rename(path, &dest).map_err(|e| Error::io("quarantine", path, e))?;
    let sidecar = checksum_path(path);
    if sidecar.exists() {
        let side_dest = checksum_path(&dest);
        fs::rename(&sidecar, &side_dest).map_err(|e| Error::io("quarantine", &sidecar, e))?;
    }
    Ok(dest)
}

/// `<nanoseconds since the epoch>-<pid>`: a name suffix no other quarantined copy has.
pub fn unique_suffix() -> String {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{stamp}-{}", std::process::id())
}

/// Whether a process with this id is running on this machine. Where `/proc` is missing, every
/// process counts as alive, so that nothing of a live writer is ever removed.
pub fn pid_alive(pid: u32) -> bool {
    let proc_root = Path::new("/proc");
    !proc_root.exists() || proc_root.join(pid.to_string()).exists()
}

/// The writer's pid of a temporary name made by [`temp_path_for`] or [`temp_dir_name`]
/// (`….tmp-<pid>`), or `None` for any other name.
pub fn temp_owner(name: &str) -> Option<u32> {
    let (_, pid) = name.rsplit_once(".tmp-")?;
    pid.parse().ok()
}

/// The name of a temporary folder for `what`, owned by this process: `.<what>.tmp-<pid>`.
pub fn temp_dir_name(what: &str) -> String {
    format!(".{what}.tmp-{}", std::process::id())
}

/// Removes temporary files and folders (`.….tmp-<pid>`) below `root`, at most `depth` levels
/// down, whose writer is no longer running. Returns what it removed. Callers hold the cache lock,
/// so no new writer starts meanwhile; a live writer's files are left alone.
pub fn remove_dead_temps(root: &Path, depth: usize) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(root) else {
        return Ok(removed);
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", root, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if name.starts_with('.')
            && let Some(pid) = temp_owner(&name)
        {
            if !pid_alive(pid) {
                let result = if is_dir {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                result.map_err(|e| Error::io("remove leftover", &path, e))?;
                removed.push(path);
            }
        } else if is_dir && depth > 0 {
            removed.extend(remove_dead_temps(&path, depth - 1)?);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn a_checksummed_file_verifies_until_one_byte_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard.parquet");
        write_checksummed(&path, |tmp| write_bytes_atomic(tmp, b"0123456789")).unwrap();
        assert_eq!(verify_checksummed(&path), Ok(()));
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "the file and its checksum only: {names:?}");
        fs::write(&path, b"0123456780").unwrap();
        let why = verify_checksummed(&path).unwrap_err();
        assert!(
            why.starts_with("content does not match its checksum (blake3 ")
                && why.contains(&format!("{} says ", checksum_path(&path).display())),
            "{why}"
        );
        fs::remove_file(checksum_path(&path)).unwrap();
        assert_eq!(
            verify_checksummed(&path).unwrap_err(),
            format!(
                "no checksum file {} (the write that made it never completed)",
                checksum_path(&path).display()
            )
        );
    }

    #[test]
    fn a_failed_checksummed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard.parquet");
        let err = write_checksummed(&path, |tmp| {
            fs::write(tmp, b"half").unwrap();
            Err(Error::mismatch("write shard", "disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "write shard: disk full");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn quarantine_moves_the_file_and_its_checksum_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.parquet");
        write_checksummed(&path, |tmp| write_bytes_atomic(tmp, b"x")).unwrap();
        let moved = quarantine(&path).unwrap();
        assert!(!path.exists() && !checksum_path(&path).exists());
        assert_eq!(moved.parent().unwrap(), dir.path().join(QUARANTINE_DIR));
        assert_eq!(fs::read(&moved).unwrap(), b"x");
        assert_eq!(fs::read_dir(moved.parent().unwrap()).unwrap().count(), 2);
    }

    #[test]
    fn only_temporaries_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dead_pid();
        let nested = dir.path().join("pypi");
        let dead_dir = nested.join(format!(".work-pkg-1.0.tmp-{dead}"));
        let live_dir = nested.join(temp_dir_name("work-pkg-2.0"));
        let dead_file = dir.path().join(format!(".x.parquet.tmp-{dead}"));
        let plain = dir.path().join("x.parquet");
        let dotted = dir.path().join(".hidden");
        for d in [&dead_dir, &live_dir] {
            fs::create_dir_all(d.join("inner")).unwrap();
        }
        for f in [&dead_file, &plain, &dotted] {
            fs::write(f, b"x").unwrap();
        }
        let mut removed = remove_dead_temps(dir.path(), 3).unwrap();
        removed.sort();
        let mut expected = vec![dead_dir, dead_file];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(live_dir.exists() && plain.exists() && dotted.exists());
        assert_eq!(temp_owner(".a.tmp-12"), Some(12));
        assert_eq!(temp_owner(".a.tmp-x"), None);
    }
}
