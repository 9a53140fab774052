//! The reusing store: per model fingerprint, a folder of shard Parquet files mapping text hashes
//! (blake3 of the text) to pooled vectors, so that a text is embedded once per fingerprint and an
//! interrupted run resumes where it stopped.
//!
//! Layout of `<store_dir>/<fingerprint>/`:
//! * `fingerprint.json`: what the fingerprint was computed from (for humans).
//! * `plan-<plan>.json`: the shards a run planned: its `shard_rows` and, per shard, the blake3 of
//!   its ordered text hashes. A rerun whose missing texts are exactly the unfinished tail of a
//!   plan continues that plan, cutting the same shards, so its output is byte-identical.
//! * `<plan>-<index>.parquet`: an EmbeddingTable whose `id` is the text hash and whose `label` is
//!   1 when the text was truncated at `max_tokens` (label names `complete`, `truncated`). Vectors
//!   are always stored as f32. Written atomically (temporary name, then rename) with its blake3
//!   in `<plan>-<index>.parquet.blake3`, written before the shard is renamed into place.
//! * `quarantine/`: shards that failed their check when the store was opened (a flipped byte, a
//!   truncated file, no checksum). Their texts are embedded again; nothing reads this folder.
//!
//! Every shard is checked in full against its checksum when the store is opened, before any of
//! its bytes are used, so a damaged shard can never flow into an artifact.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use llmembed_core::fsutil::{
    self, create_dir_all, quarantine, verify_checksummed, write_bytes_atomic, write_checksummed,
};
use llmembed_core::{
    EmbeddingTable, Error, Precision, Result, VectorColumn, read_embedding_table,
    write_embedding_table,
};

/// Where one text's vectors are: shard number (into `Store::shards`) and row in it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Loc {
    pub shard: usize,
    pub row: usize,
    pub truncated: bool,
}

pub(crate) struct Store {
    pub dir: PathBuf,
    pub columns: Vec<(String, usize)>,
    /// Shard files, in the order they were indexed or written.
    pub shards: Vec<PathBuf>,
    /// Text hash -> location.
    pub index: HashMap<String, Loc>,
    /// Shards that failed their check at open and were moved aside: (shard, where it went, why).
    pub quarantined: Vec<(PathBuf, PathBuf, String)>,
}

/// The shards still to write for the missing texts.
pub(crate) struct Plan {
    pub id: String,
    /// Shards of the plan already in the store.
    pub done: usize,
    pub total: usize,
    /// Index and text hashes of each remaining shard, in order.
    pub remaining: Vec<(usize, Vec<String>)>,
}

const TRUNCATION_LABELS: [&str; 2] = ["complete", "truncated"];

/// A temporary file untouched for this long is a dead writer's, whoever wrote it.
const TEMP_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(600);

fn older_than(path: &Path, age: std::time::Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| m.elapsed().ok())
        .is_some_and(|a| a > age)
}

/// Shard `index` of plan `plan`: its file name.
pub(crate) fn shard_name(plan: &str, index: usize) -> String {
    format!("{plan}-{index:05}.parquet")
}

fn digest(hashes: &[String]) -> String {
    let mut h = blake3::Hasher::new();
    for x in hashes {
        h.update(x.as_bytes());
        h.update(b"\n");
    }
    h.finalize().to_hex().to_string()
}

