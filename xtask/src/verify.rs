//! `cargo xtask verify`: checks every artifact and every store file in full, and with `--repair`
//! removes (artifacts) or quarantines (store files) the damaged ones, so that the next run makes
//! them again. A run checks what it reads anyway; this is for checking a whole cache at once
//! (after a disk incident, before sharing it).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use llmembed_core::fsutil;

use crate::cache::{FileHashes, Lock, Lookup};
use crate::gc::live_keys;
use crate::pipeline::Plan;
use crate::runner::Workspace;

/// One damaged item and, with `--repair`, what was done about it.
pub struct Damage {
    pub path: PathBuf,
    pub why: String,
    pub repaired: Option<String>,
}

#[derive(Default)]
pub struct VerifyReport {
    pub artifacts: usize,
    pub store_files: usize,
    pub bytes: u64,
    pub damaged: Vec<Damage>,
}

/// Checks the artifacts of `plans` (every artifact when `plans` is empty) and every store file.
/// Holds the cache lock meanwhile.
pub fn verify(plans: &[Plan], ws: &Workspace, repair: bool, wait: bool) -> Result<VerifyReport> {
    let _lock = Lock::acquire(
        &ws.cache,
        if repair { "verify --repair" } else { "verify" },
        wait,
    )?;
    let only: Option<BTreeSet<String>> = if plans.is_empty() {
        None
    } else {
        let mut hashes = FileHashes::open(&ws.cache);
        Some(
            plans
                .iter()
                .flat_map(|p| live_keys(p, ws, &mut hashes))
                .collect(),
        )
    };
    let mut report = VerifyReport::default();
    for (key, size) in ws.cache.artifacts()? {
        if only.as_ref().is_some_and(|keys| !keys.contains(&key)) {
            continue;
        }
        report.artifacts += 1;
        report.bytes += size;
        let dir = ws.cache.artifact_dir(&key);
        let problem = match ws.cache.lookup(&key) {
            Lookup::Hit(m) => ws.cache.verify_files(&m, None).err(),
            // The full check says exactly which file and hashes, where the manifest is readable.
            Lookup::Corrupt(why) => Some(
                ws.cache
                    .manifest(&key)
                    .and_then(|m| ws.cache.verify_files(&m, None).err())
                    .unwrap_or(why),
            ),
            Lookup::Missing => None,
        };
        if let Some(why) = problem {
            let repaired = if repair {
                fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
                Some("removed".to_string())
            } else {
                None
            };
            report.damaged.push(Damage {
                path: dir,
                why,
                repaired,
            });
        }
    }
    check_store_files(&ws.cache.root.join("stores"), repair, &mut report)?;
    Ok(report)
}

/// Every `.parquet` file under `dir` (but in `quarantine/` folders and temporaries) carries a
/// checksum file (see `fsutil::write_checksummed`); checks each in full.
fn check_store_files(dir: &Path, repair: bool, report: &mut VerifyReport) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') || name == fsutil::QUARANTINE_DIR {
            continue;
        }
        if path.is_dir() {
            check_store_files(&path, repair, report)?;
            continue;
        }
        if !name.ends_with(".parquet") {
            continue;
        }
        report.store_files += 1;
        report.bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if let Err(why) = fsutil::verify_checksummed(&path) {
            let repaired = if repair {
                let moved = fsutil::quarantine(&path)?;
                Some(format!("moved to {}", moved.display()))
            } else {
                None
            };
            report.damaged.push(Damage {
                path,
                why,
                repaired,
            });
        }
    }
    Ok(())
}

pub fn print(report: &VerifyReport) {
    for d in &report.damaged {
        match &d.repaired {
            Some(what) => crate::outln!("damaged  {}: {}; {what}", d.path.display(), d.why),
            None => crate::outln!("damaged  {}: {}", d.path.display(), d.why),
        }
    }
    crate::outln!(
        "checked {} artifact(s) and {} store file(s), {} bytes: {} damaged",
        report.artifacts,
        report.store_files,
        crate::runner::thousands(report.bytes as usize),
        report.damaged.len()
    );
}
