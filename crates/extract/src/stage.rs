//! The `extract` stage: text splits in, one EmbeddingTable per split out (`layer_<i>` columns,
//! plus `final_norm` / `pooler`), through the reusing, resumable store.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use llmembed_core::{
    Arity, Context, EmbeddingTable, EmbeddingWriter, Env, Error, External, Input, Layers,
    Precision, Result, Stage, Summary, VectorColumn, read_text_table,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::model::{ComputeDtype, Embedder, LoadSpec, Pooling, Tap};
use crate::source::{self, ModelParam};
use crate::store::Store;

/// Version of the store layout and fingerprint recipe (part of the fingerprint).
// 2: every shard carries its blake3 in a `.blake3` file and is checked in full when the store
// opens (shards of format 1 had none, so they are not reused).
const STORE_FORMAT: u32 = 2;

/// The `extract` stage.
pub struct Extract;

/// Params of the `extract` stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractParams {
    /// A preset name (`smollm2-135m`, `gemma3-270m`, `minilm-l6`) or a spec map
    /// (`{source: pypi|hub|local, ...}`).
    pub model: ModelParam,
    #[serde(default = "default_layers")]
    pub layers: Layers,
    /// Add a `final_norm` column (decoders: the final norm applied to the last block).
    #[serde(default = "default_false")]
    pub final_norm: bool,
    /// Add a `pooler` column (BERT checkpoints with pooler weights).
    #[serde(default = "default_false")]
    pub pooler: bool,
    #[serde(default = "default_pooling")]
    pub pooling: Pooling,
    /// Tokens per text, special tokens included; longer texts are truncated (and counted).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Token budget of a forward batch, counted as texts x the longest text's tokens (texts are
    /// sorted by length within a shard first; rows are packed, nothing is padded).
    /// Each worker thread runs its own batch, so one batch's activations stay small; 512 was
    /// faster than 256 or 1024 on SmolLM2 in both compute modes (`cargo xtask bench extract`).
    #[serde(default = "default_batch_tokens")]
    pub batch_tokens: usize,
    #[serde(default = "default_compute")]
    pub compute: ComputeDtype,
    /// Storage precision of the output vectors.
    #[serde(default = "default_precision")]
    pub precision: Precision,
    /// Texts per store shard (the unit of resumption).
    #[serde(default = "default_shard_rows")]
    pub shard_rows: usize,
}

fn default_layers() -> Layers {
    Layers::All
}
fn default_false() -> bool {
    false
}
fn default_pooling() -> Pooling {
    Pooling::Mean
}
fn default_max_tokens() -> usize {
    256
}
fn default_batch_tokens() -> usize {
    512
}
fn default_compute() -> ComputeDtype {
    ComputeDtype::F32
}
fn default_precision() -> Precision {
    Precision::F32
}
fn default_shard_rows() -> usize {
    256
}

impl ExtractParams {
    /// Params with every default and the given model.
    pub fn new(model: ModelParam) -> Self {
        ExtractParams {
            model,
            layers: default_layers(),
            final_norm: false,
            pooler: false,
            pooling: default_pooling(),
            max_tokens: default_max_tokens(),
            batch_tokens: default_batch_tokens(),
            compute: default_compute(),
            precision: default_precision(),
            shard_rows: default_shard_rows(),
        }
    }
}

fn tap_name(t: Tap) -> String {
    match t {
        Tap::Layer(k) => format!("layer_{k}"),
        Tap::FinalNorm => "final_norm".into(),
        Tap::Pooler => "pooler".into(),
    }
}

fn taps_for(p: &ExtractParams, model: &dyn Embedder) -> Result<Vec<Tap>> {
    let n = model.num_layers();
    let mut taps: Vec<Tap> = match &p.layers {
        Layers::All => (0..=n).map(Tap::Layer).collect(),
        Layers::List(v) => {
            let mut v = v.clone();
            v.sort_unstable();
            v.into_iter().map(Tap::Layer).collect()
        }
    };
    if p.final_norm {
        taps.push(Tap::FinalNorm);
    }
    if p.pooler {
        taps.push(Tap::Pooler);
    }
    for &t in &taps {
        if !model.supports(t) {
            let (param, why) = match t {
                Tap::Layer(k) => (
                    "layers",
                    format!("layer {k} does not exist: the model has {n} blocks, layers 0..={n}"),
                ),
                Tap::FinalNorm => ("final_norm", "the model has no final norm".to_string()),
                Tap::Pooler => ("pooler", "the checkpoint has no pooler weights".to_string()),
            };
            return Err(Error::param(param, format!("{}: {why}", model.describe())));
        }
    }
    Ok(taps)
}

