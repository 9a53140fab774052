//! The four EDA operations (Wei & Zou 2019, `eda_nlp/code/eda.py`) on a list of words.
//!
//! Differences from the reference code, all deliberate:
//! * random choices come from a seeded per-row stream, and synonym lists are sorted first so
//!   that a choice among them is reproducible (Python iterates a `set`);
//! * random insertion draws its source word among the non-stop words that have a synonym (the
//!   reference draws any word, up to 10 tries, so it can insert a synonym of "a" or "it") and
//!   picks a random synonym (the reference takes the first of an unordered set);
//! * with `clean: false` words keep their case and surrounding punctuation (see [`Word`]).

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};

use llmembed_core::Result;

use crate::wordnet::WordNet;

/// EDA's stop-word list (NLTK's English list as copied into `eda.py`), never replaced.
pub const STOP_WORDS: &[&str] = &[
    "i",
    "me",
    "my",
    "myself",
    "we",
    "our",
    "ours",
    "ourselves",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
    "he",
    "him",
    "his",
    "himself",
    "she",
    "her",
    "hers",
    "herself",
    "it",
    "its",
    "itself",
    "they",
    "them",
    "their",
    "theirs",
    "themselves",
    "what",
    "which",
    "who",
    "whom",
    "this",
    "that",
    "these",
    "those",
    "am",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "have",
    "has",
    "had",
    "having",
    "do",
    "does",
    "did",
    "doing",
    "a",
    "an",
    "the",
    "and",
    "but",
    "if",
    "or",
    "because",
    "as",
    "until",
    "while",
    "of",
    "at",
    "by",
    "for",
    "with",
    "about",
    "against",
    "between",
    "into",
    "through",
    "during",
    "before",
    "after",
    "above",
    "below",
    "to",
    "from",
    "up",
    "down",
    "in",
    "out",
    "on",
    "off",
    "over",
    "under",
    "again",
    "further",
    "then",
    "once",
    "here",
    "there",
    "when",
    "where",
    "why",
    "how",
    "all",
    "any",
    "both",
    "each",
    "few",
    "more",
    "most",
    "other",
    "some",
    "such",
    "no",
    "nor",
    "not",
    "only",
    "own",
    "same",
    "so",
    "than",
    "too",
    "very",
    "s",
    "t",
    "can",
    "will",
    "just",
    "don",
    "should",
    "now",
    "",
];

pub(crate) fn is_stop_word(key: &str) -> bool {
    STOP_WORDS.contains(&key)
}

/// EDA's `get_only_chars`: drop apostrophes, hyphens/tabs/newlines to spaces, lower-case, every
/// character other than a-z and space to a space, collapse spaces, trim.
pub(crate) fn clean_text(text: &str) -> String {
    let s: String = text
        .replace('\'', "")
        .replace(['-', '\t', '\n'], " ")
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_lowercase() { c } else { ' ' })
        .collect();
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The lookup key of a word: its letters a-z, lower-cased ("Reuters," -> "reuters",
/// "don't" -> "dont"). For cleaned text the key is the word itself.
pub(crate) fn key_of(word: &str) -> String {
    word.chars()
        .flat_map(char::to_lowercase)
        .filter(char::is_ascii_lowercase)
        .collect()
}

/// `word` with its letters replaced by `synonym`, keeping leading and trailing punctuation and
/// an initial capital: `("Stocks,", "shares") -> "Shares,"`. For cleaned words it is `synonym`.
pub(crate) fn replace_word(word: &str, synonym: &str) -> String {
    let start = word.find(char::is_alphanumeric).unwrap_or(0);
    let end = word.rfind(char::is_alphanumeric).map_or(word.len(), |i| {
        i + word[i..].chars().next().map_or(1, char::len_utf8)
    });
    let core = &word[start..end];
    let mut syn = synonym.to_string();
    if core.chars().next().is_some_and(char::is_uppercase) {
        let mut chars = syn.chars();
        if let Some(first) = chars.next() {
            syn = first.to_uppercase().chain(chars).collect();
        }
    }
    format!("{}{}{}", &word[..start], syn, &word[end..])
}

/// One EDA operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Synonym,
    Insert,
    Swap,
    Delete,
}

impl Op {
    pub(crate) const ALL: [Op; 4] = [Op::Synonym, Op::Insert, Op::Swap, Op::Delete];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Synonym => "synonym",
            Op::Insert => "insert",
            Op::Swap => "swap",
            Op::Delete => "delete",
        }
    }
}

