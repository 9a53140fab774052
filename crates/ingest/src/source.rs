//! Which files a source stands for: a data-directory dataset (with `labels.txt`), local files,
//! or a hub dataset (named or given), restricted to the splits asked for.

use std::path::{Path, PathBuf};

use llmembed_core::{Env, Error, Result, resolve_path};

use crate::hub::HubFiles;
use crate::params::{IngestParams, check_label_names};

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

pub(crate) enum Location {
    /// Split files on disk, in the order they are written.
    Local(Vec<(String, PathBuf)>),
    /// Boxed: the hub client and resolved commit are much larger than a list of paths.
    Hub(Box<HubFiles>),
}

pub(crate) struct Resolved {
    pub(crate) location: Location,
    pub(crate) label_names: Option<Vec<String>>,
    pub(crate) labels_file: Option<PathBuf>,
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

pub(crate) fn resolve(p: &IngestParams, env: &Env) -> Result<Resolved> {
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
        let cache = hub_cache_dir(p, env);
        return Ok(Resolved {
            location: Location::Hub(Box::new(HubFiles::resolve(
                cache,
                &hub.repo,
                &hub.revision,
                files,
            )?)),
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
    let cache = hub_cache_dir(p, env);
    Ok(Resolved {
        location: Location::Hub(Box::new(HubFiles::resolve(
            cache,
            k.repo,
            HUB_REVISION_FOR_NAMED,
            files,
        )?)),
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

/// The `hub_cache_dir` param, resolved against the pipeline's folder.
fn hub_cache_dir(p: &IngestParams, env: &Env) -> Option<PathBuf> {
    p.hub_cache_dir.as_ref().map(|dir| resolve_path(env, dir))
}
