//! The stage contract: what a stage is given, what it returns, and what it declares so that the
//! runner can cache it without knowing anything about what it does.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::table::{EmbeddingTable, Predictions, SparseTable, TextTable};

/// How many upstream artifacts a stage takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arity {
    /// Exactly this many (0 for sources such as ingest).
    Exactly(usize),
    /// This many or more (fusions across models, ensembles, evaluate).
    AtLeast(usize),
}

impl Arity {
    pub fn accepts(self, n: usize) -> bool {
        match self {
            Arity::Exactly(k) => n == k,
            Arity::AtLeast(k) => n >= k,
        }
    }
}

impl std::fmt::Display for Arity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Arity::Exactly(0) => write!(f, "no inputs"),
            Arity::Exactly(1) => write!(f, "exactly 1 input"),
            Arity::Exactly(k) => write!(f, "exactly {k} inputs"),
            Arity::AtLeast(k) => write!(f, "at least {k} input(s)"),
        }
    }
}

/// Something outside the cache that a stage's output depends on. The runner puts it in the
/// cache key, so that a changed dataset file or model revision invalidates the artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum External {
    /// A local file; the runner hashes its content (memoised by size and mtime).
    File { name: String, path: PathBuf },
    /// An immutable identifier, such as a pinned hub revision or a PyPI `name==version`.
    Value { name: String, value: String },
}

/// Settings shared by every stage of a pipeline run.
#[derive(Clone, Debug)]
pub struct Env {
    /// Where local datasets are looked up first (`../shared/data` by default).
    pub data_dir: PathBuf,
    /// Where fetched models are unpacked (`cache/models` by default).
    pub models_dir: PathBuf,
    /// The folder of the pipeline file, for resolving relative paths in params.
    pub pipeline_dir: PathBuf,
    /// The pipeline's seed (`settings.seed`). [`Context::seed`] is the stage's, which its own
    /// `seed` param replaces where it has one ([`stage_seed`]).
    pub seed: u64,
    /// Hide progress bars and progress lines.
    pub quiet: bool,
}

/// One upstream artifact as a stage sees it: a folder and the files it may read.
#[derive(Clone, Debug)]
pub struct Input {
    /// The id of the stage that produced it (for messages and report names).
    pub stage_id: String,
    pub dir: PathBuf,
    /// File names inside `dir` that this stage takes (all of them, or the one the pipeline named).
    pub files: Vec<String>,
}

impl Input {
    /// The path of `file`, or an error naming the upstream stage if it has no such output.
    pub fn path(&self, file: &str) -> Result<PathBuf> {
        if self.files.iter().any(|f| f == file) {
            Ok(self.dir.join(file))
        } else {
            Err(Error::mismatch(
                "find input",
                format!(
                    "stage `{}` has no output `{file}` (it has: {})",
                    self.stage_id,
                    self.files.join(", ")
                ),
            ))
        }
    }

    /// The split files (`train.parquet`, `test.parquet`, ...) as `(split, path)`, sorted; the
    /// per-fold training vectors ([`crate::folds::fold_vectors_file`]) are not splits.
    pub fn splits(&self) -> Vec<(String, PathBuf)> {
        let mut out: Vec<(String, PathBuf)> = self
            .files
            .iter()
            .filter(|f| crate::folds::parse_fold_vectors_file(f).is_none())
            .filter_map(|f| {
                f.strip_suffix(".parquet")
                    .map(|s| (s.to_string(), self.dir.join(f)))
            })
            .collect();
        out.sort();
        out
    }

    /// The path of a split file, e.g. `split("train")`.
    pub fn split(&self, split: &str) -> Result<PathBuf> {
        self.path(&format!("{split}.parquet"))
    }
}

/// The runner's hook behind [`Context::store_folder`]: makes a folder of the stage kind's store,
/// named by the stage, ready before the stage reads it.
pub type StoreReady<'a> = &'a (dyn Fn(&str) -> Result<()> + Sync);

