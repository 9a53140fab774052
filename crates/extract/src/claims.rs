//! Claims on the shards of a store plan, so that several processes (on this machine, or on
//! machines sharing the store's filesystem) embed one plan together, each shard once.
//!
//! A claim is the file `.claims/<plan>-<index>.json` in the store's fingerprint folder (a dot
//! folder: never pushed to a remote cache). It is made by writing its content under a temporary
//! name and hard-linking that to the claim's name: the link fails when the name exists, on local
//! filesystems and on NFS alike, so exactly one process holds a claim, and nobody ever reads a
//! half-written one. Its holder rewrites it (atomically) every heartbeat with the time and how
//! many texts it has embedded, and removes it once the shard is published. A claim whose
//! heartbeat is older than the stale timeout, or whose holder is a process of this host that is
//! gone, is taken over: under a takeover guard (`<claim>.takeover`, made the same way), the claim
//! is read again, removed if it is still the stale one, and claimed anew. Times are Unix seconds
//! written by the hosts themselves: hosts sharing a store need synchronised clocks (NTP).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use llmembed_core::fsutil::{self, write_bytes_atomic};
use llmembed_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// The folder of a store's claims, inside the fingerprint folder.
pub(crate) const CLAIMS_DIR: &str = ".claims";

/// Seconds without a heartbeat after which a claim is taken over (`LLMEMBED_CLAIM_STALE_SECS`).
const DEFAULT_STALE_SECS: f64 = 60.0;
/// Seconds between heartbeats (`LLMEMBED_CLAIM_HEARTBEAT_SECS`).
const DEFAULT_HEARTBEAT_SECS: f64 = 5.0;

fn secs_from_env(var: &str, default: f64) -> f64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(default)
}

pub(crate) fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// This machine's name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`).
pub(crate) fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// What a claim file holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClaimInfo {
    pub host: String,
    pub pid: u32,
    /// Tells this claim from an earlier one of the same process on the same shard.
    pub token: String,
    /// When the shard was claimed (Unix seconds).
    pub since: f64,
    /// The holder's last sign of life (Unix seconds).
    pub heartbeat: f64,
    /// Texts in the shard.
    pub texts: usize,
    /// When the holder started embedding for this store (Unix seconds) and how many texts it has
    /// embedded since, over all its shards: its rate is `worker_texts / (heartbeat -
    /// worker_started)`.
    pub worker_started: f64,
    pub worker_texts: usize,
}

impl ClaimInfo {
    /// Whether the holder is gone: its heartbeat is older than `stale_secs`, or it is a process
    /// of this host that no longer runs.
    pub fn is_stale(&self, stale_secs: f64, host: &str) -> bool {
        now() - self.heartbeat > stale_secs || (self.host == host && !fsutil::pid_alive(self.pid))
    }

    /// Texts per second of the holder, over all its shards so far.
    pub fn rate(&self) -> f64 {
        self.worker_texts as f64 / (self.heartbeat - self.worker_started).max(1e-9)
    }
}

/// The claims of one process on one store: its identity, timings and running count.
pub(crate) struct Claimer {
    dir: PathBuf,
    host: String,
    stale_secs: f64,
    heartbeat: Duration,
    started: f64,
    /// Texts this process has embedded into the store, shared with the heartbeat threads.
    embedded: Arc<AtomicUsize>,
    /// Claims taken over from a stale holder, for the run's notes.
    pub taken_over: usize,
}

/// What trying to claim a shard gave.
pub(crate) enum Attempt {
    Claimed(Claim),
    /// Another live process holds it.
    Busy,
}

/// A held claim: a heartbeat thread keeps it fresh until it is dropped, which removes the file.
pub(crate) struct Claim {
    path: PathBuf,
    token: String,
    /// Dropped to stop the heartbeat thread.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn read_claim(path: &Path) -> Option<ClaimInfo> {
    let raw = fs::read(path).ok()?;
    serde_json::from_slice(&raw).ok()
}

/// Makes `path` with `bytes` if it does not exist: written under a temporary name, then
/// hard-linked into place (fails when the name exists). `Ok(false)` when it existed.
fn create_exclusive(path: &Path, bytes: &[u8]) -> Result<bool> {
    let tmp = fsutil::temp_path_for(path);
    fs::write(&tmp, bytes).map_err(|e| Error::io("write claim", &tmp, e))?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io("create claim", path, e)),
    }
}

