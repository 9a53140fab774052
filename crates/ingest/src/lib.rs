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

        let mut raws = Vec::new();
        for (split, path) in &files {
            let df = read_frame(path)?;
            raws.push(extract(split, path, &df, &p.text_columns, &p.label_column)?);
        }

        let label_names = match (&p.label_names, &resolved.label_names) {
            (Some(names), _) => names.clone(),
            (None, Some(names)) => names.clone(),
            (None, None) => derive_label_names(&raws)?,
        };

        let mut summary = Summary::default();
        for raw in &raws {
            let labels = map_labels(raw, &label_names, &p.label_column)?;
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

fn invalid(op: &'static str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(
        op,
        path,
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    )
}

fn read_frame(path: &Path) -> Result<DataFrame> {
    let format = format_of(path)?;
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    match format {
        Format::Parquet => ParquetReader::new(file)
            .finish()
            .map_err(|e| Error::parquet("read", path, e)),
        Format::Csv(sep) => {
            drop(file);
            let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
            check_utf8(path, &bytes, Some(sep))?;
            CsvReadOptions::default()
                .with_has_header(true)
                .with_infer_schema_length(None)
                .with_parse_options(CsvParseOptions::default().with_separator(sep))
                .into_reader_with_file_handle(std::io::Cursor::new(bytes))
                .finish()
                .map_err(|e| invalid("read csv", path, e))
        }
        Format::JsonLines => {
            drop(file);
            let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
            check_utf8(path, &bytes, None)?;
            JsonReader::new(std::io::Cursor::new(bytes))
                .with_json_format(JsonFormat::JsonLines)
                .infer_schema_len(None)
                .finish()
                .map_err(|e| invalid("read json lines", path, e))
        }
    }
}

/// Fails on the first byte that is not UTF-8, naming the data row (lines after the header for
/// CSV, lines for JSON Lines; quoted line breaks are not accounted for) and, for CSV, the column.
fn check_utf8(path: &Path, bytes: &[u8], sep: Option<u8>) -> Result<()> {
    let Err(e) = std::str::from_utf8(bytes) else {
        return Ok(());
    };
    let pos = e.valid_up_to();
    let line = bytes[..pos].iter().filter(|&&b| b == b'\n').count();
    let line_start = bytes[..pos]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let msg = format!("text is not valid UTF-8 (line {}, byte {pos})", line + 1);
    match sep {
        Some(sep) => {
            if line == 0 {
                return Err(Error::schema(path, "-", format!("header {msg}")));
            }
            let header_end = bytes
                .iter()
                .position(|&b| b == b'\n')
                .unwrap_or(bytes.len());
            let header = String::from_utf8_lossy(&bytes[..header_end]);
            let field = bytes[line_start..pos].iter().filter(|&&b| b == sep).count();
            let column = header
                .trim_end_matches('\r')
                .split(sep as char)
                .nth(field)
                .map(|c| c.trim_matches('"').to_string())
                .unwrap_or_else(|| format!("#{field}"));
            Err(Error::row(path, line - 1, &column, msg))
        }
        None => Err(Error::row(path, line, "-", msg)),
    }
}

enum RawLabels {
    Ids(Vec<i64>),
    Names(Vec<String>),
}

struct RawSplit {
    split: String,
    path: PathBuf,
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

fn extract(
    split: &str,
    path: &Path,
    df: &DataFrame,
    text_columns: &[String],
    label_column: &str,
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
        let col = if col.dtype().is_string() {
            col.clone()
        } else if col.dtype().is_primitive_numeric() || col.dtype() == &DataType::Boolean {
            col.cast(&DataType::String)
                .map_err(|e| Error::schema(path, name, e.to_string()))?
        } else {
            return Err(Error::schema(
                path,
                name,
                format!("expected text, found {}", col.dtype()),
            ));
        };
        let strs = col
            .str()
            .map_err(|e| Error::schema(path, name, e.to_string()))?;
        for (row, v) in strs.iter().enumerate() {
            let v = v.ok_or_else(|| Error::row(path, row, name, "null text"))?;
            if k > 0 {
                texts[row].push(' ');
            }
            texts[row].push_str(v);
        }
    }
    for (row, t) in texts.iter().enumerate() {
        if t.trim().is_empty() {
            return Err(Error::row(path, row, &text_columns.join("+"), "empty text"));
        }
    }

    let col = df.column(label_column).map_err(|_| {
        Error::schema(
            path,
            label_column,
            format!("missing (columns: {})", column_list(df)),
        )
    })?;
    let labels = if col.dtype().is_integer() {
        let ints = col
            .cast(&DataType::Int64)
            .map_err(|e| Error::schema(path, label_column, e.to_string()))?;
        let ints = ints
            .i64()
            .map_err(|e| Error::schema(path, label_column, e.to_string()))?;
        let mut out = Vec::with_capacity(n);
        for (row, v) in ints.iter().enumerate() {
            out.push(v.ok_or_else(|| Error::row(path, row, label_column, "null label"))?);
        }
        RawLabels::Ids(out)
    } else if col.dtype().is_string() {
        let strs = col
            .str()
            .map_err(|e| Error::schema(path, label_column, e.to_string()))?;
        let mut out = Vec::with_capacity(n);
        for (row, v) in strs.iter().enumerate() {
            out.push(
                v.ok_or_else(|| Error::row(path, row, label_column, "null label"))?
                    .to_string(),
            );
        }
        RawLabels::Names(out)
    } else {
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
                        return Err(Error::row(
                            &raw.path,
                            row,
                            "label",
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

fn map_labels(raw: &RawSplit, names: &[String], label_column: &str) -> Result<Vec<i64>> {
    let n = names.len() as i64;
    match &raw.labels {
        RawLabels::Ids(ids) => {
            for (row, &id) in ids.iter().enumerate() {
                if !(0..n).contains(&id) {
                    return Err(Error::row(
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
                        Error::row(
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
