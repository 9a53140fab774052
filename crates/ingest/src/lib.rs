//! The `ingest` stage: reads a text-classification dataset and writes one
//! [`TextTable`](llmembed_core::TextTable) per split (`train.parquet`, `test.parquet`, ...).
//!
//! # Sources (exactly one of)
//!
//! * `dataset: <name>`: a named dataset. It is looked up first in the data directory
//!   ([`Env::data_dir`], `../shared/data` by default): `<data_dir>/<name>/<split>.parquet` with
//!   class names in `<data_dir>/<name>/labels.txt` (one per line). This is the offline mechanism:
//!   put the files there and nothing is fetched. Only when `<data_dir>/<name>/` does not exist is
//!   the dataset taken from the Hugging Face hub (revision `main`, resolved to a commit), for the
//!   names this crate knows:
//!   * `ag_news` -> `fancyzhx/ag_news`, `data/{train,test}-00000-of-00001.parquet`, classes
//!     World, Sports, Business, Sci/Tech;
//!   * `sst2` -> `SetFit/sst2`, `{train,validation,test}.jsonl` (split `validation` is written as
//!     `dev`), classes negative, positive. This is the sentence-level SST-2 with labelled test
//!     rows (GLUE's `stanfordnlp/sst2` hides its test labels).
//! * `files: {train: a.csv, test: b.parquet}`: local files, by extension: `.parquet`/`.pq`,
//!   `.csv`, `.tsv`/`.tab` (header row required), `.jsonl`/`.ndjson` (one JSON object per line).
//!   Relative paths are resolved against the pipeline file's folder.
//! * `hub: {repo: org/name, revision: <sha or branch>, files: {train: path/in/repo, ...}}`: a hub
//!   dataset. The revision is resolved to a commit through the hub cache (`refs/<revision>`, or
//!   the sha itself when it has a `snapshots/<sha>` folder) and, only when the cache lacks it,
//!   through the hub API. Files are taken from the cache when present, downloaded otherwise.
//!
//! The hub cache is `hub_cache_dir` when given, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub` (the layout shared with Python's `huggingface_hub`).
//!
//! # Params
//!
//! ```yaml
//! kind: ingest
//! params:
//!   dataset: ag_news          # or files: {...} or hub: {repo, revision, files}
//!   text_columns: [text]      # default [text]; several are joined with one space
//!   label_column: label       # default label; integer ids or class-name strings
//!   label_names: null         # default: labels.txt / known hub names / derived (see below)
//!   splits:                   # default {}: every split of the source, all rows
//!     train: {sample: {total: 2000}}     # class-balanced: total / n_classes of each class
//!     test:  {sample: {per_class: 125}}  # or omit `sample` for all rows
//!   dedup: false              # drop rows whose (joined) text repeats an earlier row's
//!   seed: null                # overrides the pipeline seed
//!   hub_cache_dir: null       # hub cache folder (see above)
//! ```
//!
//! Label names, when neither given nor known: string labels give the sorted distinct values over
//! the read splits; integer labels give `"0"..="max"`.
//!
//! # Output
//!
//! `<split>.parquet` with `id` = `<split>-<row index in the source file>` (0-based, counted
//! before dedup and sampling, so an id names the same source row whatever the sample), `text`,
//! `label` (index into the label names, stored in the schema metadata). Sampled rows keep the
//! source file's order. The same params and seed give the same bytes.
//!
//! # Refused input
//!
//! A split with no rows; a CSV/TSV row with more or fewer fields than the header (an empty line
//! included); a JSON Lines line that is not one JSON object; text that is not UTF-8; a text
//! column that is not strings (an all-numeric CSV column included); null, missing or empty text
//! or label; a label column that mixes integer ids with other values (unless the label names look
//! like integers), a non-integral float label, an id outside the label names, a name not among
//! them. Each error names the file, the 0-based data row (the row of the output ids) and the
//! field, and for CSV/TSV and JSON Lines the row's physical line(s) in the file, counted from 1
//! (a CSV header is line 1; a quoted line break starts a new line). Row checks that polars does
//! not do are made only when polars fails or leaves nulls, so well-formed files are read once.
//!
//! Externals: every local file read (split files, `labels.txt`) as [`External::File`]; for hub
//! data, the resolved commit as [`External::Value`] (`hub:<repo>`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use llmembed_core::{
    Arity, Context, Env, Error, External, Input, Result, Stage, Summary, TextTable, resolve_path,
    seeded_rng, write_text_table,
};
use polars::prelude::{
    CsvParseOptions, CsvReadOptions, DataFrame, DataType, JsonFormat, JsonReader, ParquetReader,
    SerReader,
};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// The ingest stage (see the crate docs).
pub struct Ingest;

/// Params of [`Ingest`]; see the crate docs for the YAML form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestParams {
    /// A named dataset: data directory first, then the hub.
    #[serde(default)]
    pub dataset: Option<String>,
    /// Local files by split.
    #[serde(default)]
    pub files: Option<BTreeMap<String, PathBuf>>,
    /// A hub dataset.
    #[serde(default)]
    pub hub: Option<HubSource>,
    #[serde(default = "default_text_columns")]
    pub text_columns: Vec<String>,
    #[serde(default = "default_label_column")]
    pub label_column: String,
    #[serde(default)]
    pub label_names: Option<Vec<String>>,
    /// Splits to write, with their sampling. Empty: every split of the source, all rows.
    #[serde(default)]
    pub splits: BTreeMap<String, SplitSpec>,
    #[serde(default)]
    pub dedup: bool,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub hub_cache_dir: Option<PathBuf>,
}

