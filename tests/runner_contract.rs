//! The runner's contract, each item in its own process where a process is what is at stake: why
//! a stage is stale (every kind of reason `status` gives), the same bytes and keys from two fresh
//! caches, the lock's waiting path and its release when the holder dies, `gc`'s default scope,
//! `check` on the repository's pipelines, the warning when two files share a results folder.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use xtask::cache::{Preimage, RunRecord};
use xtask::pipeline;
use xtask::runner::RunOptions;
use xtask::status::{self, StageStatus};

/// Eight real-looking headlines of two classes, as a user's own CSV files.
fn write_csv_dataset(fx: &Fixture) {
    fs::write(
        fx.dir.path().join("train.csv"),
        "text,label\n\
         \"Stocks rally as tech earnings beat forecasts\",business\n\
         \"Central bank holds rates steady, signals caution\",business\n\
         \"Oil prices slide on weaker demand outlook\",business\n\
         \"Striker scores twice as United win derby\",sports\n\
         \"Champions edge rivals in five-set thriller\",sports\n\
         \"Rookie pitcher throws no-hitter in debut\",sports\n",
    )
    .unwrap();
    fs::write(
        fx.dir.path().join("test.csv"),
        "text,label\n\
         \"Retail sales climb for third straight month\",business\n\
         \"Goalkeeper saves penalty to seal cup final\",sports\n",
    )
    .unwrap();
}

fn csv_pipeline(seed: u64, min_df: u32, classifier: &str) -> String {
    format!(
        r#"name: csv
settings:
  seed: {seed}
stages:
  - id: data
    kind: ingest
    params:
      files: {{train: train.csv, test: test.csv}}
      label_names: [business, sports]
  - id: features
    kind: tfidf
    inputs: [data]
    params:
      min_df: {min_df}
  - id: lr
    kind: {classifier}
    inputs: [features]
  - id: report
    kind: evaluate
    inputs: [lr]
"#
    )
}

fn reasons(file: &std::path::Path, fx: &Fixture, stage: usize) -> Vec<String> {
    let plan = pipeline::load(file).unwrap();
    match status::status(&plan, &fx.workspace())
        .unwrap()
        .remove(stage)
        .1
    {
        StageStatus::Stale(r) => r,
        StageStatus::Cached => vec!["cached".into()],
        StageStatus::Waiting(w) => vec![format!("waiting: {w}")],
    }
}

#[test]
fn status_names_every_kind_of_change() {
    let fx = Fixture::new();
    write_csv_dataset(&fx);
    let file = fx.write_pipeline("csv.yaml", &csv_pipeline(7, 1, "logreg"));
    fx.run(&file, opts());
    assert_eq!(reasons(&file, &fx, 0), ["cached"]);

    // An external file: the dataset changed on disk.
    let train = fx.dir.path().join("train.csv");
    let mut text = fs::read_to_string(&train).unwrap();
    text.push_str("\"Markets close higher on upbeat jobs data\",business\n");
    fs::write(&train, text).unwrap();
    let r = reasons(&file, &fx, 0);
    assert!(
        r.len() == 1 && r[0].starts_with("external `") && r[0].contains("` changed: blake3:"),
        "{r:?}"
    );
    assert_eq!(
        reasons(&file, &fx, 1),
        ["waiting: stale because input `data` is stale"]
    );
    fx.run(&file, opts());

    // The seed, for a stage whose output depends on it.
    fs::write(&file, csv_pipeline(8, 1, "logreg")).unwrap();
    let plan = pipeline::load(&file).unwrap();
    let seeded: Vec<bool> = plan.stages.iter().map(|s| s.kind.seeded()).collect();
    let first_seeded = seeded.iter().position(|&s| s).expect("a seeded stage");
    assert_eq!(first_seeded, 0, "ingest samples with the seed");
    let r = reasons(&file, &fx, 0);
    assert_eq!(r, ["seed changed: Some(7) -> Some(8)"]);
    // Ingest takes no sample here, so its bytes are the same: TF-IDF (not seeded) stays cached,
    // the classifier (seeded: its folds) and the report (seeded: its bootstrap intervals) run
    // again.
    assert_eq!(
        kinds(&fx.run(&file, opts())),
        ["ran", "cached", "ran", "ran"]
    );

    // An input's content: the features made again with other params, the classifier not yet.
    fs::write(&file, csv_pipeline(8, 2, "logreg")).unwrap();
    fx.run(
        &file,
        RunOptions {
            only: Some("features".into()),
            ..opts()
        },
    );
    assert_eq!(
        reasons(&file, &fx, 2),
        [
            "input `features` content changed (idf.safetensors, test.parquet, train.parquet, vocabulary.json)"
        ]
    );
    fx.run(&file, opts());

    // The implementation version: the last run was made by an older build (its record says
    // version 0) and its artifact is gone.
    let record_path = fx.cache_dir().join("runs/csv/lr.json");
    let mut record: RunRecord = serde_json::from_slice(&fs::read(&record_path).unwrap()).unwrap();
    fs::remove_dir_all(fx.cache_dir().join("artifacts").join(&record.key)).unwrap();
    let current = record.preimage.version;
    record.preimage = Preimage {
        version: 0,
        ..record.preimage
    };
    record.key = record.preimage.key();
    fs::write(&record_path, serde_json::to_vec(&record).unwrap()).unwrap();
    assert_eq!(
        reasons(&file, &fx, 2),
        [format!("implementation version changed: 0 -> {current}")]
    );
    fx.run(&file, opts());

    // The kind of a stage.
    fs::write(&file, csv_pipeline(8, 2, "mlp")).unwrap();
    let r = reasons(&file, &fx, 2);
    assert_eq!(r[0], "kind changed: logreg -> mlp", "{r:?}");
}

