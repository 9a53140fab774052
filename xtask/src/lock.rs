//! The cache lock (`cache/lock`, an OS file lock) and who holds it (`cache/lock.owner`).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use llmembed_core::fsutil;
use serde::{Deserialize, Serialize};

use crate::cache::Cache;

/// Who holds the cache lock: written to `lock.owner` by the holder, read by those who wait.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LockOwner {
    pub pid: u32,
    /// What the holder does (`run pipelines/agnews.yaml`, `gc`).
    pub what: String,
    /// The pipeline file a run works on (absolute), so that `gc --dry-run` can say what it
    /// protects.
    pub pipeline: Option<PathBuf>,
}

impl std::fmt::Display for LockOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.what)
    }
}

/// The cache lock, held for a whole command. An OS file lock: it is released when its holder
/// exits, however it exits. `gc`, `verify`, `push` and `pull` hold it exclusively; runs (and a
/// loaded `predict` or `serve` chain) hold it shared, so that several runners (workers) work on
/// one cache at once while `gc` waits for all of them. A command that must wait says who holds
/// the lock.
pub struct Lock {
    _file: File,
}

impl Lock {
    fn open(cache: &Cache) -> Result<File> {
        let path = cache.root.join("lock");
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))
    }

    fn owner(cache: &Cache) -> LockOwner {
        let raw = fs::read(cache.root.join("lock.owner")).unwrap_or_default();
        serde_json::from_slice(&raw).unwrap_or_else(|_| LockOwner {
            what: String::from_utf8_lossy(&raw).trim().to_string(),
            ..LockOwner::default()
        })
    }

    pub fn acquire(cache: &Cache, what: &str, wait: bool) -> Result<Lock> {
        Self::acquire_for(cache, what, None, wait)
    }

    /// Takes the lock, waiting for it unless `wait` is false. `pipeline` is recorded for others.
    pub fn acquire_for(
        cache: &Cache,
        what: &str,
        pipeline: Option<&Path>,
        wait: bool,
    ) -> Result<Lock> {
        Self::take(cache, what, pipeline, wait, false)
    }

    /// Takes the lock exclusively if nobody holds it, without waiting: `None` when it is held.
    pub fn try_exclusive(
        cache: &Cache,
        what: &str,
        pipeline: Option<&Path>,
    ) -> Result<Option<Lock>> {
        let file = Self::open(cache)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        Self::record(cache, what, pipeline)?;
        Ok(Some(Lock { _file: file }))
    }

    /// Takes the lock shared (with other runs), waiting for an exclusive holder (`gc`, `verify`)
    /// unless `wait` is false.
    pub fn acquire_shared(
        cache: &Cache,
        what: &str,
        pipeline: Option<&Path>,
        wait: bool,
    ) -> Result<Lock> {
        Self::take(cache, what, pipeline, wait, true)
    }

    /// The lock, exclusive or `shared`: taken at once if free, else waited for (saying who holds
    /// it) or, without `wait`, refused with who holds it.
    fn take(
        cache: &Cache,
        what: &str,
        pipeline: Option<&Path>,
        wait: bool,
        shared: bool,
    ) -> Result<Lock> {
        let file = Self::open(cache)?;
        let tried = if shared {
            file.try_lock_shared()
        } else {
            file.try_lock()
        };
        match tried {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let owner = Self::owner(cache);
                if !wait {
                    bail!(
                        "the cache {} is locked by another {} ({owner}); rerun without --no-wait to wait for it",
                        cache.root.display(),
                        if shared { "command" } else { "runner" }
                    );
                }
                eprintln!("waiting for the cache lock, held by {owner}");
                if shared {
                    file.lock_shared()?;
                } else {
                    file.lock()?;
                }
            }
            Err(fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        Self::record(cache, what, pipeline)?;
        Ok(Lock { _file: file })
    }

    /// Says in `lock.owner` who holds the lock (with shared holders, the latest of them).
    fn record(cache: &Cache, what: &str, pipeline: Option<&Path>) -> Result<()> {
        let owner = LockOwner {
            pid: std::process::id(),
            what: what.to_string(),
            pipeline: pipeline.map(|p| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())),
        };
        fsutil::write_bytes_atomic(&cache.root.join("lock.owner"), &serde_json::to_vec(&owner)?)?;
        Ok(())
    }

    /// Who holds the lock now, or `None` when it is free. Takes nothing.
    pub fn holder(cache: &Cache) -> Result<Option<LockOwner>> {
        let file = Self::open(cache)?;
        match file.try_lock() {
            Ok(()) => {
                file.unlock()?;
                Ok(None)
            }
            Err(fs::TryLockError::WouldBlock) => Ok(Some(Self::owner(cache))),
            Err(fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }
}
