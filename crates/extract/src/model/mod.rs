//! Frozen models that turn token ids into pooled hidden states, one vector per requested tap.
//!
//! The decoders are written here, close to HF's modeling files, because candle-transformers'
//! models expose neither per-layer hidden states nor padding masks: one shared [`decoder`], read
//! from GGUF files (`llama`, `qwen2`, `gemma3`) or from HF safetensors checkpoints (`hf`: llama, mistral,
//! qwen2, qwen3, phi, gemma3_text, whose EmbeddingGemma runs the same blocks bidirectionally), and
//! the post-LN encoders (`encoder`: `bert`, `mpnet`). What differs between the architectures is
//! data, in one table (`arch.rs`); the shared types are in `crate::embedder`.
//!
//! Tap numbering follows HF `output_hidden_states`: `Layer(0)` is the embedding output (for
//! Gemma after the `sqrt(hidden)` scaling), `Layer(k)` the output of block `k`. HF replaces the
//! LAST entry (`hidden_states[n]`) by the final-norm output for llama-family models, so to match
//! HF exactly: `Layer(k)` for `k < n` is the raw block-`k` output, and `Layer(n)` equals
//! `FinalNorm` (the final RMSNorm applied to block `n`'s output). Decoders do not support
//! `Pooler`.

use std::path::Path;

use llmembed_core::{Error, Result};

pub use crate::embedder::{ComputeDtype, Embedder, LoadSpec, Pooling, Tap};

mod arch;
mod bert;
pub(crate) mod decoder;
mod encoder;
mod errors;
mod gemma3;
pub(crate) mod gguf;
pub(crate) mod hf;
mod llama;
mod mpnet;
pub(crate) mod prefix;
pub(crate) mod safetensors;
mod sentence;
mod tokenizer;

use arch::Arch;
use errors::{file_error, hex_bytes};

/// Picks the architecture from the file: GGUF `general.architecture` (`llama`, `qwen2`, `gemma3`), or
/// the `model_type` of the config.json next to a `.safetensors` file (or shard index):
/// `bert` -> `bert`, `mpnet` -> `mpnet`, decoders -> `hf`. A file named `.gguf` must start with the GGUF magic.
///
/// While the weights load, the memory the load frees (its f32 copies of quantised tensors,
/// the unpacked matrices) goes back to the OS at once ([`llmembed_kernels::return_freed_pages`]);
/// once they are in, the pages the batches free from then on stay with the process
/// ([`llmembed_kernels::keep_freed_pages`]): each batch allocates blocks of the same sizes as
/// the last. When the model is dropped, every free page goes back (the same call), so that a process that goes on (the next stage of
/// a pipeline, another model) does not keep this one's memory.
pub fn load(spec: &LoadSpec) -> Result<Box<dyn Embedder>> {
    llmembed_kernels::return_freed_pages();
    let model = load_weights(spec);
    llmembed_kernels::keep_freed_pages();
    Ok(Box::new(Loaded(Some(model?))))
}

/// A loaded model that returns the process's free pages to the OS once it is dropped (see
/// [`load`]); it embeds exactly as the model it holds.
struct Loaded(Option<Box<dyn Embedder>>);

impl Loaded {
    fn model(&self) -> &dyn Embedder {
        // Some until `drop` takes it.
        self.0
            .as_deref()
            .expect("a loaded model is present until dropped")
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        // The model first: its weights and kept buffers are what there is to return.
        drop(self.0.take());
        llmembed_kernels::keep_freed_pages();
    }
}