impl Claimer {
    /// The claimer of this process for the store folder `store` (timeouts from the
    /// environment).
    pub fn new(store: &Path) -> Result<Claimer> {
        let dir = store.join(CLAIMS_DIR);
        fsutil::create_dir_all(&dir)?;
        Ok(Claimer {
            dir,
            host: host_name(),
            stale_secs: secs_from_env("LLMEMBED_CLAIM_STALE_SECS", DEFAULT_STALE_SECS),
            heartbeat: Duration::from_secs_f64(secs_from_env(
                "LLMEMBED_CLAIM_HEARTBEAT_SECS",
                DEFAULT_HEARTBEAT_SECS,
            )),
            started: now(),
            embedded: Arc::new(AtomicUsize::new(0)),
            taken_over: 0,
        })
    }

    pub fn path(&self, plan: &str, index: usize) -> PathBuf {
        self.dir.join(format!("{plan}-{index:05}.json"))
    }

    /// Counts texts embedded by this process (shown in its heartbeats).
    pub fn add_embedded(&self, n: usize) {
        self.embedded.fetch_add(n, Ordering::Relaxed);
    }

    fn info(&self, texts: usize) -> ClaimInfo {
        let t = now();
        ClaimInfo {
            host: self.host.clone(),
            pid: std::process::id(),
            token: fsutil::unique_suffix(),
            since: t,
            heartbeat: t,
            texts,
            worker_started: self.started,
            worker_texts: self.embedded.load(Ordering::Relaxed),
        }
    }

    /// Claims shard `index` of `plan` (of `texts` texts), taking it over if its holder is
    /// stale.
    pub fn try_claim(&mut self, plan: &str, index: usize, texts: usize) -> Result<Attempt> {
        let path = self.path(plan, index);
        for _ in 0..3 {
            let info = self.info(texts);
            if create_exclusive(&path, &serde_json::to_vec(&info).expect("claim serializes"))? {
                return Ok(Attempt::Claimed(self.hold(path, info)));
            }
            match read_claim(&path) {
                // Gone meanwhile (published and released): try again.
                None if !path.exists() => continue,
                // Unreadable: only a damaged file can be (claims are linked whole); old
                // enough, it is removed under the guard like a stale one.
                None => {
                    let old = fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|m| m.elapsed().ok())
                        .is_some_and(|age| age.as_secs_f64() > self.stale_secs);
                    if !old || !self.take_over(&path, None)? {
                        return Ok(Attempt::Busy);
                    }
                }
                Some(held) if held.is_stale(self.stale_secs, &self.host) => {
                    if !self.take_over(&path, Some(&held))? {
                        return Ok(Attempt::Busy);
                    }
                    log::info!(
                        "  took over shard {index} of plan {plan} from {}:{} (no heartbeat for {:.0}s)",
                        held.host,
                        held.pid,
                        now() - held.heartbeat
                    );
                    self.taken_over += 1;
                }
                Some(_) => return Ok(Attempt::Busy),
            }
        }
        Ok(Attempt::Busy)
    }

    /// Removes the stale claim `path` (still `seen`) under the takeover guard. False when
    /// another process is taking it over, or the claim changed meanwhile.
    fn take_over(&self, path: &Path, seen: Option<&ClaimInfo>) -> Result<bool> {
        let guard = path.with_extension("takeover");
        let me = format!("{}:{}:{}", self.host, std::process::id(), now());
        if !create_exclusive(&guard, me.as_bytes())? {
            // A taker that died leaves its guard: removed once it is as old as a stale claim.
            let old = fs::metadata(&guard)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age.as_secs_f64() > self.stale_secs);
            if old {
                let _ = fs::remove_file(&guard);
            }
            return Ok(false);
        }
        let still = match (read_claim(path), seen) {
            (Some(now_held), Some(seen)) => now_held.token == seen.token,
            (None, None) => path.exists(),
            _ => false,
        };
        if still {
            let _ = fs::remove_file(path);
        }
        let _ = fs::remove_file(&guard);
        Ok(still)
    }

    fn hold(&self, path: PathBuf, info: ClaimInfo) -> Claim {
        // The heartbeat thread waits on a channel rather than sleeping: dropping the claim drops
        // the sender, which wakes it at once. (It slept in ticks of 100 ms, and the join at the
        // end of every shard waited 50 ms on average for the tick to end: a tenth of a small
        // model's shard of 256 texts.)
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = {
            let (path, embedded, every) = (path.clone(), self.embedded.clone(), self.heartbeat);
            let mut info = info.clone();
            std::thread::spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    // Taken over (this process was stopped past the timeout): the new holder's
                    // claim is left alone; this one's shard is still written, with the same bytes.
                    if read_claim(&path).is_none_or(|c| c.token != info.token) {
                        return;
                    }
                    info.heartbeat = now();
                    info.worker_texts = embedded.load(Ordering::Relaxed);
                    if let Err(e) = write_bytes_atomic(
                        &path,
                        &serde_json::to_vec(&info).expect("claim serializes"),
                    ) {
                        log::warn!("heartbeat of {}: {e}", path.display());
                    }
                }
            })
        };
        Claim {
            path,
            token: info.token,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Wakes the heartbeat thread, which then ends.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if read_claim(&self.path).is_some_and(|c| c.token == self.token) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// One claim as `status` shows it.
#[derive(Clone, Debug)]
pub struct ClaimView {
    pub index: usize,
    pub info: ClaimInfo,
    pub stale: bool,
}

/// The claims in the store folder `store` of plan `plan`, by shard.
pub(crate) fn list(store: &Path, plan: &str) -> Vec<ClaimView> {
    let dir = store.join(CLAIMS_DIR);
    let stale_secs = secs_from_env("LLMEMBED_CLAIM_STALE_SECS", DEFAULT_STALE_SECS);
    let host = host_name();
    let mut out: Vec<ClaimView> = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            let index = name
                .strip_prefix(&format!("{plan}-"))?
                .strip_suffix(".json")?
                .parse()
                .ok()?;
            let info = read_claim(&e.path())?;
            let stale = info.is_stale(stale_secs, &host);
            Some(ClaimView { index, info, stale })
        })
        .collect();
    out.sort_by_key(|c| c.index);
    out
}

