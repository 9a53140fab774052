//! Texts to vectors the way the stage batches them: tokenized, sorted by length, cut into
//! batches under the token budget, the batches run side by side. Shared by `run` (one store
//! shard at a time) and the applier (new texts), so both give a text the same vectors.

use std::ops::Range;

use llmembed_core::{Error, Result};
use rayon::prelude::*;

use crate::embedder::{Embedder, Tap};
use crate::model::prefix::worth_sharing;
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
    // Tokens that every text of the shard begins with (a prompt's template) count once where
    // the model runs them once: a decoder's batch holds as many prompted texts as bare ones.
    let shared = if model.shares_leading_tokens(taps) {
        let all: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        worth_sharing(&all)
    } else {
        0
    };
    let sorted_lens: Vec<usize> = order.iter().map(|&i| ids[i].len()).collect();
    let batches = cut_batches(&sorted_lens, shared, p.batch_tokens);
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
            let spans: Vec<Range<usize>> = order[range.clone()]
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

/// Cuts texts sorted by length (`sorted_lens`, shortest first) into batches: runs whose size,
/// the `shared` leading tokens once plus texts x the longest one's other tokens (the longest
/// is the run's last), stays under `budget`. A text longer than the budget gets a batch alone.
fn cut_batches(sorted_lens: &[usize], shared: usize, budget: usize) -> Vec<Range<usize>> {
    let size = |texts: usize, longest: usize| shared + texts * longest.saturating_sub(shared);
    let mut batches = Vec::new();
    let mut start = 0;
    while start < sorted_lens.len() {
        let mut end = start + 1;
        while end < sorted_lens.len() && size(end + 1 - start, sorted_lens[end]) <= budget {
            end += 1;
        }
        batches.push(start..end);
        start = end;
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::cut_batches;

    #[test]
    fn batches_stay_under_the_budget_counting_shared_tokens_once() {
        // Without shared tokens: texts x the longest.
        assert_eq!(cut_batches(&[10, 10, 20, 30], 0, 60), vec![0..3, 3..4]);
        assert_eq!(
            cut_batches(&[10, 10, 20, 30], 0, 59),
            vec![0..2, 2..3, 3..4]
        );
        // A template of 350 tokens before texts of 50-60 own tokens: 350 + 6 x 60 = 710.
        let lens = [400, 400, 405, 410, 410, 410, 410, 410];
        assert_eq!(cut_batches(&lens, 350, 710), vec![0..6, 6..8]);
        // Counted per text, the same texts would take a batch each under 710.
        assert_eq!(cut_batches(&lens, 0, 710).len(), 8);
        // A text over the budget still gets its batch; none is empty.
        assert_eq!(cut_batches(&[5, 900], 0, 512), vec![0..1, 1..2]);
        assert!(cut_batches(&[], 350, 512).is_empty());
    }
}
