//! `predict` end to end through the `xtask` binary: a small real pipeline (AG News, SmolLM2
//! features, TF-IDF, logistic regressions, an MLP, a hard-voting ensemble, a stack of two
//! cross-validated regressions) is run, then its test texts, written as a CSV without labels,
//! are classified again by each classifier: the same class for every row as the pipeline's own
//! `predictions.parquet`, probabilities within 1e-6.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

const MAX_TEXT_BYTES: usize = 5000;

fn pipeline(models: &Path) -> String {
    llmembed_testkit::pipeline_header("predicted", 11, Some(models))
        + &llmembed_testkit::ag_news_stage(8, 5)
        + &llmembed_testkit::smollm2_stage("[4, 8]", 64)
        + "  - id: fused\n    kind: fuse\n    inputs: [llm]\n    params:\n      sources: [{layers: all}]\n      method: mean\n  \
           - id: lr\n    kind: logreg\n    inputs: [fused]\n  \
           - id: mlp\n    kind: mlp\n    inputs: [fused]\n    params:\n      epochs: 3\n  \
           - id: tfidf\n    kind: tfidf\n    inputs: [data]\n    params:\n      min_df: 1\n  \
           - id: tfidf_lr\n    kind: logreg\n    inputs: [tfidf]\n  \
           - id: vote\n    kind: ensemble\n    inputs: [lr, mlp, tfidf_lr]\n    params:\n      method: hard\n  \
           - id: lr_cv\n    kind: logreg\n    inputs: [fused]\n    params:\n      select: {c: [0.01, 1.0], folds: 4}\n  \
           - id: tfidf_cv\n    kind: logreg\n    inputs: [tfidf]\n    params:\n      select: {c: [1.0, 10.0], folds: 4}\n  \
           - id: stack\n    kind: ensemble\n    inputs: [lr_cv, tfidf_cv]\n    params:\n      method: stack\n      c: [0.1, 1.0]\n  \
           - id: report\n    kind: evaluate\n    inputs: [lr, vote, stack]\n"
}

/// The artifact folder of `stage`, as `show --json` prints it.
fn artifact_dir(fx: &Fixture, file: &Path, stage: &str) -> PathBuf {
    let out = fx
        .xtask()
        .args(["show", "--json"])
        .arg(file)
        .arg(stage)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    PathBuf::from(shown["stages"][0]["dir"].as_str().expect("cached"))
}

fn csv_field(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// One output row of `predict` (JSON Lines).
struct Row {
    label: Option<String>,
    probs: Vec<Option<f64>>,
    error: Option<String>,
}

fn read_rows(jsonl: &str, classes: &[String]) -> HashMap<String, Row> {
    jsonl
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let row = Row {
                label: v["label"].as_str().map(str::to_string),
                probs: classes.iter().map(|c| v[c.as_str()].as_f64()).collect(),
                error: v["error"].as_str().map(str::to_string),
            };
            (v["id"].as_str().unwrap().to_string(), row)
        })
        .collect()
}

/// Every id of `expected` got the same class, with probabilities within 1e-6.
fn assert_same(stage: &str, rows: &HashMap<String, Row>, expected: &llmembed_core::Predictions) {
    for (i, id) in expected.ids.iter().enumerate() {
        let row = rows
            .get(id)
            .unwrap_or_else(|| panic!("{stage}: no row {id}"));
        assert_eq!(row.error, None, "{stage}: {id}");
        let want = &expected.label_names[expected.preds[i] as usize];
        assert_eq!(row.label.as_ref(), Some(want), "{stage}: {id}");
        for (c, p) in expected.row_probs(i).iter().enumerate() {
            let got = row.probs[c].unwrap_or_else(|| panic!("{stage}: {id} has no probability"));
            assert!(
                (got - f64::from(*p)).abs() <= 1e-6,
                "{stage}: {id} class {c}: {got} vs {p}"
            );
        }
    }
}