/// The model's architecture and number of blocks, from the GGUF header or from config.json:
/// no weights are read.
fn depth(files: &LoadSpec) -> Result<(String, usize)> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let is_gguf = std::fs::File::open(&files.weights)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF";
    if is_gguf {
        let f = crate::model::gguf::GgufFile::open(&files.weights)?;
        let arch = f.get_str("general.architecture")?.to_string();
        let n = f.get_usize(&format!("{arch}.block_count"))?;
        return Ok((arch, n));
    }
    let path = files.config_path();
    let raw =
        std::fs::read_to_string(&path).map_err(|e| Error::io("read model config", &path, e))?;
    let config: serde_json::Value = serde_json::from_str(&raw)
        .map_err(|e| Error::schema(&path, "config", format!("not JSON: {e}")))?;
    let n = config
        .get("num_hidden_layers")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| Error::schema(&path, "num_hidden_layers", "missing"))?;
    let arch = config
        .get("model_type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("unknown type");
    Ok((arch.to_string(), n as usize))
}

/// Refuses listed layers that a model of `n` blocks (taps `0..=n`) does not have.
fn check_depth(p: &ExtractParams, arch: &str, n: usize) -> Result<()> {
    let Layers::List(v) = &p.layers else {
        return Ok(());
    };
    let missing: Vec<String> = v.iter().filter(|&&k| k > n).map(usize::to_string).collect();
    let what = match missing.as_slice() {
        [] => return Ok(()),
        [one] => format!("layer {one} does not exist"),
        many => format!("layers {} do not exist", many.join(", ")),
    };
    Err(Error::param(
        "layers",
        format!(
            "{what}: {} ({arch}) has {n} blocks, layers 0..={n}",
            source::model_name(&p.model)
        ),
    ))
}

impl Stage for Extract {
    const KIND: &'static str = "extract";
    const VERSION: u32 = 3;
    const INPUTS: Arity = Arity::Exactly(1);
    type Params = ExtractParams;

    fn check(p: &ExtractParams) -> Result<()> {
        source::check(&p.model)?;
        if let Layers::List(v) = &p.layers {
            let mut seen = HashSet::new();
            if let Some(d) = v.iter().find(|k| !seen.insert(**k)) {
                return Err(Error::param("layers", format!("layer {d} listed twice")));
            }
        }
        if matches!(&p.layers, Layers::List(v) if v.is_empty()) && !p.final_norm && !p.pooler {
            return Err(Error::param(
                "layers",
                "nothing to extract: empty layer list, and neither final_norm nor pooler",
            ));
        }
        if p.pooling == Pooling::Pooler {
            return Err(Error::param(
                "pooling",
                "`pooler` is not a way to pool layers; set `pooler: true` to add the pooler column",
            ));
        }
        if !(2..=65_536).contains(&p.max_tokens) {
            return Err(Error::param("max_tokens", "must be in 2..=65536"));
        }
        if p.batch_tokens < p.max_tokens {
            return Err(Error::param(
                "batch_tokens",
                format!(
                    "{} is below max_tokens {}: the longest text would not fit a batch",
                    p.batch_tokens, p.max_tokens
                ),
            ));
        }
        if p.shard_rows == 0 {
            return Err(Error::param("shard_rows", "must be at least 1"));
        }
        Ok(())
    }

    /// Layers against the model's depth, when its files are already here (read from the GGUF
    /// header or config.json). Otherwise `run` checks them once it has fetched the model.
    fn check_local(p: &ExtractParams, env: &Env) -> Result<()> {
        if p.layers == Layers::All {
            return Ok(());
        }
        match source::local_files(&p.model, env).map(|files| depth(&files)) {
            Some(Ok((arch, n))) => check_depth(p, &arch, n),
            // Nothing here yet, or files the run will report on with the loader's own message.
            None | Some(Err(_)) => Ok(()),
        }
    }

    fn externals(p: &ExtractParams, env: &Env) -> Result<Vec<External>> {
        source::externals(&p.model, env)
    }