/// What a stage is given besides its params and inputs.
pub struct Context<'a> {
    pub env: &'a Env,
    /// An empty folder to write outputs into; the runner publishes it atomically on success.
    pub out_dir: PathBuf,
    /// A folder that survives failed and interrupted runs, shared by all stages of this kind:
    /// the place for resumable shards and per-item memoisation. The stage owns its layout.
    pub store_dir: PathBuf,
    /// The seed in effect for this stage: [`stage_seed`] of its params.
    pub seed: u64,
    /// What [`Context::store_folder`] calls before a stage uses a folder of its store: the
    /// runner copies in what a remote cache holds of that folder, and only of it. `None`:
    /// nothing to do.
    pub store_ready: Option<StoreReady<'a>>,
}

/// The seed in effect for a stage with these params ([`Context::seed`]): its own `seed` param
/// where it has one, the pipeline's otherwise. The runner and the test kit both take it from
/// here, so a stage's tests see the seed a pipeline gives it.
pub fn stage_seed(params: &serde_json::Value, pipeline_seed: u64) -> u64 {
    params
        .get("seed")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(pipeline_seed)
}

impl Context<'_> {
    /// Progress for `total` items: a bar on a terminal, a line every few seconds otherwise,
    /// nothing when the run is quiet.
    pub fn progress(&self, total: u64, what: &str) -> crate::Progress {
        crate::Progress::new(total, what, self.env.quiet)
    }

    pub fn out(&self, file: &str) -> PathBuf {
        self.out_dir.join(file)
    }

    /// The folder `name` of this kind's store (under [`Context::store_dir`]), ready to use: with
    /// a remote cache, holding what the remote has of it. A stage reaches each store folder it
    /// uses through this, before it reads the folder.
    pub fn store_folder(&self, name: &str) -> Result<PathBuf> {
        if let Some(ready) = self.store_ready {
            ready(name)?;
        }
        Ok(self.store_dir.join(name))
    }
}

/// What a stage reports after a successful run (shown in the one-line summary, kept in the
/// manifest).
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Summary {
    /// Rows written, summed over the output tables.
    pub rows_out: usize,
    /// Short facts worth a line each ("reused 1,980 of 2,500 texts", "truncated 3 texts").
    pub notes: Vec<String>,
    /// Longer facts kept in the manifest and printed by `show`, not on the run's summary line
    /// (a model's full description).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
    /// The folders under [`Context::store_dir`] this run read or wrote (extraction: its store's
    /// fingerprint folder), by name. The manifest keeps them, and `gc --stores` removes only
    /// folders that no live artifact names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stores: Vec<String>,
}

/// A stage kind. Implemented by a unit struct in each stage crate.
pub trait Stage {
    /// The `kind:` that names this stage in pipeline files.
    const KIND: &'static str;
    /// The implementation version, part of the cache key. Bump it whenever the same params and
    /// inputs would now produce different output bytes.
    const VERSION: u32;
    /// How many inputs it takes.
    const INPUTS: Arity;
    /// Whether the output depends on the seed. Only then is the seed part of the cache key, so
    /// that changing the pipeline's seed does not re-run, say, a deterministic extraction.
    const SEEDED: bool = false;
    /// Whether `run` reads the pipeline's seed ([`Env::seed`]) besides its own
    /// ([`Context::seed`]) where its own `seed` param replaces the pipeline's: only then is the
    /// pipeline's seed in its key too (the MLP's CV folds are every classifier's, drawn from the
    /// pipeline's seed). A stage that does not declare it is given its own seed in `Env::seed`
    /// as well, so an undeclared read cannot leave a key that misses what the output depends on.
    const READS_PIPELINE_SEED: bool = false;
    /// Params as written in the pipeline file: `#[serde(deny_unknown_fields)]`, with defaults.
    type Params: Serialize + DeserializeOwned + schemars::JsonSchema;

    /// Checks that types alone cannot express (ranges, combinations). Runs before anything runs.
    fn check(_params: &Self::Params) -> Result<()> {
        Ok(())
    }

    /// Checks that need the number of inputs the pipeline gives the stage, beyond what
    /// [`Self::INPUTS`] says (one display name per input, say). Runs with `check`.
    fn check_inputs(_params: &Self::Params, _inputs: usize) -> Result<()> {
        Ok(())
    }

    /// Checks against what is already on this machine (the config of a model fetched earlier,
    /// say), before anything runs. Fetches, loads and writes nothing, and passes when there is
    /// nothing to look at yet: `run` then checks the same thing itself.
    fn check_local(_params: &Self::Params, _env: &Env) -> Result<()> {
        Ok(())
    }

