//! The extract stage over a decoder (SmolLM2-135M GGUF, the colleague's llama model): output
//! shape, final_norm column, and batched-and-sorted rows equal, bit for bit, to each text
//! embedded alone.

mod common;
mod decoder_common;

use std::path::PathBuf;

use common::*;
use llmembed_core::read_embedding_table;
use llmembed_extract::{
    ComputeDtype, ExtractParams, Layers, LoadSpec, LocalSpec, ModelParam, ModelSpec, Pooling, Tap,
};

/// SmolLM2 through the decoder tests' lookup: `$LLMEMBED_SMOLLM2_GGUF`, else the
/// `smollm2-135m` preset in `<repo>/cache/models` (where CI fetches it), else the old places.
fn smollm2() -> Option<PathBuf> {
    decoder_common::locate(&decoder_common::SMOLLM2)
}

#[test]
fn smollm2_stage_layers_final_norm_and_row_order() {
    let (Some(gguf), Some(data)) = (smollm2(), data_dir()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let train = ag_news(&data, "train", 12);
    let input = write_input(&tmp.path().join("in"), &[("train", &train)]);
    let mut params = ExtractParams::new(ModelParam::Spec(ModelSpec::Local(LocalSpec {
        path: gguf.clone(),
    })));
    params.layers = Layers::List(vec![0, 15, 30]);
    params.final_norm = true;
    params.max_tokens = 64;
    params.batch_tokens = 256;
    params.shard_rows = 5;
    let out = tmp.path().join("out");
    let s = run_stage(&params, &input, &out, &tmp.path().join("store"), tmp.path()).unwrap();
    assert_eq!(s.rows_out, 12);
    let e = read_embedding_table(&out.join("train.parquet"), None).unwrap();
    assert_eq!(
        e.column_names(),
        ["layer_0", "layer_15", "layer_30", "final_norm"]
    );
    assert!(e.columns.iter().all(|c| c.dim == 576 && c.rows() == 12));
    assert_eq!(e.ids, train.ids);

    let m = llmembed_extract::load(&LoadSpec {
        weights: gguf,
        config: None,
        tokenizer: None,
        compute: ComputeDtype::F32,
    })
    .unwrap();
    // The decoders are batch-invariant bit for bit (`decoder_padding`): each stored row, batched
    // and sorted by length, is exactly the text embedded alone.
    let taps = [
        Tap::Layer(0),
        Tap::Layer(15),
        Tap::Layer(30),
        Tap::FinalNorm,
    ];
    for i in 0..train.texts.len() {
        let ids = m.tokenize(&train.texts[i], 64).unwrap().0;
        let alone = m.embed(&[&ids], &taps, Pooling::Mean).unwrap();
        for (column, want) in e.columns.iter().zip(&alone) {
            assert!(
                column.row(i) == want.as_slice(),
                "row {i}, {}: batched differs from the text alone",
                column.name
            );
        }
    }
}
