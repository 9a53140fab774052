//! Pieces of pipeline files for the tests that run the runner: the header and the AG News
//! ingest stage that nearly every such test starts with.

use std::path::Path;

/// `name:` and `settings:` (the seed, and the models folder when given), then `stages:`.
pub fn pipeline_header(name: &str, seed: u64, models_dir: Option<&Path>) -> String {
    let models = models_dir
        .map(|d| format!("  models_dir: {}\n", d.display()))
        .unwrap_or_default();
    format!("name: {name}\nsettings:\n  seed: {seed}\n{models}stages:\n")
}

/// The stage `data`: a class-balanced AG News sample of `train` and `test` rows per class.
pub fn ag_news_stage(train: usize, test: usize) -> String {
    format!(
        "  - id: data\n    kind: ingest\n    params:\n      dataset: ag_news\n      splits:\n        \
         train: {{sample: {{per_class: {train}}}}}\n        test: {{sample: {{per_class: {test}}}}}\n"
    )
}

/// The stage `llm`: SmolLM2-135M over `data`, the given `layers` (YAML, e.g. `[2, 8]`), in
/// shards of `shard_rows` texts.
pub fn smollm2_stage(layers: &str, shard_rows: usize) -> String {
    format!(
        "  - id: llm\n    kind: extract\n    inputs: [data]\n    params:\n      model: smollm2-135m\n      \
         layers: {layers}\n      shard_rows: {shard_rows}\n"
    )
}
