//! Texts to vectors the way the stage batches them: tokenized, sorted by length, cut into
//! batches under the token budget, the batches run side by side. Shared by `run` (one store
//! shard at a time) and the applier (new texts), so both give a text the same vectors.

use llmembed_core::{Error, Result};
use rayon::prelude::*;

use crate::embedder::{Embedder, Tap};
use crate::params::ExtractParams;

/// Tokenizes a shard's texts, sorts them by length, batches them under the token budget, embeds
/// and returns per tap the vectors in the shard's order, the truncation flags and the token count.
pub(crate) fn embed_shard(
    model: &dyn Embedder,
    texts: &[&str],
    taps: &[Tap],
    p: &ExtractParams,
) -> Result<(Vec<Vec<f32>>, Vec<bool>, usize)> {
    let hidden = model.hidden_size();
    let mut ids = Vec::with_capacity(texts.len());
    let mut mean = Vec::with_capacity(texts.len());
    let mut truncated = Vec::with_capacity(texts.len());
    for t in texts {
        let tokens = p.tokens(model, t)?;
        ids.push(tokens.ids);
        mean.push(tokens.mean);
        truncated.push(tokens.truncated);
    }
    let ntok = ids.iter().map(Vec::len).sum();
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| (ids[i].len(), i));
    let mut out: Vec<Vec<f32>> = taps
        .iter()
        .map(|_| vec![0f32; texts.len() * hidden])
        .collect();
    // Batches: runs of the sorted texts whose size, texts x the longest one's tokens (the
    // longest is the last: they are sorted), stays under the token budget.
    let mut batches = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && (end + 1 - start) * ids[order[end]].len() <= p.batch_tokens {
            end += 1;
        }
        batches.push(start..end);
        start = end;
    }
    // Batches run side by side, one per worker thread: each batch's own parallel steps then
    // run on its thread, with no fork or join between them, and a thread helps another's batch
    // only when it has none left. A text's vectors do not depend on its batch or on the
    // thread that runs it.
    let pooled: Vec<Vec<Vec<f32>>> = batches
        .par_iter()
        .map(|range| {
            let batch: Vec<&[u32]> = order[range.clone()]
                .iter()
                .map(|&i| ids[i].as_slice())
                .collect();
            let spans: Vec<std::ops::Range<usize>> = order[range.clone()]
                .iter()
                .map(|&i| mean[i].clone())
                .collect();
            model.embed_spans(&batch, &spans, taps, p.pooling)
        })
        .collect::<Result<_>>()?;
    for (range, pooled) in batches.iter().zip(pooled) {
        let n = range.len();
        for (t, vals) in pooled.iter().enumerate() {
            if vals.len() != n * hidden {
                return Err(Error::compute(
                    "embed batch",
                    format!(
                        "tap {:?}: {} values for {n} texts x {hidden}",
                        taps[t],
                        vals.len(),
                    ),
                ));
            }
            for (b, &i) in order[range.clone()].iter().enumerate() {
                out[t][i * hidden..(i + 1) * hidden]
                    .copy_from_slice(&vals[b * hidden..(b + 1) * hidden]);
            }
        }
    }
    Ok((out, truncated, ntok))
}
