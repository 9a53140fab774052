//! The `extract` stage: text splits in, one EmbeddingTable per split out (`layer_<i>` columns,
//! plus `final_norm` / `pooler` / `sentence`), through the reusing, resumable store.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use llmembed_core::{
    Apply, ApplyEnv, Arity, Context, EmbeddingTable, EmbeddingWriter, Env, Error, External, Input,
    Layers, Result, Stage, Summary, VectorColumn, read_text_table,
};
use llmembed_kernels::I8Kernel;

use crate::apply::ExtractApply;
use crate::batch::embed_shard;
use crate::claims::{self, Attempt, Claimer};
use crate::embedder::{ComputeDtype, Embedder, LoadSpec, Pooling, Tap};
use crate::params::ExtractParams;
use crate::source::{self};
use crate::store::Store;

/// Version of the store layout and fingerprint recipe (part of the fingerprint).
// 2: every shard carries its blake3 in a `.blake3` file and is checked in full when the store
// opens (shards of format 1 had none, so they are not reused).
const STORE_FORMAT: u32 = 2;

/// How a prompted text is cut to `max_tokens` (part of a prompted store's fingerprint): 1 cuts
/// the text at a token boundary of the filled string and tokenizes again (`prompt.rs`).
const PROMPT_TRUNCATION: u32 = 1;

/// The `extract` stage.
pub struct Extract;

