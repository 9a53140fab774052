//! The `extract` stage applied to new texts (`predict`, `serve`): the model loaded once, the
//! run's store read for texts it holds and extended with the others.

use std::collections::HashMap;
use std::sync::Mutex;

use llmembed_core::{Apply, EmbeddingTable, Error, Precision, Result, Rows, VectorColumn};

use crate::batch::embed_shard;
use crate::embedder::{Embedder, Tap};
use crate::params::ExtractParams;
use crate::store::Store;

/// What [`Extract::applier`](crate::Extract) loads: the model, the taps the params ask for, and
/// the store of this model and settings.
pub(crate) struct ExtractApply {
    model: Box<dyn Embedder>,
    taps: Vec<Tap>,
    columns: Vec<(String, usize)>,
    params: ExtractParams,
    /// Locked to look texts up, read their vectors and add shards; embedding runs unlocked, so
    /// concurrent callers share the cores (two that embed the same new text both write it:
    /// the same vectors, and the store keeps the first).
    store: Mutex<Store>,
}

impl ExtractApply {
    pub(crate) fn new(
        model: Box<dyn Embedder>,
        taps: Vec<Tap>,
        columns: Vec<(String, usize)>,
        params: ExtractParams,
        store: Store,
    ) -> Self {
        ExtractApply {
            model,
            taps,
            columns,
            params,
            store: Mutex::new(store),
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic while the lock was held cannot leave the store half-written: shards are
        // written atomically and indexed after, so the state behind a poisoned lock is sound.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A new text's vectors, per column, as embedding made them.
type Fresh = HashMap<String, Vec<Vec<f32>>>;

impl Apply for ExtractApply {
    fn apply(&self, inputs: &[Rows]) -> Result<Rows> {
        let [Rows::Text(table)] = inputs else {
            return Err(Error::mismatch(
                "apply extract",
                format!(
                    "expected one table of texts, got [{}]",
                    inputs.iter().map(Rows::kind).collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        // Ingest refuses blank texts; a caller that skipped it gets the row named.
        if let Some(row) = table.texts.iter().position(|t| t.trim().is_empty()) {
            return Err(Error::mismatch(
                "apply extract",
                format!("row {row} (`{}`): empty text", table.ids[row]),
            ));
        }
        // Texts are keyed as `run` keys them: the blake3 of their bytes.
        let hashes: Vec<String> = table
            .texts
            .iter()
            .map(|t| blake3::hash(t.as_bytes()).to_hex().to_string())
            .collect();
        let missing: Vec<(String, &str)> = {
            let store = self.store();
            let mut seen = std::collections::HashSet::new();
            hashes
                .iter()
                .zip(&table.texts)
                .filter(|(h, _)| !store.index.contains_key(*h) && seen.insert(h.as_str()))
                .map(|(h, t)| (h.clone(), t.as_str()))
                .collect()
        };
        let fresh = self.embed_and_store(&missing)?;

        let mut values: Vec<Vec<f32>> = self
            .columns
            .iter()
            .map(|(_, dim)| Vec::with_capacity(table.len() * dim))
            .collect();
        {
            let store = self.store();
            let mut reader = store.reader();
            for h in &hashes {
                if let Some(vectors) = fresh.get(h) {
                    for (v, x) in values.iter_mut().zip(vectors) {
                        v.extend_from_slice(x);
                    }
                    continue;
                }
                let loc = store.index.get(h).copied().ok_or_else(|| {
                    Error::compute("apply extract", format!("text {h} missing from store"))
                })?;
                let shard = reader.shard(loc.shard)?;
                for (v, c) in values.iter_mut().zip(&shard.columns) {
                    v.extend_from_slice(c.row(loc.row));
                }
            }
        }
        if self.params.precision == Precision::F16 {
            // As the artifact's files hold them: rounded to f16 once.
            for v in values.iter_mut().flatten() {
                *v = half::f16::from_f32(*v).to_f32();
            }
        }
        Ok(Rows::Embedding(EmbeddingTable {
            ids: table.ids.clone(),
            labels: table.labels.clone(),
            label_names: table.label_names.clone(),
            columns: self
                .columns
                .iter()
                .zip(values)
                .map(|((name, dim), v)| VectorColumn::new(name.clone(), *dim, v))
                .collect(),
        }))
    }
}

impl ExtractApply {
    /// Embeds `missing` (hash, text), `shard_rows` texts a shard as `run` cuts them, and adds
    /// each shard to the store. The shards are named after their texts (`apply-<digest>`), not
    /// after a plan of `run`'s, so `run`'s resumption never mistakes them for its own.
    fn embed_and_store(&self, missing: &[(String, &str)]) -> Result<Fresh> {
        let mut fresh = Fresh::new();
        let hidden = self.model.hidden_size();
        for chunk in missing.chunks(self.params.shard_rows) {
            let texts: Vec<&str> = chunk.iter().map(|(_, t)| *t).collect();
            let (cols, truncated, _) =
                embed_shard(self.model.as_ref(), &texts, &self.taps, &self.params)?;
            let hashes: Vec<String> = chunk.iter().map(|(h, _)| h.clone()).collect();
            for (i, h) in hashes.iter().enumerate() {
                let vectors = cols
                    .iter()
                    .map(|c| c[i * hidden..(i + 1) * hidden].to_vec())
                    .collect();
                fresh.insert(h.clone(), vectors);
            }
            let mut digest = blake3::Hasher::new();
            for h in &hashes {
                digest.update(h.as_bytes());
                digest.update(b"\n");
            }
            let name = format!("apply-{}", &digest.finalize().to_hex()[..16]);
            self.store()
                .write_shard(&name, 0, hashes, truncated, cols)?;
        }
        Ok(fresh)
    }
}
