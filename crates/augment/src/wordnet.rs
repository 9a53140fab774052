//! A small reader for the WordNet 3.0 database files (`index.*`, `data.*`, `*.exc`) as shipped by
//! Debian's `wordnet-base` package: lemma -> synsets -> lemmas, with NLTK's `morphy`
//! lemmatisation so that inflected forms ("cars", "running") find their synsets as they do in the
//! EDA reference code (`nltk.corpus.wordnet.synsets(word)`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use llmembed_core::{Error, Result};

/// The four parts of speech, in the order of the files.
const POS: [&str; 4] = ["noun", "verb", "adj", "adv"];

/// NLTK's `MORPHOLOGICAL_SUBSTITUTIONS` (detachment rules), per part of speech.
const SUBSTITUTIONS: [&[(&str, &str)]; 4] = [
    &[
        ("s", ""),
        ("ses", "s"),
        ("ves", "f"),
        ("xes", "x"),
        ("zes", "z"),
        ("ches", "ch"),
        ("shes", "sh"),
        ("men", "man"),
        ("ies", "y"),
    ],
    &[
        ("s", ""),
        ("ies", "y"),
        ("es", "e"),
        ("es", ""),
        ("ed", "e"),
        ("ed", ""),
        ("ing", "e"),
        ("ing", ""),
    ],
    &[("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    &[],
];

/// The database files this reader needs, relative to the WordNet folder.
pub(crate) fn database_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for pos in POS {
        out.push(dir.join(format!("index.{pos}")));
        out.push(dir.join(format!("data.{pos}")));
        out.push(dir.join(format!("{pos}.exc")));
    }
    out
}

/// Checks that the whole database is there, with an error that says how to get it.
pub(crate) fn check_database(dir: &Path) -> Result<()> {
    let missing: Vec<String> = database_files(dir)
        .into_iter()
        .filter(|p| !p.is_file())
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::param(
            "wordnet_dir",
            format!(
                "WordNet 3.0 database not found at {} (missing: {}); install Debian's \
                 `wordnet-base` package (`apt-get install -y wordnet-base`, files under \
                 /usr/share/wordnet) or point `wordnet_dir` at a folder with index.*, data.* and *.exc",
                dir.display(),
                missing.join(", ")
            ),
        ))
    }
}

/// An in-memory WordNet: the index maps and the raw data files (synsets are parsed on demand
/// from their byte offsets).
pub(crate) struct WordNet {
    /// lemma (lowercase, underscores for spaces) -> synset offsets per part of speech.
    index: HashMap<String, [Vec<u32>; 4]>,
    /// Exception lists (irregular forms) per part of speech: inflected -> base forms.
    exceptions: [HashMap<String, Vec<String>>; 4],
    data: [Vec<u8>; 4],
    data_paths: [PathBuf; 4],
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io("read WordNet file", path, e))
}

fn utf8<'a>(path: &Path, row: usize, bytes: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| Error::row(path, row, "line", format!("not utf-8: {e}")))
}

impl WordNet {
    pub(crate) fn load(dir: &Path) -> Result<Self> {
        check_database(dir)?;
        let mut index: HashMap<String, [Vec<u32>; 4]> = HashMap::new();
        let mut exceptions: [HashMap<String, Vec<String>>; 4] = Default::default();
        let mut data: [Vec<u8>; 4] = Default::default();
        let mut data_paths: [PathBuf; 4] = Default::default();
        for (p, pos) in POS.iter().enumerate() {
            let path = dir.join(format!("index.{pos}"));
            let bytes = read(&path)?;
            for (row, line) in bytes.split(|&b| b == b'\n').enumerate() {
                // The license header: lines that start with two spaces.
                if line.is_empty() || line.starts_with(b"  ") {
                    continue;
                }
                let line = utf8(&path, row, line)?;
                let fields: Vec<&str> = line.split_ascii_whitespace().collect();
                let bad = |msg: &str| Error::row(&path, row, "index entry", msg.to_string());
                if fields.len() < 4 {
                    return Err(bad("fewer than 4 fields"));
                }
                let synset_cnt: usize = fields[2]
                    .parse()
                    .map_err(|_| bad("synset_cnt is not a number"))?;
                if fields.len() < 4 + synset_cnt {
                    return Err(bad("fewer offsets than synset_cnt"));
                }
                let offsets = fields[fields.len() - synset_cnt..]
                    .iter()
                    .map(|o| o.parse::<u32>().map_err(|_| bad("bad synset offset")))
                    .collect::<Result<Vec<u32>>>()?;
                index.entry(fields[0].to_string()).or_default()[p] = offsets;
            }
            let path = dir.join(format!("{pos}.exc"));
            let bytes = read(&path)?;
            for (row, line) in bytes.split(|&b| b == b'\n').enumerate() {
                let line = utf8(&path, row, line)?;
                let mut fields = line.split_ascii_whitespace();
                if let Some(form) = fields.next() {
                    exceptions[p]
                        .entry(form.to_string())
                        .or_default()
                        .extend(fields.map(str::to_string));
                }
            }
            let path = dir.join(format!("data.{pos}"));
            data[p] = read(&path)?;
            data_paths[p] = path;
        }
        Ok(WordNet {
            index,
            exceptions,
            data,
            data_paths,
        })
    }