#[test]
fn predict_gives_each_classifier_its_own_test_predictions() {
    let Some(models) = needs("smollm2-135m", models_dir_with("smollm2-135m")) else {
        return;
    };
    if needs("AG News", ag_news()).is_none() {
        return;
    }
    let fx = Fixture::new();
    let file = fx.write_pipeline("p.yaml", &pipeline(&models));
    let ran = fx.xtask().arg("run").arg(&file).output().unwrap();
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let before = fx.artifacts();

    // The test split's texts, without labels, and two rows that cannot be classified.
    let test =
        llmembed_core::read_text_table(&artifact_dir(&fx, &file, "data").join("test.parquet"))
            .unwrap();
    let mut csv = String::from("id,text\n");
    for (id, text) in test.ids.iter().zip(&test.texts) {
        assert!(text.len() <= MAX_TEXT_BYTES);
        csv.push_str(&format!("{},{}\n", csv_field(id), csv_field(text)));
    }
    csv.push_str(&format!(
        "blank,\"   \"\nlong,{}\n",
        "x".repeat(MAX_TEXT_BYTES + 1)
    ));
    let input = fx.dir.path().join("new.csv");
    fs::write(&input, csv).unwrap();

    for stage in ["lr", "mlp", "tfidf_lr", "vote", "stack"] {
        let expected = llmembed_core::read_predictions(
            &artifact_dir(&fx, &file, stage).join("predictions.parquet"),
        )
        .unwrap();
        let out = fx.dir.path().join(format!("{stage}.jsonl"));
        let run = fx
            .xtask()
            .args([
                "predict",
                "--stage",
                stage,
                "--max-text-bytes",
                &MAX_TEXT_BYTES.to_string(),
            ])
            .arg(&file)
            .arg("--input")
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{stage}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let rows = read_rows(&fs::read_to_string(&out).unwrap(), &expected.label_names);
        assert_eq!(rows.len(), test.len() + 2);
        assert_same(stage, &rows, &expected);
        assert_eq!(rows["blank"].error.as_deref(), Some("empty text"));
        assert!(
            rows["long"]
                .error
                .as_deref()
                .unwrap()
                .contains("over the limit")
        );
        assert_eq!(rows["long"].label, None);
    }

    // CSV out: the same labels (read back through the reader of new texts, the label column
    // taken as the text).
    let out = fx.dir.path().join("lr.csv");
    let run = fx
        .xtask()
        .args([
            "predict",
            "--stage",
            "lr",
            "--max-text-bytes",
            &MAX_TEXT_BYTES.to_string(),
        ])
        .arg(&file)
        .arg("--input")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let back = llmembed_ingest::read_new_texts(&out, "label", Some("id")).unwrap();
    let jsonl = fs::read_to_string(fx.dir.path().join("lr.jsonl")).unwrap();
    let classes: Vec<String> = test.label_names.clone();
    let rows = read_rows(&jsonl, &classes);
    for (id, label) in back.ids.iter().zip(&back.texts) {
        assert_eq!(rows[id].label.clone().unwrap_or_default(), *label, "{id}");
    }

    // Standard input and output, JSON Lines.
    let mut child = fx
        .xtask()
        .args(["predict", "--stage", "lr", "--input", "-", "--out", "-"])
        .arg(&file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: String = test
        .ids
        .iter()
        .zip(&test.texts)
        .map(|(id, t)| serde_json::json!({"id": id, "text": t}).to_string() + "\n")
        .collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let piped = read_rows(&String::from_utf8(out.stdout).unwrap(), &classes);
    let expected = llmembed_core::read_predictions(
        &artifact_dir(&fx, &file, "lr").join("predictions.parquet"),
    )
    .unwrap();
    assert_same("lr (stdin)", &piped, &expected);

    assert_eq!(fx.artifacts(), before, "predict wrote no artifact");
}

fn xtask_fails(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn predict_never_trains_and_names_what_to_run() {
    let Some((fx, file)) = small_fixture() else {
        return;
    };
    let input = fx.dir.path().join("new.csv");
    fs::write(&input, "text\nStocks rally as oil falls\n").unwrap();
    let out = fx.dir.path().join("out.csv");
    let predict = |stage: &str| {
        let mut c = fx.xtask();
        c.args(["predict", "--stage", stage])
            .arg(&file)
            .arg("--input")
            .arg(&input)
            .arg("--out")
            .arg(&out);
        c
    };
    let err = xtask_fails(&mut predict("lr"));
    for part in [
        "`data` (ingest): never run",
        "`features` (tfidf)",
        "`lr` (logreg)",
        "--until lr",
        "never train",
    ] {
        assert!(err.contains(part), "missing `{part}` in: {err}");
    }
    assert!(!fx.cache_dir().join("artifacts").exists() || fx.artifacts().is_empty());
    assert!(!out.exists());

    let err = xtask_fails(&mut predict("report"));
    assert!(
        err.contains("`report` (evaluate) does not classify texts") && err.contains("lr"),
        "{err}"
    );
    let err = xtask_fails(&mut predict("nope"));
    assert!(err.contains("no stage `nope`"), "{err}");
    let mut bad_out = fx.xtask();
    bad_out
        .args(["predict", "--stage", "lr"])
        .arg(&file)
        .arg("--input")
        .arg(&input);
    let err = xtask_fails(bad_out.arg("--out").arg(fx.dir.path().join("out.txt")));
    assert!(err.contains("unknown file type"), "{err}");
}
