//! Prompts (`prompt: "...{text}..."`, `mean_over`, PromptEOL with `pooling: last`) on real
//! models and real AG News texts:
//! - the ids of a prompted text are the tokenizer's own for the filled string, and transformers'
//!   (fixture from `scripts/reference/make_prompt_reference.py`), with the same text tokens; a
//!   chat template's markers (Qwen's `<|im_start|>`) are the tokenizer's control tokens;
//! - the pooled vectors match transformers on every layer (text mean, sequence mean, last token);
//! - `mean_over: sequence` and `pooling: last` give, bit for bit, what the unprompted stage gives
//!   the filled strings; `mean_over: text` is the mean of the text tokens' own states;
//! - truncation cuts the text and keeps the template; batching changes no bit;
//! - the store never shares vectors between prompts or `mean_over`s; reruns give the same bytes;
//! - bad params are errors naming the field.

mod common;
mod decoder_common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use decoder_common::{GEMMA3, ModelFile, QWEN25_CODER_05B, SMOLLM2, locate};
use llmembed_core::{Stage, TextTable};
use llmembed_extract::model::{ComputeDtype, Embedder, LoadSpec, Pooling, Tap, load};
use llmembed_extract::{
    Extract, ExtractParams, Layers, LocalSpec, MeanOver, ModelParam, ModelSpec,
};
use serde::Deserialize;

const EOL: &str = "This news article: \"{text}\" means in one word:\"";

fn fill(template: &str, text: &str) -> String {
    template.replacen("{text}", text, 1)
}

fn open(m: &ModelFile, compute: ComputeDtype) -> Option<(PathBuf, Box<dyn Embedder>)> {
    let weights = locate(m)?;
    let model = load(&LoadSpec {
        weights: weights.clone(),
        config: None,
        tokenizer: None,
        compute,
    })
    .expect("load");
    Some((weights, model))
}

fn params(weights: &Path) -> ExtractParams {
    ExtractParams::new(ModelParam::Spec(ModelSpec::Local(LocalSpec {
        path: weights.to_path_buf(),
    })))
}