impl Embedder for Loaded {
    fn num_layers(&self) -> usize {
        self.model().num_layers()
    }
    fn hidden_size(&self) -> usize {
        self.model().hidden_size()
    }
    fn supports(&self, tap: Tap) -> bool {
        self.model().supports(tap)
    }
    fn tokenize(&self, text: &str, max_tokens: usize) -> Result<(Vec<u32>, bool)> {
        self.model().tokenize(text, max_tokens)
    }
    fn embed(&self, batch: &[&[u32]], taps: &[Tap], pooling: Pooling) -> Result<Vec<Vec<f32>>> {
        self.model().embed(batch, taps, pooling)
    }
    fn encode_with_offsets(&self, text: &str) -> Result<crate::embedder::IdsOffsets> {
        self.model().encode_with_offsets(text)
    }
    fn max_sequence(&self) -> usize {
        self.model().max_sequence()
    }
    fn embed_spans(
        &self,
        batch: &[&[u32]],
        mean: &[std::ops::Range<usize>],
        taps: &[Tap],
        pooling: Pooling,
    ) -> Result<Vec<Vec<f32>>> {
        self.model().embed_spans(batch, mean, taps, pooling)
    }
    fn shared_prefixes(&self) -> Vec<usize> {
        self.model().shared_prefixes()
    }
    fn shares_leading_tokens(&self, taps: &[Tap]) -> bool {
        self.model().shares_leading_tokens(taps)
    }
    fn describe(&self) -> String {
        self.model().describe()
    }
}

fn load_weights(spec: &LoadSpec) -> Result<Box<dyn Embedder>> {
    let magic = first_bytes(&spec.weights)?;
    let named_gguf = spec
        .weights
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if magic == *b"GGUF" {
        let file = gguf::GgufFile::open(&spec.weights)?;
        let arch = file.get_str("general.architecture")?.to_string();
        match Arch::from_gguf(&arch) {
            Some(arch @ (Arch::Llama | Arch::Qwen2)) => {
                Ok(Box::new(llama::load(file, spec, arch)?))
            }
            Some(Arch::Gemma3) => Ok(Box::new(gemma3::load(file, spec)?)),
            _ => Err(Error::param(
                "model",
                format!(
                    "{}: GGUF architecture `{arch}` is not supported (supported: {})",
                    spec.weights.display(),
                    Arch::gguf_names()
                ),
            )),
        }
    } else if named_gguf {
        Err(file_error(
            &spec.weights,
            format!(
                "not a GGUF file ({}, GGUF files start with `GGUF`)",
                first_bytes_note(&magic)
            ),
        ))
    } else if !is_safetensors_name(&spec.weights) && !spec.config_path().is_file() {
        // Neither kind by name or content: say so rather than "config.json: no such file".
        Err(file_error(
            &spec.weights,
            format!(
                "not a GGUF file ({}), nor a safetensors checkpoint (no {} next to it)",
                first_bytes_note(&magic),
                spec.config_path().display()
            ),
        ))
    } else {
        load_safetensors(spec)
    }
}

/// `starts with bytes 3c 21 44 4f`, or what there is of a shorter file.
fn first_bytes_note(magic: &[u8]) -> String {
    match magic.len() {
        0 => "the file is empty".to_string(),
        n if n < 4 => format!("the file has only {n} bytes: {}", hex_bytes(magic)),
        _ => format!("starts with bytes {}", hex_bytes(magic)),
    }
}

fn is_safetensors_name(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json")
}

fn load_safetensors(spec: &LoadSpec) -> Result<Box<dyn Embedder>> {
    let path = spec.config_path();
    let raw =
        std::fs::read_to_string(&path).map_err(|e| Error::io("read model config", &path, e))?;
    let config: serde_json::Value =
        serde_json::from_str(&raw).map_err(|e| file_error(&path, format!("not JSON: {e}")))?;
    let model_type = config
        .get("model_type")
        .ok_or_else(|| file_error(&path, "field `model_type` is missing"))?
        .as_str()
        .ok_or_else(|| file_error(&path, "field `model_type` is not a string"))?;
    match Arch::from_model_type(model_type) {
        Some(Arch::Bert) => bert::load(spec, &raw),
        Some(Arch::Mpnet) => mpnet::load(spec, &raw),
        Some(arch) => Ok(Box::new(hf::load(spec, arch, &raw)?)),
        None => Err(file_error(
            &path,
            format!(
                "field `model_type`: `{model_type}` is not supported ({})",
                Arch::model_type_names()
            ),
        )),
    }
}

/// The first (up to) 4 bytes of the file.
fn first_bytes(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io("open model", path, e))?;
    let mut magic = Vec::with_capacity(4);
    f.take(4)
        .read_to_end(&mut magic)
        .map_err(|e| Error::io("read model", path, e))?;
    Ok(magic)
}