/// The distinct keys (in order of first occurrence) of non-stop words that have synonyms.
fn replaceable(words: &[String], wn: &WordNet) -> Result<Vec<(String, Vec<String>)>> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for w in words {
        let key = key_of(w);
        if is_stop_word(&key) || out.iter().any(|(k, _)| *k == key) {
            continue;
        }
        let syns = wn.synonyms(&key)?;
        if !syns.is_empty() {
            out.push((key, syns));
        }
    }
    Ok(out)
}

/// Whether `op` can change `words` at all (a text too short for it is left as it is).
pub(crate) fn applicable(op: Op, words: &[String], wn: &WordNet) -> Result<bool> {
    Ok(match op {
        Op::Synonym | Op::Insert => !replaceable(words, wn)?.is_empty(),
        Op::Swap | Op::Delete => words.len() >= 2,
    })
}

/// EDA's `n = max(1, int(alpha * num_words))`.
pub(crate) fn count_for(alpha: f64, num_words: usize) -> usize {
    ((alpha * num_words as f64).floor() as usize).max(1)
}

/// Synonym replacement: up to `n` distinct non-stop words (in random order) that have synonyms
/// are each replaced, at every occurrence, by one random synonym.
pub(crate) fn synonym_replacement(
    words: &[String],
    n: usize,
    wn: &WordNet,
    rng: &mut impl Rng,
) -> Result<Vec<String>> {
    let mut candidates = replaceable(words, wn)?;
    candidates.shuffle(rng);
    let mut out = words.to_vec();
    for (key, syns) in candidates.iter().take(n) {
        let syn = syns.choose(rng).expect("non-empty synonym list");
        for w in out.iter_mut() {
            if key_of(w) == *key {
                *w = replace_word(w, syn);
            }
        }
    }
    Ok(resplit(out))
}

/// Random insertion, `n` times: a random synonym of a random non-stop word (one that has
/// synonyms) is inserted at a random position (0..=len).
pub(crate) fn random_insertion(
    words: &[String],
    n: usize,
    wn: &WordNet,
    rng: &mut impl Rng,
) -> Result<Vec<String>> {
    let mut out = words.to_vec();
    for _ in 0..n {
        let candidates = replaceable(&out, wn)?;
        let Some((_, syns)) = candidates.choose(rng) else {
            break;
        };
        let syn = syns.choose(rng).expect("non-empty synonym list").clone();
        let at = rng.random_range(0..=out.len());
        out.insert(at, syn);
    }
    Ok(resplit(out))
}

/// Random swap, `n` times: two distinct random positions exchange their words.
pub(crate) fn random_swap(words: &[String], n: usize, rng: &mut impl Rng) -> Vec<String> {
    let mut out = words.to_vec();
    if out.len() < 2 {
        return out;
    }
    for _ in 0..n {
        let i = rng.random_range(0..out.len());
        let mut j = rng.random_range(0..out.len() - 1);
        if j >= i {
            j += 1;
        }
        out.swap(i, j);
    }
    out
}

/// Random deletion: each word is dropped with probability `p`; a one-word text is kept, and if
/// every word was dropped one random word is kept.
pub(crate) fn random_deletion(words: &[String], p: f64, rng: &mut impl Rng) -> Vec<String> {
    if words.len() <= 1 {
        return words.to_vec();
    }
    let kept: Vec<String> = words
        .iter()
        .filter(|_| rng.random::<f64>() > p)
        .cloned()
        .collect();
    if kept.is_empty() {
        vec![words[rng.random_range(0..words.len())].clone()]
    } else {
        kept
    }
}

/// Multi-word synonyms ("motor vehicle") become separate words, as EDA re-splits its output.
fn resplit(words: Vec<String>) -> Vec<String> {
    words
        .iter()
        .flat_map(|w| w.split_whitespace().map(str::to_string))
        .collect()
}

/// Applies `op` with rate `alpha` to `words`.
pub(crate) fn apply(
    op: Op,
    alpha: f64,
    words: &[String],
    wn: &WordNet,
    rng: &mut impl Rng,
) -> Result<Vec<String>> {
    let n = count_for(alpha, words.len());
    Ok(match op {
        Op::Synonym => synonym_replacement(words, n, wn, rng)?,
        Op::Insert => random_insertion(words, n, wn, rng)?,
        Op::Swap => random_swap(words, n, rng),
        Op::Delete => random_deletion(words, alpha, rng),
    })
}