fn default_text_columns() -> Vec<String> {
    vec!["text".to_string()]
}

fn default_label_column() -> String {
    "label".to_string()
}

impl Default for IngestParams {
    fn default() -> Self {
        IngestParams {
            dataset: None,
            files: None,
            hub: None,
            text_columns: default_text_columns(),
            label_column: default_label_column(),
            label_names: None,
            splits: BTreeMap::new(),
            dedup: false,
            seed: None,
            hub_cache_dir: None,
        }
    }
}

/// A dataset on the Hugging Face hub.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSource {
    /// `org/name`.
    pub repo: String,
    /// A commit sha (pinned) or a branch/tag, resolved to a commit.
    pub revision: String,
    /// Split -> file path inside the repository.
    pub files: BTreeMap<String, String>,
}

/// What to take of one split.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// `None`: all rows.
    #[serde(default)]
    pub sample: Option<Sample>,
}

/// Class-balanced sampling without replacement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sample {
    /// This many rows of every class.
    PerClass(usize),
    /// This many rows in all, `total / n_classes` of every class (must divide evenly).
    Total(usize),
}

/// A dataset the crate knows how to fetch from the hub.
struct KnownDataset {
    name: &'static str,
    repo: &'static str,
    files: &'static [(&'static str, &'static str)],
    label_names: &'static [&'static str],
}

const KNOWN: &[KnownDataset] = &[
    KnownDataset {
        name: "ag_news",
        repo: "fancyzhx/ag_news",
        files: &[
            ("train", "data/train-00000-of-00001.parquet"),
            ("test", "data/test-00000-of-00001.parquet"),
        ],
        label_names: &["World", "Sports", "Business", "Sci/Tech"],
    },
    KnownDataset {
        name: "sst2",
        repo: "SetFit/sst2",
        files: &[
            ("train", "train.jsonl"),
            ("dev", "validation.jsonl"),
            ("test", "test.jsonl"),
        ],
        label_names: &["negative", "positive"],
    },
];

const HUB_REVISION_FOR_NAMED: &str = "main";

impl Stage for Ingest {
    const KIND: &'static str = "ingest";
    const VERSION: u32 = 1;
    const INPUTS: Arity = Arity::Exactly(0);
    // The pipeline's seed is part of the key: class-balanced sampling draws rows with it.
    const SEEDED: bool = true;
    type Params = IngestParams;

