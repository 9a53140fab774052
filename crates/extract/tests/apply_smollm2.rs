//! The extract stage applied to new texts (`Extract::applier`), on real SmolLM2-135M and real
//! AG News rows: texts the store holds and texts it lacks get, bit for bit, the vectors `run`
//! writes; the texts apply embeds join the store, and a later `run` reuses them.

mod common;
mod decoder_common;

use std::path::{Path, PathBuf};

use common::*;
use llmembed_core::{
    ApplyEnv, EmbeddingTable, Input, Precision, Rows, Stage, TextTable, UNLABELLED,
    read_embedding_table,
};
use llmembed_extract::{Extract, ExtractParams, Layers, LocalSpec, ModelParam, ModelSpec};

fn smollm2() -> Option<PathBuf> {
    decoder_common::locate(&decoder_common::SMOLLM2)
}

fn params(gguf: &Path, precision: Precision) -> ExtractParams {
    let mut p = ExtractParams::new(ModelParam::Spec(ModelSpec::Local(LocalSpec {
        path: gguf.to_path_buf(),
    })));
    p.layers = Layers::List(vec![0, 15, 30]);
    p.final_norm = true;
    p.max_tokens = 64;
    p.batch_tokens = 256;
    p.shard_rows = 4;
    p.precision = precision;
    p
}

/// `texts` as `predict` gives them: fresh ids, no labels, no class names.
fn new_texts(texts: &[String]) -> TextTable {
    TextTable::new(
        (0..texts.len()).map(|i| format!("new-{i}")).collect(),
        texts.to_vec(),
        vec![UNLABELLED; texts.len()],
        vec![],
    )
}

fn artifact(dir: &Path) -> Input {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    Input {
        stage_id: "emb".into(),
        dir: dir.to_path_buf(),
        files,
    }
}

fn embedding(rows: Rows) -> EmbeddingTable {
    match rows {
        Rows::Embedding(t) => t,
        other => panic!("expected embeddings, got {}", other.kind()),
    }
}

/// Every value of every column, as bits.
fn bits(t: &EmbeddingTable) -> Vec<(String, Vec<u32>)> {
    t.columns
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                c.values.iter().map(|v| v.to_bits()).collect(),
            )
        })
        .collect()
}

fn shard_files(store: &Path) -> usize {
    walk(store)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .count()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn applied_to_texts_in_and_out_of_the_store_it_gives_the_vectors_run_writes() {
    let (Some(gguf), Some(data)) = (smollm2(), data_dir()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let train = ag_news(&data, "train", 6);
    let test = ag_news(&data, "test", 7);
    let input = write_input(&root.join("in"), &[("train", &train), ("test", &test)]);
    for precision in [Precision::F32, Precision::F16] {
        let store = root.join(format!("store-{precision:?}"));
        let p = params(&gguf, precision);
        let out = root.join(format!("out-{precision:?}"));
        run_stage(&p, &input, &out, &store, root).unwrap();
        let apply_env = ApplyEnv {
            env: env(root),
            store_dir: store.clone(),
        };
        let apply = Extract::applier(&p, &artifact(&out), &apply_env)
            .unwrap()
            .unwrap();

        // The test split's texts, all in the store: the artifact's rows exactly.
        let shards_before = shard_files(&store);
        let got = embedding(apply.apply(&[Rows::Text(new_texts(&test.texts))]).unwrap());
        let want = read_embedding_table(&out.join("test.parquet"), None).unwrap();
        assert_eq!(
            got.ids,
            (0..7).map(|i| format!("new-{i}")).collect::<Vec<_>>()
        );
        assert_eq!(got.labels, [UNLABELLED; 7]);
        assert_eq!(got.column_names(), want.column_names());
        assert!(
            bits(&got) == bits(&want),
            "{precision:?}: stored texts differ"
        );
        assert_eq!(shard_files(&store), shards_before, "nothing new to store");

        // Texts the store lacks, in another order and with a repeat: a fresh run's rows.
        let unseen = ag_news(&data, "test", 12);
        let mut texts: Vec<String> = unseen.texts[7..].iter().rev().cloned().collect();
        texts.push(unseen.texts[8].clone());
        texts.push(test.texts[0].clone());
        let got = embedding(apply.apply(&[Rows::Text(new_texts(&texts))]).unwrap());
        assert!(
            shard_files(&store) > shards_before,
            "new texts join the store"
        );
        let fresh_in = TextTable::new(
            (0..texts.len()).map(|i| format!("new-{i}")).collect(),
            texts.clone(),
            vec![0; texts.len()],
            test.label_names.clone(),
        );
        let fresh_input = write_input(
            &root.join(format!("fresh-in-{precision:?}")),
            &[("x", &fresh_in)],
        );
        let fresh_out = root.join(format!("fresh-{precision:?}"));
        let fresh_store = root.join(format!("fresh-store-{precision:?}"));
        run_stage(&p, &fresh_input, &fresh_out, &fresh_store, root).unwrap();
        let want = read_embedding_table(&fresh_out.join("x.parquet"), None).unwrap();
        assert!(
            bits(&got) == bits(&want),
            "{precision:?}: new texts differ from a fresh run"
        );

        // A run over those texts with the shared store reuses what apply stored, and writes
        // the same bytes as the fresh run.
        let reuse_out = root.join(format!("reuse-{precision:?}"));
        let summary = run_stage(&p, &fresh_input, &reuse_out, &store, root).unwrap();
        assert!(
            summary.notes.contains(&"reused 6 of 6 texts".to_string()),
            "{:?}",
            summary.notes
        );
        assert_eq!(
            std::fs::read(reuse_out.join("x.parquet")).unwrap(),
            std::fs::read(fresh_out.join("x.parquet")).unwrap()
        );
    }
}

#[test]
fn the_applier_refuses_an_artifact_of_other_params_and_rows_that_are_not_texts() {
    let (Some(gguf), Some(data)) = (smollm2(), data_dir()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let train = ag_news(&data, "train", 2);
    let input = write_input(&root.join("in"), &[("train", &train)]);
    let p = params(&gguf, Precision::F32);
    let out = root.join("out");
    run_stage(&p, &input, &out, &root.join("store"), root).unwrap();
    let apply_env = ApplyEnv {
        env: env(root),
        store_dir: root.join("store"),
    };
    let mut other = p.clone();
    other.layers = Layers::List(vec![0, 30]);
    let err = Extract::applier(&other, &artifact(&out), &apply_env)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("train.parquet has columns [(\"layer_0\", 576), (\"layer_15\", 576)"),
        "{err}"
    );

    let apply = Extract::applier(&p, &artifact(&out), &apply_env)
        .unwrap()
        .unwrap();
    let emb = embedding(apply.apply(&[Rows::Text(new_texts(&train.texts))]).unwrap());
    let err = apply
        .apply(&[Rows::Embedding(emb)])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("expected one table of texts, got [embedding]"),
        "{err}"
    );
}