/// Two fresh caches, the same pipeline, one run in this process and one by the `xtask` binary:
/// the same keys and the same bytes (nothing depends on the process, its hash seeds or its
/// threads).
#[test]
fn two_fresh_caches_give_the_same_keys_and_bytes() {
    let Some(_) = needs("AG News", ag_news()) else {
        return;
    };
    let a = Fixture::new();
    let b = Fixture::new();
    let text = small_pipeline(1.0, 10);
    let (fa, fb) = (
        a.write_pipeline("p.yaml", &text),
        b.write_pipeline("p.yaml", &text),
    );
    a.run(&fa, opts());
    let out = b.xtask().arg("run").arg(&fb).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(a.artifacts().len(), 4);
    assert_eq!(a.artifact_bytes(), b.artifact_bytes());
}

/// Runners share the cache: a second run of the same pipeline starts at once (it does not wait
/// for the first), and when the first is killed the second finishes alone, with every artifact
/// intact (publication is atomic and one at a time; a key published by the other is kept).
#[test]
fn a_second_runner_works_beside_the_first_and_finishes_when_it_is_killed() {
    let Some(_) = needs("AG News", ag_news()) else {
        return;
    };
    let fx = Fixture::new();
    let text = small_pipeline(1.0, 10)
        .replace(
            "      c: 1\n",
            "      select: {c: [0.01, 0.1, 1.0, 10.0], folds: 5}\n",
        )
        .replace("per_class: 20", "per_class: 150");
    let file = fx.write_pipeline("p.yaml", &text);
    let mut first = fx.xtask().arg("run").arg(&file).spawn().unwrap();
    let published = fx.cache_dir().join("artifacts");
    let deadline = Instant::now() + Duration::from_secs(120);
    while fs::read_dir(&published).map_or(true, |mut d| d.next().is_none()) {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended early"
        );
        assert!(Instant::now() < deadline, "the first run never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let log = fx.dir.path().join("second.err");
    let second = fx
        .xtask()
        .arg("run")
        .arg(&file)
        .arg("--no-wait")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    first.kill().unwrap();
    first.wait().unwrap();
    let out = second.wait_with_output().unwrap();
    let err = fs::read_to_string(&log).unwrap();
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("waiting for the cache lock"), "{err}");
    assert_eq!(fx.artifacts().len(), 4);
    assert!(fx.results_dir().join("small").join("report.md").is_file());
    let verify = fx.xtask().arg("verify").output().unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// The repository's pipeline files (`pipelines/*.yaml`).
fn repository_pipelines() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no pipelines in {}", dir.display());
    files
}

