//! Canonical params (what cache keys are built from) of the fuse params that the pipelines in
//! `pipelines/` use: they must not change when the param types are refactored, or every cached
//! artifact downstream would be made again.

use llmembed_fuse::FuseParams;

/// Params as the runner reads them (YAML to a JSON value), then typed and written back.
fn canonical(yaml: &str) -> String {
    let value: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
    let typed: FuseParams = serde_json::from_value(value).unwrap();
    serde_json::to_string(&serde_json::to_value(&typed).unwrap()).unwrap()
}

/// The common tail of every canonical form below: the defaults of `cooccurrence` and `weighted`.
const WEIGHTED: &str = r#""weighted":{"batch_size":128,"epochs":50,"lr":0.05,"weight_decay":0.0}"#;
const COOC: &str = r#""cooccurrence":{"gram":"full","sigma":1.0,"width":1024}"#;

#[test]
fn canonical_params_of_the_pipelines_fuse_stages_are_unchanged() {
    // Written down from the fuse of commit b8df0ec (its own `Layers`, before core's took over).
    let cases = [
        (
            "{sources: [{layers: all}], method: mean}",
            r#""method":"mean","normalize":"none","seed":null,"sources":[{"columns":[],"layers":"all"}],"standardize":false"#,
        ),
        (
            "{sources: [{layers: [5, 9, 14, 18]}], method: cooccurrence, normalize: l2}",
            r#""method":"cooccurrence","normalize":"l2","seed":null,"sources":[{"columns":[],"layers":[5,9,14,18]}],"standardize":false"#,
        ),
        (
            "{sources: [{layers: [-5, -4, -3, -2, -1]}, {layers: [-1]}], method: cooccurrence}",
            r#""method":"cooccurrence","normalize":"none","seed":null,"sources":[{"columns":[],"layers":[-5,-4,-3,-2,-1]},{"columns":[],"layers":[-1]}],"standardize":false"#,
        ),
        (
            "{sources: [{layers: all, columns: [pooler]}, {columns: [final_norm]}], method: concat}",
            r#""method":"concat","normalize":"none","seed":null,"sources":[{"columns":["pooler"],"layers":"all"},{"columns":["final_norm"],"layers":null}],"standardize":false"#,
        ),
    ];
    for (yaml, middle) in cases {
        assert_eq!(
            canonical(yaml),
            format!("{{{COOC},{middle},{WEIGHTED}}}"),
            "{yaml}"
        );
    }
}
