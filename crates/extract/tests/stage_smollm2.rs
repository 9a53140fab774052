//! The extract stage over a decoder (SmolLM2-135M GGUF, the colleague's llama model): output
//! shape, final_norm column, and batched-and-sorted rows equal to each text embedded alone.

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
    for i in [0, 7, 11] {
        let ids = m.tokenize(&train.texts[i], 64).unwrap().0;
        let alone = m.embed(&[&ids], &[Tap::Layer(15)], Pooling::Mean).unwrap();
        let c = cosine(e.column("layer_15").unwrap().row(i), &alone[0]);
        assert!(c > 0.9999, "row {i}: batched vs alone cosine {c}");
    }
}
