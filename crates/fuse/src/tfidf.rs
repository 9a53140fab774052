//! The `tfidf` stage: the no-LLM baseline. TF-IDF features over word n-grams, computed exactly as
//! scikit-learn's `TfidfVectorizer` (defaults `norm="l2"`, `smooth_idf=True`) does, with the
//! vocabulary and idf fitted on the train split only and applied to every split.
//!
//! Steps (identical to scikit-learn 1.x, verified by `tests/tfidf_reference.rs` against a fixture
//! that `scripts/reference/make_tfidf_reference.py` writes with scikit-learn):
//! 1. lowercase (`str::to_lowercase`), tokens = matches of `(?u)\b\w\w+\b`;
//! 2. n-grams for `n` in `ngram_range`, joined by one space;
//! 3. vocabulary of the train split; keep terms with `min_df <= df <= max_df * n_train`
//!    (`df` = number of train documents containing the term); if more than `max_features` remain,
//!    keep those with the largest total count over the train split (ties: alphabetical order,
//!    which is what numpy's sort gives scikit-learn on sorted features);
//! 4. columns in alphabetical (code point) order of the terms;
//! 5. `tf` = raw count (or `1 + ln(count)` with `sublinear_tf`), `idf = ln((1 + n) / (1 + df)) + 1`,
//!    value `tf * idf`, then each row scaled to unit L2 norm (an empty row stays zero).
//!
//! Why not `linfa-preprocessing`'s `TfIdfVectorizer`: it would pull in a sparse-matrix stack
//! (`sprs`) and unicode-normalisation/encoding crates for what is ~150 lines here, its document
//! frequency bounds are relative (not scikit-learn's absolute `min_df`), it has no sublinear tf
//! and no row normalisation (both of which we would have to re-implement on its sparse output). Matching
//! scikit-learn to 1e-6, which is what the baseline is compared against, is easier to guarantee
//! with the algorithm spelled out here.
//!
//! Output: `train.parquet` / `test.parquet` (every split of the input) as `SparseTable`s (core)
//! with one sparse column `embedding` (width = vocabulary size; a row keeps only its non-zero
//! entries: 67,000 short texts take a few MB where a dense 20,000-wide table took 5 GB),
//! `vocabulary.json` (the train split's size, terms in column order with their train df and idf)
//! and `idf.safetensors` (`idf`, f32). [`Stage::applier`] loads the last two and maps new texts
//! to the rows `run` would have written.

use std::collections::HashMap;

use regex::Regex;
use serde::{Deserialize, Serialize};

use std::path::Path;

use llmembed_core::{
    Apply, ApplyEnv, Arity, Context, Error, Input, Result, Rows, SavedTensors, SparseTable, Stage,
    Summary, TextTable, read_text_table, write_sparse_table,
};

/// The `tfidf` stage kind.
pub struct Tfidf;

/// Params of `kind: tfidf`. Example (all defaults):
/// ```yaml
/// kind: tfidf
/// inputs: [ingest]
/// params:
///   ngram_range: [1, 2]
///   min_df: 2
///   max_df: 1.0
///   max_features: 20000
///   sublinear_tf: false
///   lowercase: true
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TfidfParams {
    /// Smallest and largest n of the word n-grams.
    #[serde(default = "default_ngram_range")]
    pub ngram_range: [usize; 2],
    /// Keep terms that occur in at least this many train documents.
    #[serde(default = "default_min_df")]
    pub min_df: usize,
    /// Drop terms that occur in more than this fraction of the train documents.
    #[serde(default = "default_max_df")]
    pub max_df: f64,
    /// Keep at most this many terms (the most frequent over the train split); `null`: all.
    #[serde(default = "default_max_features")]
    pub max_features: Option<usize>,
    /// Use `1 + ln(count)` instead of the raw count.
    #[serde(default = "default_sublinear_tf")]
    pub sublinear_tf: bool,
    #[serde(default = "default_lowercase")]
    pub lowercase: bool,
}

fn default_ngram_range() -> [usize; 2] {
    [1, 2]
}
fn default_min_df() -> usize {
    2
}
fn default_max_df() -> f64 {
    1.0
}
fn default_max_features() -> Option<usize> {
    Some(20_000)
}
fn default_sublinear_tf() -> bool {
    false
}
fn default_lowercase() -> bool {
    true
}

