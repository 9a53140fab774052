//! `augment`: EDA text augmentation (Wei & Zou 2019) of the training split, as the seed
//! reproduction used it: synonym replacement (WordNet 3.0), random insertion of a synonym, random
//! swap and random deletion, each with its own rate.
//!
//! * A `fraction` of the training rows is chosen (an exact count, `round(fraction * rows)`), and
//!   `copies` augmented rows are made from each. The choice ranks rows by a per-row random key
//!   (a stream seeded by the row id), so a larger fraction picks a superset of the rows a smaller
//!   one picks, and each copy's edits come from its own stream (`seed`, row id, copy number):
//!   changing `fraction` does not change the augmented text of rows chosen either way.
//! * `per_copy: one` (default, as EDA: each augmented sentence comes from one operation) applies
//!   one operation per copy, drawn uniformly among the enabled operations (rate > 0) that can
//!   change the text; `per_copy: all` applies every enabled operation that can, in the order
//!   synonym, insert, swap, delete.
//! * `clean: true` (default, as EDA's `get_only_chars`) lower-cases the augmented text and keeps
//!   letters only; `clean: false` keeps case and punctuation around words.
//! * Stop words (EDA's list) are never replaced nor used as the source of an insertion. A text on
//!   which no enabled operation can act (no word with a synonym, fewer than 2 words) gets no
//!   augmented rows; nor does a copy whose edits left the text as it was (e.g. deletion that drew
//!   no word). Both are counted in the summary notes.
//!
//! Output: `train.parquet` = the original training rows in their order, then the augmented rows
//! ordered by source row then copy number, with id `<source id>-aug<k>` (k = 1..=copies),
//! `source_id` = the source row's id, `augment_ops` = the operations applied, comma-separated,
//! and the source's label. Every other input file (test, dev, ...) is copied byte for byte.
//!
//! Training rows without a label (`UNLABELLED`) are kept but never chosen: `fraction` counts
//! the labelled rows. Applied to new texts (`predict`, `serve`), the stage passes them through
//! unchanged.

mod eda;
mod wordnet;

use std::path::PathBuf;

use rand::Rng;
use serde::{Deserialize, Serialize};

use llmembed_core::{
    Apply, ApplyEnv, Arity, Context, Env, Error, External, Input, Result, Rows, Stage, Summary,
    UNLABELLED, augmented_id, fsutil, read_text_table, resolve_path, seeded_rng, write_text_table,
};

use eda::Op;
pub use eda::STOP_WORDS;

/// The stage.
pub struct Augment;

/// Rates of the four operations (EDA's alpha): the fraction of words replaced / inserted /
/// swapped, and the deletion probability per word. 0 disables an operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpRates {
    #[serde(default = "default_rate")]
    pub synonym: f64,
    #[serde(default = "default_rate")]
    pub insert: f64,
    #[serde(default = "default_rate")]
    pub swap: f64,
    #[serde(default = "default_rate")]
    pub delete: f64,
}

impl Default for OpRates {
    fn default() -> Self {
        OpRates {
            synonym: default_rate(),
            insert: default_rate(),
            swap: default_rate(),
            delete: default_rate(),
        }
    }
}

impl OpRates {
    fn rate(&self, op: Op) -> f64 {
        match op {
            Op::Synonym => self.synonym,
            Op::Insert => self.insert,
            Op::Swap => self.swap,
            Op::Delete => self.delete,
        }
    }
}

/// How many operations each augmented copy gets.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PerCopy {
    /// One operation, drawn among those enabled that can change the text (EDA).
    #[default]
    One,
    /// Every enabled operation that can change the text, in the order synonym, insert, swap,
    /// delete.
    All,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Fraction of training rows to augment.
    #[serde(default = "default_fraction")]
    pub fraction: f64,
    /// Augmented rows per chosen row.
    #[serde(default = "default_copies")]
    pub copies: usize,
    #[serde(default)]
    pub ops: OpRates,
    #[serde(default)]
    pub per_copy: PerCopy,
    /// EDA's text cleaning (lower case, letters only) of augmented rows.
    #[serde(default = "default_clean")]
    pub clean: bool,
    /// The WordNet 3.0 database folder (Debian `wordnet-base`).
    #[serde(default = "default_wordnet_dir")]
    pub wordnet_dir: PathBuf,
    /// Overrides the pipeline seed.
    #[serde(default)]
    pub seed: Option<u64>,
}

