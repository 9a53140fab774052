//! Layers beyond the model's depth: when validation could not see the model (a hub repo, a
//! preset not fetched yet), the stage refuses them once it has the model's files, before reading
//! any weights, and says how deep the model is.

mod common;

use common::{env, hub_cache, run_stage, write_input};
use llmembed_core::{Layers, Stage, TextTable};
use llmembed_extract::{Extract, ExtractParams, HubSpec, ModelParam, ModelSpec};

#[test]
fn layers_beyond_the_depth_are_refused_at_run_time_with_the_depth() {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("config.json"),
        r#"{"model_type": "qwen2", "num_hidden_layers": 3}"#,
    )
    .unwrap();
    // Not weights: the check must not read them.
    std::fs::write(src.join("model.safetensors"), b"not read").unwrap();
    std::fs::write(src.join("tokenizer.json"), b"{}").unwrap();
    let files = ["model.safetensors", "config.json", "tokenizer.json"];
    let cache = hub_cache(
        &root.path().join("hub"),
        "org/tiny",
        &"a".repeat(40),
        &src,
        &files,
    );
    let mut params = ExtractParams::new(ModelParam::Spec(ModelSpec::Hub(HubSpec {
        repo: "org/tiny".into(),
        revision: "main".into(),
        files: files.map(String::from).to_vec(),
        cache_dir: Some(cache),
    })));
    params.layers = Layers::List(vec![1, 4]);
    // Validation does not look hub repos up: nothing to refuse yet.
    Extract::check_local(&params, &env(root.path())).unwrap();

    let table = TextTable::new(
        vec!["a".into()],
        vec!["one text".into()],
        vec![0],
        vec!["x".into()],
    );
    let input = write_input(&root.path().join("in"), &[("train", &table)]);
    let run = |params: &ExtractParams| {
        run_stage(
            params,
            &input,
            &root.path().join("out"),
            &root.path().join("store"),
            root.path(),
        )
        .unwrap_err()
        .to_string()
    };
    assert_eq!(
        run(&params),
        "param `layers`: layer 4 does not exist: org/tiny@main (qwen2) has 3 blocks, layers 0..=3"
    );
    // Layers within the depth get as far as reading the (fake) weights.
    params.layers = Layers::List(vec![0, 3]);
    assert!(!run(&params).contains("does not exist"));
}
