//! A `tokenizers::Tokenizer` rebuilt from a GGUF file's metadata, the way transformers builds it
//! (`transformers/integrations/gguf/gguf_tokenizer_mapping.py`), so that ids match the HF
//! reference exactly:
//! - `tokenizer.ggml.model = gpt2` (SmolLM2, Qwen2.5): byte-level BPE with the file's merges, the
//!   split regex of the file's `tokenizer.ggml.pre` where transformers knows one (`qwen2`: digits
//!   one by one) and GPT-2's otherwise, control tokens (type 3) special, user-defined tokens
//!   (type 4) added.
//! - `tokenizer.ggml.model = llama` with a gemma architecture: SentencePiece-style BPE with byte
//!   fallback, spaces normalized to `▁`, merges rebuilt from the vocabulary in file order, `<bos>`
//!   prepended when `add_bos_token`.

use std::collections::{HashMap, HashSet};

use llmembed_core::{Error, Result};
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::errors::file_error;
use super::gguf::GgufFile;
use crate::embedder::IdsOffsets;

/// The split regex of a `tokenizer.ggml.pre`, as transformers' `GGUF_PRE_TOKENIZER_SPLITS` has
/// it (`integrations/gguf/gguf_tokenizer_mapping.py`, from `tokenization_qwen2.PRETOKENIZE_REGEX`);
/// other values keep GPT-2's regex (the `ByteLevel` pre-tokenizer's own).
fn pre_split(pre: &str) -> Option<&'static str> {
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre {
        "qwen2" | "deepseek-r1-qwen" => Some(QWEN2),
        _ => None,
    }
}

const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// The tokenizer and the facts about it that go into `describe()`.
pub(crate) struct DecoderTokenizer {
    pub tokenizer: Tokenizer,
    pub kind: String,
    pub add_bos: Option<u32>,
}

impl DecoderTokenizer {
    pub fn from_gguf(file: &GgufFile, arch: &str) -> Result<Self> {
        let model = file.get_str("tokenizer.ggml.model")?.to_string();
        let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
        let types = if file.has("tokenizer.ggml.token_type") {
            file.get_int_array("tokenizer.ggml.token_type")?
        } else {
            Vec::new()
        };
        match model.as_str() {
            "gpt2" => byte_level(file, &tokens, &types),
            "llama" if arch.starts_with("gemma") => gemma(file, &tokens, &types),
            other => Err(Error::param(
                "model",
                format!(
                    "{}: GGUF tokenizer `{other}` for architecture `{arch}` is not supported",
                    file.path.display()
                ),
            )),
        }
    }

    /// A `tokenizer.json` (safetensors checkpoints), used as HF uses it: its own normalizer,
    /// pre-tokenizer and post-processor (which adds BOS where the model wants one); its padding
    /// and truncation settings are dropped (batches are padded and truncated by the caller).
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let mut tokenizer = read_tokenizer_json(path)?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| Error::compute("configure tokenizer", e))?;
        let vocab = tokenizer.get_vocab_size(true);
        Ok(DecoderTokenizer {
            tokenizer,
            kind: format!("tokenizer.json(vocab={vocab})"),
            add_bos: None,
        })
    }

    pub fn encode(&self, text: &str, max_tokens: usize) -> Result<(Vec<u32>, bool)> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::compute("tokenize", e))?;
        let mut ids = enc.get_ids().to_vec();
        let truncated = ids.len() > max_tokens;
        ids.truncate(max_tokens);
        Ok((ids, truncated))
    }

    /// The ids (not truncated) and each token's byte range of `text` (empty for BOS).
    pub fn encode_with_offsets(&self, text: &str) -> Result<IdsOffsets> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::compute("tokenize", e))?;
        Ok((enc.get_ids().to_vec(), added_tokens_empty(&enc)))
    }
}

