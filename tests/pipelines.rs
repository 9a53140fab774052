//! Runner integration tests: real stages (ingest from the shared AG News files, TF-IDF features,
//! logistic regression, evaluate) driven through the runner and the `xtask` binary.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use xtask::cache::Cache;
use xtask::pipeline;
use xtask::runner::{self, RunOptions};
use xtask::status::{self, StageStatus};

#[test]
fn cached_rerun_skips_every_stage_and_results_are_published() {
    let fx = Fixture::new();
    let file = fx.write_pipeline("p.yaml", &small_pipeline(1.0, 10));
    let first = fx.run(&file, opts());
    assert_eq!(kinds(&first), ["ran", "ran", "ran", "ran"]);
    let second = fx.run(&file, opts());
    assert_eq!(kinds(&second), ["cached", "cached", "cached", "cached"]);
    let metrics = fs::read_to_string(fx.dir.path().join("results/small/metrics.json")).unwrap();
    assert!(metrics.contains("accuracy"), "{metrics}");
    assert!(fx.dir.path().join("results/small/report.md").exists());
}

#[test]
fn a_param_change_reruns_exactly_the_downstream_stages() {
    let fx = Fixture::new();
    let file = fx.write_pipeline("p.yaml", &small_pipeline(1.0, 10));
    fx.run(&file, opts());
    fs::write(&file, small_pipeline(0.25, 10)).unwrap();
    let plan = pipeline::load(&file).unwrap();
    let dry = runner::run(
        &plan,
        &fx.workspace(),
        &RunOptions {
            dry_run: true,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(kinds(&dry), ["cached", "cached", "would-run", "would-run"]);
    // `status` says why the classifier is stale: the changed param, old and new values.
    let st = status::status(&plan, &fx.workspace()).unwrap();
    match &st[2].1 {
        StageStatus::Stale(reasons) => assert!(
            reasons
                .iter()
                .any(|r| r.contains("param `c`") && r.contains("0.25")),
            "{reasons:?}"
        ),
        _ => panic!("lr should be stale"),
    }
    assert!(matches!(st[3].1, StageStatus::Waiting(_)));
    let again = fx.run(&file, opts());
    assert_eq!(kinds(&again), ["cached", "cached", "ran", "ran"]);
}

#[test]
fn forcing_a_stage_that_reproduces_its_bytes_invalidates_nothing_downstream() {
    let fx = Fixture::new();
    let file = fx.write_pipeline("p.yaml", &small_pipeline(1.0, 10));
    let first = fx.run(&file, opts());
    // Recompute only the features (--force features --only features)...
    let forced = fx.run(
        &file,
        RunOptions {
            force: vec!["features".into()],
            only: Some("features".into()),
            ..opts()
        },
    );
    assert_eq!(kinds(&forced)[1], "ran");
    // ...tfidf is deterministic: same bytes, so the classifier's key, which is made from the
    // content of its input and not from the upstream key, is unchanged: nothing else reruns.
    let after = fx.run(&file, opts());
    assert_eq!(kinds(&after), ["cached", "cached", "cached", "cached"]);
    assert_eq!(key_of(&first[2]), key_of(&after[2]));
    // Plain --force reruns the stage and everything that depends on it.
    let cascade = fx.run(
        &file,
        RunOptions {
            force: vec!["features".into()],
            ..opts()
        },
    );
    assert_eq!(kinds(&cascade), ["cached", "ran", "ran", "ran"]);
}

#[test]
fn only_and_until_select_stages() {
    let fx = Fixture::new();
    let file = fx.write_pipeline("p.yaml", &small_pipeline(1.0, 10));
    let until = fx.run(
        &file,
        RunOptions {
            until: Some("features".into()),
            ..opts()
        },
    );
    assert_eq!(kinds(&until), ["ran", "ran", "skipped", "skipped"]);
    let only = fx.run(
        &file,
        RunOptions {
            only: Some("lr".into()),
            ..opts()
        },
    );
    assert_eq!(kinds(&only), ["cached", "cached", "ran", "skipped"]);
    let plan = pipeline::load(&file).unwrap();
    let err = runner::run(
        &plan,
        &fx.workspace(),
        &RunOptions {
            force: vec!["nope".into()],
            ..opts()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("no stage `nope`") && err.contains("features"),
        "{err}"
    );
}

#[test]
fn a_corrupted_artifact_is_detected_and_rebuilt() {
    let fx = Fixture::new();
    let file = fx.write_pipeline("p.yaml", &small_pipeline(1.0, 10));
    let first = fx.run(&file, opts());
    let key = key_of(&first[1]);
    let victim = fx
        .cache_dir()
        .join("artifacts")
        .join(&key)
        .join("train.parquet");
    let original = fs::read(&victim).unwrap();
    let mut damaged = original.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0xff;
    fs::write(&victim, &damaged).unwrap();
    let again = fx.run(&file, opts());
    assert_eq!(kinds(&again), ["cached", "ran", "cached", "cached"]);
    assert_eq!(fs::read(&victim).unwrap(), original);

    // A missing file (a partial artifact) is caught too.
    fs::remove_file(&victim).unwrap();
    let third = fx.run(&file, opts());
    assert_eq!(kinds(&third)[1], "ran");
}

#[test]
fn a_failed_stage_stops_dependents_and_keep_going_runs_independent_branches() {
    let fx = Fixture::new();
    // `bad` asks for a column the features do not have: it fails at run time, not at validation.
    // `bad_report` depends on `bad`; `report` does not.
    let text = small_pipeline(1.0, 10).replace(
        "  - id: report\n",
        "  - id: bad\n    kind: logreg\n    inputs: [features]\n    params:\n      column: no_such_column\n  - id: bad_report\n    kind: evaluate\n    inputs: [bad]\n  - id: report\n",
    );
    let file = fx.write_pipeline("p.yaml", &text);
    let plan = pipeline::load(&file).unwrap();
    let ids: Vec<&str> = plan.stages.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        ["data", "features", "lr", "bad", "bad_report", "report"]
    );
    // Through the binary: its stdout has one line per stage, with the outcome and its reason.
    let run = |keep_going: bool| -> String {
        let mut cmd = fx.xtask();
        cmd.arg("run").arg(&file);
        if keep_going {
            cmd.arg("--keep-going");
        }
        let out = cmd.output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(!out.status.success(), "{stdout}\n{stderr}");
        assert!(
            stderr.contains("1 stage(s) failed: bad"),
            "{stdout}\n{stderr}"
        );
        stdout
    };
    let line = |stdout: &str, id: &str| -> String {
        stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(id))
            .unwrap_or_else(|| panic!("no line for `{id}` in:\n{stdout}"))
            .to_string()
    };
    let skipped = |id: &str, why: &str| format!("skipped  {id:<24} ({why})");

    let stdout = run(false);
    assert!(
        line(&stdout, "bad").starts_with("FAILED   bad "),
        "{stdout}"
    );
    // Without --keep-going every later stage stops, dependent or not.
    let stopped = "stopped after an earlier failure (use --keep-going)";
    assert_eq!(line(&stdout, "bad_report"), skipped("bad_report", stopped));
    assert_eq!(line(&stdout, "report"), skipped("report", stopped));

    let stdout = run(true);
    assert!(
        line(&stdout, "bad").starts_with("FAILED   bad "),
        "{stdout}"
    );
    // With --keep-going the dependent of `bad` is still skipped, naming `bad` ...
    assert_eq!(
        line(&stdout, "bad_report"),
        skipped("bad_report", "input `bad` did not run")
    );
    // ... and the report (independent of `bad`) is produced.
    assert!(
        line(&stdout, "report").starts_with("ran      report "),
        "{stdout}"
    );
    let st = status::status(&plan, &fx.workspace()).unwrap();
    let report = ids.iter().position(|&i| i == "report").unwrap();
    assert!(matches!(st[report].1, StageStatus::Cached), "{ids:?}");
    let bad_report = ids.iter().position(|&i| i == "bad_report").unwrap();
    assert!(!matches!(st[bad_report].1, StageStatus::Cached), "{ids:?}");
}

#[test]
fn a_second_runner_is_told_who_holds_the_lock() {
    let fx = Fixture::new();
    let cache = Cache::new(fx.cache_dir()).unwrap();
    let _held = xtask::cache::Lock::acquire(&cache, "run first.yaml", true).unwrap();
    let err = xtask::cache::Lock::acquire(&cache, "run second.yaml", false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("locked") && err.contains("first.yaml"),
        "{err}"
    );
}

#[test]
fn a_stage_killed_mid_run_leaves_no_artifact_and_the_rerun_succeeds() {
    let fx = Fixture::new();
    // Cross-validation over many C values makes the classifier stage run for a while.
    let text = small_pipeline(1.0, 10).replace(
        "      c: 1\n",
        "      select: {c: [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0], folds: 5}\n",
    );
    let text = text.replace("per_class: 20", "per_class: 60");
    let file = fx.write_pipeline("p.yaml", &text);
    let run = || {
        let mut cmd = fx.xtask();
        cmd.arg("run").arg(&file);
        cmd
    };
    // First the upstream stages, so that the kill lands in the classifier.
    assert!(
        run()
            .args(["--until", "features"])
            .status()
            .unwrap()
            .success()
    );
    let before = fx.artifacts();
    let mut child = run().spawn().unwrap();
    let tmp = fx.cache_dir().join("tmp");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let busy = fs::read_dir(&tmp)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if busy {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run finished before it could be killed"
        );
        assert!(Instant::now() < deadline, "the classifier never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    // SIGKILL: no destructor, no cleanup.
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        fx.artifacts(),
        before,
        "a killed stage published an artifact"
    );
    let out = run().output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fx.artifacts().len(), before.len() + 2);
    assert_eq!(
        fs::read_dir(&tmp).unwrap().count(),
        0,
        "leftovers not cleaned"
    );
}

