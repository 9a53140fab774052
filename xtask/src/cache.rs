//! The artifact cache under `cache/`:
//!
//! ```text
//! cache/
//!   artifacts/<key>/            one published artifact: the stage's files + manifest.json
//!   tmp/<key>-<pid>/            a stage being written (removed on failure or at the next run)
//!   stores/<kind>/              persistent per-kind scratch (resumable shards, per-text memo)
//!   models/                     fetched model files
//!   runs/<pipeline>/<stage>.json  the preimage of the last run of each stage (for `status`)
//!   quarantine/<key>-<stamp>/   artifacts found damaged, moved aside (removed by `gc`)
//!   file-hashes.json            memo of external files' hashes by (path, size, mtime)
//!   lock, lock.owner            held by the runner (and gc, verify) for the whole command
//! ```
//!
//! An artifact's key is the blake3 of its canonical preimage ([`Preimage`]). Publication is a
//! rename of a complete, fsynced folder, so an artifact is either absent or complete. A hit is
//! checked cheaply ([`Cache::lookup`]); a file whose bytes are about to be read is checked in full
//! ([`Cache::verify_files`]).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use llmembed_core::fsutil;

use crate::pipeline::Plan;

pub use crate::lock::{Lock, LockOwner};

pub const MANIFEST: &str = "manifest.json";

/// Everything an artifact's content depends on. Its blake3 is the cache key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preimage {
    pub kind: String,
    pub version: u32,
    pub params: Value,
    /// Present only for stages whose output depends on the seed.
    pub seed: Option<u64>,
    /// The pipeline's seed, present only where the stage's own `seed` param took its place in
    /// `seed` and the stage still reads the pipeline's (`Stage::READS_PIPELINE_SEED`, through
    /// `Env::seed`: the MLP draws from it the CV folds every classifier shares). Absent
    /// everywhere else, so those keys are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_seed: Option<u64>,
    /// Per input, in order: the content hashes of the files the stage reads (not upstream keys,
    /// so that an upstream rerun with identical bytes does not invalidate this stage).
    pub inputs: Vec<BTreeMap<String, String>>,
    /// Files and identifiers outside the cache: name -> content hash or immutable id.
    pub externals: BTreeMap<String, String>,
}

impl Preimage {
    pub fn key(&self) -> String {
        // serde_json without `preserve_order` sorts object keys: the encoding is canonical.
        let bytes = serde_json::to_vec(self).expect("preimage serializes");
        fsutil::hash_bytes(&bytes)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    /// blake3 of the whole file (used as the content hash of downstream inputs).
    pub blake3: String,
    /// blake3 of the size and three 64 KiB samples: what a cache hit checks, cheaply.
    pub sample: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub key: String,
    pub preimage: Preimage,
    pub stage_id: String,
    pub files: Vec<FileEntry>,
    pub rows_out: usize,
    pub notes: Vec<String>,
    /// The stage's longer facts (`Summary::details`), shown by `show`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
    /// The folders of its kind's store the run read or wrote (`Summary::stores`), which
    /// `gc --stores` keeps. `None` in manifests written before they were recorded: such an
    /// artifact may use any folder of its kind's store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stores: Option<Vec<String>>,
    pub seconds: f64,
    /// The stage's peak resident memory while it ran (Linux; see `rss.rs`), absent elsewhere
    /// and in manifests written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    pub created_unix: u64,
}

impl Manifest {
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }
}

/// Why a file of an artifact is damaged: the words of every full check.
pub fn content_mismatch(path: &Path, actual: &str, recorded: &str) -> String {
    format!(
        "{}: content does not match its manifest (blake3 {actual}, recorded {recorded})",
        path.display()
    )
}

pub struct Cache {
    pub root: PathBuf,
}