/// Without pipeline arguments, `gc` keeps what the repository's `pipelines/*.yaml` use (here
/// the first stage of `smoke.yaml`): the artifacts of a pipeline outside that folder are garbage.
#[test]
fn gc_without_arguments_keeps_what_the_repository_pipelines_use() {
    let Some((fx, file)) = small_fixture() else {
        return;
    };
    let smoke = repository_pipelines()
        .into_iter()
        .find(|p| p.ends_with("smoke.yaml"))
        .unwrap();
    let out = fx
        .xtask()
        .arg("run")
        .arg(&smoke)
        .args(["--until", "data"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let repository_artifacts = fx.artifacts();
    assert_eq!(repository_artifacts.len(), 1);
    fx.run(&file, opts());
    let out = fx.xtask().args(["gc", "--dry-run"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .last()
            .unwrap()
            .starts_with("would remove 4 artifact(s), ")
            && stdout.ends_with("; kept 1\n"),
        "{stdout}"
    );
    let out = fx
        .xtask()
        .arg("gc")
        .arg("--dry-run")
        .arg(&file)
        .output()
        .unwrap();
    // Named pipelines replace the default: smoke's artifact goes, the small pipeline's stay.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap();
    assert!(
        last.starts_with("would remove 1 artifact(s), ") && last.ends_with("; kept 4"),
        "{stdout}"
    );
    let out = fx.xtask().arg("gc").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fx.artifacts(), repository_artifacts);
}

/// `check` accepts every pipeline of the repository: exit 0, nothing printed, nothing run. With
/// no file named it checks every file in `pipelines/`, as it does here.
#[test]
fn check_accepts_every_repository_pipeline_silently() {
    let Some(_) = needs("AG News", ag_news()) else {
        return;
    };
    let fx = Fixture::new();
    assert!(repository_pipelines().len() > 30);
    let out = fx.xtask().arg("check").output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "check: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fx.artifacts().is_empty(), "check ran something");
}

/// A new pipeline seed draws a new sample: the sampled split is made again (it was reused with
/// the old seed's rows before ingest declared that it uses the seed).
#[test]
fn a_new_seed_draws_a_new_sample() {
    let Some((fx, file)) = small_fixture() else {
        return;
    };
    let first = fx.run(&file, opts());
    fs::write(&file, small_pipeline(1.0, 10).replace("seed: 7", "seed: 8")).unwrap();
    let second = fx.run(&file, opts());
    assert_eq!(kinds(&second)[0], "ran");
    let train = |o: &xtask::runner::Outcome| {
        fs::read(
            fx.cache_dir()
                .join("artifacts")
                .join(key_of(o))
                .join("train.parquet"),
        )
        .unwrap()
    };
    assert_ne!(
        train(&first[0]),
        train(&second[0]),
        "the same rows were drawn"
    );
}

/// A stage with its own `seed` that still reads the pipeline's (`READS_PIPELINE_SEED`): the MLP
/// draws its CV folds from it (the folds every classifier shares, so that ensembles are
/// scored), so its key changes with the pipeline's seed though its own seed and its input's
/// bytes do not. Before the pipeline's seed was in its key, the artifact made with the old
/// seed's folds was reused. A stage with its own seed that does not read the pipeline's (the
/// ingest here) keeps its key: before, every such stage ran again, for the same bytes.
#[test]
fn a_stage_with_its_own_seed_is_keyed_by_the_pipeline_seed_too() {
    let fx = Fixture::new();
    write_csv_dataset(&fx);
    let pipeline = |seed| {
        csv_pipeline(seed, 1, "mlp")
            .replace(
                "  - id: lr\n    kind: mlp\n    inputs: [features]\n",
                "  - id: lr\n    kind: mlp\n    inputs: [features]\n    \
                 params: {seed: 3, select: {epochs: [1, 2], folds: 3}}\n",
            )
            .replace(
                "      label_names: [business, sports]\n",
                "      label_names: [business, sports]\n      seed: 5\n",
            )
    };
    // The MLP's key, with its input made (the MLP itself is not run: its key is what counts).
    let key = |seed| {
        let file = fx.write_pipeline("csv.yaml", &pipeline(seed));
        let until = RunOptions {
            until: Some("features".into()),
            ..opts()
        };
        fx.run(&file, until);
        let plan = pipeline::load(&file).unwrap();
        assert_eq!((plan.stages[0].seed, plan.seed), (5, seed));
        assert_eq!((plan.stages[2].seed, plan.seed), (3, seed));
        let states = status::states(&plan, &fx.workspace()).unwrap();
        let ingest = states[0].key.clone().expect("the ingest has no inputs");
        (
            ingest,
            states[2].key.clone().expect("the MLP's input is cached"),
        )
    };
    let (seven, eight) = (key(7), key(8));
    assert_ne!(
        seven.1, eight.1,
        "a new pipeline seed left the MLP's key as it was"
    );
    assert_eq!(seven.0, eight.0, "a new pipeline seed re-keyed the ingest");
    // And the same seed gives the same keys again.
    assert_eq!(key(7), seven);
}

/// `cargo xtask status P | head -1`: a reader that stops early ends the command quietly, with
/// status 0 (it panicked on the broken pipe before).
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let fx = Fixture::new();
    write_csv_dataset(&fx);
    let file = fx.write_pipeline("csv.yaml", &csv_pipeline(7, 1, "logreg"));
    for args in [&["status"][..], &["dag"][..], &["run", "--dry-run"][..]] {
        let mut child = fx
            .xtask()
            .args(args)
            .arg(&file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before the command writes its first line.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// Results go by the pipeline's `name:`: a second file with the same name (a copy tried as a
/// variant) is warned that its run replaces the first file's reports; the same file run again,
/// or by another path to it, is not.
#[test]
fn a_second_file_with_the_same_name_is_warned_that_it_replaces_the_reports() {
    let fx = Fixture::new();
    write_csv_dataset(&fx);
    let text = csv_pipeline(7, 1, "logreg");
    let first = fx.write_pipeline("csv.yaml", &text);
    let copy = fx.write_pipeline("csv-copy.yaml", &text);
    let run = |file: &Path| {
        let out = fx.xtask().arg("run").arg(file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{}: {stderr}", file.display());
        stderr
    };
    let warning = "another pipeline file with the same `name: csv`";
    for file in [&first, &first] {
        let stderr = run(file);
        assert!(!stderr.contains(warning), "{stderr}");
    }
    let stderr = run(&copy);
    assert!(
        stderr.contains(warning) && stderr.contains(&*first.to_string_lossy()),
        "{stderr}"
    );
    // Kept in the run's log too, which starts before the warning.
    let log = fs::read_to_string(fx.results_dir().join("csv").join("run.log")).unwrap();
    assert!(log.contains(warning), "{log}");
    let recorded: serde_json::Value =
        serde_json::from_slice(&fs::read(fx.results_dir().join("csv").join("run.json")).unwrap())
            .unwrap();
    assert_eq!(recorded["pipeline_file"], *copy.to_string_lossy());
    let same_file = fx.dir.path().join(".").join("csv-copy.yaml");
    let stderr = run(&same_file);
    assert!(!stderr.contains(warning), "{stderr}");
}

/// `status` explains a stale stage against the last run recorded under the pipeline's name;
/// when another file with that name made that run, the reasons say so first.
#[test]
fn status_says_when_another_file_with_the_name_made_the_last_run() {
    let fx = Fixture::new();
    write_csv_dataset(&fx);
    let file = fx.write_pipeline("csv.yaml", &csv_pipeline(7, 1, "logreg"));
    let copy = fx.write_pipeline("csv-copy.yaml", &csv_pipeline(7, 2, "logreg"));
    fx.run(&file, opts());
    fx.run(&copy, opts());
    fs::write(&file, csv_pipeline(7, 3, "logreg")).unwrap();
    let why = reasons(&file, &fx, 1);
    assert!(
        why[0].contains("csv-copy.yaml") && why[0].contains("another file"),
        "{why:?}"
    );
    // Run again (all cached), the file's own run is the last one: no such line.
    fs::write(&file, csv_pipeline(7, 1, "logreg")).unwrap();
    fx.run(&file, opts());
    fs::write(&file, csv_pipeline(7, 3, "logreg")).unwrap();
    let why = reasons(&file, &fx, 1);
    assert!(!why.iter().any(|r| r.contains("another file")), "{why:?}");
    assert!(!why.is_empty(), "{why:?}");
}

/// The run's stage lines keep their columns when an id is longer than the usual 24
/// characters: the id column takes the plan's longest id, so the rows line up under each other.
#[test]
fn stage_lines_line_up_when_an_id_is_long() {
    let fx = Fixture::new();
    write_csv_dataset(&fx);
    let long = "features_of_every_word_in_the_headline";
    let text = csv_pipeline(7, 1, "logreg")
        .replace("id: features", &format!("id: {long}"))
        .replace("inputs: [features]", &format!("inputs: [{long}]"));
    let file = fx.write_pipeline("csv.yaml", &text);
    for expected in ["ran ", "cached "] {
        let out = fx.xtask().arg("run").arg(&file).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}");
        let lines: Vec<&str> = stdout
            .lines()
            .filter(|l| l.starts_with("ran ") || l.starts_with("cached "))
            .collect();
        assert_eq!(lines.len(), 4, "{stdout}");
        assert!(lines.iter().all(|l| l.starts_with(expected)), "{stdout}");
        let rows_at: Vec<usize> = lines.iter().map(|l| l.find(" rows").unwrap()).collect();
        assert!(rows_at.iter().all(|&at| at == rows_at[0]), "{stdout}");
    }
}