    fn has(&self, form: &str, p: usize) -> bool {
        self.index.get(form).is_some_and(|e| !e[p].is_empty())
    }

    /// NLTK's `_morphy(form, pos)`: the base forms of `form` that WordNet has for `pos`.
    fn morphy(&self, form: &str, p: usize) -> Vec<String> {
        let filter = |forms: Vec<String>| -> Vec<String> {
            let mut out: Vec<String> = Vec::new();
            for f in forms {
                if self.has(&f, p) && !out.contains(&f) {
                    out.push(f);
                }
            }
            out
        };
        let apply_rules = |forms: &[String]| -> Vec<String> {
            let mut out = Vec::new();
            for f in forms {
                for (old, new) in SUBSTITUTIONS[p] {
                    if let Some(stem) = f.strip_suffix(old) {
                        out.push(format!("{stem}{new}"));
                    }
                }
            }
            out
        };
        if let Some(bases) = self.exceptions[p].get(form) {
            let mut forms = vec![form.to_string()];
            forms.extend(bases.iter().cloned());
            return filter(forms);
        }
        let mut forms = apply_rules(&[form.to_string()]);
        let mut first = vec![form.to_string()];
        first.extend(forms.iter().cloned());
        let results = filter(first);
        if !results.is_empty() {
            return results;
        }
        while !forms.is_empty() {
            forms = apply_rules(&forms);
            let results = filter(forms.clone());
            if !results.is_empty() {
                return results;
            }
        }
        Vec::new()
    }

    /// The lemma names of the synset at `offset` in `data.<pos>`.
    fn synset_lemmas(&self, p: usize, offset: u32) -> Result<Vec<String>> {
        let data = &self.data[p];
        let path = &self.data_paths[p];
        let start = offset as usize;
        let bad = |msg: String| Error::row(path, 0, "synset", format!("offset {offset}: {msg}"));
        if start >= data.len() {
            return Err(bad("past the end of the file".into()));
        }
        let end = data[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(data.len(), |e| start + e);
        let line = std::str::from_utf8(&data[start..end]).map_err(|e| bad(e.to_string()))?;
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        if fields.len() < 4 || fields[0].parse::<u32>().ok() != Some(offset) {
            return Err(bad("no synset starts there".into()));
        }
        let w_cnt = usize::from_str_radix(fields[3], 16).map_err(|e| bad(e.to_string()))?;
        if fields.len() < 4 + 2 * w_cnt {
            return Err(bad("fewer words than w_cnt".into()));
        }
        Ok((0..w_cnt)
            .map(|i| {
                let word = fields[4 + 2 * i];
                // Adjective syntactic markers: "galore(ip)", "elect(p)".
                word.split('(').next().unwrap_or(word).to_string()
            })
            .collect())
    }

    /// EDA's `get_synonyms(word)`: the lemma names of every synset of `word` (all parts of
    /// speech), underscores and hyphens as spaces, lower-cased, letters and spaces only, without
    /// `word` itself. Sorted, so that random choices among them are reproducible.
    pub(crate) fn synonyms(&self, word: &str) -> Result<Vec<String>> {
        let form = word.to_lowercase();
        let mut out = BTreeSet::new();
        for p in 0..4 {
            for base in self.morphy(&form, p) {
                for &offset in &self.index[&base][p] {
                    for lemma in self.synset_lemmas(p, offset)? {
                        let s: String = lemma
                            .replace(['_', '-'], " ")
                            .to_lowercase()
                            .chars()
                            .filter(|c| *c == ' ' || c.is_ascii_lowercase())
                            .collect();
                        let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
                        if !s.is_empty() {
                            out.insert(s);
                        }
                    }
                }
            }
        }
        out.remove(&form);
        Ok(out.into_iter().collect())
    }
}
