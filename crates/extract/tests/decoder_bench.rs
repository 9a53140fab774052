//! `cargo test --release -p llmembed-extract --test decoder_bench -- --ignored --nocapture`:
//! throughput of the decoders on the first 500 AG News test texts (f32 and bf16), the figures
//! `scripts/peers/pytorch_extract.py` prints for PyTorch. Ignored by default: it is a
//! measurement (minutes on 2 cores), not a check; it still asserts that runs are deterministic.

mod decoder_common;

use std::path::PathBuf;

use decoder_common::{GEMMA3, SMOLLM2, locate};
use llmembed_extract::bench::bench_extract;
use llmembed_extract::model::ComputeDtype;

fn ag_news(n: usize) -> Option<Vec<String>> {
    use arrow::array::{Array, StringArray};
    let path = std::env::var("LLMEMBED_AG_NEWS_TEST")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/data/ag_news/test.parquet")
        });
    if !path.exists() {
        eprintln!(
            "SKIP: {} not found (set LLMEMBED_AG_NEWS_TEST)",
            path.display()
        );
        return None;
    }
    let file = std::fs::File::open(&path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let col = batch.column_by_name("text").expect("text column");
        let col = col
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("utf8 text");
        for i in 0..col.len() {
            if out.len() < n {
                out.push(col.value(i).to_string());
            }
        }
    }
    Some(out)
}

fn run(model: PathBuf, computes: &[ComputeDtype]) {
    let n: usize = std::env::var("LLMEMBED_BENCH_TEXTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let batch_tokens: usize = std::env::var("LLMEMBED_BENCH_BATCH_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096);
    let Some(texts) = ag_news(n) else { return };
    for &c in computes {
        let r = bench_extract(&model, &texts, batch_tokens, c).unwrap();
        println!("{r}");
        assert_eq!(r.texts, texts.len());
        assert!(r.real_tokens_per_s > 0.0);
    }
}

#[test]
#[ignore]
fn bench_smollm2() {
    let Some(m) = locate(&SMOLLM2) else { return };
    run(m, &[ComputeDtype::F32, ComputeDtype::Bf16]);
}

#[test]
#[ignore]
fn bench_gemma3() {
    let Some(m) = locate(&GEMMA3) else { return };
    run(m, &[ComputeDtype::F32]);
}