/// Each token's byte offsets, with the tokens the post-processor added (BOS, CLS, SEP) given an
/// empty range: `tokenizers` gives them `(0, 0)` already, made explicit here so that no added
/// token can pass for one of the input's.
pub(crate) fn added_tokens_empty(enc: &tokenizers::Encoding) -> Vec<(usize, usize)> {
    enc.get_offsets()
        .iter()
        .zip(enc.get_sequence_ids())
        .map(|(&o, seq)| if seq.is_none() { (0, 0) } else { o })
        .collect()
}

/// A `tokenizer.json` as `tokenizers` reads it; a file that is not one is named with the reason.
pub(crate) fn read_tokenizer_json(path: &std::path::Path) -> Result<Tokenizer> {
    let raw = std::fs::read(path).map_err(|e| Error::io("read tokenizer", path, e))?;
    Tokenizer::from_bytes(&raw).map_err(|e| file_error(path, format!("not a tokenizer.json: {e}")))
}

fn tok_err(file: &GgufFile, e: impl std::fmt::Display) -> Error {
    Error::compute("build tokenizer", format!("{}: {e}", file.path.display()))
}

/// GPT-2's byte -> printable character table (`bytes_to_unicode`).
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (b'!' as u32..=b'~' as u32).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            let c = char::from_u32(256 + n).unwrap_or('\0');
            n += 1;
            c
        };
    }
    table
}

fn byte_level(file: &GgufFile, tokens: &[String], types: &[i64]) -> Result<DecoderTokenizer> {
    let spelling = bytes_to_unicode();
    let alphabet: HashSet<char> = spelling.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab: Vocab = Vocab::default();
    for (i, t) in tokens.iter().enumerate() {
        let key = if in_alphabet(t) {
            t.clone()
        } else {
            t.bytes().map(|b| spelling[b as usize]).collect()
        };
        vocab.insert(key, i as u32);
    }
    let merges: Merges = file
        .get_str_array("tokenizer.ggml.merges")?
        .iter()
        .map(|m| {
            let mut parts = m.split(' ');
            let a = parts.next().unwrap_or("").to_string();
            let b = parts.next().unwrap_or("").to_string();
            (a, b)
        })
        .collect();
    let known: HashSet<&String> = vocab.keys().collect();
    let user_defined: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(t, ty)| **ty == USER_DEFINED && known.contains(t))
        .map(|(t, _)| AddedToken::from(t.clone(), false).normalized(false))
        .collect();
    let control: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(t, ty)| **ty == CONTROL && in_alphabet(t))
        .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .build()
        .map_err(|e| tok_err(file, e))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let pre = file.get_str("tokenizer.ggml.pre").unwrap_or("default");
    match pre_split(pre) {
        Some(regex) => {
            let split = Split::new(
                SplitPattern::Regex(regex.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| tok_err(file, e))?;
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])));
        }
        None => {
            tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
    }
    tokenizer.with_decoder(Some(ByteLevel::new(true, true, true)));
    let add_bos = bos_if_added(file, false)?;
    set_template(file, &mut tokenizer, tokens, add_bos)?;
    tokenizer.add_special_tokens(&control);
    tokenizer.add_tokens(&user_defined);
    Ok(DecoderTokenizer {
        tokenizer,
        kind: format!(
            "gpt2-bpe(pre={pre},vocab={},merges={})",
            tokens.len(),
            file.get_str_array("tokenizer.ggml.merges")?.len()
        ),
        add_bos,
    })
}

fn bos_if_added(file: &GgufFile, default: bool) -> Result<Option<u32>> {
    if file.get_bool_or("tokenizer.ggml.add_bos_token", default)? {
        Ok(Some(file.get_uint("tokenizer.ggml.bos_token_id")? as u32))
    } else {
        Ok(None)
    }
}

