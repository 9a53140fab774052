//! What every test suite of the workspace shares about its inputs (datasets, WordNet, models,
//! tools): where they are, and what a test does when one is missing.
//!
//! A test asks for an input with [`needs`]. When the input is missing the test skips: it prints
//! `SKIP: ...` with the reason and returns, and the line is also appended to the file named by
//! `LLMEMBED_SKIP_LOG` (so that a CI run can count the skips). Under
//! `LLMEMBED_REQUIRE_TEST_INPUTS=1` (CI sets it) a missing input fails the test instead, naming
//! what is missing and where it was looked for: a green run then means every test really ran.
//!
//! A path given explicitly through an environment variable ([`env_path`]) that does not hold the
//! input is always an error: the caller asked for that path.

mod pipeline;
mod stage;
pub use pipeline::{ag_news_stage, pipeline_header, smollm2_stage};
pub use stage::{
    assert_same_output_bytes, embedding_input, folder_files, predictions_input, run_stage,
    run_stage_at, seed_for, stage_env, text_input, with_fold_vectors,
};

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::array::{Array, Int64Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Set to `1`, a missing test input fails the test instead of skipping it.
pub const REQUIRE_ENV: &str = "LLMEMBED_REQUIRE_TEST_INPUTS";
/// A file each skip appends one line to (`SKIP: <test>: missing test input ...`).
pub const SKIP_LOG_ENV: &str = "LLMEMBED_SKIP_LOG";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// `$LLMEMBED_DATA_DIR`, else the shared data folder next to the repository
/// (`<repo>/../shared/data`).
pub fn data_dir() -> PathBuf {
    std::env::var_os("LLMEMBED_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("..").join("shared").join("data"))
}

/// Where the models are fetched for the tests (`cargo xtask fetch ...` in CI): `<repo>/cache/models`.
pub fn models_dir() -> PathBuf {
    repo_root().join("cache").join("models")
}

/// Whether a missing test input (data, model, tool) fails the test instead of skipping it: CI
/// sets `LLMEMBED_REQUIRE_TEST_INPUTS=1`, so that a green run means every test really ran.
pub fn require_inputs() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// Returns `Some(value)`, or, when the input is missing, skips (prints why, returns `None`)
/// or, under `LLMEMBED_REQUIRE_TEST_INPUTS=1`, fails naming what is missing.
pub fn needs<T>(what: &str, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(why) if require_inputs() => {
            panic!("missing test input {what}: {why} ({REQUIRE_ENV}=1)")
        }
        Err(why) => {
            skip(&format!("missing test input {what}: {why}"));
            None
        }
    }
}

/// Prints `SKIP: <reason>` and appends `SKIP: <test>: <reason>` to `$LLMEMBED_SKIP_LOG` if set.
fn skip(reason: &str) {
    eprintln!("SKIP: {reason}");
    if let Some(log) = std::env::var_os(SKIP_LOG_ENV) {
        let test = std::thread::current()
            .name()
            .unwrap_or("<unnamed>")
            .to_string();
        let line = format!("SKIP: {test}: {reason}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!(
                "cannot append to {SKIP_LOG_ENV}={}: {e}",
                Path::new(&log).display()
            );
        }
    }
}

/// The path in environment variable `var`, if set. A set path where `holds` is false is an
/// error whatever `LLMEMBED_REQUIRE_TEST_INPUTS` says: the caller asked for that path.
/// `expected` says what it should hold (for the message).
pub fn env_path(var: &str, expected: &str, holds: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os(var)?);
    assert!(
        holds(&path),
        "{var} is set to {}, which is not {expected}",
        path.display()
    );
    Some(path)
}

/// The data folder when it holds `<dataset>/<split>.parquet`, or why not.
pub fn dataset_dir(dataset: &str, split: &str) -> Result<PathBuf, String> {
    let dir = data_dir();
    let file = dir.join(dataset).join(format!("{split}.parquet"));
    if file.is_file() {
        Ok(dir)
    } else {
        Err(format!("no {} (set LLMEMBED_DATA_DIR)", file.display()))
    }
}

/// The data folder when it holds AG News (`ag_news/train.parquet`), or why not.
pub fn ag_news_dir() -> Result<PathBuf, String> {
    dataset_dir("ag_news", "train")
}