fn tap_name(t: Tap) -> String {
    match t {
        Tap::Layer(k) => llmembed_core::layer_column(k),
        Tap::FinalNorm => "final_norm".into(),
        Tap::Pooler => "pooler".into(),
        Tap::Sentence => "sentence".into(),
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
    if p.sentence {
        taps.push(Tap::Sentence);
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
                Tap::Sentence => (
                    "sentence",
                    "the model has no sentence embedding of its own (EmbeddingGemma's \
                     sentence-transformers modules are the ones supported)"
                        .to_string(),
                ),
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
        if matches!(&p.layers, Layers::List(v) if v.is_empty())
            && !p.final_norm
            && !p.pooler
            && !p.sentence
        {
            return Err(Error::param(
                "layers",
                "nothing to extract: empty layer list, and none of final_norm, pooler, sentence",
            ));
        }
        if p.pooling == Pooling::Pooler {
            return Err(Error::param(
                "pooling",
                "`pooler` is not a way to pool layers; set `pooler: true` to add the pooler column",
            ));
        }
        p.template()?;
        if p.mean_over.is_some() && p.prompt.is_none() {
            return Err(Error::param(
                "mean_over",
                "needs a `prompt`: without one, mean pooling averages every token",
            ));
        }
        if p.mean_over.is_some() && p.pooling != Pooling::Mean {
            return Err(Error::param(
                "mean_over",
                format!(
                    "applies to `pooling: mean` only, and pooling is `{}`",
                    format!("{:?}", p.pooling).to_lowercase()
                ),
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
        let Prepared {
            model,
            taps,
            columns,
            mut store,
            texts,
            missing,
            mut notes,
        } = prepare(p, inputs, ctx)?;
        let embedded = embed_missing(
            model.as_ref(),
            &mut store,
            &texts,
            &missing,
            &taps,
            p,
            ctx,
            true,
        )?;
        notes.extend(embedded.notes);
        // The model is not needed past this point: dropped, it gives its pages back before the
        // output is written, so the two peaks (the model with a batch's activations, then a
        // row group of the output being encoded) do not add up.
        let described = model.describe();
        drop(model);
        let store_folder = store
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Nor are the texts themselves.
        let Texts {
            tables, total_rows, ..
        } = texts;
        let truncated_rows = assemble(&store, &tables, &columns, p, ctx)?;
        if truncated_rows > 0 {
            notes.push(format!(
                "truncated {truncated_rows} of {total_rows} rows at max_tokens={} ({} among the texts embedded now)",
                p.max_tokens, embedded.truncated
            ));
        }
        Ok(Summary {
            rows_out: total_rows,
            notes,
            details: vec![format!("model {described}")],
            stores: vec![store_folder],
        })
    }

    /// Embeds the store's shards that no other process holds, and returns.
    fn share(p: &ExtractParams, inputs: &[Input], ctx: &Context) -> Result<Option<Vec<String>>> {
        let Prepared {
            model,
            taps,
            mut store,
            texts,
            missing,
            mut notes,
            ..
        } = prepare(p, inputs, ctx)?;
        let embedded = embed_missing(
            model.as_ref(),
            &mut store,
            &texts,
            &missing,
            &taps,
            p,
            ctx,
            false,
        )?;
        notes.extend(embedded.notes);
        Ok(Some(notes))
    }

    fn shared_progress(store_dir: &std::path::Path) -> Result<Vec<String>> {
        crate::progress::lines(store_dir)
    }

    fn unfinished(folder: &std::path::Path) -> Result<Option<String>> {
        crate::store::unfinished(folder)
    }

    /// Loads the model once and opens the run's store: new texts are embedded exactly as `run`
    /// embeds them (vectors never depend on the batch), texts the store holds are read from it,
    /// and new ones are added to it.
    fn applier(
        p: &ExtractParams,
        fitted: &Input,
        env: &ApplyEnv,
    ) -> Result<Option<Box<dyn Apply>>> {
        Self::check(p)?;
        let resolved = source::resolve(&p.model, &env.env, p.compute)?;
        let model = crate::model::load(&resolved.load)?;
        let taps = taps_for(p, model.as_ref())?;
        let hidden = model.hidden_size();
        let columns: Vec<(String, usize)> = taps.iter().map(|&t| (tap_name(t), hidden)).collect();
        // The artifact must be what these params make: the same columns, in the same order.
        let (_, split) = fitted.splits().into_iter().next().ok_or_else(|| {
            Error::mismatch(
                "load extract",
                format!("stage `{}` wrote no split", fitted.stage_id),
            )
        })?;
        let written = llmembed_core::table::embedding_columns(&split)?;
        if written != columns {
            return Err(Error::mismatch(
                "load extract",
                format!(
                    "{} has columns {written:?}, but {} with these params gives {columns:?}",
                    split.display(),
                    model.describe()
                ),
            ));
        }
        // `predict` and `serve` use the local store only.
        let local = |fingerprint: &str| Ok(env.store_dir.join(fingerprint));
        let store = open_store(p, model.as_ref(), &resolved, &columns, &local)?;
        Ok(Some(Box::new(ExtractApply::new(
            model,
            taps,
            columns,
            p.clone(),
            store,
        ))))
    }
}

/// What `run` and `share` start from: the model, its taps and columns, the store, the input's
/// texts and those the store lacks, and the notes so far.
struct Prepared {
    model: Box<dyn Embedder>,
    taps: Vec<Tap>,
    columns: Vec<(String, usize)>,
    store: Store,
    texts: Texts,
    missing: Vec<String>,
    notes: Vec<String>,
}

fn prepare(p: &ExtractParams, inputs: &[Input], ctx: &Context) -> Result<Prepared> {
    Extract::check(p)?;
    let splits = input_splits(inputs)?;
    let resolved = source::resolve(&p.model, ctx.env, p.compute)?;
    // Before the weights load; `taps_for` checks again against the loaded model.
    if p.layers != Layers::All
        && let Ok((arch, n)) = depth(&resolved.load)
    {
        check_depth(p, &arch, n)?;
    }
    let loading = Instant::now();
    let model = crate::model::load(&resolved.load)?;
    let load_secs = loading.elapsed().as_secs_f64();
    let taps = taps_for(p, model.as_ref())?;
    let hidden = model.hidden_size();
    let columns: Vec<(String, usize)> = taps.iter().map(|&t| (tap_name(t), hidden)).collect();
    let folder = |fingerprint: &str| ctx.store_folder(fingerprint);
    let store = open_store(p, model.as_ref(), &resolved, &columns, &folder)?;
    let texts = Texts::read(&splits)?;
    let missing = texts.missing(&store);
    let mut notes = vec![
        format!("loaded the model in {load_secs:.1}s"),
        format!(
            "reused {} of {} texts",
            texts.unique.len() - missing.len(),
            texts.unique.len()
        ),
    ];
    let int8 = I8Kernel::detect();
    if p.compute == ComputeDtype::Int8 && !matches!(int8, I8Kernel::Amx | I8Kernel::Vnni) {
        // Said in every run's summary: the bits are the same, the speed is not.
        let why = if std::env::var_os("LLMEMBED_NO_AVX512VNNI").is_some() {
            "LLMEMBED_NO_AVX512VNNI is set"
        } else {
            "this CPU has no AVX512-VNNI"
        };
        let kernel = match int8 {
            I8Kernel::Avx2 => "AVX2",
            _ => "portable",
        };
        log::warn!("compute int8: {why}; the {kernel} int8 kernel runs (the same bits, slower)");
        notes.push(format!(
            "int8 products on the {kernel} kernel ({why}; the same bits as VNNI, slower)"
        ));
    }
    if !store.quarantined.is_empty() {
        notes.push(format!(
            "quarantined {} damaged store shard(s)",
            store.quarantined.len()
        ));
    }
    Ok(Prepared {
        model,
        taps,
        columns,
        store,
        texts,
        missing,
        notes,
    })
}

/// The input's split files, in order.
fn input_splits(inputs: &[Input]) -> Result<Vec<(String, std::path::PathBuf)>> {
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
    Ok(splits)
}

/// Opens the store of this model, taps and settings (the fingerprint is the blake3 of what
/// they are), saying which damaged shards it moved aside. `folder` gives the store folder of a
/// fingerprint, ready to read (`Context::store_folder`: the runner first pulls it from a remote
/// cache).
fn open_store(
    p: &ExtractParams,
    model: &dyn Embedder,
    resolved: &source::Resolved,
    columns: &[(String, usize)],
    folder: &dyn Fn(&str) -> Result<PathBuf>,
) -> Result<Store> {
    let mut about = serde_json::json!({
        "store_format": STORE_FORMAT,
        "model": model.describe(),
        "weights": resolved.weights_digest,
        "taps": columns.iter().map(|c| c.0.clone()).collect::<Vec<_>>(),
        "pooling": p.pooling,
        "max_tokens": p.max_tokens,
        "compute": p.compute,
    });
    // Only with a prompt, so that unprompted stores keep their fingerprints. The store is keyed
    // by the text alone: the template and which tokens are averaged must be in the fingerprint,
    // so that texts embedded with two prompts never share vectors.
    if let Some(template) = &p.prompt {
        about["prompt"] = serde_json::json!({
            "template": template,
            "mean_over": (p.pooling == Pooling::Mean).then(|| p.mean_over()),
            "truncation": PROMPT_TRUNCATION,
        });
    }
    let fingerprint = blake3::hash(about.to_string().as_bytes()).to_hex()[..32].to_string();
    let store = Store::open(folder(&fingerprint)?, &about, columns.to_vec())?;
    for (shard, moved, why) in &store.quarantined {
        // Always said, quiet or not: damage on disk is news the user must see.
        log::warn!(
            "store shard {} is damaged ({why}); moved to {}, its texts are embedded again",
            shard.display(),
            moved.display()
        );
    }
    Ok(store)
}

/// One split's rows: name, ids, labels, label names and the blake3 of each row's text.
struct SplitRows {
    split: String,
    ids: Vec<String>,
    labels: Vec<i64>,
    label_names: Vec<String>,
    hashes: Vec<String>,
}

/// The input's rows, and its distinct texts in dataset order (splits in order).
struct Texts {
    tables: Vec<SplitRows>,
    /// (hash, text), each text once.
    unique: Vec<(String, String)>,
    total_rows: usize,
}

impl Texts {
    fn read(splits: &[(String, std::path::PathBuf)]) -> Result<Texts> {
        let mut tables = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut unique: Vec<(String, String)> = Vec::new();
        let mut total_rows = 0usize;
        for (split, path) in splits {
            let t = read_text_table(path)?;
            let hashes: Vec<String> = t
                .texts
                .iter()
                .map(|s| blake3::hash(s.as_bytes()).to_hex().to_string())
                .collect();
            for (h, text) in hashes.iter().zip(&t.texts) {
                if seen.insert(h.clone()) {
                    unique.push((h.clone(), text.clone()));
                }
            }
            total_rows += t.len();
            tables.push(SplitRows {
                split: split.clone(),
                ids: t.ids,
                labels: t.labels,
                label_names: t.label_names,
                hashes,
            });
        }
        Ok(Texts {
            tables,
            unique,
            total_rows,
        })
    }

    /// The hashes of the texts the store lacks, in dataset order.
    fn missing(&self, store: &Store) -> Vec<String> {
        self.unique
            .iter()
            .filter(|(h, _)| !store.index.contains_key(h))
            .map(|(h, _)| h.clone())
            .collect()
    }
}

/// What embedding the missing texts adds to the run's notes and counts.
struct Embedded {
    notes: Vec<String>,
    /// Texts truncated among those embedded now.
    truncated: usize,
}

/// Embeds the texts the store lacks, shard by shard as the store plans them (resuming an
/// interrupted plan), writing each shard as it is done. Shards are claimed first (see
/// `claims.rs`), so that other processes on the same store share the plan: a shard another live
/// process holds is skipped, and with `wait` waited for (its holder publishes it, or dies and it
/// is taken over) until every shard is in the store; without `wait` (a worker that only helps),
/// this returns once nothing is left to claim.
#[allow(clippy::too_many_arguments)]
fn embed_missing(
    model: &dyn Embedder,
    store: &mut Store,
    texts: &Texts,
    missing: &[String],
    taps: &[Tap],
    p: &ExtractParams,
    ctx: &Context,
    wait: bool,
) -> Result<Embedded> {
    let mut notes = Vec::new();
    let plan = store.plan(missing, p.shard_rows)?;
    if plan.done > 0 {
        let msg = format!("resuming: {} of {} shards done", plan.done, plan.total);
        if !ctx.env.quiet {
            log::info!("  {msg}");
        }
        notes.push(msg);
    }
    let text_by_hash: HashMap<&str, &str> = texts
        .unique
        .iter()
        .filter(|(h, _)| !store.index.contains_key(h))
        .map(|(h, t)| (h.as_str(), t.as_str()))
        .collect();
    let mut claimer = Claimer::new(&store.dir)?;
    let bar = ctx.progress(missing.len() as u64, "extract");
    let started = Instant::now();
    let mut tokens_done = 0usize;
    let mut truncated_now = 0usize;
    let (mut texts_now, mut shards_now, mut by_others) = (0usize, 0usize, 0usize);
    let mut pending = plan.remaining;
    let poll = Duration::from_millis(500);
    loop {
        let mut busy = Vec::new();
        for (index, shard) in pending {
            if store.adopt_shard(&plan.id, index)? {
                by_others += 1;
                bar.inc(shard.len() as u64);
                continue;
            }
            let claim = match claimer.try_claim(&plan.id, index, shard.len())? {
                Attempt::Claimed(c) => c,
                Attempt::Busy => {
                    busy.push((index, shard));
                    continue;
                }
            };
            // Published meanwhile by a holder that released it just before this claim.
            if store.adopt_shard(&plan.id, index)? {
                drop(claim);
                by_others += 1;
                bar.inc(shard.len() as u64);
                continue;
            }
            let shard_texts: Vec<&str> = shard.iter().map(|h| text_by_hash[h.as_str()]).collect();
            let (cols, truncated, ntok) = embed_shard(model, &shard_texts, taps, p)?;
            truncated_now += truncated.iter().filter(|&&t| t).count();
            tokens_done += ntok;
            let n = shard.len();
            store.write_shard(&plan.id, index, shard, truncated, cols)?;
            // Counted by the cluster tests (`RUST_LOG=llmembed_extract=debug`).
            log::debug!("extract: published shard {index} of plan {}", plan.id);
            claimer.add_embedded(n);
            drop(claim);
            texts_now += n;
            shards_now += 1;
            bar.inc(n as u64);
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("{:.0} tok/s", tokens_done as f64 / secs));
        }
        if busy.is_empty() {
            claims::remove_leftovers(&store.dir, &plan.id);
            if wait {
                // Every text is in the store now: claims left on published shards (of this
                // plan or of earlier ones) belong to holders killed right after publishing.
                claims::remove_published(&store.dir);
            }
            break;
        }
        if !wait {
            notes.push(format!(
                "left {} shard(s) to the processes that hold them",
                busy.len()
            ));
            break;
        }
        std::thread::sleep(poll);
        pending = busy;
    }
    bar.finish();
    if by_others > 0 {
        notes.push(format!(
            "{by_others} of {} shards embedded by other processes",
            plan.total - plan.done
        ));
    }
    if claimer.taken_over > 0 {
        notes.push(format!(
            "took over {} shard(s) from processes that stopped",
            claimer.taken_over
        ));
    }
    if texts_now > 0 {
        let secs = started.elapsed().as_secs_f64();
        notes.push(format!(
            "embedded {} texts ({} tokens) in {:.1}s: {:.1} texts/s, {:.0} tokens/s",
            texts_now,
            tokens_done,
            secs,
            texts_now as f64 / secs.max(1e-9),
            tokens_done as f64 / secs.max(1e-9)
        ));
        let shared = model.shared_prefixes();
        if !shared.is_empty() {
            let lens: Vec<String> = shared.iter().map(usize::to_string).collect();
            notes.push(format!(
                "leading tokens that the texts share (the prompt's), run once and reused: {}",
                lens.join(", ")
            ));
        }
    }
    // One line per process that a test (or a person reading Slurm logs) can count.
    if !wait || by_others > 0 || claimer.taken_over > 0 {
        log::info!(
            "  extract: computed {shards_now} shard(s) ({texts_now} texts) of plan {} in this process",
            plan.id
        );
    }
    Ok(Embedded {
        notes,
        truncated: truncated_now,
    })
}

/// Writes each split's EmbeddingTable in row order from the store, a chunk at a time; returns
/// how many rows were truncated.
fn assemble(
    store: &Store,
    tables: &[SplitRows],
    columns: &[(String, usize)],
    p: &ExtractParams,
    ctx: &Context,
) -> Result<usize> {
    let mut truncated_rows = 0usize;
    for t in tables {
        let path = ctx.out(&format!("{}.parquet", t.split));
        let mut writer = EmbeddingWriter::create(&path, &t.label_names, columns, p.precision)?;
        let mut reader = store.reader();
        let chunk = p.shard_rows.max(256);
        for start in (0..t.ids.len()).step_by(chunk) {
            let end = (start + chunk).min(t.ids.len());
            let mut values: Vec<Vec<f32>> = columns
                .iter()
                .map(|(_, dim)| Vec::with_capacity((end - start) * dim))
                .collect();
            for h in &t.hashes[start..end] {
                let loc = store.index.get(h).copied().ok_or_else(|| {
                    Error::compute("assemble output", format!("text {h} missing from store"))
                })?;
                truncated_rows += loc.truncated as usize;
                let shard = reader.shard(loc.shard)?;
                for (v, c) in values.iter_mut().zip(&shard.columns) {
                    v.extend_from_slice(c.row(loc.row));
                }
            }
            writer.write(&EmbeddingTable {
                ids: t.ids[start..end].to_vec(),
                labels: t.labels[start..end].to_vec(),
                label_names: t.label_names.clone(),
                columns: columns
                    .iter()
                    .zip(values)
                    .map(|((name, dim), v)| VectorColumn::new(name.clone(), *dim, v))
                    .collect(),
            })?;
        }
        writer.finish()?;
    }
    Ok(truncated_rows)
}
