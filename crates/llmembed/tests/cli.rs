//! The installed binary as a user meets it: `--version`, completions, a closed pipe, a run
//! whose output goes to a pipe (progress lines, the run log, `run.json`), `show --json`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use llmembed_testkit::needs;

fn llmembed(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmembed"));
    cmd.current_dir(dir)
        .env("LLMEMBED_DATA_DIR", llmembed_testkit::data_dir())
        .env_remove("RUST_LOG")
        .env_remove("LLMEMBED_ROOT");
    cmd
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn version_names_the_commit_and_the_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let long = stdout_of(llmembed(dir.path()).arg("--version"));
    let first = long.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("llmembed {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{long}"
    );
    let commit = first
        .split("(commit ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')')
        .trim_end_matches("-modified");
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{first}"
    );
    let kernels = long
        .lines()
        .find_map(|l| l.strip_prefix("kernels: "))
        .unwrap_or_else(|| panic!("no kernels line in {long}"));
    assert_eq!(kernels, llmembed_kernels::in_use());
    // `-V` is the short form: one line.
    let short = stdout_of(llmembed(dir.path()).arg("-V"));
    assert_eq!(short.trim_end(), first);
}

#[test]
fn completions_cover_every_command() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = stdout_of(llmembed(dir.path()).args(["completions", shell]));
        for word in [
            "llmembed", "run", "status", "show", "gc", "verify", "no-wait",
        ] {
            assert!(script.contains(word), "{shell} completions lack `{word}`");
        }
    }
    let bad = llmembed(dir.path())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid value 'tcsh'"));
}

/// A small real pipeline: 48 AG News rows through SmolLM2, a mean of its layers, logistic
/// regression and a report.
fn pipeline(dir: &Path, models: &Path) -> PathBuf {
    let path = dir.join("pipelines").join("tiny.yaml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        &path,
        llmembed_testkit::pipeline_header("tiny", 3, Some(models))
            + &llmembed_testkit::ag_news_stage(8, 4)
            + &llmembed_testkit::smollm2_stage("[8, 16]", 8)
            + "  - id: fused\n    kind: fuse\n    inputs: [llm]\n    params:\n      \
               sources: [{layers: all}]\n      method: mean\n  - id: lr\n    kind: logreg\n    \
               inputs: [fused]\n  - id: report\n    kind: evaluate\n    inputs: [lr]\n",
    )
    .unwrap();
    path
}

fn models() -> Option<PathBuf> {
    let dir = llmembed_testkit::models_dir();
    needs(
        "SmolLM2-135M (cargo xtask fetch smollm2-135m)",
        llmembed_extract::fetch_preset("smollm2-135m", &dir)
            .map(|_| dir)
            .map_err(|e| e.to_string()),
    )
}

#[test]
fn a_closed_pipe_ends_status_quietly() {
    let Some(models) = models() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), &models);
    // Read one line, then close the pipe: the command must exit 0 (it has more to write).
    let mut child = llmembed(dir.path())
        .args(["status"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "stale   data:\n");
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_piped_run_prints_progress_lines_and_keeps_its_log_and_record() {
    let Some(models) = models() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), &models);
    let run = || {
        let out = llmembed(dir.path())
            .args(["run", "pipelines/tiny.yaml"])
            // A line at every step, so that a short extraction shows several.
            .env("LLMEMBED_PROGRESS_SECS", "0")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        );
        assert!(out.status.success(), "{stdout}\n{stderr}");
        (stdout, stderr)
    };
    let (stdout, stderr) = run();
    // The root is found from the current folder (it holds `pipelines/`): cache and results there.
    assert!(dir.path().join("cache/artifacts").is_dir());
    let progress: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("  extract ") && l.contains("/48 ("))
        .collect();
    assert!(progress.len() >= 3, "{stderr}");
    assert!(
        progress.last().unwrap().contains("48/48 (100%)"),
        "{stderr}"
    );
    assert!(progress.last().unwrap().contains("done in "), "{stderr}");
    // Figures first: state, id, time, rows, rows per second.
    let llm = stdout
        .lines()
        .find(|l| l.starts_with("ran      llm "))
        .unwrap();
    let fields: Vec<&str> = llm.split_whitespace().collect();
    assert!(fields[2].ends_with('s'), "{llm}");
    assert_eq!(&fields[3..5], ["48", "rows"], "{llm}");
    assert!(fields[5].ends_with("/s"), "{llm}");

    // The run log has both streams; run.json what ran, with keys.
    let results = dir.path().join("results/tiny");
    let log = std::fs::read_to_string(results.join("run.log")).unwrap();
    assert!(log.contains("ran      llm "), "{log}");
    assert!(log.contains(progress[0]), "{log}");
    assert!(log.contains("tiny: 5 stage(s), 5 ran, 0 cached"), "{log}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results.join("run.json")).unwrap()).unwrap();
    assert_eq!(record["pipeline"], "tiny");
    assert_eq!(record["ok"], true);
    let stages = record["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 5);
    assert!(
        stages
            .iter()
            .all(|s| s["status"] == "ran" && s["key"].is_string())
    );

    // A second run: everything cached, and a second record beside the first.
    let (stdout, _) = run();
    assert!(
        stdout.contains("tiny: 5 stage(s), 0 ran, 5 cached"),
        "{stdout}"
    );
    let runs = std::fs::read_dir(results.join("runs")).unwrap().count();
    assert_eq!(runs, 2);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results.join("run.json")).unwrap()).unwrap();
    assert!(
        record["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "cached")
    );

    // `show --json` names each artifact's files by absolute path; the keys are run.json's.
    let shown: serde_json::Value = serde_json::from_str(&stdout_of(llmembed(dir.path()).args([
        "show",
        "pipelines/tiny.yaml",
        "llm",
        "--json",
    ])))
    .unwrap();
    let llm = &shown["stages"][0];
    assert_eq!(llm["id"], "llm");
    assert_eq!(llm["state"], "cached");
    assert_eq!(llm["key"], record["stages"][1]["key"]);
    let files = llm["files"].as_array().unwrap();
    let train = files.iter().find(|f| f["name"] == "train.parquet").unwrap();
    let path = PathBuf::from(train["path"].as_str().unwrap());
    assert!(path.is_absolute() && path.is_file(), "{path:?}");
    assert_eq!(
        blake3::hash(&std::fs::read(&path).unwrap())
            .to_hex()
            .as_str(),
        train["blake3"]
    );
    let _ = file;
}