fn set_template(
    file: &GgufFile,
    tokenizer: &mut Tokenizer,
    tokens: &[String],
    bos: Option<u32>,
) -> Result<()> {
    let template = match bos {
        Some(id) => {
            let name = tokens
                .get(id as usize)
                .ok_or_else(|| tok_err(file, format!("bos id {id} outside the vocabulary")))?;
            TemplateProcessing::builder()
                .try_single(format!("{name} $A"))
                .and_then(|b| b.try_pair(format!("{name} $A:0 {name}:1 $B:1")))
                .map_err(|e| tok_err(file, e))?
                .special_tokens(vec![(name.clone(), id)])
                .build()
                .map_err(|e| tok_err(file, e))?
        }
        None => TemplateProcessing::builder()
            .try_single("$A")
            .and_then(|b| b.try_pair("$A:0 $B:1"))
            .map_err(|e| tok_err(file, e))?
            .build()
            .map_err(|e| tok_err(file, e))?,
    };
    tokenizer.with_post_processor(Some(template));
    Ok(())
}

/// Python's `str.isspace` (Unicode White_Space plus the ASCII separators 0x1C..=0x1F).
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn gemma(file: &GgufFile, tokens: &[String], types: &[i64]) -> Result<DecoderTokenizer> {
    // Tokens made only of whitespace that contain a space are stored with real spaces; the
    // model looks them up spelled with `▁`.
    let respelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            if t.contains(' ') && t.chars().all(py_isspace) {
                "\u{2581}".repeat(t.chars().count())
            } else {
                t.clone()
            }
        })
        .collect();
    // vocab: last index wins for duplicates (Python dict semantics).
    let mut index: HashMap<&str, u32> = HashMap::with_capacity(respelled.len());
    for (i, t) in respelled.iter().enumerate() {
        index.insert(t.as_str(), i as u32);
    }
    // Merges rebuilt as transformers' `generate_merges(vocab, {token: -position})`: tokens by
    // position ascending (last position for duplicates), and within a token the splits by
    // left-piece length descending.
    let mut order: Vec<(&str, u32)> = index.iter().map(|(t, i)| (*t, *i)).collect();
    order.sort_by_key(|(_, i)| *i);
    let mut merges: Merges = Vec::new();
    for (tok, _) in &order {
        let bounds: Vec<usize> = tok.char_indices().map(|(b, _)| b).skip(1).collect();
        for &b in bounds.iter().rev() {
            let (l, r) = tok.split_at(b);
            if index.contains_key(l) && index.contains_key(r) {
                merges.push((l.to_string(), r.to_string()));
            }
        }
    }
    let n_merges = merges.len();
    let control: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(_, ty)| **ty == CONTROL)
        .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
        .collect();
    let user_defined: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(t, ty)| **ty == USER_DEFINED && index.contains_key(t.as_str()))
        .map(|(t, _)| AddedToken::from(t.clone(), false).normalized(false))
        .collect();
    let vocab: Vocab = index.iter().map(|(t, i)| (t.to_string(), *i)).collect();
    let unk_id = file.get_uint("tokenizer.ggml.unknown_token_id")? as usize;
    let unk = tokens
        .get(unk_id)
        .cloned()
        .ok_or_else(|| tok_err(file, format!("unk id {unk_id} outside the vocabulary")))?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| tok_err(file, e))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_normalizer(Some(
        Replace::new(" ", "\u{2581}").map_err(|e| tok_err(file, e))?,
    ));
    tokenizer.with_pre_tokenizer(Some(
        Split::new(
            SplitPattern::String(" ".into()),
            SplitDelimiterBehavior::MergedWithPrevious,
            false,
        )
        .map_err(|e| tok_err(file, e))?,
    ));
    // llama.cpp adds BOS to a sentencepiece vocabulary that does not say otherwise.
    let add_bos = bos_if_added(file, true)?;
    set_template(file, &mut tokenizer, tokens, add_bos)?;
    tokenizer.add_special_tokens(&control);
    tokenizer.add_tokens(&user_defined);
    Ok(DecoderTokenizer {
        tokenizer,
        kind: format!("gemma-spm-bpe(vocab={},merges={n_merges})", tokens.len()),
        add_bos,
    })
}