    fn run(p: &ExtractParams, inputs: &[Input], ctx: &Context) -> Result<Summary> {
        Self::check(p)?;
        let input = inputs.first().ok_or_else(|| {
            Error::mismatch("extract", format!("expected 1 input, got {}", inputs.len()))
        })?;
        let splits = input.splits();
        if splits.is_empty() {
            return Err(Error::mismatch(
                "extract",
                format!(
                    "input `{}` has no split files (*.parquet); it has: {}",
                    input.stage_id,
                    input.files.join(", ")
                ),
            ));
        }
        let resolved = source::resolve(&p.model, ctx.env, p.compute)?;
        // Before the weights load; `taps_for` checks again against the loaded model.
        if p.layers != Layers::All
            && let Ok((arch, n)) = depth(&resolved.load)
        {
            check_depth(p, &arch, n)?;
        }
        let model = crate::model::load(&resolved.load)?;
        let taps = taps_for(p, model.as_ref())?;
        let hidden = model.hidden_size();
        let columns: Vec<(String, usize)> = taps.iter().map(|&t| (tap_name(t), hidden)).collect();
        let about = serde_json::json!({
            "store_format": STORE_FORMAT,
            "model": model.describe(),
            "weights": resolved.weights_digest,
            "taps": columns.iter().map(|c| c.0.clone()).collect::<Vec<_>>(),
            "pooling": p.pooling,
            "max_tokens": p.max_tokens,
            "compute": p.compute,
        });
        let fingerprint = blake3::hash(about.to_string().as_bytes()).to_hex()[..32].to_string();
        let mut store = Store::open(&ctx.store_dir, &fingerprint, &about, columns.clone())?;
        for (shard, moved, why) in &store.quarantined {
            // Always said, quiet or not: damage on disk is news the user must see.
            eprintln!(
                "warning: store shard {} is damaged ({why}); moved to {}, its texts are embedded again",
                shard.display(),
                moved.display()
            );
        }

        // Unique texts in dataset order (splits in order).
        let mut tables = Vec::new();
        let mut text_of: HashMap<String, usize> = HashMap::new(); // hash -> index into `unique`
        let mut unique: Vec<(String, String)> = Vec::new(); // (hash, text)
        let mut total_rows = 0usize;
        for (split, path) in &splits {
            let t = read_text_table(path)?;
            let hashes: Vec<String> = t
                .texts
                .iter()
                .map(|s| blake3::hash(s.as_bytes()).to_hex().to_string())
                .collect();
            for (h, text) in hashes.iter().zip(&t.texts) {
                if !text_of.contains_key(h) {
                    text_of.insert(h.clone(), unique.len());
                    unique.push((h.clone(), text.clone()));
                }
            }
            total_rows += t.len();
            tables.push((split.clone(), t.ids, t.labels, t.label_names, hashes));
        }
        drop(text_of);
        let missing: Vec<String> = unique
            .iter()
            .filter(|(h, _)| !store.index.contains_key(h))
            .map(|(h, _)| h.clone())
            .collect();
        let reused = unique.len() - missing.len();
        let mut notes = vec![
            format!("model {}", model.describe()),
            format!("reused {reused} of {} texts", unique.len()),
        ];
        if !store.quarantined.is_empty() {
            notes.push(format!(
                "quarantined {} damaged store shard(s)",
                store.quarantined.len()
            ));
        }
        let plan = store.plan(&missing, p.shard_rows)?;
        if plan.first > 0 {
            let msg = format!("resuming: {} of {} shards done", plan.first, plan.total);
            if !ctx.env.quiet {
                eprintln!("  {msg}");
            }
            notes.push(msg);
        }

        // Embed the missing texts shard by shard.
        let text_by_hash: HashMap<&str, &str> = unique
            .iter()
            .filter(|(h, _)| !store.index.contains_key(h))
            .map(|(h, t)| (h.as_str(), t.as_str()))
            .collect();
        let bar = ctx.progress(missing.len() as u64, "extract");
        let started = Instant::now();
        let mut tokens_done = 0usize;
        let mut newly_truncated = 0usize;
        for (j, shard) in plan.remaining.into_iter().enumerate() {
            let texts: Vec<&str> = shard.iter().map(|h| text_by_hash[h.as_str()]).collect();
            let (cols, truncated, ntok) = embed_shard(model.as_ref(), &texts, &taps, p)?;
            newly_truncated += truncated.iter().filter(|&&t| t).count();
            tokens_done += ntok;
            let n = shard.len();
            store.write_shard(&plan.id, plan.first + j, shard, truncated, cols)?;
            bar.inc(n as u64);
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("{:.0} tok/s", tokens_done as f64 / secs));
        }
        bar.finish();
        if !missing.is_empty() {
            let secs = started.elapsed().as_secs_f64();
            notes.push(format!(
                "embedded {} texts ({} tokens) in {:.1}s: {:.1} texts/s, {:.0} tokens/s",
                missing.len(),
                tokens_done,
                secs,
                missing.len() as f64 / secs.max(1e-9),
                tokens_done as f64 / secs.max(1e-9)
            ));
        }
        drop(text_by_hash);
        drop(unique);

