//! A dropped model gives its memory back to the OS, so that a process that goes on (the next
//! stage of a pipeline, another model) does not keep it. The binaries register
//! `llmembed_kernels::LineAligned` (mimalloc, told to keep the pages batches free), and so does
//! this test: without the return on drop, a `run` kept each extraction's model resident through
//! every later stage (SmolLM2's int8 stage after Qwen2.5-Coder-0.5B's peaked at 1.01 GB, about
//! 300 MB on its own).
//!
//! One test in its own binary: resident memory is the process's, and another test running
//! beside it would move it.

mod decoder_common;

use decoder_common::{GEMMA3, locate};
use llmembed_extract::model::{ComputeDtype, LoadSpec, Pooling, Tap, load};

#[global_allocator]
static ALLOCATOR: llmembed_kernels::LineAligned = llmembed_kernels::LineAligned;

/// This process's resident memory (Linux `VmRSS`), in MiB.
fn resident_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb / 1024.0
}

#[cfg(target_os = "linux")]
#[test]
fn a_dropped_model_returns_its_memory() {
    let Some(weights) = locate(&GEMMA3) else {
        return;
    };
    let before = resident_mib();
    let model = load(&LoadSpec {
        weights,
        config: None,
        tokenizer: None,
        compute: ComputeDtype::Int8,
    })
    .expect("load");
    // A few batches, so that the kept buffers of an extraction are there too.
    let texts = [
        "Wall St. Bears Claw Back Into the Black (Reuters) Reuters - Short-sellers, Wall Street's dwindling band of ultra-cynics, are seeing green again.",
        "Oil prices soared to record highs on Monday as traders worried about supply disruptions.",
        "The quick brown fox jumps over the lazy dog.",
    ];
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| model.tokenize(t, 256).expect("tokenize").0)
        .collect();
    let batch: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let taps: Vec<Tap> = (0..=model.num_layers()).map(Tap::Layer).collect();
    for _ in 0..3 {
        model.embed(&batch, &taps, Pooling::Mean).expect("embed");
    }
    let loaded = resident_mib();
    drop(model);
    let after = resident_mib();
    let grown = loaded - before;
    // Gemma-3-270M in int8 holds its 262,144 x 640 embedding table (Q8_0, 178 MB) and its
    // quantised blocks.
    assert!(
        grown > 200.0,
        "the model took {grown:.0} MiB ({before:.0} -> {loaded:.0}); the check needs a model that takes memory"
    );
    assert!(
        after - before < grown / 4.0,
        "after the drop {after:.0} MiB are resident, against {before:.0} before the load and {loaded:.0} with the model: {:.0} of its {grown:.0} MiB kept",
        after - before
    );
}