/// Test-only fault injection, so that a crash can be placed exactly rather than by timing:
/// when `LLMEMBED_FAULT_AT` names `point`, the process kills itself with SIGKILL there (no
/// clean-up code runs, as in a crash or `kill -9`). Points in [`Cache::publish`]:
/// `publish:hashing` (after the first file is hashed), `publish:manifest` (manifest written,
/// folder not yet renamed), `publish:aside` (the existing artifact of the same key moved aside, the
/// new one not yet renamed), `publish:renamed` (folder renamed, `artifacts/` not yet fsynced).
/// Nothing sets it outside `tests/crash_points.rs`.
fn fault_point(point: &str) {
    if std::env::var_os("LLMEMBED_FAULT_AT").is_some_and(|v| v == point) {
        // kill(1), not kill(2): the runner has no unsafe code (only the kernels crate does).
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        // The signal is on its way; nothing after this point may run.
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

/// Why a cached artifact was not used.
#[derive(Debug)]
pub enum Lookup {
    Hit(Box<Manifest>),
    Missing,
    Corrupt(String),
}

const SAMPLE: u64 = 64 * 1024;

/// Hashes the size and three 64 KiB windows (start, middle, end): cheap on GB-sized files, and it
/// catches truncation, a partial write and most in-place damage.
pub fn sample_hash(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let size = file.metadata()?.len();
    let mut hasher = blake3::Hasher::new();
    hasher.update(&size.to_le_bytes());
    let mut buf = vec![0u8; SAMPLE as usize];
    for start in [
        0,
        size.saturating_sub(SAMPLE) / 2,
        size.saturating_sub(SAMPLE),
    ] {
        file.seek(SeekFrom::Start(start))?;
        let n = (&mut file).take(SAMPLE).read(&mut buf)?;
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

impl Cache {
    pub fn new(root: PathBuf) -> Result<Self> {
        for sub in ["artifacts", "tmp", "stores", "models", "runs", "quarantine"] {
            fs::create_dir_all(root.join(sub))
                .with_context(|| format!("create {}", root.join(sub).display()))?;
        }
        Ok(Cache { root })
    }

    pub fn artifact_dir(&self, key: &str) -> PathBuf {
        self.root.join("artifacts").join(key)
    }

    pub fn store_dir(&self, kind: &str) -> PathBuf {
        self.root.join("stores").join(kind)
    }

    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }

    /// Looks an artifact up and checks cheaply that it is complete and intact: manifest, sizes
    /// and sampled hashes. Each reason names the path.
    pub fn lookup(&self, key: &str) -> Lookup {
        let dir = self.artifact_dir(key);
        if !dir.exists() {
            return Lookup::Missing;
        }
        let manifest_path = dir.join(MANIFEST);
        let manifest: Manifest = match fs::read(&manifest_path)
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(serde_json::from_slice(&b)?))
        {
            Ok(m) => m,
            Err(e) => {
                return Lookup::Corrupt(format!("{}: unreadable: {e}", manifest_path.display()));
            }
        };
        if manifest.key != key {
            return Lookup::Corrupt(format!(
                "{}: made for key {}",
                manifest_path.display(),
                manifest.key
            ));
        }
        for f in &manifest.files {
            let path = dir.join(&f.name);
            match fs::metadata(&path) {
                Err(_) => return Lookup::Corrupt(format!("{}: missing", path.display())),
                Ok(m) if m.len() != f.size => {
                    return Lookup::Corrupt(format!(
                        "{}: {} bytes, its manifest says {}",
                        path.display(),
                        m.len(),
                        f.size
                    ));
                }
                Ok(_) => {}
            }
            match sample_hash(&path) {
                Ok(h) if h == f.sample => {}
                Ok(_) => {
                    return Lookup::Corrupt(format!(
                        "{}: content does not match its manifest (sampled check)",
                        path.display()
                    ));
                }
                Err(e) => return Lookup::Corrupt(format!("{}: {e:#}", path.display())),
            }
        }
        Lookup::Hit(Box::new(manifest))
    }

    /// The manifest of an artifact, if it has a readable one made for this key (for saying
    /// precisely what is wrong with an artifact that failed its lookup).
    pub fn manifest(&self, key: &str) -> Option<Manifest> {
        let bytes = fs::read(self.artifact_dir(key).join(MANIFEST)).ok()?;
        let manifest: Manifest = serde_json::from_slice(&bytes).ok()?;
        (manifest.key == key).then_some(manifest)
    }

    /// Checks the named files of an artifact (all of them with `None`) in full against the blake3
    /// its manifest records, the hash that downstream keys were computed from. Run before any of
    /// those bytes are used; the sampled check of [`Cache::lookup`] misses most flipped bytes.
    pub fn verify_files(
        &self,
        manifest: &Manifest,
        names: Option<&[String]>,
    ) -> std::result::Result<(), String> {
        let dir = self.artifact_dir(&manifest.key);
        for f in &manifest.files {
            if names.is_some_and(|names| !names.contains(&f.name)) {
                continue;
            }
            let path = dir.join(&f.name);
            let actual = fsutil::hash_file(&path).map_err(|e| e.to_string())?;
            if actual != f.blake3 {
                return Err(content_mismatch(&path, &actual, &f.blake3));
            }
        }
        Ok(())
    }

    /// Moves a damaged artifact out of `artifacts/` into `quarantine/` (kept for inspection until
    /// the next `gc`) and returns where it went.
    pub fn quarantine_artifact(&self, key: &str) -> Result<PathBuf> {
        let dest = self
            .root
            .join("quarantine")
            .join(format!("{key}-{}", fsutil::unique_suffix()));
        let src = self.artifact_dir(key);
        fs::rename(&src, &dest)
            .with_context(|| format!("move {} to {}", src.display(), dest.display()))?;
        Ok(dest)
    }

    /// A fresh, empty folder for a stage to write into.
    pub fn begin(&self, key: &str) -> Result<PathBuf> {
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{key}-{}", std::process::id()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).with_context(|| format!("remove {}", tmp.display()))?;
        }
        fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        Ok(tmp)
    }

    /// Hashes the files a stage wrote, writes the manifest, fsyncs and renames the folder into
    /// place. A corrupt artifact with the same key is moved aside first. On failure the tmp
    /// folder is removed and the error names the path that failed.
    pub fn publish(
        &self,
        tmp: &Path,
        key: &str,
        preimage: &Preimage,
        stage_id: &str,
        summary: &llmembed_core::Summary,
        seconds: f64,
    ) -> Result<Manifest> {
        self.publish_with(tmp, key, preimage, stage_id, summary, seconds, true, None)
    }

    /// [`Cache::publish`], which with `replace` false keeps an intact artifact another runner
    /// published for the same key meanwhile (and returns its manifest) instead of replacing it:
    /// what runners sharing a cache do, so that no artifact anyone reads is ever moved. Records
    /// the stage's peak resident memory in the manifest when it was measured.
    #[allow(clippy::too_many_arguments)]
    pub fn publish_with(
        &self,
        tmp: &Path,
        key: &str,
        preimage: &Preimage,
        stage_id: &str,
        summary: &llmembed_core::Summary,
        seconds: f64,
        replace: bool,
        peak_rss_bytes: Option<u64>,
    ) -> Result<Manifest> {
        let result = (|| -> Result<Manifest> {
            let mut files = Vec::new();
            let mut names: Vec<String> = fs::read_dir(tmp)
                .and_then(|entries| {
                    entries
                        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                        .collect()
                })
                .with_context(|| format!("list {}", tmp.display()))?;
            names.sort();
            for name in names {
                let path = tmp.join(&name);
                if !path.is_file() {
                    bail!("stage wrote `{name}`, which is not a plain file");
                }
                if name.starts_with('.') {
                    bail!("stage left a temporary file `{name}` behind");
                }
                File::open(&path)
                    .and_then(|f| f.sync_all())
                    .with_context(|| format!("fsync {}", path.display()))?;
                files.push(FileEntry {
                    size: fs::metadata(&path)
                        .with_context(|| format!("stat {}", path.display()))?
                        .len(),
                    blake3: fsutil::hash_file(&path)?,
                    sample: sample_hash(&path)?,
                    name,
                });
                fault_point("publish:hashing");
            }
            let manifest = Manifest {
                key: key.to_string(),
                preimage: preimage.clone(),
                stage_id: stage_id.to_string(),
                files,
                rows_out: summary.rows_out,
                notes: summary.notes.clone(),
                details: summary.details.clone(),
                stores: Some(summary.stores.clone()),
                seconds,
                peak_rss_bytes,
                created_unix: std::time::SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            };
            fsutil::write_bytes_atomic(
                &tmp.join(MANIFEST),
                &serde_json::to_vec_pretty(&manifest)?,
            )?;
            fault_point("publish:manifest");
            File::open(tmp)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("fsync {}", tmp.display()))?;
            let dest = self.artifact_dir(key);
            // Runners sharing the cache publish one at a time (a short critical section).
            let _publishing = self.publish_lock()?;
            if !replace && let Lookup::Hit(existing) = self.lookup(key) {
                let _ = fs::remove_dir_all(tmp);
                return Ok(*existing);
            }
            if dest.exists() {
                let aside = self
                    .root
                    .join("tmp")
                    .join(format!("corrupt-{key}-{}", std::process::id()));
                fs::rename(&dest, &aside)
                    .with_context(|| format!("move {} to {}", dest.display(), aside.display()))?;
                fault_point("publish:aside");
                fs::remove_dir_all(&aside)
                    .with_context(|| format!("remove {}", aside.display()))?;
            }
            fs::rename(tmp, &dest)
                .with_context(|| format!("publish {} as {}", tmp.display(), dest.display()))?;
            fault_point("publish:renamed");
            let artifacts = self.root.join("artifacts");
            File::open(&artifacts)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("fsync {}", artifacts.display()))?;
            Ok(manifest)
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(tmp);
        }
        result
    }

    /// Publishes a folder already holding an artifact's checked files and its manifest (one
    /// pulled from a remote cache): fsyncs it and renames it into place, as [`Cache::publish`]
    /// does. On failure the folder is removed.
    pub fn adopt(&self, tmp: &Path, key: &str) -> Result<()> {
        let result = (|| -> Result<()> {
            for entry in fs::read_dir(tmp).with_context(|| format!("list {}", tmp.display()))? {
                let path = entry?.path();
                File::open(&path)
                    .and_then(|f| f.sync_all())
                    .with_context(|| format!("fsync {}", path.display()))?;
            }
            File::open(tmp)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("fsync {}", tmp.display()))?;
            let dest = self.artifact_dir(key);
            let _publishing = self.publish_lock()?;
            if matches!(self.lookup(key), Lookup::Hit(_)) {
                // Another runner published it meanwhile.
                let _ = fs::remove_dir_all(tmp);
                return Ok(());
            }
            fs::rename(tmp, &dest)
                .with_context(|| format!("publish {} as {}", tmp.display(), dest.display()))?;
            let artifacts = self.root.join("artifacts");
            File::open(&artifacts)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("fsync {}", artifacts.display()))
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(tmp);
        }
        result
    }

    /// The publication lock (`cache/publish.lock`, an OS file lock held while an artifact is
    /// renamed into place): released when the returned file is dropped.
    fn publish_lock(&self) -> Result<File> {
        let path = self.root.join("publish.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        file.lock()
            .with_context(|| format!("lock {}", path.display()))?;
        Ok(file)
    }

    /// Removes what dead processes left: every folder in `tmp/` (only a runner holding the lock
    /// writes there), and temporary files and folders (`.….tmp-<pid>`) of processes that are gone
    /// in `models/` (interrupted fetches) and `stores/` (interrupted shard writes). Only called
    /// while holding the lock. Returns the paths removed.
    pub fn clean_leftovers(&self) -> Result<Vec<PathBuf>> {
        let tmp = self.root.join("tmp");
        let mut removed = Vec::new();
        for entry in fs::read_dir(&tmp).with_context(|| format!("list {}", tmp.display()))? {
            let path = entry
                .with_context(|| format!("list {}", tmp.display()))?
                .path();
            if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            }
            .with_context(|| format!("remove {}", path.display()))?;
            removed.push(path);
        }
        // Fetch folders sit at most three levels down (models/pypi/.work-….tmp-<pid>), shard
        // temporaries two (stores/extract/<fingerprint>/.x.parquet.tmp-<pid>).
        removed.extend(fsutil::remove_dead_temps(&self.models_dir(), 3)?);
        removed.extend(self.remove_legacy_fetch_folders()?);
        removed.extend(fsutil::remove_dead_temps(&self.root.join("stores"), 3)?);
        Ok(removed)
    }

    /// Work folders of fetches killed before fetches used temporary names
    /// (`models/pypi/.work-<package>-<version>-<pid>`), whose process is gone.
    fn remove_legacy_fetch_folders(&self) -> Result<Vec<PathBuf>> {
        let dir = self.models_dir().join("pypi");
        let mut removed = Vec::new();
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(removed);
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix(".work-")
                .filter(|rest| !rest.contains(".tmp-"))
                .and_then(|rest| rest.rsplit_once('-'))
                .and_then(|(_, pid)| pid.parse::<u32>().ok());
            if let Some(pid) = pid
                && !fsutil::pid_alive(pid)
            {
                let path = entry.path();
                fs::remove_dir_all(&path).with_context(|| format!("remove {}", path.display()))?;
                removed.push(path);
            }
        }
        Ok(removed)
    }

    /// Quarantined artifacts (see [`Cache::quarantine_artifact`]) with their sizes.
    pub fn quarantined(&self) -> Result<Vec<(PathBuf, u64)>> {
        let dir = self.root.join("quarantine");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
            let path = entry?.path();
            let size = dir_size(&path);
            out.push((path, size));
        }
        out.sort();
        Ok(out)
    }

    fn run_record(&self, pipeline: &str, stage_id: &str) -> PathBuf {
        self.root
            .join("runs")
            .join(pipeline)
            .join(format!("{stage_id}.json"))
    }

    /// Remembers the preimage of the last run of a stage of a pipeline, by the pipeline's name,
    /// and the file that ran it (for `status`).
    pub fn record_run(&self, plan: &Plan, stage_id: &str, manifest: &Manifest) -> Result<()> {
        let path = self.run_record(&plan.name, stage_id);
        fs::create_dir_all(path.parent().expect("has parent"))?;
        let record = RunRecord {
            key: manifest.key.clone(),
            preimage: manifest.preimage.clone(),
            pipeline_file: Some(plan.file.clone()),
        };
        fsutil::write_bytes_atomic(&path, &serde_json::to_vec_pretty(&record)?)?;
        Ok(())
    }

    pub fn last_run(&self, pipeline: &str, stage_id: &str) -> Option<RunRecord> {
        let bytes = fs::read(self.run_record(pipeline, stage_id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Keys recorded as the last run of any stage of a pipeline.
    pub fn recorded_keys(&self, pipeline: &str) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.root.join("runs").join(pipeline)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| fs::read(entry.path()).ok())
            .filter_map(|bytes| serde_json::from_slice::<RunRecord>(&bytes).ok())
            .map(|r| r.key)
            .collect()
    }

    /// All published artifacts with their sizes in bytes.
    pub fn artifacts(&self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.root.join("artifacts"))? {
            let entry = entry?;
            let size = dir_size(&entry.path());
            out.push((entry.file_name().to_string_lossy().into_owned(), size));
        }
        out.sort();
        Ok(out)
    }
}