impl Store {
    /// Opens (creating) the store folder `dir` of one fingerprint (`about`: what it was computed
    /// from) and indexes its complete shards. A shard that fails its checksum or cannot be read
    /// is quarantined (see the module docs) and its texts count as missing.
    pub fn open(
        dir: PathBuf,
        about: &serde_json::Value,
        columns: Vec<(String, usize)>,
    ) -> Result<Store> {
        create_dir_all(&dir)?;
        let about_path = dir.join("fingerprint.json");
        if !about_path.exists() {
            write_bytes_atomic(&about_path, format!("{about:#}\n").as_bytes())?;
        }
        let mut names: Vec<String> = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("list store", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("list store", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // A temporary file of a writer that was killed: remove it when its process is
                // gone (a live one belongs to a concurrent run).
                // The pid is only this host's: on a shared filesystem the writer may be another
                // machine's process, so the file must also be older than any shard write takes.
                if let Some(pid) = fsutil::temp_owner(&name)
                    && !fsutil::pid_alive(pid)
                    && older_than(&entry.path(), TEMP_MAX_AGE)
                {
                    let _ = fs::remove_file(entry.path());
                }
                continue;
            }
            if name.ends_with(".parquet") {
                names.push(name);
            }
        }
        names.sort();
        let mut store = Store {
            dir,
            columns,
            shards: Vec::new(),
            index: HashMap::new(),
            quarantined: Vec::new(),
        };
        for name in names {
            let path = store.dir.join(&name);
            let checked = verify_checksummed(&path).and_then(|()| {
                read_embedding_table(&path, Some(&[] as &[&str])).map_err(|e| e.to_string())
            });
            match checked {
                Ok(t) => store.add(path, &t.ids, &t.labels),
                Err(why) => {
                    let moved = quarantine(&path)?;
                    store.quarantined.push((path, moved, why));
                }
            }
        }
        Ok(store)
    }

    fn add(&mut self, path: PathBuf, ids: &[String], labels: &[i64]) {
        let shard = self.shards.len();
        self.shards.push(path);
        for (row, (id, &l)) in ids.iter().zip(labels).enumerate() {
            self.index.entry(id.clone()).or_insert(Loc {
                shard,
                row,
                truncated: l != 0,
            });
        }
    }

