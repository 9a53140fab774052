//! The [`Ingest`] stage: resolve the source, read each split, map labels, dedup, sample,
//! write one `TextTable` per split.

use std::collections::HashSet;
use std::path::PathBuf;

use llmembed_core::{
    Apply, ApplyEnv, Arity, Context, Env, Error, External, Input, Result, Rows, Stage, Summary,
    TextTable, UNLABELLED, read_text_table, write_text_table,
};

use crate::columns::{RawLabels, derive_label_names, map_labels, read_split};
use crate::params::IngestParams;
use crate::read::read_frame;
use crate::sample::sample_rows;
use crate::source::{Location, resolve};

/// The ingest stage (see the crate docs).
pub struct Ingest;

impl Stage for Ingest {
    const KIND: &'static str = "ingest";
    const VERSION: u32 = 1;
    const INPUTS: Arity = Arity::Exactly(0);
    // The pipeline's seed is part of the key: class-balanced sampling draws rows with it.
    const SEEDED: bool = true;
    type Params = IngestParams;

    fn check(p: &IngestParams) -> Result<()> {
        p.check()
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
                name: format!("hub:{}", hub.at.repo),
                value: hub.at.commit.clone(),
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
        // Again here: sampling indexes classes by label, which an unlabelled split lacks.
        p.check()?;
        let seed = ctx.seed;
        let resolved = resolve(p, ctx.env)?;
        let files: Vec<(String, PathBuf)> = match &resolved.location {
            Location::Local(files) => files.clone(),
            Location::Hub(hub) => hub.fetch()?,
        };

        let known_names = p.label_names.as_deref().or(resolved.label_names.as_deref());
        let mut raws = Vec::new();
        for (split, path) in &files {
            let df = read_frame(split, path)?;
            raws.push(read_split(
                split,
                path,
                &df,
                &p.text_columns,
                p.split_has_labels(split)
                    .then_some(p.label_column.as_deref())
                    .flatten(),
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
            if matches!(raw.labels, RawLabels::Unlabelled) {
                summary.notes.push(format!(
                    "{}: {} rows without labels",
                    raw.split,
                    table.len()
                ));
            }
            write_text_table(&ctx.out(&format!("{}.parquet", raw.split)), &table)?;
            summary.rows_out += table.len();
        }
        if let Location::Hub(hub) = &resolved.location {
            summary
                .notes
                .push(format!("hub {} at {}", hub.at.repo, hub.at.commit));
            summary.notes.extend(hub.at.note());
        }
        Ok(summary)
    }

    /// New texts take the class names of the ingested dataset, so that every stage downstream
    /// sees the pipeline's classes.
    fn applier(
        _p: &IngestParams,
        fitted: &Input,
        _env: &ApplyEnv,
    ) -> Result<Option<Box<dyn Apply>>> {
        // Every split carries the same names; train is the one the classifiers were fitted on.
        let split = if fitted.files.iter().any(|f| f == "train.parquet") {
            fitted.split("train")?
        } else {
            fitted
                .splits()
                .into_iter()
                .next()
                .map(|(_, p)| p)
                .ok_or_else(|| {
                    Error::mismatch(
                        "load ingest",
                        format!("stage `{}` wrote no split", fitted.stage_id),
                    )
                })?
        };
        let label_names = read_text_table(&split)?.label_names;
        Ok(Some(Box::new(IngestApply { label_names })))
    }
}

/// [`Ingest`] applied to new texts: they keep their ids, texts and labels and take the
/// dataset's class names.
struct IngestApply {
    label_names: Vec<String>,
}

impl Apply for IngestApply {
    fn apply(&self, inputs: &[Rows]) -> Result<Rows> {
        let [Rows::Text(texts)] = inputs else {
            return Err(Error::mismatch(
                "apply ingest",
                format!(
                    "expected one table of texts, got [{}]",
                    inputs.iter().map(Rows::kind).collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        if !texts.label_names.is_empty() && texts.label_names != self.label_names {
            return Err(Error::mismatch(
                "apply ingest",
                format!(
                    "the new rows' classes {:?} are not the dataset's {:?}",
                    texts.label_names, self.label_names
                ),
            ));
        }
        let n = self.label_names.len() as i64;
        if let Some(row) = texts
            .labels
            .iter()
            .position(|&l| l != UNLABELLED && !(0..n).contains(&l))
        {
            return Err(Error::mismatch(
                "apply ingest",
                format!(
                    "row {row} (`{}`): label {} is neither one of the {n} classes nor {UNLABELLED} \
                     (no label)",
                    texts.ids[row], texts.labels[row]
                ),
            ));
        }
        let mut out = texts.clone();
        out.label_names = self.label_names.clone();
        Ok(Rows::Text(out))
    }
}