    fn check(p: &IngestParams) -> Result<()> {
        let sources = p.dataset.is_some() as u8 + p.files.is_some() as u8 + p.hub.is_some() as u8;
        if sources != 1 {
            return Err(Error::param(
                "dataset/files/hub",
                format!("give exactly one source, got {sources}"),
            ));
        }
        if let Some(name) = &p.dataset
            && (name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.'))
        {
            return Err(Error::param(
                "dataset",
                format!("`{name}` is not a dataset name"),
            ));
        }
        if let Some(files) = &p.files {
            if files.is_empty() {
                return Err(Error::param("files", "no files"));
            }
            for split in files.keys() {
                check_split_name("files", split)?;
            }
        }
        if let Some(hub) = &p.hub {
            if hub.repo.split('/').count() != 2 || hub.repo.split('/').any(str::is_empty) {
                return Err(Error::param(
                    "hub.repo",
                    format!("`{}` is not `org/name`", hub.repo),
                ));
            }
            if hub.revision.trim().is_empty() {
                return Err(Error::param("hub.revision", "empty"));
            }
            if hub.files.is_empty() {
                return Err(Error::param("hub.files", "no files"));
            }
            for split in hub.files.keys() {
                check_split_name("hub.files", split)?;
            }
        }
        if p.text_columns.is_empty() {
            return Err(Error::param("text_columns", "no columns"));
        }
        if let Some(names) = &p.label_names {
            check_label_names("label_names", names)?;
        }
        for (split, spec) in &p.splits {
            check_split_name("splits", split)?;
            match spec.sample {
                Some(Sample::PerClass(0)) | Some(Sample::Total(0)) => {
                    return Err(Error::param(
                        &format!("splits.{split}.sample"),
                        "must be at least 1",
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn externals(p: &IngestParams, env: &Env) -> Result<Vec<External>> {
        let resolved = resolve(p, env)?;
        let mut out = Vec::new();
        match &resolved.location {
            Location::Local(files) => {
                for (split, path) in files {
                    out.push(External::File {
                        name: format!("split:{split}"),
                        path: path.clone(),
                    });
                }
            }
            Location::Hub(hub) => out.push(External::Value {
                name: format!("hub:{}", hub.repo),
                value: hub.commit.clone(),
            }),
        }
        if let Some(path) = &resolved.labels_file {
            out.push(External::File {
                name: "labels.txt".to_string(),
                path: path.clone(),
            });
        }
        Ok(out)
    }

    fn run(p: &IngestParams, _inputs: &[Input], ctx: &Context) -> Result<Summary> {
        let seed = p.seed.unwrap_or(ctx.seed);
        let resolved = resolve(p, ctx.env)?;
        let files: Vec<(String, PathBuf)> = match &resolved.location {
            Location::Local(files) => files.clone(),
            Location::Hub(hub) => hub.fetch()?,
        };

        let known_names = p.label_names.as_deref().or(resolved.label_names.as_deref());
        let mut raws = Vec::new();
        for (split, path) in &files {
            let df = read_frame(split, path)?;
            raws.push(extract(
                split,
                path,
                &df,
                &p.text_columns,
                &p.label_column,
                known_names,
            )?);
        }

        let label_names = match (&p.label_names, &resolved.label_names) {
            (Some(names), _) => names.clone(),
            (None, Some(names)) => names.clone(),
            (None, None) => derive_label_names(&raws)?,
        };

        let mut summary = Summary::default();
        for raw in &raws {
            let labels = map_labels(raw, &label_names)?;
            let mut keep: Vec<usize> = (0..raw.texts.len()).collect();
            if p.dedup {
                let mut seen = HashSet::new();
                keep.retain(|&i| seen.insert(raw.texts[i].as_str()));
                let dropped = raw.texts.len() - keep.len();
                if dropped > 0 {
                    summary
                        .notes
                        .push(format!("{}: dropped {dropped} duplicate texts", raw.split));
                }
            }
            let spec = p.splits.get(&raw.split).cloned().unwrap_or_default();
            if let Some(sample) = spec.sample {
                keep = sample_rows(raw, &labels, &keep, sample, &label_names, p, seed)?;
                summary.notes.push(format!(
                    "{}: sampled {} of {} rows ({} per class)",
                    raw.split,
                    keep.len(),
                    raw.texts.len(),
                    keep.len() / label_names.len()
                ));
            }
            let table = TextTable::new(
                keep.iter().map(|&i| format!("{}-{i}", raw.split)).collect(),
                keep.iter().map(|&i| raw.texts[i].clone()).collect(),
                keep.iter().map(|&i| labels[i]).collect(),
                label_names.clone(),
            );
            write_text_table(&ctx.out(&format!("{}.parquet", raw.split)), &table)?;
            summary.rows_out += table.len();
        }
        if let Location::Hub(hub) = &resolved.location {
            summary
                .notes
                .push(format!("hub {} at {}", hub.repo, hub.commit));
        }
        Ok(summary)
    }
}

fn check_split_name(param: &str, split: &str) -> Result<()> {
    let ok = !split.is_empty()
        && split
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::param(
            param,
            format!("split name `{split}` must be letters, digits, `_` or `-`"),
        ))
    }
}

fn check_label_names(param: &str, names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Err(Error::param(param, "no label names"));
    }
    let mut seen = HashSet::new();
    for n in names {
        if n.trim().is_empty() {
            return Err(Error::param(param, "empty label name"));
        }
        if !seen.insert(n) {
            return Err(Error::param(param, format!("label name `{n}` repeats")));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Resolving the source to files

enum Location {
    /// Split files on disk, in the order they are written.
    Local(Vec<(String, PathBuf)>),
    Hub(HubFiles),
}

struct Resolved {
    location: Location,
    label_names: Option<Vec<String>>,
    labels_file: Option<PathBuf>,
}

/// Keeps only the splits asked for (all when `splits` is empty), failing on unknown ones.
fn select_splits<T: Clone>(
    p: &IngestParams,
    available: &[(String, T)],
    source: &str,
) -> Result<Vec<(String, T)>> {
    if p.splits.is_empty() {
        return Ok(available.to_vec());
    }
    let mut out = Vec::new();
    for split in p.splits.keys() {
        match available.iter().find(|(s, _)| s == split) {
            Some(item) => out.push(item.clone()),
            None => {
                return Err(Error::param(
                    "splits",
                    format!(
                        "split `{split}` is not in {source} (it has: {})",
                        available
                            .iter()
                            .map(|(s, _)| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    }
    Ok(out)
}

fn resolve(p: &IngestParams, env: &Env) -> Result<Resolved> {
    if let Some(files) = &p.files {
        let available: Vec<(String, PathBuf)> = files
            .iter()
            .map(|(s, f)| (s.clone(), resolve_path(env, f)))
            .collect();
        return Ok(Resolved {
            location: Location::Local(select_splits(p, &available, "`files`")?),
            label_names: None,
            labels_file: None,
        });
    }
    if let Some(hub) = &p.hub {
        let available: Vec<(String, String)> = hub
            .files
            .iter()
            .map(|(s, f)| (s.clone(), f.clone()))
            .collect();
        let files = select_splits(p, &available, "`hub.files`")?;
        let cache = hub_cache(p, env);
        return Ok(Resolved {
            location: Location::Hub(HubFiles::resolve(cache, &hub.repo, &hub.revision, files)?),
            label_names: None,
            labels_file: None,
        });
    }
    let name = p
        .dataset
        .as_deref()
        .ok_or_else(|| Error::param("dataset/files/hub", "give exactly one source, got none"))?;
    let dir = env.data_dir.join(name);
    if dir.is_dir() {
        let available = local_dataset_splits(&dir)?;
        if available.is_empty() {
            return Err(Error::schema(
                &dir,
                "-",
                "no `<split>.parquet` files in this folder",
            ));
        }
        let labels_path = dir.join("labels.txt");
        let (label_names, labels_file) = if labels_path.is_file() {
            (Some(read_labels_file(&labels_path)?), Some(labels_path))
        } else {
            (known(name).map(known_label_names), None)
        };
        return Ok(Resolved {
            location: Location::Local(select_splits(p, &available, &format!("{}", dir.display()))?),
            label_names,
            labels_file,
        });
    }
    let Some(k) = known(name) else {
        return Err(Error::param(
            "dataset",
            format!(
                "`{name}` is neither a folder of the data directory ({} does not exist) nor a \
                 known hub dataset ({})",
                dir.display(),
                KNOWN.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
            ),
        ));
    };
    let available: Vec<(String, String)> = k
        .files
        .iter()
        .map(|(s, f)| (s.to_string(), f.to_string()))
        .collect();
    let files = select_splits(p, &available, &format!("hub dataset {}", k.repo))?;
    let cache = hub_cache(p, env);
    Ok(Resolved {
        location: Location::Hub(HubFiles::resolve(
            cache,
            k.repo,
            HUB_REVISION_FOR_NAMED,
            files,
        )?),
        label_names: Some(known_label_names(k)),
        labels_file: None,
    })
}

fn known(name: &str) -> Option<&'static KnownDataset> {
    KNOWN.iter().find(|k| k.name == name)
}

fn known_label_names(k: &KnownDataset) -> Vec<String> {
    k.label_names.iter().map(|s| s.to_string()).collect()
}

/// `<split>.parquet` files of a data-directory dataset, sorted by split name.
fn local_dataset_splits(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(split) = name.strip_suffix(".parquet")
            && !split.starts_with('.')
        {
            out.push((split.to_string(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn read_labels_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    let names: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .filter(|l| !l.trim().is_empty())
        .collect();
    check_label_names("labels.txt", &names).map_err(|e| Error::schema(path, "-", e.to_string()))?;
    Ok(names)
}

fn hub_cache(p: &IngestParams, env: &Env) -> hf_hub::Cache {
    match &p.hub_cache_dir {
        Some(dir) => hf_hub::Cache::new(resolve_path(env, dir)),
        None => hf_hub::Cache::from_env(),
    }
}

fn is_commit_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Hub files of one repository at one resolved commit.
struct HubFiles {
    cache: hf_hub::Cache,
    repo: String,
    commit: String,
    /// Split -> path in the repository.
    files: Vec<(String, String)>,
}

impl HubFiles {
    /// Resolves `revision` to a commit: a sha is taken as is; a branch or tag through the cache's
    /// `refs/<revision>`, else through the hub API.
    fn resolve(
        cache: hf_hub::Cache,
        repo: &str,
        revision: &str,
        files: Vec<(String, String)>,
    ) -> Result<Self> {
        let commit = if is_commit_sha(revision) {
            revision.to_ascii_lowercase()
        } else {
            let hf_repo = hf_hub::Repo::with_revision(
                repo.to_string(),
                hf_hub::RepoType::Dataset,
                revision.to_string(),
            );
            let ref_path = cache
                .path()
                .join(hf_repo.folder_name())
                .join("refs")
                .join(revision);
            match std::fs::read_to_string(&ref_path) {
                Ok(sha) if is_commit_sha(sha.trim()) => sha.trim().to_string(),
                Ok(other) => {
                    return Err(Error::schema(
                        &ref_path,
                        "-",
                        format!("expected a commit sha, found `{}`", other.trim()),
                    ));
                }
                Err(_) => {
                    let api = hub_api(&cache)?;
                    let info = api.repo(hf_repo).info().map_err(|e| {
                        Error::compute(
                            "resolve hub revision",
                            format!(
                                "dataset {repo} revision `{revision}`: not in the hub cache \
                                 ({}) and the hub gave: {e}",
                                ref_path.display()
                            ),
                        )
                    })?;
                    info.sha
                }
            }
        };
        Ok(HubFiles {
            cache,
            repo: repo.to_string(),
            commit,
            files,
        })
    }

    /// Local paths of the files: from the cache (through hf-hub's cache API), else downloaded.
    fn fetch(&self) -> Result<Vec<(String, PathBuf)>> {
        let hf_repo = hf_hub::Repo::with_revision(
            self.repo.clone(),
            hf_hub::RepoType::Dataset,
            self.commit.clone(),
        );
        let cached = self.cache.repo(hf_repo.clone());
        let snapshot = self
            .cache
            .path()
            .join(hf_repo.folder_name())
            .join("snapshots")
            .join(&self.commit);
        let mut out = Vec::new();
        for (split, file) in &self.files {
            // `CacheRepo::get` finds files downloaded by hf-hub for this commit (it writes
            // `refs/<sha>`); caches written by Python's huggingface_hub only have the snapshot.
            let path = match cached.get(file) {
                Some(path) => path,
                None if snapshot.join(file).is_file() => snapshot.join(file),
                None => {
                    let api = hub_api(&self.cache)?;
                    api.repo(hf_repo.clone()).download(file).map_err(|e| {
                        Error::compute(
                            "download hub file",
                            format!(
                                "{file} of dataset {} at {}: not in the hub cache ({}) and \
                                 the download failed: {e}",
                                self.repo,
                                self.commit,
                                snapshot.display()
                            ),
                        )
                    })?
                }
            };
            out.push((split.clone(), path));
        }
        Ok(out)
    }
}

fn hub_api(cache: &hf_hub::Cache) -> Result<hf_hub::api::sync::Api> {
    hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
        .with_progress(false)
        .build()
        .map_err(|e| Error::compute("open hub client", e))
}

// ---------------------------------------------------------------------------------------------
// Reading files

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Parquet,
    Csv(u8),
    JsonLines,
}

fn format_of(path: &Path) -> Result<Format> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "parquet" | "pq" => Ok(Format::Parquet),
        "csv" => Ok(Format::Csv(b',')),
        "tsv" | "tab" => Ok(Format::Csv(b'\t')),
        "jsonl" | "ndjson" => Ok(Format::JsonLines),
        _ => Err(Error::schema(
            path,
            "-",
            "unknown file type (expected .parquet, .pq, .csv, .tsv, .tab, .jsonl or .ndjson)",
        )),
    }
}

/// `split` read from `path` has no data rows.
fn no_rows(split: &str, path: &Path) -> Error {
    Error::mismatch(
        "ingest",
        format!("split `{split}` of {} has no rows", path.display()),
    )
}

fn read_frame(split: &str, path: &Path) -> Result<DataFrame> {
    let format = format_of(path)?;
    let df = match format {
        Format::Parquet => {
            let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
            ParquetReader::new(file)
                .finish()
                .map_err(|e| Error::parquet("read", path, e))?
        }
        Format::Csv(sep) => {
            let bytes = read_bytes(path)?;
            check_utf8(path, &bytes, Some(sep))?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Err(no_rows(split, path));
            }
            let read = CsvReadOptions::default()
                .with_has_header(true)
                .with_infer_schema_length(None)
                .with_parse_options(CsvParseOptions::default().with_separator(sep))
                .into_reader_with_file_handle(std::io::Cursor::new(&bytes[..]))
                .finish();
            match read {
                // Polars fails on a row with more fields than the header, without saying where:
                // find the first row of the wrong width. Other failures keep polars' words.
                Err(e) => {
                    check_csv_records(path, &bytes, sep)?;
                    return Err(Error::schema(path, "-", format!("cannot read as CSV: {e}")));
                }
                // Polars fills the fields missing from a short (or empty) row with nulls, so a
                // file without nulls in its last column has none: only then look at the rows.
                Ok(df) => {
                    if df.columns().last().is_some_and(|c| c.null_count() > 0) {
                        check_csv_records(path, &bytes, sep)?;
                    }
                    df
                }
            }
        }
        Format::JsonLines => {
            let bytes = read_bytes(path)?;
            check_utf8(path, &bytes, None)?;
            if json_lines(&bytes).next().is_none() {
                return Err(no_rows(split, path));
            }
            let read = JsonReader::new(std::io::Cursor::new(&bytes[..]))
                .with_json_format(JsonFormat::JsonLines)
                .infer_schema_len(None)
                .finish();
            match read {
                // Polars names neither the line nor the problem in its own words: find the
                // first line that is not a JSON object.
                Err(e) => {
                    check_json_lines(path, &bytes)?;
                    return Err(Error::schema(
                        path,
                        "-",
                        format!("cannot read as JSON Lines: {e}"),
                    ));
                }
                Ok(df) => df,
            }
        }
    };
    if df.height() == 0 {
        return Err(no_rows(split, path));
    }
    Ok(df)
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(bytes)
}

/// Where a row is in its text file: 1-based physical lines, the header being line 1 of a CSV.
fn lines_note(first: usize, quoted_breaks: usize) -> String {
    if quoted_breaks == 0 {
        format!("line {first} of the file, counting from 1")
    } else {
        format!(
            "lines {first}-{} of the file, counting from 1",
            first + quoted_breaks
        )
    }
}

/// Fails on the first byte that is not UTF-8, naming the data row, its line and, for CSV, the
/// column.
fn check_utf8(path: &Path, bytes: &[u8], sep: Option<u8>) -> Result<()> {
    let Err(e) = std::str::from_utf8(bytes) else {
        return Ok(());
    };
    let pos = e.valid_up_to();
    let line = 1 + bytes[..pos].iter().filter(|&&b| b == b'\n').count();
    let msg = format!(
        "text is not valid UTF-8 at byte offset {pos} ({})",
        lines_note(line, 0)
    );
    let Some(sep) = sep else {
        let line_start = bytes[..pos]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let row = json_lines(&bytes[..line_start]).count();
        return Err(Error::row(path, row, "-", msg));
    };
    let mut records = CsvRecords::new(bytes, sep);
    let header = records.next().expect("a byte at `pos`, so a record");
    if pos <= header.end {
        return Err(Error::schema(path, "-", format!("header {msg}")));
    }
    let names = header.field_names(bytes, sep);
    for (row, r) in records.enumerate() {
        if pos <= r.end {
            let field = r
                .field_starts(bytes, sep)
                .iter()
                .filter(|&&s| s <= pos)
                .count()
                - 1;
            let column = names
                .get(field)
                .cloned()
                .unwrap_or_else(|| format!("#{}", field + 1));
            return Err(Error::row(path, row, &column, msg));
        }
    }
    unreachable!("byte {pos} is in a record")
}

/// One record of a delimited file.
struct CsvRecord {
    /// Byte offset of its first byte.
    start: usize,
    /// Byte offset of the line break that ends it (or the file's length).
    end: usize,
    /// 1-based line of the file it starts on.
    line: usize,
    /// Line breaks inside quoted fields.
    quoted_breaks: usize,
    fields: usize,
}

impl CsvRecord {
    fn is_blank(&self, bytes: &[u8]) -> bool {
        matches!(&bytes[self.start..self.end], b"" | b"\r")
    }

    fn field_starts(&self, bytes: &[u8], sep: u8) -> Vec<usize> {
        let mut starts = Vec::with_capacity(self.fields);
        walk_csv_record(bytes, self.start, sep, |s| starts.push(s));
        starts
    }

    /// The fields as text, quotes removed (for naming header columns).
    fn field_names(&self, bytes: &[u8], sep: u8) -> Vec<String> {
        let starts = self.field_starts(bytes, sep);
        (0..starts.len())
            .map(|i| {
                let end = starts.get(i + 1).map_or(self.end, |&next| next - 1);
                let raw = String::from_utf8_lossy(&bytes[starts[i]..end]);
                let raw = raw.strip_suffix('\r').unwrap_or(&raw);
                match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
                    Some(inner) => inner.replace("\"\"", "\""),
                    None => raw.to_string(),
                }
            })
            .collect()
    }
}

/// Walks the record that starts at `pos` the way polars splits it: a field that starts with `"`
/// runs until a separator or line break outside quotes (every `"` toggles quoting, so `""` is a
/// quote inside the field); any other field ends at the next separator or line break. Calls
/// `on_field` with the offset of each field. Returns (fields, offset of the ending line break or
/// the file's length, line breaks inside quotes).
fn walk_csv_record(
    bytes: &[u8],
    mut pos: usize,
    sep: u8,
    mut on_field: impl FnMut(usize),
) -> (usize, usize, usize) {
    let (mut fields, mut breaks) = (0, 0);
    loop {
        on_field(pos);
        fields += 1;
        if bytes.get(pos) == Some(&b'"') {
            let mut quoted = false;
            while let Some(&c) = bytes.get(pos) {
                if c == b'"' {
                    quoted = !quoted;
                } else if c == b'\n' && quoted {
                    breaks += 1;
                } else if !quoted && (c == sep || c == b'\n') {
                    break;
                }
                pos += 1;
            }
        } else {
            while bytes.get(pos).is_some_and(|&c| c != sep && c != b'\n') {
                pos += 1;
            }
        }
        match bytes.get(pos) {
            Some(&c) if c == sep => pos += 1,
            Some(_) => return (fields, pos, breaks),
            None => return (fields, bytes.len(), breaks),
        }
    }
}

/// The records of a delimited file, header first.
struct CsvRecords<'a> {
    bytes: &'a [u8],
    sep: u8,
    pos: usize,
    line: usize,
}

impl<'a> CsvRecords<'a> {
    fn new(bytes: &'a [u8], sep: u8) -> Self {
        CsvRecords {
            bytes,
            sep,
            pos: 0,
            line: 1,
        }
    }
}

impl Iterator for CsvRecords<'_> {
    type Item = CsvRecord;

    fn next(&mut self) -> Option<CsvRecord> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        let (fields, end, quoted_breaks) = walk_csv_record(self.bytes, self.pos, self.sep, |_| {});
        let record = CsvRecord {
            start: self.pos,
            end,
            line: self.line,
            quoted_breaks,
            fields,
        };
        self.pos = end + 1;
        self.line += quoted_breaks + 1;
        Some(record)
    }
}

/// Fails on the first data row whose number of fields differs from the header's.
fn check_csv_records(path: &Path, bytes: &[u8], sep: u8) -> Result<()> {
    let mut records = CsvRecords::new(bytes, sep);
    let Some(header) = records.next() else {
        return Ok(());
    };
    let width = header.fields;
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    for (row, r) in records.enumerate() {
        if r.fields == width {
            continue;
        }
        let at = lines_note(r.line, r.quoted_breaks);
        let (field, message) = if r.is_blank(bytes) {
            (
                "-".to_string(),
                format!("empty line, but the header has {width} fields ({at})"),
            )
        } else if r.fields > width {
            (
                format!("#{}", width + 1),
                format!("{} fields, but the header has {width} ({at})", r.fields),
            )
        } else {
            let names = header.field_names(bytes, sep);
            (
                names[r.fields].clone(),
                format!(
                    "{} field{}, but the header has {width} ({at})",
                    r.fields,
                    plural(r.fields)
                ),
            )
        };
        return Err(Error::row(path, row, &field, message));
    }
    Ok(())
}

/// The lines polars reads as JSON Lines rows (it skips blank ones), with their 1-based numbers.
fn json_lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, l)| l.iter().any(|b| !matches!(b, b' ' | b'\t' | b'\r')))
        .map(|(i, l)| (i + 1, l))
}

/// Fails on the first row that is not one JSON object.
fn check_json_lines(path: &Path, bytes: &[u8]) -> Result<()> {
    for (row, (line, text)) in json_lines(bytes).enumerate() {
        let problem = match serde_json::from_slice::<serde_json::Value>(text) {
            Err(e) => {
                let reason = e.to_string();
                let suffix = format!(" at line {} column {}", e.line(), e.column());
                let reason = reason.strip_suffix(&suffix).unwrap_or(&reason);
                format!("invalid JSON at column {}: {reason}", e.column())
            }
            Ok(serde_json::Value::Object(_)) => continue,
            Ok(other) => format!("not a JSON object: {}", json_kind(&other)),
        };
        return Err(Error::row(
            path,
            row,
            "-",
            format!("{problem} ({})", lines_note(line, 0)),
        ));
    }
    Ok(())
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A bad value in data row `row` (0-based, as polars read it) of `path`. For CSV and JSON Lines
/// the message says which line(s) of the file hold the row; the file is read again for that,
/// which is fine on the way out.
fn bad_row(path: &Path, row: usize, field: &str, message: impl Into<String>) -> Error {
    let mut message = message.into();
    let lines = match format_of(path) {
        Ok(Format::Csv(sep)) => std::fs::read(path).ok().and_then(|bytes| {
            CsvRecords::new(&bytes, sep)
                .nth(row + 1)
                .map(|r| lines_note(r.line, r.quoted_breaks))
        }),
        Ok(Format::JsonLines) => std::fs::read(path)
            .ok()
            .and_then(|bytes| json_lines(&bytes).nth(row).map(|(l, _)| lines_note(l, 0))),
        _ => None,
    };
    if let Some(lines) = lines {
        message.push_str(&format!(" ({lines})"));
    }
    Error::row(path, row, field, message)
}

/// How a missing value reads in this file's format.
fn null_word(path: &Path) -> &'static str {
    match format_of(path) {
        Ok(Format::Csv(_)) => "empty",
        Ok(Format::JsonLines) => "null or missing",
        _ => "null",
    }
}

enum RawLabels {
    Ids(Vec<i64>),
    Names(Vec<String>),
}

struct RawSplit {
    split: String,
    path: PathBuf,
    label_column: String,
    texts: Vec<String>,
    labels: RawLabels,
}

fn column_list(df: &DataFrame) -> String {
    df.get_column_names()
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_label_id(v: &str) -> bool {
    v.parse::<i64>().is_ok()
}

/// Texts and labels of one split. `label_names`: the names given or known before reading, if
/// any (they decide whether a string column that mixes integers and other values is names).
fn extract(
    split: &str,
    path: &Path,
    df: &DataFrame,
    text_columns: &[String],
    label_column: &str,
    label_names: Option<&[String]>,
) -> Result<RawSplit> {
    let n = df.height();
    let mut texts: Vec<String> = vec![String::new(); n];
    for (k, name) in text_columns.iter().enumerate() {
        let col = df.column(name).map_err(|_| {
            Error::schema(
                path,
                name,
                format!("missing (columns: {})", column_list(df)),
            )
        })?;
        if !col.dtype().is_string() {
            return Err(Error::schema(
                path,
                name,
                format!("expected text, found {}", col.dtype()),
            ));
        }
        let strs = col
            .str()
            .map_err(|e| Error::schema(path, name, e.to_string()))?;
        for (row, v) in strs.iter().enumerate() {
            let v =
                v.ok_or_else(|| bad_row(path, row, name, format!("{} text", null_word(path))))?;
            if k > 0 {
                texts[row].push(' ');
            }
            texts[row].push_str(v);
        }
    }
    for (row, t) in texts.iter().enumerate() {
        if t.trim().is_empty() {
            return Err(bad_row(path, row, &text_columns.join("+"), "empty text"));
        }
    }

    let col = df.column(label_column).map_err(|_| {
        Error::schema(
            path,
            label_column,
            format!("missing (columns: {})", column_list(df)),
        )
    })?;
    let null_label = |row| {
        bad_row(
            path,
            row,
            label_column,
            format!("{} label", null_word(path)),
        )
    };
    let labels = if col.dtype().is_integer() {
        let ints = col
            .cast(&DataType::Int64)
            .map_err(|e| Error::schema(path, label_column, e.to_string()))?;
        let ints = ints
            .i64()
            .map_err(|e| Error::schema(path, label_column, e.to_string()))?;
        let mut out = Vec::with_capacity(n);
        for (row, v) in ints.iter().enumerate() {
            out.push(v.ok_or_else(|| null_label(row))?);
        }
        RawLabels::Ids(out)
    } else if col.dtype().is_string() {
        let strs = col
            .str()
            .map_err(|e| Error::schema(path, label_column, e.to_string()))?;
        let mut out = Vec::with_capacity(n);
        for (row, v) in strs.iter().enumerate() {
            out.push(v.ok_or_else(|| null_label(row))?.to_string());
        }
        // A column of integer ids with one stray value reads as strings; so does one that mixes
        // ids and names. Unless the label names themselves look like integers, name the first
        // row that differs from row 0.
        let names_look_like_ids =
            label_names.is_some_and(|names| names.iter().any(|x| is_label_id(x)));
        if let Some(first) = out.first()
            && !names_look_like_ids
        {
            let first_is_id = is_label_id(first);
            if let Some(row) = out.iter().position(|v| is_label_id(v) != first_is_id) {
                let v = &out[row];
                let message = if first_is_id {
                    format!("label `{v}` is not an integer id, but row 0's label `{first}` is")
                } else {
                    format!("label `{v}` is an integer id, but row 0's label `{first}` is a name")
                };
                return Err(bad_row(path, row, label_column, message));
            }
        }
        RawLabels::Names(out)
    } else {
        // A float column with one non-integral value: name that row.
        if col.dtype().is_float()
            && let Ok(floats) = col.cast(&DataType::Float64)
            && let Ok(floats) = floats.f64()
        {
            for (row, v) in floats.iter().enumerate() {
                let v = v.ok_or_else(|| null_label(row))?;
                if v.fract() != 0.0 || !v.is_finite() {
                    return Err(bad_row(
                        path,
                        row,
                        label_column,
                        format!("label `{v}` is not an integer id"),
                    ));
                }
            }
        }
        return Err(Error::schema(
            path,
            label_column,
            format!(
                "expected integer ids or string names, found {}",
                col.dtype()
            ),
        ));
    };
    Ok(RawSplit {
        split: split.to_string(),
        path: path.to_path_buf(),
        label_column: label_column.to_string(),
        texts,
        labels,
    })
}

fn derive_label_names(raws: &[RawSplit]) -> Result<Vec<String>> {
    let any_names = raws.iter().any(|r| matches!(r.labels, RawLabels::Names(_)));
    let any_ids = raws.iter().any(|r| matches!(r.labels, RawLabels::Ids(_)));
    if any_names && any_ids {
        return Err(Error::mismatch(
            "derive label names",
            "some splits have integer labels and others string labels; give `label_names`",
        ));
    }
    let mut names = BTreeSet::new();
    let mut max_id = -1i64;
    for raw in raws {
        match &raw.labels {
            RawLabels::Names(v) => names.extend(v.iter().cloned()),
            RawLabels::Ids(v) => {
                for (row, &id) in v.iter().enumerate() {
                    if id < 0 {
                        return Err(bad_row(
                            &raw.path,
                            row,
                            &raw.label_column,
                            format!("label id {id} is negative"),
                        ));
                    }
                    max_id = max_id.max(id);
                }
            }
        }
    }
    let out: Vec<String> = if any_names {
        names.into_iter().collect()
    } else {
        (0..=max_id).map(|i| i.to_string()).collect()
    };
    if out.is_empty() {
        return Err(Error::mismatch(
            "derive label names",
            "no rows, so no labels",
        ));
    }
    Ok(out)
}

fn map_labels(raw: &RawSplit, names: &[String]) -> Result<Vec<i64>> {
    let n = names.len() as i64;
    let label_column = raw.label_column.as_str();
    match &raw.labels {
        RawLabels::Ids(ids) => {
            for (row, &id) in ids.iter().enumerate() {
                if !(0..n).contains(&id) {
                    return Err(bad_row(
                        &raw.path,
                        row,
                        label_column,
                        format!("label id {id} is outside the {n} label names {names:?}"),
                    ));
                }
            }
            Ok(ids.clone())
        }
        RawLabels::Names(values) => values
            .iter()
            .enumerate()
            .map(|(row, v)| {
                names
                    .iter()
                    .position(|x| x == v)
                    .map(|i| i as i64)
                    .ok_or_else(|| {
                        bad_row(
                            &raw.path,
                            row,
                            label_column,
                            format!("label `{v}` is not one of the label names {names:?}"),
                        )
                    })
            })
            .collect(),
    }
}

/// Class-balanced sample of the rows in `keep`, returned in source order.
fn sample_rows(
    raw: &RawSplit,
    labels: &[i64],
    keep: &[usize],
    sample: Sample,
    names: &[String],
    p: &IngestParams,
    seed: u64,
) -> Result<Vec<usize>> {
    let k = names.len();
    let per_class = match sample {
        Sample::PerClass(n) => n,
        Sample::Total(t) => {
            if t % k != 0 {
                return Err(Error::param(
                    &format!("splits.{}.sample.total", raw.split),
                    format!("{t} is not a multiple of the {k} classes"),
                ));
            }
            t / k
        }
    };
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); k];
    for &i in keep {
        by_class[labels[i] as usize].push(i);
    }
    let mut rng = seeded_rng(seed, &format!("ingest/sample/{}", raw.split));
    let mut out = Vec::with_capacity(per_class * k);
    for (c, mut rows) in by_class.into_iter().enumerate() {
        if rows.len() < per_class {
            let what = if rows.is_empty() {
                "no rows".to_string()
            } else {
                format!("only {} rows", rows.len())
            };
            return Err(Error::schema(
                &raw.path,
                &p.label_column,
                format!(
                    "split `{}` has {what} of class `{}` (index {c}){}; sampling needs {per_class}",
                    raw.split,
                    names[c],
                    if p.dedup { " after dedup" } else { "" }
                ),
            ));
        }
        rows.shuffle(&mut rng);
        out.extend_from_slice(&rows[..per_class]);
    }
    out.sort_unstable();
    Ok(out)
}