    /// Cuts `missing` (text hashes in order) into shards of `shard_rows`, continuing an earlier
    /// plan when `missing` is exactly the texts of some of its shards, in order (the shards
    /// not done yet: an interrupted run's tail, or the shards other processes have not
    /// published yet). Processes that plan the same missing texts get the same plan.
    pub fn plan(&self, missing: &[String], shard_rows: usize) -> Result<Plan> {
        let chunks: Vec<Vec<String>> = missing.chunks(shard_rows).map(|c| c.to_vec()).collect();
        let digests: Vec<String> = chunks.iter().map(|c| digest(c)).collect();
        if !chunks.is_empty() {
            for (_, p) in plan_files(&self.dir)? {
                let raw = fs::read_to_string(&p).map_err(|e| Error::io("read plan", &p, e))?;
                let v: serde_json::Value = serde_json::from_str(&raw)
                    .map_err(|e| Error::schema(&p, "plan", format!("bad JSON: {e}")))?;
                let rows = v["shard_rows"].as_u64().unwrap_or(0) as usize;
                let planned: Vec<String> = v["shards"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                if rows != shard_rows || planned.len() < digests.len() {
                    continue;
                }
                if let Some(remaining) = match_plan(&planned, missing, shard_rows) {
                    let id = v["id"].as_str().unwrap_or_default().to_string();
                    return Ok(Plan {
                        id,
                        done: planned.len() - remaining.len(),
                        total: planned.len(),
                        remaining,
                    });
                }
            }
        }
        let id = digest(&digests)[..16].to_string();
        if !chunks.is_empty() {
            let plan = serde_json::json!({
                "id": id, "shard_rows": shard_rows, "shards": digests,
            });
            let path = self.dir.join(format!("plan-{id}.json"));
            // Processes planning together write the same bytes: the first one's stays.
            if !path.exists() {
                write_bytes_atomic(&path, format!("{plan}\n").as_bytes())?;
            }
        }
        Ok(Plan {
            id,
            done: 0,
            total: chunks.len(),
            remaining: chunks.into_iter().enumerate().collect(),
        })
    }

    /// Indexes shard `index` of `plan` if another process has published it, after checking it
    /// in full. True when it is (now) in the index.
    pub fn adopt_shard(&mut self, plan: &str, index: usize) -> Result<bool> {
        let path = self.dir.join(shard_name(plan, index));
        if self.shards.contains(&path) {
            return Ok(true);
        }
        if !path.exists() {
            return Ok(false);
        }
        match verify_checksummed(&path).and_then(|()| {
            read_embedding_table(&path, Some(&[] as &[&str])).map_err(|e| e.to_string())
        }) {
            Ok(t) => {
                self.add(path, &t.ids, &t.labels);
                Ok(true)
            }
            Err(why) => Err(Error::compute(
                "read a shard another process published",
                format!("{}: {why}", path.display()),
            )),
        }
    }

    /// Writes one shard atomically and indexes it. `columns[i]` holds `hashes.len()` rows.
    pub fn write_shard(
        &mut self,
        plan_id: &str,
        index: usize,
        hashes: Vec<String>,
        truncated: Vec<bool>,
        columns: Vec<Vec<f32>>,
    ) -> Result<()> {
        let path = self.dir.join(shard_name(plan_id, index));
        let labels: Vec<i64> = truncated.iter().map(|&t| t as i64).collect();
        let table = EmbeddingTable {
            ids: hashes,
            labels,
            label_names: TRUNCATION_LABELS.iter().map(|s| s.to_string()).collect(),
            columns: self
                .columns
                .iter()
                .zip(columns)
                .map(|((name, dim), values)| VectorColumn::new(name.clone(), *dim, values))
                .collect(),
        };
        write_checksummed(&path, |tmp| {
            write_embedding_table(tmp, &table, Precision::F32)
        })?;
        self.add(path, &table.ids, &table.labels);
        Ok(())
    }

    /// Reads a whole shard (all columns), checking that it has the store's columns.
    pub fn read_shard(&self, shard: usize) -> Result<EmbeddingTable> {
        let path = &self.shards[shard];
        let names: Vec<&str> = self.columns.iter().map(|(n, _)| n.as_str()).collect();
        let t = read_embedding_table(path, Some(&names))?;
        for (c, (name, dim)) in t.columns.iter().zip(&self.columns) {
            if c.dim != *dim {
                return Err(Error::schema(
                    path,
                    name,
                    format!("{} values per vector, the model gives {dim}", c.dim),
                ));
            }
        }
        Ok(t)
    }
}

/// The plan files of the store folder `dir`, as (plan id, path), sorted.
pub(crate) fn plan_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut plans: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .map_err(|e| Error::io("list store", dir, e))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name
                .strip_prefix("plan-")?
                .strip_suffix(".json")?
                .to_string();
            Some((id, e.path()))
        })
        .collect();
    plans.sort();
    Ok(plans)
}

/// How many of plan `id`'s shards (its file at `path`, in the store folder `dir`) are written,
/// and how many it has: `(done, total)`.
pub(crate) fn plan_progress(dir: &Path, id: &str, path: &Path) -> Result<(usize, usize)> {
    let raw = fs::read_to_string(path).map_err(|e| Error::io("read plan", path, e))?;
    let plan: serde_json::Value = serde_json::from_str(&raw)
        .map_err(|e| Error::schema(path, "plan", format!("bad JSON: {e}")))?;
    let total = plan["shards"]
        .as_array()
        .map(Vec::len)
        .ok_or_else(|| Error::schema(path, "shards", "missing, or not a list"))?;
    let done = (0..total)
        .filter(|&i| dir.join(shard_name(id, i)).exists())
        .count();
    Ok((done, total))
}

