//! Throughput of a model on a list of texts, as the extract stage runs it: tokenize (max 256
//! tokens), sort by length, batches of at most `batch_tokens` padded tokens, every layer
//! mean-pooled. The same figures as `scripts/peers/*.py` print.

use std::path::Path;
use std::time::Instant;

use llmembed_core::{Error, Result};

use crate::model::{ComputeDtype, LoadSpec, Pooling, Tap, load};

const MAX_TOKENS: usize = 256;

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    pub model: String,
    pub compute: ComputeDtype,
    pub texts: usize,
    pub real_tokens: usize,
    pub padded_tokens: usize,
    pub batches: usize,
    pub load_s: f64,
    pub tokenize_s: f64,
    pub embed_s: f64,
    pub texts_per_s: f64,
    pub real_tokens_per_s: f64,
    pub peak_rss_mib: f64,
    /// blake3 of all pooled vectors (little-endian f32), to check determinism across runs.
    pub output_hash: String,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} [{:?}]: {} texts, {} real tokens ({} padded) in {} batches; load {:.1}s, tokenize {:.2}s, embed {:.2}s => {:.1} texts/s, {:.0} real tokens/s; peak RSS {:.0} MiB; output {}",
            self.model,
            self.compute,
            self.texts,
            self.real_tokens,
            self.padded_tokens,
            self.batches,
            self.load_s,
            self.tokenize_s,
            self.embed_s,
            self.texts_per_s,
            self.real_tokens_per_s,
            self.peak_rss_mib,
            &self.output_hash[..16],
        )
    }
}

/// VmHWM of this process in MiB.
pub fn peak_rss_mib() -> Result<f64> {
    let path = "/proc/self/status";
    let status = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .ok_or_else(|| Error::compute("peak rss", "no VmHWM in /proc/self/status"))
}

pub fn bench_extract(
    model: &Path,
    texts: &[String],
    batch_tokens: usize,
    compute: ComputeDtype,
) -> Result<BenchReport> {
    if batch_tokens < MAX_TOKENS {
        return Err(Error::param(
            "batch_tokens",
            format!("{batch_tokens} is below max_tokens {MAX_TOKENS}"),
        ));
    }
    let t0 = Instant::now();
    let m = load(&LoadSpec {
        weights: model.to_path_buf(),
        config: None,
        tokenizer: None,
        compute,
    })?;
    let load_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let ids = texts
        .iter()
        .map(|t| m.tokenize(t, MAX_TOKENS).map(|(ids, _)| ids))
        .collect::<Result<Vec<_>>>()?;
    let tokenize_s = t1.elapsed().as_secs_f64();
    let mut order: Vec<usize> = (0..ids.len()).filter(|&i| !ids[i].is_empty()).collect();
    order.sort_by_key(|&i| (ids[i].len(), i));
    let taps: Vec<Tap> = (0..=m.num_layers()).map(Tap::Layer).collect();
    let mut hasher = blake3::Hasher::new();
    let (mut real, mut padded, mut batches) = (0usize, 0usize, 0usize);
    let t2 = Instant::now();
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && (end + 1 - start) * ids[order[end]].len() <= batch_tokens {
            end += 1;
        }
        let batch: Vec<&[u32]> = order[start..end]
            .iter()
            .map(|&i| ids[i].as_slice())
            .collect();
        let out = m.embed(&batch, &taps, Pooling::Mean)?;
        for v in &out {
            for x in v {
                hasher.update(&x.to_le_bytes());
            }
        }
        real += batch.iter().map(|s| s.len()).sum::<usize>();
        padded += batch.len() * batch.iter().map(|s| s.len()).max().unwrap_or(0);
        batches += 1;
        start = end;
    }
    let embed_s = t2.elapsed().as_secs_f64();
    let total_s = tokenize_s + embed_s;
    Ok(BenchReport {
        model: model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        compute,
        texts: texts.len(),
        real_tokens: real,
        padded_tokens: padded,
        batches,
        load_s,
        tokenize_s,
        embed_s,
        texts_per_s: texts.len() as f64 / total_s,
        real_tokens_per_s: real as f64 / total_s,
        peak_rss_mib: peak_rss_mib()?,
        output_hash: hasher.finalize().to_hex().to_string(),
    })
}