impl Default for TfidfParams {
    fn default() -> Self {
        TfidfParams {
            ngram_range: default_ngram_range(),
            min_df: default_min_df(),
            max_df: default_max_df(),
            max_features: default_max_features(),
            sublinear_tf: default_sublinear_tf(),
            lowercase: default_lowercase(),
        }
    }
}

/// scikit-learn's default `token_pattern`; the `regex` crate's `\w` and `\b` are Unicode-aware
/// like Python's `(?u)`.
const TOKEN_PATTERN: &str = r"\b\w\w+\b";

/// A fitted vocabulary: terms in column order, their idf and train document frequency.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Vocabulary {
    /// Train texts the vocabulary was fitted on (the `n` of idf).
    pub n_train: usize,
    pub terms: Vec<String>,
    pub idf: Vec<f64>,
    pub df: Vec<usize>,
    index: HashMap<String, usize>,
}

struct Analyzer {
    token: Regex,
    lowercase: bool,
    ngram_range: [usize; 2],
}

impl Analyzer {
    fn new(p: &TfidfParams) -> Self {
        Analyzer {
            token: Regex::new(TOKEN_PATTERN).expect("static token pattern"),
            lowercase: p.lowercase,
            ngram_range: p.ngram_range,
        }
    }

    /// Calls `f` on every n-gram of `text`.
    fn for_each_term(&self, text: &str, mut f: impl FnMut(String)) {
        let lowered;
        let text = if self.lowercase {
            lowered = text.to_lowercase();
            &lowered
        } else {
            text
        };
        let tokens: Vec<&str> = self.token.find_iter(text).map(|m| m.as_str()).collect();
        let [lo, hi] = self.ngram_range;
        for n in lo..=hi.min(tokens.len()) {
            for w in tokens.windows(n) {
                f(w.join(" "));
            }
        }
    }

    /// Term counts of one document.
    fn counts(&self, text: &str) -> HashMap<String, u32> {
        let mut c = HashMap::new();
        self.for_each_term(text, |t| *c.entry(t).or_insert(0) += 1);
        c
    }
}

pub(crate) fn fit_vocabulary(p: &TfidfParams, texts: &[String]) -> Result<Vocabulary> {
    let analyzer = Analyzer::new(p);
    // term -> (document frequency, total count)
    let mut stats: HashMap<String, (usize, u64)> = HashMap::new();
    for text in texts {
        for (term, c) in analyzer.counts(text) {
            let e = stats.entry(term).or_insert((0, 0));
            e.0 += 1;
            e.1 += u64::from(c);
        }
    }
    let n = texts.len();
    let max_doc = (p.max_df * n as f64).floor() as usize;
    let total_terms = stats.len();
    let mut kept: Vec<(String, usize, u64)> = stats
        .into_iter()
        .filter(|(_, (df, _))| *df >= p.min_df && *df <= max_doc)
        .map(|(t, (df, tf))| (t, df, tf))
        .collect();
    if let Some(limit) = p.max_features
        && kept.len() > limit
    {
        kept.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        kept.truncate(limit);
    }
    if kept.is_empty() {
        return Err(Error::mismatch(
            "tfidf: fit vocabulary",
            format!(
                "no term of the {total_terms} in {n} train documents is left after min_df={} \
                 and max_df={}",
                p.min_df, p.max_df
            ),
        ));
    }
    kept.sort_by(|a, b| a.0.cmp(&b.0));
    let idf = kept.iter().map(|(_, df, _)| idf_of(n, *df)).collect();
    let df = kept.iter().map(|(_, df, _)| *df).collect();
    let terms: Vec<String> = kept.into_iter().map(|(t, _, _)| t).collect();
    Ok(Vocabulary::new(n, terms, df, idf))
}

/// L2-normalised TF-IDF rows of `table`, sparse: each row's non-zero entries in column order.
pub(crate) fn transform(p: &TfidfParams, vocab: &Vocabulary, table: &TextTable) -> SparseTable {
    let analyzer = Analyzer::new(p);
    let mut out = SparseTable::new(COLUMN, vocab.terms.len(), table.label_names.clone());
    let mut row: Vec<(usize, f64)> = Vec::new();
    let mut entries: Vec<(u32, f32)> = Vec::new();
    for (r, text) in table.texts.iter().enumerate() {
        row.clear();
        for (term, c) in analyzer.counts(text) {
            if let Some(&j) = vocab.index.get(&term) {
                let tf = if p.sublinear_tf {
                    1.0 + f64::from(c).ln()
                } else {
                    f64::from(c)
                };
                row.push((j, tf * vocab.idf[j]));
            }
        }
        // Column order; the norm sums in that order too, so a row's bytes never depend on the
        // hash map's iteration order.
        row.sort_unstable_by_key(|&(j, _)| j);
        let norm = row.iter().map(|(_, v)| v * v).sum::<f64>().sqrt();
        entries.clear();
        if norm > 0.0 {
            entries.extend(row.iter().map(|&(j, v)| (j as u32, (v / norm) as f32)));
        }
        out.push_row(table.ids[r].clone(), table.labels[r], &entries);
    }
    out
}

