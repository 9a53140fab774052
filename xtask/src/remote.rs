//! The remote cache: artifacts and store files shared through object storage (S3 and anything
//! that speaks its API, Google Cloud Storage, Azure Blob Storage, or a folder), through Apache
//! Arrow's `object_store` crate.
//!
//! Layout under the remote's prefix, mirroring the local cache:
//! * `artifacts/<key>/<file>` and, written last, `artifacts/<key>/manifest.json`: an artifact
//!   is in the remote once its manifest is; a reader never trusts a file without it.
//! * `stores/<kind>/<path>`: the stages' resumable stores (extraction shards). Each shard's
//!   checksum (`.blake3`) is pushed before the shard, as it is written locally.
//!
//! **Invariants.** Everything is content-addressed or immutable, so a put never overwrites
//! (`PutMode::Create`: an object that exists is left as it is, whoever wrote it); the one
//! exception is an object found damaged, which the runner replaces after computing it again.
//! Nothing pulled is used before it is checked: every artifact file against the manifest's
//! blake3 (then published locally with the same atomic rename as a computed artifact), every
//! shard by the store itself when it opens (its checksum file).
//!
//! Credentials and endpoints come from the standard variables of each service (`AWS_*`,
//! `GOOGLE_*`, `AZURE_*`), read by `object_store`'s builders.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow, bail};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ClientConfigKey, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::cache::{Cache, MANIFEST, Manifest, content_mismatch};

/// Few, short retries: a remote that is down must cost a run seconds, not the minutes of the
/// default policy, before the run goes on locally.
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 2,
        retry_timeout: std::time::Duration::from_secs(15),
        ..Default::default()
    }
}

fn client(key: ClientConfigKey) -> object_store::aws::AmazonS3ConfigKey {
    object_store::aws::AmazonS3ConfigKey::Client(key)
}

/// A remote cache, opened.
pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    runtime: tokio::runtime::Runtime,
}

/// What pulling an artifact found.
pub enum Pulled {
    /// Published in the local cache, every file checked.
    Published(Box<Manifest>),
    Absent,
    /// In the remote but not usable: why.
    Damaged(String),
}