/// The WordNet 3.0 database folder (`$LLMEMBED_WORDNET_DIR`, default /usr/share/wordnet), or why
/// it is missing.
pub fn wordnet_dir() -> Result<PathBuf, String> {
    let dir = std::env::var_os("LLMEMBED_WORDNET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/wordnet"));
    if dir.join("index.noun").is_file() {
        Ok(dir)
    } else {
        Err(format!(
            "no {} (apt-get install -y wordnet-base, or set LLMEMBED_WORDNET_DIR)",
            dir.join("index.noun").display()
        ))
    }
}

/// `python3 -m pip` runs (the python the model fetcher uses: `$LLMEMBED_PYTHON`, default
/// `python3`), or why not.
pub fn pip() -> Result<(), String> {
    let python = std::env::var("LLMEMBED_PYTHON").unwrap_or_else(|_| "python3".to_string());
    match std::process::Command::new(&python)
        .args(["-m", "pip", "--version"])
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`{python} -m pip --version` failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run {python} (set LLMEMBED_PYTHON): {e}")),
    }
}

/// A Python virtual environment with `moto[server]` (an S3-compatible server, for the remote
/// cache tests): `$LLMEMBED_MOTO_VENV`, else `<repo>/target/moto-venv` (which `.ci/run` makes),
/// or why it is missing.
pub fn moto_venv() -> Result<PathBuf, String> {
    let dir = std::env::var_os("LLMEMBED_MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target").join("moto-venv"));
    let server = dir.join("bin").join("moto_server");
    if server.is_file() {
        Ok(dir)
    } else {
        Err(format!(
            "{} not found (python3 -m venv {} && {}/bin/pip install 'moto[server]')",
            server.display(),
            dir.display(),
            dir.display()
        ))
    }
}

/// The first `max_rows` rows (`usize::MAX`: all) of an AG News split as texts and labels, read
/// from the raw Parquet file in the data folder, or why the file is missing.
pub fn read_ag_news(split: &str, max_rows: usize) -> Result<(Vec<String>, Vec<i64>), String> {
    let dir = dataset_dir("ag_news", split)?;
    Ok(read_texts_labels(
        &dir.join("ag_news").join(format!("{split}.parquet")),
        max_rows,
    ))
}

/// The `text` and `label` columns of the first `max_rows` rows (`usize::MAX`: all) of a raw
/// Parquet dataset file (text cast to UTF-8, label to i64). Panics naming the file if it cannot
/// be read.
pub fn read_texts_labels(path: &Path, max_rows: usize) -> (Vec<String>, Vec<i64>) {
    let fail = |e: &dyn std::fmt::Display| -> ! { panic!("{}: {e}", path.display()) };
    let file = File::open(path).unwrap_or_else(|e| fail(&e));
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .unwrap_or_else(|e| fail(&e));
    let (mut texts, mut labels) = (Vec::new(), Vec::new());
    for batch in reader {
        let batch = batch.unwrap_or_else(|e| fail(&e));
        let column = |name: &str, to: &DataType| {
            let c = batch
                .column_by_name(name)
                .unwrap_or_else(|| fail(&format!("no `{name}` column")));
            cast(c, to).unwrap_or_else(|e| fail(&e))
        };
        let t = column("text", &DataType::Utf8);
        let t = t.as_any().downcast_ref::<StringArray>().unwrap();
        let l = column("label", &DataType::Int64);
        let l = l.as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..batch.num_rows() {
            if texts.len() == max_rows {
                return (texts, labels);
            }
            texts.push(t.value(i).to_string());
            labels.push(l.value(i));
        }
    }
    (texts, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_passes_a_found_input_through() {
        assert_eq!(needs("x", Ok::<_, String>(3)), Some(3));
    }

    /// The variable is set in a child process (this test binary, running only this test), so
    /// that no test of this process sees it and no `unsafe` `set_var` is needed.
    #[test]
    fn a_wrong_explicit_path_is_an_error() {
        const VAR: &str = "LLMEMBED_TESTKIT_SELFTEST";
        if std::env::var_os(VAR).is_some() {
            // The child: this must panic with the message the parent looks for.
            env_path(VAR, "a folder", |p| p.is_dir());
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::a_wrong_explicit_path_is_an_error",
                "--nocapture",
            ])
            .env(VAR, "/nonexistent/llmembed")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the child passed: {stderr}");
        assert!(
            stderr.contains(
                "LLMEMBED_TESTKIT_SELFTEST is set to /nonexistent/llmembed, which is not a folder"
            ),
            "{stderr}"
        );
        assert_eq!(env_path("LLMEMBED_TESTKIT_UNSET_VAR", "x", |_| true), None);
    }
}
