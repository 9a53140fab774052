//! Running a stage in a test: its environment, an upstream artifact made of tables, and one run
//! into a fresh folder. Every stage crate's tests set up their runs through these, so that a
//! change to the stage contract is made in one place.

use std::path::{Path, PathBuf};

use llmembed_core::{
    Context, EmbeddingTable, Env, Input, Precision, Predictions, Stage, Summary, TextTable,
    write_embedding_table, write_predictions, write_text_table,
};

use crate::{data_dir, models_dir};

/// The environment of a test run: the test data folder, the test models folder, the pipeline
/// folder `.`, no progress bars.
pub fn stage_env(seed: u64) -> Env {
    Env {
        data_dir: data_dir(),
        models_dir: models_dir(),
        pipeline_dir: PathBuf::from("."),
        seed,
        quiet: true,
    }
}

/// An upstream artifact `stage_id` in `dir` (created if needed) holding each table as
/// `<split>.parquet` (f32 vectors).
pub fn embedding_input(dir: &Path, stage_id: &str, splits: &[(&str, &EmbeddingTable)]) -> Input {
    split_input(dir, stage_id, splits, |path, table| {
        write_embedding_table(path, table, Precision::F32)
    })
}

/// `input` with per-fold training vectors added to its artifact, as a stage that fits on labels
/// writes them (`llmembed_core::folds`): fold `f`'s are `folds[f]`, made for the folds `meta`
/// names.
pub fn with_fold_vectors(
    input: &Input,
    folds: &[EmbeddingTable],
    meta: &llmembed_core::folds::FoldVectors,
) -> Input {
    use llmembed_core::folds::{FOLD_VECTORS_FILE, fold_vectors_file};
    let mut files = input.files.clone();
    for (f, table) in folds.iter().enumerate() {
        let name = fold_vectors_file(f);
        write_embedding_table(&input.dir.join(&name), table, Precision::F32).unwrap();
        files.push(name);
    }
    meta.save(&input.dir).unwrap();
    files.push(FOLD_VECTORS_FILE.into());
    files.sort();
    Input {
        files,
        ..input.clone()
    }
}

/// An upstream artifact `stage_id` in `dir` (created if needed) holding each text table as
/// `<split>.parquet`.
pub fn text_input(dir: &Path, stage_id: &str, splits: &[(&str, &TextTable)]) -> Input {
    split_input(dir, stage_id, splits, write_text_table)
}

/// Writes each table with `write` as `<split>.parquet` in `dir`; the artifact as an [`Input`].
fn split_input<T>(
    dir: &Path,
    stage_id: &str,
    splits: &[(&str, &T)],
    write: impl Fn(&Path, &T) -> llmembed_core::Result<()>,
) -> Input {
    std::fs::create_dir_all(dir).unwrap();
    let mut files = Vec::new();
    for (split, table) in splits {
        let name = format!("{split}.parquet");
        write(&dir.join(&name), table).unwrap();
        files.push(name);
    }
    files.sort();
    Input {
        stage_id: stage_id.into(),
        dir: dir.to_path_buf(),
        files,
    }
}

/// An upstream artifact `stage_id` in `dir` (created if needed) holding `predictions.parquet`.
pub fn predictions_input(dir: &Path, stage_id: &str, predictions: &Predictions) -> Input {
    std::fs::create_dir_all(dir).unwrap();
    write_predictions(&dir.join("predictions.parquet"), predictions).unwrap();
    Input {
        stage_id: stage_id.into(),
        dir: dir.to_path_buf(),
        files: vec!["predictions.parquet".into()],
    }
}

/// The seed stage `S` is given with these params in a pipeline of `pipeline_seed`, as the runner
/// gives it ([`llmembed_core::stage_seed`]: the stage's own `seed` param where it has one), for
/// tests that build a [`Context`] themselves.
pub fn seed_for<S: Stage>(params: &S::Params, pipeline_seed: u64) -> u64 {
    let params = serde_json::to_value(params).expect("params serialize");
    llmembed_core::stage_seed(&params, pipeline_seed)
}

/// Runs stage `S` once with `seed` as the pipeline's (the stage's too, unless its params name
/// their own, as in a pipeline), writing into `out` with its resumable state in `store` (both
/// created if needed).
pub fn run_stage_at<S: Stage>(
    params: &S::Params,
    inputs: &[Input],
    seed: u64,
    out: &Path,
    store: &Path,
) -> llmembed_core::Result<Summary> {
    std::fs::create_dir_all(out).unwrap();
    std::fs::create_dir_all(store).unwrap();
    let env = stage_env(seed);
    let ctx = Context {
        env: &env,
        out_dir: out.to_path_buf(),
        store_dir: store.to_path_buf(),
        seed: seed_for::<S>(params, seed),
        store_ready: None,
    };
    S::run(params, inputs, &ctx)
}

/// Runs stage `S` once into a fresh temporary folder; returns the folder and the summary.
pub fn run_stage<S: Stage>(
    params: &S::Params,
    inputs: &[Input],
    seed: u64,
) -> llmembed_core::Result<(tempfile::TempDir, Summary)> {
    let out = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let summary = run_stage_at::<S>(params, inputs, seed, out.path(), store.path())?;
    Ok((out, summary))
}

/// Every file of an output folder, by name, sorted.
pub fn folder_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            assert!(e.file_type().unwrap().is_file(), "{:?}", e.path());
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Two runs of one stage wrote the same set of files, `expected` among them, byte for byte
/// (the runner keys downstream stages by these bytes).
pub fn assert_same_output_bytes(a: &Path, b: &Path, expected: &[&str]) {
    let (fa, fb) = (folder_files(a), folder_files(b));
    let names = |f: &[(String, Vec<u8>)]| f.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&fa), names(&fb));
    for want in expected {
        assert!(
            names(&fa).iter().any(|n| n == want),
            "no {want} in {:?}",
            names(&fa)
        );
    }
    for ((name, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(x == y, "{name} differs between two runs with the same seed");
    }
}
