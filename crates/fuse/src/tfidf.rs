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
//! and no row normalisation (both of which we would have to re-implement on its sparse output),
//! and its output would have to be densified for the `EmbeddingTable` anyway. Matching
//! scikit-learn to 1e-6, which is what the baseline is compared against, is easier to guarantee
//! with the algorithm spelled out here.
//!
//! Output: `train.parquet` / `test.parquet` (every split of the input) as `EmbeddingTable`s with
//! one dense column `embedding` (width = vocabulary size; 2,000 rows x 20,000 terms is 160 MB of
//! f32), and `vocabulary.json` (terms in column order with their idf and train df).

use std::collections::HashMap;

use regex::Regex;
use serde::{Deserialize, Serialize};

use llmembed_core::{
    Arity, Context, EmbeddingTable, Error, Input, Precision, Result, Stage, Summary, TextTable,
    VectorColumn, read_text_table, write_embedding_table,
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
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Vocabulary {
    pub terms: Vec<String>,
    pub idf: Vec<f64>,
    pub df: Vec<usize>,
    #[serde(skip)]
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
    let idf = kept
        .iter()
        .map(|(_, df, _)| ((1.0 + n as f64) / (1.0 + *df as f64)).ln() + 1.0)
        .collect();
    let df = kept.iter().map(|(_, df, _)| *df).collect();
    let terms: Vec<String> = kept.into_iter().map(|(t, _, _)| t).collect();
    let index = terms
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i))
        .collect();
    Ok(Vocabulary {
        terms,
        idf,
        df,
        index,
    })
}

/// Dense, L2-normalised TF-IDF rows (`texts.len() x vocab.terms.len()`, row-major).
pub(crate) fn transform(p: &TfidfParams, vocab: &Vocabulary, texts: &[String]) -> Vec<f32> {
    let analyzer = Analyzer::new(p);
    let dim = vocab.terms.len();
    let mut out = vec![0f32; texts.len() * dim];
    let mut row: Vec<(usize, f64)> = Vec::new();
    for (r, text) in texts.iter().enumerate() {
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
        let norm = row.iter().map(|(_, v)| v * v).sum::<f64>().sqrt();
        if norm > 0.0 {
            let dst = &mut out[r * dim..(r + 1) * dim];
            for &(j, v) in &row {
                dst[j] = (v / norm) as f32;
            }
        }
    }
    out
}

impl Stage for Tfidf {
    const KIND: &'static str = "tfidf";
    const VERSION: u32 = 1;
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
        let json = serde_json::to_vec_pretty(&vocab)
            .map_err(|e| Error::compute("serialize vocabulary.json", e))?;
        llmembed_core::fsutil::write_bytes_atomic(&ctx.out("vocabulary.json"), &json)?;

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
            write_split(p, &vocab, &table, &ctx.out(&format!("{split}.parquet")))?;
            summary.rows_out += table.len();
        }
        Ok(summary)
    }
}

fn write_split(
    p: &TfidfParams,
    vocab: &Vocabulary,
    table: &TextTable,
    path: &std::path::Path,
) -> Result<()> {
    let values = transform(p, vocab, &table.texts);
    let out = EmbeddingTable {
        ids: table.ids.clone(),
        labels: table.labels.clone(),
        label_names: table.label_names.clone(),
        columns: vec![VectorColumn::new("embedding", vocab.terms.len(), values)],
    };
    write_embedding_table(path, &out, Precision::F32)
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
        let x = transform(&p, &v, &texts);
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