/// Removes the claims (and takeover guards, temporaries) of plan `plan` for shards that are
/// published, and the claims of stale holders: what killed processes left behind. Callers run
/// this when every shard of the plan is done.
pub(crate) fn remove_leftovers(store: &Path, plan: &str) {
    let dir = store.join(CLAIMS_DIR);
    for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with(&format!("{plan}-"))
            || name.starts_with(&format!(".{plan}-"))
                && fsutil::temp_owner(&name).is_some_and(|p| !fsutil::pid_alive(p));
        if ours {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Removes the claims, of any plan, on shards that are published, and their takeover guards: a
/// holder killed between publishing its shard and removing its claim leaves one, and so does a
/// taker of that stale claim killed while it holds the guard; no later process claims that
/// shard again to clean them up. A live holder that has just published removes its own claim a
/// moment later anyway (its heartbeat may write it back until then; its removal ignores a
/// missing file), and a live taker its guard. Callers run this once every shard they need is
/// in the store.
pub(crate) fn remove_published(store: &Path) {
    let dir = store.join(CLAIMS_DIR);
    for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((plan, index)) = name
            .strip_suffix(".json")
            .or_else(|| name.strip_suffix(".takeover"))
            .and_then(|stem| stem.rsplit_once('-'))
            .and_then(|(plan, i)| Some((plan, i.parse::<usize>().ok()?)))
        else {
            continue;
        };
        if !plan.starts_with('.') && store.join(crate::store::shard_name(plan, index)).exists() {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What killed holders and takers leave on a published shard goes; what is on a shard still
    /// to write stays (its holder or taker may be alive).
    #[test]
    fn published_shards_lose_their_claims_and_takeover_guards() {
        let store = tempfile::tempdir().unwrap();
        let claims = store.path().join(CLAIMS_DIR);
        fs::create_dir_all(&claims).unwrap();
        let plan = "3579a8f5a7d6d6ff";
        fs::write(
            store.path().join(crate::store::shard_name(plan, 1)),
            b"shard",
        )
        .unwrap();
        let names = [
            format!("{plan}-00001.json"),
            format!("{plan}-00001.takeover"),
            format!("{plan}-00002.json"),
            format!("{plan}-00002.takeover"),
        ];
        for name in &names {
            fs::write(claims.join(name), b"{}").unwrap();
        }
        remove_published(store.path());
        let mut left: Vec<String> = fs::read_dir(&claims)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, names[2..]);
    }
}