impl Remote {
    /// Opens `url` (`s3://bucket/prefix`, `gs://…`, `az://container/prefix`, `file:///path`).
    /// Touches no network: a remote that is down is found at its first use.
    pub fn open(url: &str) -> Result<Remote> {
        let parsed = url::Url::parse(url).with_context(|| format!("remote `{url}`"))?;
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "s3" | "s3a" => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .with_retry(retry())
                    .with_config(client(ClientConfigKey::ConnectTimeout), "5s")
                    .build()?,
            ),
            "gs" => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .with_retry(retry())
                    .build()?,
            ),
            "az" | "azure" | "abfs" | "abfss" => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .with_retry(retry())
                    .build()?,
            ),
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| anyhow!("remote `{url}`: not a local path"))?;
                fs::create_dir_all(&dir)
                    .with_context(|| format!("remote `{url}`: create {}", dir.display()))?;
                Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&dir)?)
            }
            other => bail!(
                "remote `{url}`: unknown scheme `{other}` (expected s3://, gs://, az:// or file://)"
            ),
        };
        let prefix = if parsed.scheme() == "file" {
            ObjectPath::default()
        } else {
            ObjectPath::from(parsed.path().trim_matches('/'))
        };
        // One worker: the runner's main thread and its store pusher both block on it.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("start the remote cache's runtime")?;
        Ok(Remote {
            url: url.to_string(),
            store,
            prefix,
            runtime,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, parts: &[&str]) -> ObjectPath {
        let mut path = self.prefix.clone();
        for part in parts {
            for piece in part.split('/').filter(|p| !p.is_empty()) {
                path = path.clone().join(piece);
            }
        }
        path
    }

    fn get(&self, path: &ObjectPath) -> Result<Option<Vec<u8>>> {
        self.runtime.block_on(async {
            match self.store.get(path).await {
                Ok(found) => Ok(Some(found.bytes().await?.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Puts `bytes` at `path` unless an object is there already (`overwrite` replaces one
    /// found damaged). Says whether it wrote.
    fn put(&self, path: &ObjectPath, bytes: Vec<u8>, overwrite: bool) -> Result<bool> {
        let mode = if overwrite {
            PutMode::Overwrite
        } else {
            PutMode::Create
        };
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        self.runtime.block_on(async {
            match self
                .store
                .put_opts(path, PutPayload::from(bytes), opts)
                .await
            {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => Ok(false),
                Err(e) => Err(anyhow::Error::from(e).context(format!("put {path}"))),
            }
        })
    }

    /// Every object below `parts`, as paths relative to it.
    fn list(&self, parts: &[&str]) -> Result<Vec<String>> {
        let base = self.path(parts);
        let metas: Vec<_> = self
            .runtime
            .block_on(self.store.list(Some(&base)).try_collect::<Vec<_>>())?;
        let mut out: Vec<String> = metas
            .into_iter()
            .filter_map(|m| {
                m.location
                    .prefix_match(&base)
                    .map(|parts| parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>())
                    .map(|parts| parts.join("/"))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// The remote's files of the store of `kind`, as paths relative to `stores/<kind>/`: those
    /// in the `folders` named, or all with `None`.
    fn store_files(&self, kind: &str, folders: Option<&[String]>) -> Result<Vec<String>> {
        let Some(folders) = folders else {
            return self.list(&["stores", kind]);
        };
        let mut out = Vec::new();
        for folder in folders {
            let within = self.list(&["stores", kind, folder])?;
            out.extend(within.into_iter().map(|f| format!("{folder}/{f}")));
        }
        Ok(out)
    }

    /// Whether the remote holds the artifact `key` (its manifest).
    pub fn has_artifact(&self, key: &str) -> Result<bool> {
        let path = self.path(&["artifacts", key, MANIFEST]);
        self.runtime.block_on(async {
            match self.store.head(&path).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// The manifest of the artifact `key` in the remote, if it has a readable one for this key.
    pub fn manifest(&self, key: &str) -> Result<Option<Manifest>> {
        Ok(self
            .get(&self.path(&["artifacts", key, MANIFEST]))?
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
            .filter(|m| m.key == key))
    }

    /// Downloads the artifact `key`, checks every file against its manifest, and publishes it
    /// in `cache` atomically.
    pub fn pull_artifact(&self, cache: &Cache, key: &str) -> Result<Pulled> {
        let Some(manifest_bytes) = self.get(&self.path(&["artifacts", key, MANIFEST]))? else {
            return Ok(Pulled::Absent);
        };
        let manifest: Manifest = match serde_json::from_slice(&manifest_bytes) {
            Ok(m) => m,
            Err(e) => return Ok(Pulled::Damaged(format!("manifest unreadable: {e}"))),
        };
        if manifest.key != key {
            return Ok(Pulled::Damaged(format!(
                "manifest made for key {}",
                manifest.key
            )));
        }
        let tmp = cache.begin(key)?;
        let result = (|| -> Result<Option<String>> {
            for f in &manifest.files {
                let remote_path = self.path(&["artifacts", key, &f.name]);
                let Some(bytes) = self.get(&remote_path)? else {
                    return Ok(Some(format!("{remote_path}: missing")));
                };
                let actual = llmembed_core::fsutil::hash_bytes(&bytes);
                if actual != f.blake3 {
                    return Ok(Some(content_mismatch(
                        Path::new(remote_path.as_ref()),
                        &actual,
                        &f.blake3,
                    )));
                }
                fs::write(tmp.join(&f.name), &bytes)
                    .with_context(|| format!("write {}", tmp.join(&f.name).display()))?;
            }
            fs::write(tmp.join(MANIFEST), &manifest_bytes)
                .with_context(|| format!("write {}", tmp.join(MANIFEST).display()))?;
            cache.adopt(&tmp, key)?;
            Ok(None)
        })();
        match result {
            Ok(None) => Ok(Pulled::Published(Box::new(manifest))),
            Ok(Some(why)) => {
                let _ = fs::remove_dir_all(&tmp);
                Ok(Pulled::Damaged(why))
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }

    /// Pushes the local artifact of `manifest`: its files, then its manifest. An object already
    /// there is kept, unless `overwrite` (the remote copy was found damaged). Says how many
    /// objects it wrote.
    pub fn push_artifact(
        &self,
        cache: &Cache,
        manifest: &Manifest,
        overwrite: bool,
    ) -> Result<usize> {
        let dir = cache.artifact_dir(&manifest.key);
        let mut written = 0;
        let names = manifest
            .files
            .iter()
            .map(|f| f.name.as_str())
            .chain([MANIFEST]);
        for name in names {
            let local = dir.join(name);
            let bytes = fs::read(&local).with_context(|| format!("read {}", local.display()))?;
            if name != MANIFEST {
                // Never spread damage: push only bytes that match the manifest.
                let recorded = &manifest.file(name).expect("listed").blake3;
                let actual = llmembed_core::fsutil::hash_bytes(&bytes);
                if &actual != recorded {
                    bail!("{}", content_mismatch(&local, &actual, recorded));
                }
            }
            let path = self.path(&["artifacts", &manifest.key, name]);
            written += usize::from(self.put(&path, bytes, overwrite)?);
        }
        Ok(written)
    }

    /// Copies the store files of stage kind `kind` that the remote lacks into it (of the
    /// `folders` named, or of every folder with `None`): checksum files before the shards they
    /// vouch for. Temporaries and quarantined files stay local.
    pub fn push_store(
        &self,
        cache: &Cache,
        kind: &str,
        folders: Option<&[String]>,
    ) -> Result<usize> {
        let local = local_store_files(&cache.store_dir(kind), folders)?;
        if local.is_empty() {
            // Most stage kinds keep no store: no need to ask the remote what it has.
            return Ok(0);
        }
        let remote: std::collections::BTreeSet<String> =
            self.store_files(kind, folders)?.into_iter().collect();
        let mut written = 0;
        for rel in local.into_iter().filter(|f| !remote.contains(f)) {
            let path = cache.store_dir(kind).join(&rel);
            let bytes = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            written += usize::from(self.put(&self.path(&["stores", kind, &rel]), bytes, false)?);
        }
        Ok(written)
    }

    /// Copies into the local store of `kind` the files the remote has and it lacks, of the
    /// `folders` named or of every folder with `None` (each written under a temporary name and
    /// renamed; the store checks shards when it opens).
    pub fn pull_store(
        &self,
        cache: &Cache,
        kind: &str,
        folders: Option<&[String]>,
    ) -> Result<usize> {
        let dir = cache.store_dir(kind);
        let mut pulled = 0;
        for rel in self.store_files(kind, folders)? {
            if !store_file_shared(&rel) || dir.join(&rel).exists() {
                continue;
            }
            let Some(bytes) = self.get(&self.path(&["stores", kind, &rel]))? else {
                continue;
            };
            let path = dir.join(&rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("create {}", parent.display()))?;
            }
            llmembed_core::fsutil::write_bytes_atomic(&path, &bytes)?;
            pulled += 1;
        }
        Ok(pulled)
    }
}

/// Whether a store file (a path relative to the store folder) is shared: not a temporary, not
/// quarantined.
fn store_file_shared(rel: &str) -> bool {
    !rel.split('/')
        .any(|part| part.starts_with('.') || part == "quarantine")
}

/// The shared files of a kind's local store `dir` (of the `folders` named, or all with `None`),
/// relative to it, checksums before shards.
fn local_store_files(dir: &Path, folders: Option<&[String]>) -> Result<Vec<String>> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
        let Ok(entries) = fs::read_dir(dir) else {
            return Ok(());
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("list {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if !store_file_shared(&rel) {
                continue;
            }
            let path: PathBuf = entry.path();
            if path.is_dir() {
                walk(&path, &rel, out)?;
            } else {
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    match folders {
        None => walk(dir, "", &mut out)?,
        Some(folders) => {
            for folder in folders {
                walk(&dir.join(folder), folder, &mut out)?;
            }
        }
    }
    // `x.parquet.blake3` sorts after `x.parquet`: push checksums first so that a reader never
    // finds a shard without the file that vouches for it.
    out.sort_by_key(|f| (!f.ends_with(".blake3"), f.clone()));
    Ok(out)
}

/// The remote cache as a run uses it: the first failure is reported once and the run goes on
/// without the remote, unless it is required.
pub struct RemoteLink {
    pub remote: Remote,
    required: bool,
    down: std::sync::Mutex<bool>,
}

impl RemoteLink {
    pub fn new(remote: Remote, required: bool) -> RemoteLink {
        RemoteLink {
            remote,
            required,
            down: std::sync::Mutex::new(false),
        }
    }

    /// Runs `op` on the remote unless it is down. `Ok(None)`: the remote is (now) down and
    /// not required.
    pub fn call<T>(&self, what: &str, op: impl FnOnce(&Remote) -> Result<T>) -> Result<Option<T>> {
        if *self.down.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(None);
        }
        match op(&self.remote) {
            Ok(v) => Ok(Some(v)),
            Err(e) if self.required => Err(e.context(format!(
                "remote cache {} ({what}); it is required (--remote-required)",
                self.remote.url()
            ))),
            Err(e) => {
                *self.down.lock().unwrap_or_else(|e| e.into_inner()) = true;
                log::warn!(
                    "remote cache {} failed ({what}: {e:#}); going on with the local cache only",
                    self.remote.url()
                );
                Ok(None)
            }
        }
    }
}
