//! Leading tokens that every text of a batch shares (a prompt's template before `{text}`, such
//! as a chat template's system turn and question), run through a causal decoder once instead of
//! once per text.
//!
//! Why it is exact: in a causal decoder a token's states depend only on the tokens before it,
//! so the shared tokens' states are the same in every text, and every per-token step (norms,
//! products, activations) gives a row the same bits whatever rows surround it. The run keeps,
//! per block, the shared tokens' q, k and v as the block's product gives them (before q/k
//! norms and RoPE); each text's attention then runs over those rows followed by its own, the
//! same sequence and the same arithmetic as without sharing, so a text's vectors are the same
//! bits either way (`tests/decoder_padding.rs` compares them with the text embedded alone).
//!
//! Why a cache: the stage's batches are small (512 tokens by default: five or six prompted
//! texts), and running the shared tokens costs a pass over every weight matrix for a handful of
//! rows; kept from batch to batch, a run's template is computed once or twice per run instead.

use std::sync::{Arc, Mutex};

/// Fewer shared tokens than this are not worth a run of their own: a BOS alone, or a first
/// word that happens to be common, would cost a pass over the weights to save a row per text.
pub(crate) const MIN_SHARED_TOKENS: usize = 8;

/// Prefix runs kept (the newest replace the oldest): a run's batches share one template, but
/// the first batches' texts may share a word or two beyond it.
const KEPT: usize = 4;

/// The shared tokens' states from a run of their own, all blocks deep.
pub(crate) struct SharedPrefix {
    /// The shared token ids.
    pub ids: Vec<u32>,
    /// Per block: the tokens' q, k and v rows, as the block's qkv product gives them.
    pub qkv: Vec<Vec<f32>>,
    /// The tokens' states where taps read them: `states[l]` after block `l` (`states[0]` the
    /// embedding output), `states[n_layers + 1]` after the final norm.
    pub states: Vec<Vec<f32>>,
}

impl SharedPrefix {
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }
}

/// The prefix runs a model has made, shared by the threads that run its batches.
#[derive(Default)]
pub(crate) struct PrefixCache {
    kept: Mutex<Vec<Arc<SharedPrefix>>>,
}

impl PrefixCache {
    /// The longest kept run whose tokens begin `shared`: the tokens that every sequence of a
    /// batch begins with ([`shared_len`] of them), so the run leaves each a token of its own.
    pub(crate) fn find(&self, shared: &[u32]) -> Option<Arc<SharedPrefix>> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter()
            .filter(|p| shared.starts_with(&p.ids))
            .max_by_key(|p| p.len())
            .cloned()
    }

    /// The kept runs' lengths, oldest first.
    pub(crate) fn lengths(&self) -> Vec<usize> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter().map(|p| p.len()).collect()
    }

    /// Keeps `prefix` (unless an equal run is kept already: two threads may make the same one
    /// at once), dropping the oldest beyond [`KEPT`].
    pub(crate) fn keep(&self, prefix: Arc<SharedPrefix>) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.iter().any(|p| p.ids == prefix.ids) {
            return;
        }
        if kept.len() == KEPT {
            kept.remove(0);
        }
        kept.push(prefix);
    }
}

/// How many leading tokens every sequence of `batch` shares, leaving each at least one token of
/// its own (so a sequence's last token, which `pooling: last` reads, is always its own row).
pub(crate) fn shared_len(batch: &[&[u32]]) -> usize {
    let Some((first, rest)) = batch.split_first() else {
        return 0;
    };
    let shortest = batch.iter().map(|s| s.len()).min().unwrap_or(0);
    let mut n = shortest.saturating_sub(1);
    for s in rest {
        n = first[..n]
            .iter()
            .zip(&s[..n])
            .take_while(|(a, b)| a == b)
            .count();
    }
    n
}

/// [`shared_len`] where it reaches [`MIN_SHARED_TOKENS`], else 0: the leading tokens worth a
/// run of their own (what the decoder runs once, and what the batcher counts once).
pub(crate) fn worth_sharing(batch: &[&[u32]]) -> usize {
    let n = shared_len(batch);
    if n >= MIN_SHARED_TOKENS { n } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_len_leaves_every_sequence_a_token_of_its_own() {
        assert_eq!(shared_len(&[]), 0);
        assert_eq!(shared_len(&[&[1, 2, 3]]), 2);
        assert_eq!(shared_len(&[&[1, 2, 3, 4], &[1, 2, 5]]), 2);
        assert_eq!(shared_len(&[&[1, 2, 3], &[1, 2, 3, 4]]), 2);
        assert_eq!(shared_len(&[&[1, 2, 3, 4], &[1, 2, 3, 4], &[9, 2]]), 0);
        assert_eq!(shared_len(&[&[7], &[7, 8]]), 0);
    }

    #[test]
    fn the_cache_gives_the_longest_run_that_fits_and_keeps_a_few() {
        let run = |ids: &[u32]| {
            Arc::new(SharedPrefix {
                ids: ids.to_vec(),
                qkv: Vec::new(),
                states: Vec::new(),
            })
        };
        let cache = PrefixCache::default();
        cache.keep(run(&[1, 2]));
        cache.keep(run(&[1, 2, 3]));
        cache.keep(run(&[1, 2, 3]));
        let found = |batch: &[&[u32]]| cache.find(&batch[0][..shared_len(batch)]).map(|p| p.len());
        assert_eq!(found(&[&[1, 2, 3, 4], &[1, 2, 3, 5]]), Some(3));
        assert_eq!(found(&[&[1, 2, 3], &[1, 2, 3, 5]]), Some(2));
        assert_eq!(found(&[&[1, 2, 9, 4], &[1, 2, 9, 5]]), Some(2));
        assert_eq!(found(&[&[2, 2, 3, 4], &[2, 2, 3, 5]]), None);
        for i in 10..10 + KEPT as u32 {
            cache.keep(run(&[i, i]));
        }
        assert_eq!(found(&[&[1, 2, 3, 4], &[1, 2, 3, 5]]), None);
        assert_eq!(found(&[&[13, 13, 0], &[13, 13, 1]]), Some(2));
    }
}
