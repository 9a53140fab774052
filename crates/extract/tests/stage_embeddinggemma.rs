//! The `extract` stage on the `embeddinggemma-300m` preset with `sentence: true`: the output has
//! the asked layers and a `sentence` column (768 wide, unit norm) equal, bit for bit, to the
//! model's `Tap::Sentence` for each text alone; `sentence: true` on a model without a sentence
//! embedding (MiniLM) is an error naming the param; `sentence: false` stays out of
//! the canonical params (existing cache keys do not move).

mod common;

use common::*;
use llmembed_core::read_embedding_table;
use llmembed_extract::model::{Pooling, Tap};
use llmembed_extract::{ExtractParams, LocalSpec, ModelParam, ModelSpec};

#[test]
fn sentence_false_is_not_in_the_canonical_params() {
    let p = ExtractParams::new(ModelParam::Preset("gemma3-270m".into()));
    let v = serde_json::to_value(&p).unwrap();
    assert!(v.get("sentence").is_none(), "{v}");
    let mut p = p;
    p.sentence = true;
    assert_eq!(serde_json::to_value(&p).unwrap()["sentence"], true);
}

#[test]
fn embeddinggemma_stage_writes_a_sentence_column() {
    let Some(data) = data_dir() else {
        return;
    };
    let Some(spec) = llmembed_testkit::needs("embeddinggemma-300m", preset("embeddinggemma-300m"))
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let test = ag_news(&data, "test", 6);
    let input = write_input(&tmp.path().join("in"), &[("test", &test)]);
    let params: ExtractParams = serde_json::from_str(
        r#"{"model": "embeddinggemma-300m", "layers": [6, 24], "sentence": true}"#,
    )
    .unwrap();
    let out = tmp.path().join("out");
    run_stage(
        &params,
        &input,
        &out,
        &tmp.path().join("store"),
        &llmembed_testkit::models_dir(),
    )
    .unwrap();
    let e = read_embedding_table(&out.join("test.parquet"), None).unwrap();
    assert_eq!(e.column_names(), ["layer_6", "layer_24", "sentence"]);
    assert!(e.columns.iter().all(|c| c.dim == 768 && c.rows() == 6));
    let model = llmembed_extract::load(&spec).unwrap();
    for i in 0..test.len() {
        let ids = model.tokenize(&test.texts[i], 256).unwrap().0;
        let alone = model
            .embed(&[&ids], &[Tap::Sentence], Pooling::Mean)
            .unwrap();
        let got = e.column("sentence").unwrap().row(i);
        assert_eq!(got, &alone[0][..], "row {i}");
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "row {i}: norm {norm}");
    }

    // A model without sentence-transformers modules: an error naming the param.
    let Some(minilm) = minilm_dir() else {
        return;
    };
    let mut params = ExtractParams::new(ModelParam::Spec(ModelSpec::Local(LocalSpec {
        path: minilm,
    })));
    params.sentence = true;
    let e = run_stage(
        &params,
        &input,
        &tmp.path().join("out-minilm"),
        &tmp.path().join("store-minilm"),
        &llmembed_testkit::models_dir(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("sentence") && e.contains("no sentence embedding of its own"),
        "{e}"
    );
}