/// Bytes of every file under `path` (an artifact's folder, a store folder with its
/// subfolders).
pub(crate) fn dir_size(path: &Path) -> u64 {
    tree_stats(path).0
}

/// In one walk of `path` and everything under it: the bytes of every file, and the latest
/// modification time of the folder itself or of anything under it (`gc` keeps a store folder
/// written lately).
pub(crate) fn tree_stats(path: &Path) -> (u64, Option<std::time::SystemTime>) {
    let own = fs::metadata(path).and_then(|m| m.modified()).ok();
    let Ok(entries) = fs::read_dir(path) else {
        return (0, own);
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_stats(&e.path()),
            _ => e
                .metadata()
                .map_or((0, None), |m| (m.len(), m.modified().ok())),
        })
        .fold((0, own), |(size, newest), (s, t)| (size + s, newest.max(t)))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub key: String,
    pub preimage: Preimage,
    /// The pipeline file that ran it, as it was named (absent in records of older builds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_file: Option<PathBuf>,
}

/// Memo of external files' content hashes, keyed by path, size and modification time, so that a
/// fully cached rerun does not re-read a 250 MB model file.
pub struct FileHashes {
    path: PathBuf,
    map: BTreeMap<String, (u64, u128, String)>,
    dirty: bool,
}

impl FileHashes {
    pub fn open(cache: &Cache) -> Self {
        let path = cache.root.join("file-hashes.json");
        let map = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        FileHashes {
            path,
            map,
            dirty: false,
        }
    }

    pub fn hash(&mut self, file: &Path) -> Result<String> {
        let meta = fs::metadata(file)
            .with_context(|| format!("external file {} is not readable", file.display()))?;
        let mtime = meta
            .modified()?
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let key = file.to_string_lossy().into_owned();
        if let Some((size, t, h)) = self.map.get(&key)
            && *size == meta.len()
            && *t == mtime
        {
            return Ok(h.clone());
        }
        let h = fsutil::hash_file(file)?;
        self.map.insert(key, (meta.len(), mtime, h.clone()));
        self.dirty = true;
        Ok(h)
    }

    pub fn save(&mut self) -> Result<()> {
        if self.dirty {
            fsutil::write_bytes_atomic(&self.path, &serde_json::to_vec(&self.map)?)?;
            self.dirty = false;
        }
        Ok(())
    }
}
