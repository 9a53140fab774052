//! The params of [`Ingest`](crate::Ingest) (see the crate docs for the YAML form) and their
//! checks.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use llmembed_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Params of [`Ingest`](crate::Ingest); see the crate docs for the YAML form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// The column of class labels: integer ids or class names. `null`: no split has labels
    /// (texts to classify): every row gets label -1, and the class names come from
    /// `label_names` or the dataset folder's `labels.txt`. To leave out the labels of some
    /// splits only, mark them `unlabelled` under `splits`.
    #[serde(default = "default_label_column")]
    pub label_column: Option<String>,
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

fn default_label_column() -> Option<String> {
    Some("label".to_string())
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// `None`: all rows.
    #[serde(default)]
    pub sample: Option<Sample>,
    /// The split has no labels (texts to classify, a test split whose labels are hidden as in
    /// GLUE): its label column is not read, even where the file has one, and every row gets
    /// label -1. Such rows flow through every stage but are never used to fit or to score. An
    /// unlabelled split cannot be sampled (the sampling is class-balanced).
    #[serde(default, skip_serializing_if = "is_false")]
    pub unlabelled: bool,
}

// Left out of the canonical params when false, so the keys of pipelines that never mark a split
// stay what they were.
fn is_false(b: &bool) -> bool {
    !*b
}

/// Class-balanced sampling without replacement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sample {
    /// This many rows of every class.
    PerClass(usize),
    /// This many rows in all, `total / n_classes` of every class (must divide evenly).
    Total(usize),
}

impl IngestParams {
    /// Refuses params that no source could satisfy (run before anything is read).
    pub(crate) fn check(&self) -> Result<()> {
        let p = self;
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
            if spec.sample.is_some() && !p.split_has_labels(split) {
                let why = if p.label_column.is_none() {
                    "`label_column` is null"
                } else {
                    "the split is marked `unlabelled`"
                };
                return Err(Error::param(
                    &format!("splits.{split}.sample"),
                    format!(
                        "class-balanced sampling needs labels, and split `{split}` has none \
                         ({why}); take all its rows (leave out `sample`)"
                    ),
                ));
            }
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
}

impl IngestParams {
    /// Whether the labels of `split` are read (see [`SplitSpec::unlabelled`]).
    pub(crate) fn split_has_labels(&self, split: &str) -> bool {
        self.label_column.is_some() && !self.splits.get(split).is_some_and(|s| s.unlabelled)
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

pub(crate) fn check_label_names(param: &str, names: &[String]) -> Result<()> {
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