        // Assemble the outputs in row order, a chunk at a time.
        let mut truncated_rows = 0usize;
        for (split, ids, labels, label_names, hashes) in &tables {
            let path = ctx.out(&format!("{split}.parquet"));
            let mut writer = EmbeddingWriter::create(&path, label_names, &columns, p.precision)?;
            let mut cache: Vec<(usize, EmbeddingTable)> = Vec::new();
            let chunk = p.shard_rows.max(256);
            for start in (0..ids.len()).step_by(chunk) {
                let end = (start + chunk).min(ids.len());
                let mut values: Vec<Vec<f32>> = columns
                    .iter()
                    .map(|_| Vec::with_capacity((end - start) * hidden))
                    .collect();
                for h in &hashes[start..end] {
                    let loc = store.index.get(h).copied().ok_or_else(|| {
                        Error::compute("assemble output", format!("text {h} missing from store"))
                    })?;
                    truncated_rows += loc.truncated as usize;
                    let pos = match cache.iter().position(|(s, _)| *s == loc.shard) {
                        Some(i) => i,
                        None => {
                            if cache.len() >= 3 {
                                cache.remove(0);
                            }
                            cache.push((loc.shard, store.read_shard(loc.shard)?));
                            cache.len() - 1
                        }
                    };
                    let t = &cache[pos].1;
                    for (v, c) in values.iter_mut().zip(&t.columns) {
                        v.extend_from_slice(c.row(loc.row));
                    }
                }
                writer.write(&EmbeddingTable {
                    ids: ids[start..end].to_vec(),
                    labels: labels[start..end].to_vec(),
                    label_names: label_names.clone(),
                    columns: columns
                        .iter()
                        .zip(values)
                        .map(|((name, dim), v)| VectorColumn::new(name.clone(), *dim, v))
                        .collect(),
                })?;
            }
            writer.finish()?;
        }
        if truncated_rows > 0 {
            notes.push(format!(
                "truncated {truncated_rows} of {total_rows} rows at max_tokens={} ({newly_truncated} among the texts embedded now)",
                p.max_tokens
            ));
        }
        Ok(Summary {
            rows_out: total_rows,
            notes,
        })
    }
}

/// Tokenizes a shard's texts, sorts them by length, batches them under the token budget, embeds
/// and returns per tap the vectors in the shard's order, the truncation flags and the token count.
fn embed_shard(
    model: &dyn Embedder,
    texts: &[&str],
    taps: &[Tap],
    p: &ExtractParams,
) -> Result<(Vec<Vec<f32>>, Vec<bool>, usize)> {
    let hidden = model.hidden_size();
    let mut ids = Vec::with_capacity(texts.len());
    let mut truncated = Vec::with_capacity(texts.len());
    for t in texts {
        let (i, tr) = model.tokenize(t, p.max_tokens)?;
        ids.push(i);
        truncated.push(tr);
    }
    let ntok = ids.iter().map(Vec::len).sum();
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| (ids[i].len(), i));
    let mut out: Vec<Vec<f32>> = taps
        .iter()
        .map(|_| vec![0f32; texts.len() * hidden])
        .collect();
    // Batches: runs of the sorted texts whose padded size stays under the token budget.
    let mut batches = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && (end + 1 - start) * ids[order[end]].len() <= p.batch_tokens {
            end += 1;
        }
        batches.push(start..end);
        start = end;
    }
    // Batches run side by side, one per worker thread: each batch's own parallel steps then
    // run on its thread, with no fork or join between them, and a thread helps another's batch
    // only when it has none left. A text's vectors do not depend on its batch or on the
    // thread that runs it.
    let pooled: Vec<Vec<Vec<f32>>> = batches
        .par_iter()
        .map(|range| {
            let batch: Vec<&[u32]> = order[range.clone()]
                .iter()
                .map(|&i| ids[i].as_slice())
                .collect();
            model.embed(&batch, taps, p.pooling)
        })
        .collect::<Result<_>>()?;
    for (range, pooled) in batches.iter().zip(pooled) {
        let n = range.len();
        for (t, vals) in pooled.iter().enumerate() {
            if vals.len() != n * hidden {
                return Err(Error::compute(
                    "embed batch",
                    format!(
                        "tap {:?}: {} values for {n} texts x {hidden}",
                        taps[t],
                        vals.len(),
                    ),
                ));
            }
            for (b, &i) in order[range.clone()].iter().enumerate() {
                out[t][i * hidden..(i + 1) * hidden]
                    .copy_from_slice(&vals[b * hidden..(b + 1) * hidden]);
            }
        }
    }
    Ok((out, truncated, ntok))
}