/// The vector column's name in the output tables.
const COLUMN: &str = "embedding";

/// What `vocabulary.json` holds: the train split's size and each term's df, in column order
/// (idf is `idf.safetensors`, and in this file as f64 for reading by eye).
#[derive(Serialize, Deserialize)]
struct SavedVocabulary {
    n_train: usize,
    terms: Vec<String>,
    df: Vec<usize>,
    idf: Vec<f64>,
}

impl Vocabulary {
    fn saved(&self) -> SavedVocabulary {
        SavedVocabulary {
            n_train: self.n_train,
            terms: self.terms.clone(),
            df: self.df.clone(),
            idf: self.idf.clone(),
        }
    }

    /// The vocabulary `run` saved into `dir`. idf is recomputed from `df` and `n_train` with the
    /// formula of the fit (bit for bit what the fit used; JSON's decimal idf need not parse back
    /// to the same f64), and checked against the saved f32 tensor.
    fn load(vocab_path: &Path, idf_path: &Path) -> Result<Vocabulary> {
        let saved: SavedVocabulary = llmembed_core::load_json(vocab_path)?;
        if saved.df.len() != saved.terms.len() {
            return Err(Error::mismatch(
                "tfidf: load vocabulary",
                format!(
                    "{}: {} terms but {} document frequencies",
                    vocab_path.display(),
                    saved.terms.len(),
                    saved.df.len()
                ),
            ));
        }
        let idf: Vec<f64> = saved
            .df
            .iter()
            .map(|&df| idf_of(saved.n_train, df))
            .collect();
        let tensors = SavedTensors::load(idf_path)?;
        let stored = tensors.get("idf", &[idf.len()])?;
        if let Some(j) = (0..idf.len()).find(|&j| idf[j] as f32 != stored[j]) {
            return Err(Error::mismatch(
                "tfidf: load vocabulary",
                format!(
                    "{}: idf of `{}` is {} but {} says {} (df {}, {} train texts)",
                    idf_path.display(),
                    saved.terms[j],
                    stored[j],
                    vocab_path.display(),
                    idf[j],
                    saved.df[j],
                    saved.n_train
                ),
            ));
        }
        Ok(Vocabulary::new(saved.n_train, saved.terms, saved.df, idf))
    }

    fn new(n_train: usize, terms: Vec<String>, df: Vec<usize>, idf: Vec<f64>) -> Vocabulary {
        let index = terms
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i))
            .collect();
        Vocabulary {
            n_train,
            terms,
            idf,
            df,
            index,
        }
    }
}

/// scikit-learn's smoothed idf.
fn idf_of(n: usize, df: usize) -> f64 {
    ((1.0 + n as f64) / (1.0 + df as f64)).ln() + 1.0
}

/// The fitted stage applied to new texts: their rows as `run` would have written them.
struct TfidfApply {
    params: TfidfParams,
    vocab: Vocabulary,
}

impl Apply for TfidfApply {
    fn apply(&self, inputs: &[Rows]) -> Result<Rows> {
        match inputs {
            [Rows::Text(t)] => Ok(Rows::Sparse(transform(&self.params, &self.vocab, t))),
            [other] => Err(Error::mismatch(
                "tfidf: apply",
                format!("expected text rows, got {} rows", other.kind()),
            )),
            _ => Err(Error::mismatch(
                "tfidf: apply",
                format!("expected 1 input, got {}", inputs.len()),
            )),
        }
    }
}

impl Stage for Tfidf {
    const KIND: &'static str = "tfidf";
    // 2: sparse output (`SparseTable`), `idf.safetensors`, `n_train` in `vocabulary.json`.
    const VERSION: u32 = 2;
    const INPUTS: Arity = Arity::Exactly(1);
    type Params = TfidfParams;