/// What a rerun would resume in the store folder `dir`: each plan with shards still to write
/// (`plan <id>: <done> of <total> shards written`), joined by `; `, or `None` when every plan
/// is complete. A plan file that cannot be read counts as unfinished, with the reason: keeping
/// a folder that is not understood is the safe side.
pub(crate) fn unfinished(dir: &Path) -> Result<Option<String>> {
    let mut open = Vec::new();
    for (id, path) in plan_files(dir)? {
        match plan_progress(dir, &id, &path) {
            Ok((done, total)) if done < total => {
                open.push(format!("plan {id}: {done} of {total} shards written"))
            }
            Ok(_) => {}
            Err(why) => open.push(format!("a plan that cannot be read: {why}")),
        }
    }
    Ok((!open.is_empty()).then(|| open.join("; ")))
}

/// The shards of `planned` (their digests, cut every `shard_rows` texts) whose texts `missing`
/// is, in order: `(index, hashes)` of each, or `None` when `missing` is not such a union. A
/// planned shard whose texts are not next in `missing` counts as done.
fn match_plan(
    planned: &[String],
    missing: &[String],
    shard_rows: usize,
) -> Option<Vec<(usize, Vec<String>)>> {
    let mut pos = 0;
    let mut out = Vec::new();
    for (k, d) in planned.iter().enumerate() {
        if pos == missing.len() {
            break;
        }
        // Only the last shard may be shorter; it takes the rest.
        let end = if k + 1 == planned.len() {
            missing.len()
        } else {
            (pos + shard_rows).min(missing.len())
        };
        let chunk = &missing[pos..end];
        if digest(chunk) == *d {
            out.push((k, chunk.to_vec()));
            pos = end;
        }
    }
    (pos == missing.len() && !out.is_empty()).then_some(out)
}

/// Reads the vectors of texts in any order, keeping the last few shards it read: rows come in
/// dataset order, which visits each shard's rows in runs.
pub(crate) struct ShardReader<'a> {
    store: &'a Store,
    /// (shard, its table), oldest first.
    cache: Vec<(usize, EmbeddingTable)>,
}

/// Shards a [`ShardReader`] keeps in memory.
const READER_SHARDS: usize = 3;

impl Store {
    pub fn reader(&self) -> ShardReader<'_> {
        ShardReader {
            store: self,
            cache: Vec::with_capacity(READER_SHARDS),
        }
    }
}

impl ShardReader<'_> {
    /// The shard's table, read unless it is one of the last ones read.
    pub fn shard(&mut self, shard: usize) -> Result<&EmbeddingTable> {
        let pos = match self.cache.iter().position(|(s, _)| *s == shard) {
            Some(i) => i,
            None => {
                if self.cache.len() >= READER_SHARDS {
                    self.cache.remove(0);
                }
                self.cache.push((shard, self.store.read_shard(shard)?));
                self.cache.len() - 1
            }
        };
        Ok(&self.cache[pos].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| blake3::hash(&[i as u8]).to_hex().to_string())
            .collect()
    }

    /// Any subset of a plan's shards, in order, continues it (what concurrent processes see:
    /// others' shards published out of order); anything else is not that plan.
    #[test]
    fn a_plan_continues_from_any_subset_of_its_shards() {
        let all = hashes(23);
        let planned: Vec<String> = all.chunks(5).map(digest).collect();
        let shards: Vec<Vec<String>> = all.chunks(5).map(<[String]>::to_vec).collect();
        let missing: Vec<String> = [1, 3, 4].iter().flat_map(|&k| shards[k].clone()).collect();
        let got = match_plan(&planned, &missing, 5).unwrap();
        assert_eq!(got.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [1, 3, 4]);
        assert_eq!(got[2].1, shards[4]);
        assert_eq!(match_plan(&planned, &all, 5).unwrap().len(), 5);
        // Part of a shard only, or texts in another order: not this plan.
        assert!(match_plan(&planned, &all[2..], 5).is_none());
        let mut swapped = missing.clone();
        swapped.swap(0, 1);
        assert!(match_plan(&planned, &swapped, 5).is_none());
        assert!(match_plan(&planned, &[], 5).is_none());
    }
}
