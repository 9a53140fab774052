//! Class-balanced sampling without replacement, seeded per split.

use llmembed_core::{Error, Result, seeded_rng};
use rand::seq::SliceRandom;

use crate::columns::RawSplit;
use crate::params::{IngestParams, Sample};

/// Class-balanced sample of the rows in `keep`, returned in source order.
pub(crate) fn sample_rows(
    raw: &RawSplit,
    labels: &[i64],
    keep: &[usize],
    sample: Sample,
    names: &[String],
    p: &IngestParams,
    seed: u64,
) -> Result<Vec<usize>> {
    let k = names.len();
    let per_class = match sample {
        Sample::PerClass(n) => n,
        Sample::Total(t) => {
            if t % k != 0 {
                return Err(Error::param(
                    &format!("splits.{}.sample.total", raw.split),
                    format!("{t} is not a multiple of the {k} classes"),
                ));
            }
            t / k
        }
    };
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); k];
    for &i in keep {
        by_class[labels[i] as usize].push(i);
    }
    let mut rng = seeded_rng(seed, &format!("ingest/sample/{}", raw.split));
    let mut out = Vec::with_capacity(per_class * k);
    for (c, mut rows) in by_class.into_iter().enumerate() {
        if rows.len() < per_class {
            let what = if rows.is_empty() {
                "no rows".to_string()
            } else {
                format!("only {} rows", rows.len())
            };
            return Err(Error::schema(
                &raw.path,
                &raw.label_column,
                format!(
                    "split `{}` has {what} of class `{}` (index {c}){}; sampling needs {per_class}",
                    raw.split,
                    names[c],
                    if p.dedup { " after dedup" } else { "" }
                ),
            ));
        }
        rows.shuffle(&mut rng);
        out.extend_from_slice(&rows[..per_class]);
    }
    out.sort_unstable();
    Ok(out)
}