#[test]
fn dag_renders_text_mermaid_and_dot() {
    let fx = Fixture::new();
    let file = fx.write_pipeline("p.yaml", &small_pipeline(1.0, 10));
    let plan = pipeline::load(&file).unwrap();
    let text = xtask::dag::render(&plan, xtask::dag::DagFormat::Text);
    assert!(text.contains("lr [logreg] <- features"), "{text}");
    let mermaid = xtask::dag::render(&plan, xtask::dag::DagFormat::Mermaid);
    assert!(mermaid.contains("features --> lr"), "{mermaid}");
    let dot = xtask::dag::render(&plan, xtask::dag::DagFormat::Dot);
    assert!(dot.contains("\"features\" -> \"lr\""), "{dot}");
}

#[test]
fn gc_removes_only_what_no_pipeline_uses() {
    let fx = Fixture::new();
    let file = fx.write_pipeline("p.yaml", &small_pipeline(1.0, 10));
    let first = fx.run(&file, opts());
    let old_lr = key_of(&first[2]);
    fs::write(&file, small_pipeline(0.5, 10)).unwrap();
    fx.run(&file, opts());
    let plan = pipeline::load(&file).unwrap();
    let dry = xtask::gc::gc(std::slice::from_ref(&plan), &fx.workspace(), dry_run()).unwrap();
    let removed: Vec<&str> = dry.removed.iter().map(|(k, _)| k.as_str()).collect();
    assert!(removed.contains(&old_lr.as_str()), "{removed:?}");
    assert_eq!(removed.len(), 2, "old lr and old report only: {removed:?}");
    assert!(dry.removed.iter().all(|(_, size)| *size > 0));
    let n = fx.artifacts().len();
    xtask::gc::gc(&[plan], &fx.workspace(), gc_now()).unwrap();
    assert_eq!(fx.artifacts().len(), n - 2);
    assert_eq!(kinds(&fx.run(&file, opts())), ["cached"; 4]);
}