    fn check(p: &TfidfParams) -> Result<()> {
        let [lo, hi] = p.ngram_range;
        if lo == 0 || lo > hi {
            return Err(Error::param(
                "ngram_range",
                format!("[{lo}, {hi}]: need 1 <= min <= max"),
            ));
        }
        if !(p.max_df > 0.0 && p.max_df <= 1.0) {
            return Err(Error::param("max_df", "must be in (0, 1]"));
        }
        if p.max_features == Some(0) {
            return Err(Error::param("max_features", "must be at least 1 (or null)"));
        }
        Ok(())
    }

    fn run(p: &TfidfParams, inputs: &[Input], ctx: &Context) -> Result<Summary> {
        Self::check(p)?;
        let input = &inputs[0];
        let train = read_text_table(&input.split("train")?)?;
        let vocab = fit_vocabulary(p, &train.texts)?;
        llmembed_core::save_json(&ctx.out("vocabulary.json"), &vocab.saved())?;
        let idf: Vec<f32> = vocab.idf.iter().map(|&v| v as f32).collect();
        llmembed_core::save_tensors(&ctx.out("idf.safetensors"), &[("idf", &[idf.len()], &idf)])?;

        let mut summary = Summary::default();
        summary.notes.push(format!(
            "vocabulary of {} terms from {} train texts",
            vocab.terms.len(),
            train.len()
        ));
        for (split, path) in input.splits() {
            let table = if split == "train" {
                train.clone()
            } else {
                read_text_table(&path)?
            };
            let rows = transform(p, &vocab, &table);
            write_sparse_table(&ctx.out(&format!("{split}.parquet")), &rows)?;
            summary.rows_out += table.len();
        }
        Ok(summary)
    }

    fn applier(p: &TfidfParams, fitted: &Input, _env: &ApplyEnv) -> Result<Option<Box<dyn Apply>>> {
        Self::check(p)?;
        let vocab = Vocabulary::load(
            &fitted.path("vocabulary.json")?,
            &fitted.path("idf.safetensors")?,
        )?;
        Ok(Some(Box::new(TfidfApply {
            params: p.clone(),
            vocab,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_bigrams_follow_the_sklearn_pattern() {
        let p = TfidfParams::default();
        let a = Analyzer::new(&p);
        let mut terms = Vec::new();
        a.for_each_term("A café's Tea-time, x 42!", |t| terms.push(t));
        // One-character tokens ("a", "s", "x") are dropped; the apostrophe and hyphen split.
        assert_eq!(
            terms,
            vec![
                "café",
                "tea",
                "time",
                "42",
                "café tea",
                "tea time",
                "time 42"
            ]
        );
    }

    #[test]
    fn idf_and_rows_on_a_hand_computed_corpus() {
        // Docs: "aa bb", "aa cc", "aa". n = 3; df(aa) = 3, df(bb) = df(cc) = 1.
        let p = TfidfParams {
            ngram_range: [1, 1],
            min_df: 1,
            ..TfidfParams::default()
        };
        let texts: Vec<String> = ["aa bb", "aa cc", "aa"].map(String::from).to_vec();
        let v = fit_vocabulary(&p, &texts).unwrap();
        assert_eq!(v.terms, vec!["aa", "bb", "cc"]);
        let idf_aa = 1.0; // ln(4/4) + 1
        let idf_bb = (4.0f64 / 2.0).ln() + 1.0;
        assert!((v.idf[0] - idf_aa).abs() < 1e-12 && (v.idf[1] - idf_bb).abs() < 1e-12);
        let n = texts.len();
        let table = TextTable::new(
            (0..n).map(|i| i.to_string()).collect(),
            texts.clone(),
            vec![0; n],
            vec!["x".into()],
        );
        let rows = transform(&p, &v, &table);
        // "aa" alone: one entry; every row's indices in column order.
        assert_eq!(rows.row(2), (&[0u32][..], &[1.0f32][..]));
        let x: Vec<f32> = (0..n).flat_map(|i| rows.dense_row(i)).collect();
        let norm = (idf_aa * idf_aa + idf_bb * idf_bb).sqrt();
        let expect = [
            idf_aa / norm,
            idf_bb / norm,
            0.0,
            idf_aa / norm,
            0.0,
            idf_bb / norm,
            1.0,
            0.0,
            0.0,
        ];
        for (a, b) in x.iter().zip(expect) {
            assert!((f64::from(*a) - b).abs() < 1e-7, "{x:?}");
        }
        // min_df = 2 leaves only "aa".
        let p2 = TfidfParams { min_df: 2, ..p };
        assert_eq!(fit_vocabulary(&p2, &texts).unwrap().terms, vec!["aa"]);
    }
}