fn default_rate() -> f64 {
    0.1
}
fn default_fraction() -> f64 {
    0.2
}
fn default_copies() -> usize {
    1
}
fn default_clean() -> bool {
    true
}
fn default_wordnet_dir() -> PathBuf {
    PathBuf::from("/usr/share/wordnet")
}

impl Default for Params {
    fn default() -> Self {
        Params {
            fraction: default_fraction(),
            copies: default_copies(),
            ops: OpRates::default(),
            per_copy: PerCopy::default(),
            clean: default_clean(),
            wordnet_dir: default_wordnet_dir(),
            seed: None,
        }
    }
}

fn wordnet_dir(params: &Params, env: &Env) -> PathBuf {
    resolve_path(env, &params.wordnet_dir)
}

/// What happened to one chosen row.
enum Outcome {
    /// Augmented copies `(k, text, ops)`, one per copy whose edits changed the text.
    Copies(Vec<(usize, String, String)>),
    /// No enabled operation can act on the text.
    TooShort,
}

/// Makes the augmented copies of one row.
fn augment_row(
    params: &Params,
    seed: u64,
    id: &str,
    text: &str,
    wn: &wordnet::WordNet,
) -> Result<Outcome> {
    let source = if params.clean {
        eda::clean_text(text)
    } else {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let words: Vec<String> = source.split_whitespace().map(str::to_string).collect();
    let enabled: Vec<Op> = Op::ALL
        .into_iter()
        .filter(|&op| params.ops.rate(op) > 0.0)
        .collect();
    let mut usable = Vec::new();
    for op in enabled {
        if eda::applicable(op, &words, wn)? {
            usable.push(op);
        }
    }
    if usable.is_empty() {
        return Ok(Outcome::TooShort);
    }
    let mut copies = Vec::new();
    for k in 1..=params.copies {
        let mut rng = seeded_rng(seed, &format!("augment:{id}:{k}"));
        let chosen: Vec<Op> = match params.per_copy {
            PerCopy::One => vec![usable[rng.random_range(0..usable.len())]],
            PerCopy::All => usable.clone(),
        };
        let mut current = words.clone();
        let mut applied = Vec::new();
        for op in chosen {
            if !eda::applicable(op, &current, wn)? {
                continue;
            }
            let next = eda::apply(op, params.ops.rate(op), &current, wn, &mut rng)?;
            if next != current {
                applied.push(op.name());
                current = next;
            }
        }
        let out = current.join(" ");
        if !applied.is_empty() && out != source {
            copies.push((k, out, applied.join(",")));
        }
    }
    Ok(Outcome::Copies(copies))
}

/// The rows to augment: the `round(fraction * n)` rows with the smallest per-row keys.
fn choose_rows(ids: &[String], fraction: f64, seed: u64) -> Vec<usize> {
    let count = ((fraction * ids.len() as f64).round() as usize).min(ids.len());
    let mut keyed: Vec<(u64, usize)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                seeded_rng(seed, &format!("augment-select:{id}")).random::<u64>(),
                i,
            )
        })
        .collect();
    keyed.sort_unstable();
    let mut rows: Vec<usize> = keyed[..count].iter().map(|&(_, i)| i).collect();
    rows.sort_unstable();
    rows
}

impl Stage for Augment {
    const KIND: &'static str = "augment";
    const VERSION: u32 = 1;
    const INPUTS: Arity = Arity::Exactly(1);
    // The pipeline's seed is part of the key: which rows are augmented and their edits are drawn with it.
    const SEEDED: bool = true;
    type Params = Params;

    fn check(params: &Params) -> Result<()> {
        if !(0.0..=1.0).contains(&params.fraction) {
            return Err(Error::param("fraction", "must be in [0, 1]"));
        }
        if params.copies == 0 || params.copies > 1000 {
            return Err(Error::param("copies", "must be in 1..=1000"));
        }
        for op in Op::ALL {
            let r = params.ops.rate(op);
            if !(0.0..=1.0).contains(&r) {
                return Err(Error::param(
                    &format!("ops.{}", op.name()),
                    format!("rate {r} must be in [0, 1]"),
                ));
            }
        }
        if Op::ALL.iter().all(|&op| params.ops.rate(op) == 0.0) {
            return Err(Error::param("ops", "every operation has rate 0"));
        }
        Ok(())
    }