    /// The things outside the cache that the output depends on.
    fn externals(_params: &Self::Params, _env: &Env) -> Result<Vec<External>> {
        Ok(Vec::new())
    }

    /// Reads `inputs`, writes outputs into `ctx.out_dir`.
    fn run(params: &Self::Params, inputs: &[Input], ctx: &Context) -> Result<Summary>;

    /// The part of `run` that several processes may do at once, each taking what no other holds
    /// (extraction: the store's shards, claimed one by one): does what it can claim, writes only
    /// into its store and returns its notes once nothing is left to claim, without waiting for
    /// what others hold and without writing outputs. `None`: the stage has no such part.
    /// `llmembed run --worker` calls this; `run` must still be called to make the outputs.
    fn share(
        _params: &Self::Params,
        _inputs: &[Input],
        _ctx: &Context,
    ) -> Result<Option<Vec<String>>> {
        Ok(None)
    }

    /// Lines describing shared work in progress in this kind's store folder (`store_dir`, as
    /// [`Context::store_dir`]): for extraction, per plan being embedded, shards done, claimed
    /// (by which host and process, since when, at what rate) and left. Empty when none.
    fn shared_progress(_store_dir: &Path) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// What a rerun would resume from `folder`, one folder of this kind's store (as
    /// [`Context::store_dir`]), in a few words (extraction: a plan with shards still to write);
    /// `None` when it holds no unfinished work. `gc --stores` never removes a folder with
    /// unfinished work, even one no artifact names: an interrupted run has published nothing yet.
    fn unfinished(_folder: &Path) -> Result<Option<String>> {
        Ok(None)
    }

    /// Loads what `run` made (its artifact, `fitted`: the fitted weights, the vocabulary, the
    /// class names) to apply the stage to new rows without fitting anything: `predict` and `serve`
    /// replay a pipeline's path from text to a classifier this way. `None` for stages that have
    /// no meaning on new rows (`evaluate`).
    fn applier(
        _params: &Self::Params,
        _fitted: &Input,
        _env: &ApplyEnv,
    ) -> Result<Option<Box<dyn Apply>>> {
        Ok(None)
    }
}

/// What [`Stage::applier`] is given besides its params and artifact.
#[derive(Clone, Debug)]
pub struct ApplyEnv {
    pub env: Env,
    /// The stage kind's store (as [`Context::store_dir`]): extraction reuses the vectors of
    /// texts it has seen, and adds new ones.
    pub store_dir: PathBuf,
}

/// Rows in memory, of one of the table kinds: what an [`Apply`] takes and gives.
#[derive(Clone, Debug, PartialEq)]
pub enum Rows {
    Text(TextTable),
    Embedding(EmbeddingTable),
    Predictions(Predictions),
    /// Sparse vectors (`tfidf`'s features).
    Sparse(SparseTable),
}

impl Rows {
    pub fn len(&self) -> usize {
        match self {
            Rows::Text(t) => t.len(),
            Rows::Embedding(t) => t.len(),
            Rows::Predictions(t) => t.len(),
            Rows::Sparse(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The table kind, for messages ("text", "embedding", "predictions").
    pub fn kind(&self) -> &'static str {
        match self {
            Rows::Text(_) => "text",
            Rows::Embedding(_) => "embedding",
            Rows::Predictions(_) => "predictions",
            Rows::Sparse(_) => "sparse",
        }
    }
}

/// A stage loaded once, with what it fitted, and applied to batches of new rows. Apply never
/// fits and never writes into the cache; the same rows give the same output as the stage's own
/// `run` gave them (the saved-model tests check this against each stage's test split).
pub trait Apply: Send + Sync {
    /// `inputs`: the new rows as the stage's upstream stages made them, in pipeline order (for
    /// `ingest`, the new texts themselves, unlabelled). Returns the rows this stage makes of
    /// them, in the same order, ids kept.
    fn apply(&self, inputs: &[Rows]) -> Result<Rows>;
}

/// Resolves a path param: absolute as is, relative to the pipeline file's folder otherwise.
pub fn resolve_path(env: &Env, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        env.pipeline_dir.join(path)
    }
}