fn prompted(weights: &Path, template: &str, mean_over: Option<MeanOver>) -> ExtractParams {
    let mut p = params(weights);
    p.prompt = Some(template.to_string());
    p.mean_over = mean_over;
    p
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ---------------------------------------------------------------------------------------------
// Against transformers

#[derive(Deserialize)]
struct Fixture {
    models: std::collections::BTreeMap<String, ModelRef>,
}

#[derive(Deserialize)]
struct ModelRef {
    /// The template every case of this model was filled into.
    template: String,
    num_layers: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    filled: String,
    ids: Vec<u32>,
    text_span: [usize; 2],
    layers: Vec<LayerRef>,
}

#[derive(Deserialize)]
struct LayerRef {
    text: Pooled,
    sequence: Pooled,
    last: Pooled,
}

#[derive(Deserialize)]
struct Pooled {
    norm: f64,
    sum: f64,
    full: Option<Vec<f64>>,
}

fn fixture() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prompt_reference.json");
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

// Tolerances as decoder_reference.rs's f32 bars (the same forward, a longer sequence): cosine
// within 1 - 4e-11 where the full vector is stored, error / norm within 2.5e-5 on the norm, the
// sum (relative to norm x sqrt(hidden)) and every stored dimension.
const COS: f64 = 1.0 - 4e-11;
const ABS: f64 = 2.5e-5;

fn against_transformers(m: &ModelFile, key: &str) {
    let Some((weights, model)) = open(m, ComputeDtype::F32) else {
        return;
    };
    let fx = fixture();
    let reference = &fx.models[key];
    let n = model.num_layers();
    assert_eq!(n, reference.num_layers);
    let h = model.hidden_size();
    let taps: Vec<Tap> = (0..=n).map(Tap::Layer).collect();
    let (mut worst_cos, mut worst_abs) = (1f64, 0f64);
    let template = &reference.template;
    for case in &reference.cases {
        assert_eq!(fill(template, &case.text), case.filled);
        for (mean_over, which) in [(MeanOver::Text, 0), (MeanOver::Sequence, 1)] {
            let p = prompted(&weights, template, Some(mean_over));
            let tokens = p.tokens(model.as_ref(), &case.text).unwrap();
            assert_eq!(tokens.ids, case.ids, "{key}: ids of {:?}", case.filled);
            assert!(!tokens.truncated);
            let want = match mean_over {
                MeanOver::Text => case.text_span[0]..case.text_span[1],
                MeanOver::Sequence => 0..case.ids.len(),
            };
            assert_eq!(
                tokens.mean, want,
                "{key}: {mean_over:?} tokens of {:?}",
                case.text
            );
            for pooling in [Pooling::Mean, Pooling::Last] {
                if pooling == Pooling::Last && which == 1 {
                    continue;
                }
                let got = model
                    .embed_spans(
                        &[&tokens.ids],
                        std::slice::from_ref(&tokens.mean),
                        &taps,
                        pooling,
                    )
                    .unwrap();
                for (k, layer) in case.layers.iter().enumerate() {
                    let r = match (pooling, mean_over) {
                        (Pooling::Last, _) => &layer.last,
                        (_, MeanOver::Text) => &layer.text,
                        (_, MeanOver::Sequence) => &layer.sequence,
                    };
                    let v = &got[k];
                    assert_eq!(v.len(), h);
                    let norm = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                    let sum: f64 = v.iter().map(|x| *x as f64).sum();
                    let what = format!(
                        "{key} {pooling:?} {mean_over:?} layer {k} of {:?}",
                        case.text
                    );
                    let e_norm = (norm - r.norm).abs() / r.norm;
                    let e_sum = (sum - r.sum).abs() / (r.norm * (h as f64).sqrt());
                    worst_abs = worst_abs.max(e_norm).max(e_sum);
                    assert!(
                        e_norm <= ABS && e_sum <= ABS,
                        "{what}: norm {norm} vs {}, sum {sum} vs {}",
                        r.norm,
                        r.sum
                    );
                    if let Some(full) = &r.full {
                        let c = decoder_common::cosine(v, full);
                        let e = decoder_common::max_abs(v, full) / r.norm;
                        worst_cos = worst_cos.min(c);
                        worst_abs = worst_abs.max(e);
                        assert!(
                            c >= COS && e <= ABS,
                            "{what}: cosine {c}, error / norm {e:e}"
                        );
                    }
                }
            }
        }
    }
    eprintln!(
        "{key}: worst 1 - cosine {:e}, worst error / norm {worst_abs:e}",
        1.0 - worst_cos
    );
}

#[test]
fn smollm2_prompted_matches_transformers() {
    against_transformers(&SMOLLM2, "smollm2");
}

#[test]
fn gemma3_prompted_matches_transformers() {
    against_transformers(&GEMMA3, "gemma3");
}

/// Qwen's chat template (`pipelines/agnews-qwen-instruct.yaml`): its `<|im_start|>` and
/// `<|im_end|>` must be single control tokens, as transformers makes them, or the instruct model
/// reads markup it was never tuned on.
#[test]
fn qwen_chat_template_matches_transformers() {
    let fx = fixture();
    let reference = &fx.models["qwen0.5b"];
    for case in &reference.cases {
        // <|im_start|> is 151644, <|im_end|> 151645 in Qwen2.5's vocabulary; three turns open.
        let starts = case.ids.iter().filter(|&&id| id == 151644).count();
        let ends = case.ids.iter().filter(|&&id| id == 151645).count();
        assert_eq!((starts, ends), (3, 2), "{:?}", case.ids);
    }
    against_transformers(&QWEN25_CODER_05B, "qwen0.5b");
}

// ---------------------------------------------------------------------------------------------
// Ids, text tokens and truncation

const EDGE_TEXTS: &[&str] = &[
    "Hi",
    "  leading and trailing spaces  ",
    "\"quoted\" text ending with a quote\"",
    "<bos>hello<eos> <start_of_turn>user",
    "emoji 🙂🚀👍🏽 and 東京は日本の首都です。",
    "1234567890",
];

fn ids_are_the_tokenizers_own(m: &ModelFile) {
    let Some(data) = data_dir() else { return };
    let Some((weights, model)) = open(m, ComputeDtype::F32) else {
        return;
    };
    let train = ag_news(&data, "train", 40);
    let texts: Vec<&str> = EDGE_TEXTS
        .iter()
        .copied()
        .chain(train.texts.iter().map(String::as_str))
        .collect();
    for template in [EOL, "{text}", "Topic of {text}", "{text}\nThe topic is:"] {
        let p = prompted(&weights, template, None);
        for text in &texts {
            let filled = fill(template, text);
            let (own, _) = model.tokenize(&filled, 1 << 20).unwrap();
            let tokens = p.tokens(model.as_ref(), text).unwrap();
            assert_eq!(tokens.ids, own, "{template:?} with {text:?}");
            assert!(!tokens.truncated);
            // The text's tokens, from the offsets: the template's alone are the same ids at
            // both ends, and BOS is never a text token.
            let (plain, _) = model.tokenize(text, 1 << 20).unwrap();
            assert!(!tokens.mean.is_empty() && tokens.mean.end <= own.len());
            if model.tokenize("", 8).unwrap().0.len() == 1 {
                assert!(tokens.mean.start >= 1, "{template:?}: BOS counted as text");
            }
            if template == "{text}" {
                // Text alone: every token but the added BOS is the text's.
                let bos = plain.len()
                    - model
                        .encode_with_offsets(text)
                        .unwrap()
                        .1
                        .iter()
                        .filter(|o| o.0 < o.1)
                        .count();
                assert_eq!(tokens.mean, bos..plain.len(), "{text:?}");
            }
        }
    }
}

#[test]
fn smollm2_prompted_ids_are_the_tokenizers_own() {
    ids_are_the_tokenizers_own(&SMOLLM2);
}

#[test]
fn gemma3_prompted_ids_are_the_tokenizers_own() {
    ids_are_the_tokenizers_own(&GEMMA3);
}

const LONG: &str = "Oil prices soared to record highs on Monday as traders worried about supply \
    disruptions in the Gulf of Mexico, while stocks on Wall Street slipped for a third straight \
    session. Analysts said the central bank would likely raise interest rates again next month, \
    citing stronger than expected employment figures and rising consumer prices — 東京 🙂.";

fn truncation_cuts_the_text(m: &ModelFile) {
    let Some((weights, model)) = open(m, ComputeDtype::F32) else {
        return;
    };
    let full = model.tokenize(&fill(EOL, LONG), 1 << 20).unwrap().0;
    let whole = prompted(&weights, EOL, None)
        .tokens(model.as_ref(), LONG)
        .unwrap();
    // The template's tokens after the text, in the untruncated sequence.
    let tail = &full[whole.mean.end..];
    assert!(tail.len() >= 5, "{tail:?}");
    // The last: room for two text tokens (the template's own may take one more once the text is
    // cut: a token straddling the text's end, such as `."`, splits into the text's and its own).
    for max_tokens in [full.len() - 1, 40, 24, tail.len() + whole.mean.start + 2] {
        let mut p = prompted(&weights, EOL, None);
        p.max_tokens = max_tokens;
        let t = p.tokens(model.as_ref(), LONG).unwrap();
        assert!(
            t.truncated && t.ids.len() <= max_tokens,
            "{max_tokens}: {} tokens",
            t.ids.len()
        );
        assert!(
            t.ids.ends_with(tail),
            "{max_tokens}: the template's end was cut"
        );
        assert_eq!(t.ids[..whole.mean.start], full[..whole.mean.start]);
        // The ids are the tokenizer's own for the template filled with a prefix of the text:
        // find it among the text's prefixes.
        let found = (1..LONG.len())
            .rev()
            .filter(|&k| LONG.is_char_boundary(k))
            .find(|&k| model.tokenize(&fill(EOL, &LONG[..k]), 1 << 20).unwrap().0 == t.ids);
        assert!(
            found.is_some(),
            "{max_tokens}: no prefix of the text gives these ids"
        );
        // `pooling: last` is the template's last token, as untruncated.
        assert_eq!(t.ids.last(), full.last());
    }
    // No room for a text token: an error naming max_tokens.
    let mut p = prompted(&weights, EOL, None);
    p.max_tokens = tail.len() + whole.mean.start;
    let e = p.tokens(model.as_ref(), LONG).unwrap_err().to_string();
    assert!(e.contains("max_tokens") && e.contains("no room"), "{e}");
}

#[test]
fn smollm2_truncation_cuts_the_text_not_the_template() {
    truncation_cuts_the_text(&SMOLLM2);
}

#[test]
fn gemma3_truncation_cuts_the_text_not_the_template() {
    truncation_cuts_the_text(&GEMMA3);
}

// ---------------------------------------------------------------------------------------------
// Pooling

/// `mean_over: text` is the mean of the text tokens' states, each taken independently as the last
/// token of the sequence cut after it (a decoder's token sees only the tokens before it).
#[test]
fn text_mean_is_the_mean_of_the_text_tokens_states() {
    let Some(data) = data_dir() else { return };
    let Some((weights, model)) = open(&SMOLLM2, ComputeDtype::F32) else {
        return;
    };
    let h = model.hidden_size();
    let taps = [Tap::Layer(0), Tap::Layer(7), Tap::Layer(model.num_layers())];
    let p = prompted(&weights, EOL, None);
    for text in ag_news(&data, "test", 3)
        .texts
        .iter()
        .map(String::as_str)
        .chain(["Hi"])
    {
        let t = p.tokens(model.as_ref(), text).unwrap();
        let got = model
            .embed_spans(
                &[&t.ids],
                std::slice::from_ref(&t.mean),
                &taps,
                Pooling::Mean,
            )
            .unwrap();
        let prefixes: Vec<&[u32]> = t.mean.clone().map(|i| &t.ids[..=i]).collect();
        let states = model.embed(&prefixes, &taps, Pooling::Last).unwrap();
        for (k, tap) in taps.iter().enumerate() {
            let mut acc = vec![0f64; h];
            for row in states[k].chunks(h) {
                acc.iter_mut().zip(row).for_each(|(a, v)| *a += *v as f64);
            }
            let want: Vec<f32> = acc
                .iter()
                .map(|a| (a / t.mean.len() as f64) as f32)
                .collect();
            assert_eq!(bits(&got[k]), bits(&want), "{tap:?} of {text:?}");
        }
    }
}

/// Batching changes no bit of a prompted text's vectors (mean over its text tokens, last token).
fn padding_invariant(m: &ModelFile, compute: ComputeDtype) {
    let Some(data) = data_dir() else { return };
    let Some((weights, model)) = open(m, compute) else {
        return;
    };
    let h = model.hidden_size();
    let taps: Vec<Tap> = (0..=model.num_layers()).map(Tap::Layer).collect();
    let texts: Vec<String> = ag_news(&data, "test", 6)
        .texts
        .into_iter()
        .chain(["Hi".to_string(), LONG.to_string()])
        .collect();
    let p = prompted(&weights, EOL, None);
    let tokens: Vec<_> = texts
        .iter()
        .map(|t| p.tokens(model.as_ref(), t).unwrap())
        .collect();
    let batch: Vec<&[u32]> = tokens.iter().map(|t| t.ids.as_slice()).collect();
    let spans: Vec<_> = tokens.iter().map(|t| t.mean.clone()).collect();
    for pooling in [Pooling::Mean, Pooling::Last] {
        let together = model.embed_spans(&batch, &spans, &taps, pooling).unwrap();
        for (i, one) in batch.iter().enumerate() {
            let alone = model
                .embed_spans(&[one], &spans[i..=i], &taps, pooling)
                .unwrap();
            for k in 0..taps.len() {
                assert_eq!(
                    bits(&alone[k]),
                    bits(&together[k][i * h..(i + 1) * h]),
                    "{pooling:?} {compute:?}: text {i} layer {k}, alone vs batch"
                );
            }
        }
    }
}

#[test]
fn gemma3_prompted_vectors_do_not_depend_on_the_batch() {
    padding_invariant(&GEMMA3, ComputeDtype::F32);
    padding_invariant(&GEMMA3, ComputeDtype::Bf16);
}

#[test]
fn smollm2_prompted_vectors_do_not_depend_on_the_batch() {
    padding_invariant(&SMOLLM2, ComputeDtype::Bf16);
}

// ---------------------------------------------------------------------------------------------
// The stage

fn small(mut p: ExtractParams) -> ExtractParams {
    p.layers = Layers::List(vec![0, 15, 30]);
    p.batch_tokens = 512;
    p.shard_rows = 5;
    p
}

fn with_texts(t: &TextTable, texts: Vec<String>) -> TextTable {
    TextTable::new(
        t.ids.clone(),
        texts,
        t.labels.clone(),
        t.label_names.clone(),
    )
}

/// The output's bytes of `params` over `input`, into `root/<out>` with the store `root/<store>`,
/// and the run's notes.
fn run(
    p: &ExtractParams,
    input: &llmembed_core::Input,
    root: &Path,
    out: &str,
    store: &str,
) -> (Vec<u8>, Vec<String>) {
    let dir = root.join(out);
    let summary = run_stage(p, input, &dir, &root.join(store), root).unwrap();
    (fs::read(dir.join("train.parquet")).unwrap(), summary.notes)
}

/// `mean_over: sequence` and `pooling: last` give, bit for bit, the unprompted stage's output on
/// the filled strings (no truncation here); `mean_over: text` differs.
#[test]
fn sequence_mean_and_last_are_the_unprompted_stage_on_the_filled_strings() {
    let Some(data) = data_dir() else { return };
    let Some(weights) = locate(&SMOLLM2) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let train = ag_news(&data, "train", 12);
    let filled = with_texts(&train, train.texts.iter().map(|t| fill(EOL, t)).collect());
    let input = write_input(&tmp.path().join("in"), &[("train", &train)]);
    let input_filled = write_input(&tmp.path().join("in-filled"), &[("train", &filled)]);
    for pooling in [Pooling::Mean, Pooling::Last] {
        let mut plain = small(params(&weights));
        plain.pooling = pooling;
        let mut p = small(prompted(&weights, EOL, None));
        p.pooling = pooling;
        if pooling == Pooling::Mean {
            p.mean_over = Some(MeanOver::Sequence);
        }
        let tag = format!("{pooling:?}");
        let (want, _) = run(
            &plain,
            &input_filled,
            tmp.path(),
            &format!("plain-{tag}"),
            "s-plain",
        );
        let (got, _) = run(
            &p,
            &input,
            tmp.path(),
            &format!("prompted-{tag}"),
            "s-prompted",
        );
        assert!(
            got == want,
            "{tag}: prompted output differs from the filled strings' output"
        );
        if pooling == Pooling::Mean {
            p.mean_over = Some(MeanOver::Text);
            let (text, _) = run(&p, &input, tmp.path(), "prompted-text", "s-prompted");
            assert!(
                text != want,
                "mean over the text equals the mean over the sequence"
            );
        }
    }
}

/// Texts embedded with another prompt, another `mean_over` or no prompt are never reused; the
/// same params reuse every text and give the same bytes.
#[test]
fn the_store_keeps_prompts_apart() {
    let Some(data) = data_dir() else { return };
    let Some(weights) = locate(&SMOLLM2) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let train = ag_news(&data, "train", 10);
    let input = write_input(&tmp.path().join("in"), &[("train", &train)]);
    let eol = small(prompted(&weights, EOL, None));
    let mut sequence = eol.clone();
    sequence.mean_over = Some(MeanOver::Sequence);
    let other = small(prompted(&weights, "Topic of \"{text}\":", None));
    let mut last = eol.clone();
    last.pooling = Pooling::Last;
    let plain = small(params(&weights));
    let mut outputs = Vec::new();
    for (i, p) in [&eol, &sequence, &other, &last, &plain]
        .into_iter()
        .enumerate()
    {
        let (bytes, notes) = run(p, &input, tmp.path(), &format!("out-{i}"), "store");
        assert!(
            notes.iter().any(|n| n == "reused 0 of 10 texts"),
            "run {i}: {notes:?}"
        );
        let (fresh, _) = run(
            p,
            &input,
            tmp.path(),
            &format!("fresh-{i}"),
            &format!("own-{i}"),
        );
        assert!(
            bytes == fresh,
            "run {i}: the shared store changed the output"
        );
        outputs.push(bytes);
    }
    for i in 0..outputs.len() {
        for j in 0..i {
            assert!(
                outputs[i] != outputs[j],
                "runs {j} and {i} wrote the same vectors"
            );
        }
    }
    // Five fingerprints, one per params; the same params again reuse every text.
    assert_eq!(fs::read_dir(tmp.path().join("store")).unwrap().count(), 5);
    let (again, notes) = run(&eol, &input, tmp.path(), "again", "store");
    assert!(
        notes.iter().any(|n| n == "reused 10 of 10 texts"),
        "{notes:?}"
    );
    assert!(again == outputs[0]);
}

/// A BERT encoder takes prompts too: `mean_over: sequence` is its unprompted mean of the filled
/// string, bit for bit; `mean_over: text` leaves out the template, CLS and SEP.
#[test]
fn minilm_takes_prompts() {
    let Some(data) = data_dir() else { return };
    let Some(dir) = minilm_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let train = ag_news(&data, "train", 8);
    let filled = with_texts(&train, train.texts.iter().map(|t| fill(EOL, t)).collect());
    let input = write_input(&tmp.path().join("in"), &[("train", &train)]);
    let input_filled = write_input(&tmp.path().join("in-filled"), &[("train", &filled)]);
    let base = |prompt: Option<MeanOver>| {
        let mut p = ExtractParams::new(local_minilm(&dir));
        p.layers = Layers::List(vec![0, 3, 6]);
        if let Some(m) = prompt {
            p.prompt = Some(EOL.into());
            p.mean_over = Some(m);
        }
        p
    };
    let (want, _) = run(&base(None), &input_filled, tmp.path(), "plain", "s1");
    let (got, _) = run(
        &base(Some(MeanOver::Sequence)),
        &input,
        tmp.path(),
        "seq",
        "s2",
    );
    assert!(got == want);
    let (text, _) = run(
        &base(Some(MeanOver::Text)),
        &input,
        tmp.path(),
        "text",
        "s2",
    );
    assert!(text != want);
    // The text's tokens: [CLS] and the template's are left out, and so is [SEP].
    let model = load(&LoadSpec {
        weights: dir.join("model.safetensors"),
        config: None,
        tokenizer: None,
        compute: ComputeDtype::F32,
    })
    .unwrap();
    let t = base(Some(MeanOver::Text))
        .tokens(model.as_ref(), "Hello world")
        .unwrap();
    let (ids, _) = model.tokenize(&fill(EOL, "Hello world"), 512).unwrap();
    assert_eq!(t.ids, ids);
    assert_eq!(t.mean.len(), 2, "{t:?}");
    assert!(t.mean.start > 1 && t.mean.end < ids.len() - 1);
}

#[test]
fn bad_prompt_params_are_named() {
    let mut p = params(Path::new("/nonexistent/model.gguf"));
    let err = |p: &ExtractParams| Extract::check(p).unwrap_err().to_string();
    for bad in ["no placeholder", "{text} {text}", "{TEXT}", ""] {
        p.prompt = Some(bad.into());
        let e = err(&p);
        assert!(e.contains("prompt") && e.contains("{text}"), "{bad:?}: {e}");
    }
    p.prompt = None;
    p.mean_over = Some(MeanOver::Text);
    let e = err(&p);
    assert!(
        e.contains("mean_over") && e.contains("needs a `prompt`"),
        "{e}"
    );
    p.prompt = Some(EOL.into());
    p.pooling = Pooling::Last;
    let e = err(&p);
    assert!(e.contains("mean_over") && e.contains("`last`"), "{e}");
    p.mean_over = None;
    Extract::check(&p).unwrap();
    // Without a prompt the params serialise as before (the runner's cache keys do not move).
    let plain = serde_json::to_value(params(Path::new("/m.gguf"))).unwrap();
    assert!(plain.get("prompt").is_none() && plain.get("mean_over").is_none());
}