    fn externals(params: &Params, env: &Env) -> Result<Vec<External>> {
        let dir = wordnet_dir(params, env);
        wordnet::check_database(&dir)?;
        Ok(wordnet::database_files(&dir)
            .into_iter()
            .map(|path| External::File {
                name: format!(
                    "wordnet/{}",
                    path.file_name().unwrap_or_default().to_string_lossy()
                ),
                path,
            })
            .collect())
    }

    fn run(params: &Params, inputs: &[Input], ctx: &Context) -> Result<Summary> {
        Self::check(params)?;
        let input = inputs
            .first()
            .ok_or_else(|| Error::mismatch("augment", "no input"))?;
        let seed = ctx.seed;
        let train_path = input.split("train")?;
        let train = read_text_table(&train_path)?;
        let wn = wordnet::WordNet::load(&wordnet_dir(params, ctx.env))?;

        // Rows without a label are never augmented: a copy would be a training row with no class.
        let labelled: Vec<usize> = (0..train.len())
            .filter(|&i| train.labels[i] != UNLABELLED)
            .collect();
        let labelled_ids: Vec<String> = labelled.iter().map(|&i| train.ids[i].clone()).collect();
        let rows: Vec<usize> = choose_rows(&labelled_ids, params.fraction, seed)
            .into_iter()
            .map(|k| labelled[k])
            .collect();
        let mut out = train.clone();
        let unlabelled = train.len() - labelled.len();
        let (mut too_short, mut unchanged) = (0usize, 0usize);
        let bar = ctx.progress(rows.len() as u64, "augment");
        for &i in &rows {
            match augment_row(params, seed, &train.ids[i], &train.texts[i], &wn)? {
                Outcome::TooShort => too_short += 1,
                Outcome::Copies(copies) => {
                    unchanged += params.copies - copies.len();
                    for (k, text, ops) in copies {
                        out.ids.push(augmented_id(&train.ids[i], k));
                        out.texts.push(text);
                        out.labels.push(train.labels[i]);
                        out.source_ids.push(Some(train.ids[i].clone()));
                        out.augment_ops.push(Some(ops));
                    }
                }
            }
            bar.inc(1);
        }
        bar.finish();
        let added = out.len() - train.len();
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = out.ids.iter().find(|id| !seen.insert(id.as_str())) {
            return Err(Error::mismatch(
                "augment",
                format!("augmented id `{dup}` collides with an existing train id"),
            ));
        }
        write_text_table(&ctx.out("train.parquet"), &out)?;

        let mut rows_out = out.len();
        for file in &input.files {
            if file == "train.parquet" {
                continue;
            }
            let src = input.path(file)?;
            let bytes = std::fs::read(&src).map_err(|e| Error::io("read", &src, e))?;
            fsutil::write_bytes_atomic(&ctx.out(file), &bytes)?;
            if file.ends_with(".parquet") {
                rows_out += read_text_table(&src)?.len();
            }
        }
        let mut notes = vec![
            format!(
                "augmented {} of {} train rows x{}: {added} rows added",
                rows.len() - too_short,
                train.len(),
                params.copies
            ),
            format!("{too_short} chosen rows too short to change (left as they are)"),
            format!("{unchanged} copies unchanged by their operations (dropped)"),
        ];
        if unlabelled > 0 {
            notes.push(format!(
                "{unlabelled} train rows without labels, not augmented"
            ));
        }
        Ok(Summary {
            rows_out,
            notes,
            ..Default::default()
        })
    }

    /// New texts are never augmented: they pass through as they are.
    fn applier(
        _params: &Params,
        _fitted: &Input,
        _env: &ApplyEnv,
    ) -> Result<Option<Box<dyn Apply>>> {
        Ok(Some(Box::new(PassThrough)))
    }
}

/// [`Augment`] applied to new texts: augmentation only adds training rows, so new rows come out
/// unchanged.
struct PassThrough;

impl Apply for PassThrough {
    fn apply(&self, inputs: &[Rows]) -> Result<Rows> {
        match inputs {
            [rows @ Rows::Text(_)] => Ok(rows.clone()),
            _ => Err(Error::mismatch(
                "apply augment",
                format!(
                    "expected one table of texts, got [{}]",
                    inputs.iter().map(Rows::kind).collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
