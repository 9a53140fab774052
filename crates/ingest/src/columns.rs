//! Texts and labels out of a split's frame, label names derived when neither given nor known,
//! and labels mapped to ids, each refusal naming the file, row and field.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use llmembed_core::{Error, Result, UNLABELLED};
use polars::prelude::{DataFrame, DataType};

use crate::read::{bad_row, null_word};

pub(crate) enum RawLabels {
    Ids(Vec<i64>),
    Names(Vec<String>),
    /// A split without labels: every row gets `UNLABELLED`.
    Unlabelled,
}

/// One split as read, before label mapping, dedup and sampling.
pub(crate) struct RawSplit {
    pub(crate) split: String,
    pub(crate) path: PathBuf,
    /// The label column (`-` for an unlabelled split, in messages only).
    pub(crate) label_column: String,
    pub(crate) texts: Vec<String>,
    pub(crate) labels: RawLabels,
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

/// Texts and labels of one split; `label_column` `None`: the split has no labels. `label_names`:
/// the names given or known before reading, if any (they decide whether a string column that
/// mixes integers and other values is names).
pub(crate) fn read_split(
    split: &str,
    path: &Path,
    df: &DataFrame,
    text_columns: &[String],
    label_column: Option<&str>,
    label_names: Option<&[String]>,
) -> Result<RawSplit> {
    let texts = read_texts(path, df, text_columns)?;
    let labels = match label_column {
        Some(column) => read_labels(path, df, column, label_names)?,
        None => RawLabels::Unlabelled,
    };
    Ok(RawSplit {
        split: split.to_string(),
        path: path.to_path_buf(),
        label_column: label_column.unwrap_or("-").to_string(),
        texts,
        labels,
    })
}

/// The text columns of every row, joined with one space; none may be missing or blank.
fn read_texts(path: &Path, df: &DataFrame, text_columns: &[String]) -> Result<Vec<String>> {
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
    Ok(texts)
}

/// The label column as integer ids or as names (see [`read_split`]).
fn read_labels(
    path: &Path,
    df: &DataFrame,
    label_column: &str,
    label_names: Option<&[String]>,
) -> Result<RawLabels> {
    let n = df.height();
    let col = df.column(label_column).map_err(|_| {
        Error::schema(
            path,
            label_column,
            format!(
                "missing (columns: {}); for texts without labels, mark the split \
                 `unlabelled: true` under `splits`, or set `label_column: null`",
                column_list(df)
            ),
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
    Ok(labels)
}

/// Class names from the labelled splits (unlabelled ones say nothing about the classes).
pub(crate) fn derive_label_names(raws: &[RawSplit]) -> Result<Vec<String>> {
    if raws
        .iter()
        .all(|r| matches!(r.labels, RawLabels::Unlabelled))
    {
        return Err(Error::param(
            "label_names",
            "no split has labels to take the class names from: give `label_names` (or a \
             `labels.txt` in the dataset's folder)",
        ));
    }
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
                            format!("label id {id} is negative{}", unlabelled_hint(id)),
                        ));
                    }
                    max_id = max_id.max(id);
                }
            }
            RawLabels::Unlabelled => {}
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

pub(crate) fn map_labels(raw: &RawSplit, names: &[String]) -> Result<Vec<i64>> {
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
                        format!(
                            "label id {id} is outside the {n} label names {names:?}{}",
                            unlabelled_hint(id)
                        ),
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
        RawLabels::Unlabelled => Ok(vec![UNLABELLED; raw.texts.len()]),
    }
}

/// -1 is how datasets mark a hidden label (GLUE's test splits): say how to read such a split.
fn unlabelled_hint(id: i64) -> &'static str {
    if id == UNLABELLED {
        " (a split whose labels are hidden as -1: mark it `unlabelled: true` under `splits`)"
    } else {
        ""
    }
}
