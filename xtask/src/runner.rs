//! Executes a validated [`Plan`] against the cache: computes each stage's key from its inputs'
//! content, reuses intact artifacts, runs the rest, publishes atomically.

use std::collections::BTreeMap;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow, bail};

use llmembed_core::{Context, Env, External, Input, Summary};

use crate::cache::{Cache, FileHashes, Lock, Lookup, Manifest, Preimage};
use crate::pipeline::{Plan, PlannedStage};

/// Where a run reads and writes, outside the pipeline file itself.
pub struct Workspace {
    pub cache: Cache,
    pub results_dir: PathBuf,
    /// Used when neither `LLMEMBED_DATA_DIR` nor the pipeline's `settings.data_dir` is set.
    pub default_data_dir: PathBuf,
    pub quiet: bool,
}

impl Workspace {
    pub fn env(&self, plan: &Plan) -> Env {
        let data_dir = std::env::var_os("LLMEMBED_DATA_DIR")
            .map(PathBuf::from)
            .or_else(|| plan.data_dir.clone())
            .unwrap_or_else(|| self.default_data_dir.clone());
        Env {
            data_dir,
            models_dir: plan
                .models_dir
                .clone()
                .unwrap_or_else(|| self.cache.models_dir()),
            pipeline_dir: plan
                .file
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
            seed: plan.seed,
            quiet: self.quiet,
        }
    }
}

#[derive(Default, Clone)]
pub struct RunOptions {
    pub force: Vec<String>,
    pub only: Option<String>,
    pub until: Option<String>,
    pub dry_run: bool,
    pub keep_going: bool,
    pub wait_for_lock: bool,
}

/// What happened to (or would happen to) one stage.
#[derive(Debug, Clone)]
pub enum Outcome {
    Cached(Manifest),
    Ran(Manifest),
    WouldRun(String),
    Failed(String),
    Skipped(String),
}

impl Outcome {
    fn manifest(&self) -> Option<&Manifest> {
        match self {
            Outcome::Cached(m) | Outcome::Ran(m) => Some(m),
            _ => None,
        }
    }
}

/// The content of the files a stage takes from each of its inputs.
fn input_files(
    stage: &PlannedStage,
    plan: &Plan,
    manifests: &[Option<Manifest>],
) -> std::result::Result<Vec<BTreeMap<String, String>>, String> {
    let mut out = Vec::new();
    for r in &stage.inputs {
        let upstream = &plan.stages[r.stage];
        let manifest = manifests[r.stage]
            .as_ref()
            .ok_or_else(|| format!("input `{}` is not available", upstream.id))?;
        let files: BTreeMap<String, String> = manifest
            .files
            .iter()
            .filter(|f| match &r.output {
                None => true,
                Some(out) => file_stem(&f.name) == out,
            })
            .map(|f| (f.name.clone(), f.blake3.clone()))
            .collect();
        if files.is_empty() {
            return Err(format!(
                "stage `{}` has no output `{}` (it has: {})",
                upstream.id,
                r.output.as_deref().unwrap_or(""),
                manifest
                    .files
                    .iter()
                    .map(|f| file_stem(&f.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out.push(files);
    }
    Ok(out)
}

fn file_stem(name: &str) -> &str {
    name.split_once('.').map(|(s, _)| s).unwrap_or(name)
}

/// Computes a stage's preimage, given its inputs' manifests.
pub fn preimage(
    stage: &PlannedStage,
    plan: &Plan,
    manifests: &[Option<Manifest>],
    env: &Env,
    hashes: &mut FileHashes,
) -> std::result::Result<Preimage, String> {
    let inputs = input_files(stage, plan, manifests)?;
    let mut externals = BTreeMap::new();
    let declared = stage
        .kind
        .externals(&stage.params, env)
        .map_err(|e| format!("stage `{}`: {e}", stage.id))?;
    for ext in declared {
        match ext {
            External::File { name, path } => {
                let h = hashes
                    .hash(&path)
                    .map_err(|e| format!("stage `{}`: {e:#}", stage.id))?;
                externals.insert(name, format!("blake3:{h}"));
            }
            External::Value { name, value } => {
                externals.insert(name, value);
            }
        }
    }
    Ok(Preimage {
        kind: stage.kind.kind().to_string(),
        version: stage.kind.version(),
        params: stage.params.clone(),
        seed: stage.kind.seeded().then_some(stage.seed),
        inputs,
        externals,
    })
}

fn stage_index(plan: &Plan, id: &str) -> Result<usize> {
    plan.index_of(id).ok_or_else(|| {
        anyhow!(
            "no stage `{id}` in {} (stages: {})",
            plan.file.display(),
            plan.stages
                .iter()
                .map(|s| s.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Runs (or, with `dry_run`, plans) a pipeline. Returns one outcome per stage, in plan order.
pub fn run(plan: &Plan, ws: &Workspace, opts: &RunOptions) -> Result<Vec<Outcome>> {
    let n = plan.stages.len();
    // Validate the options against the plan before touching anything.
    let mut forced = vec![false; n];
    for id in &opts.force {
        for (j, f) in plan
            .downstream_of(stage_index(plan, id)?)
            .into_iter()
            .enumerate()
        {
            forced[j] |= f;
        }
    }
    let selected: Vec<bool> = match (&opts.only, &opts.until) {
        (Some(_), Some(_)) => bail!("--only and --until cannot be combined"),
        (Some(id), None) => {
            let i = stage_index(plan, id)?;
            (0..n).map(|j| j == i).collect()
        }
        (None, Some(id)) => plan.upstream_of(stage_index(plan, id)?),
        (None, None) => vec![true; n],
    };

    let _lock = if opts.dry_run {
        None
    } else {
        let lock = Lock::acquire(
            &ws.cache,
            &format!("run {}", plan.file.display()),
            opts.wait_for_lock,
        )?;
        ws.cache.clean_tmp()?;
        Some(lock)
    };
    let env = ws.env(plan);
    let mut hashes = FileHashes::open(&ws.cache);
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(n);
    let mut manifests: Vec<Option<Manifest>> = vec![None; n];
    let mut stop = false;

    for (i, stage) in plan.stages.iter().enumerate() {
        let outcome = if stop {
            Outcome::Skipped("stopped after an earlier failure (use --keep-going)".into())
        } else if let Some(r) = stage
            .inputs
            .iter()
            .find(|r| matches!(outcomes[r.stage], Outcome::Failed(_) | Outcome::Skipped(_)))
        {
            Outcome::Skipped(format!("input `{}` did not run", plan.stages[r.stage].id))
        } else if let Some(r) = stage
            .inputs
            .iter()
            .find(|r| matches!(outcomes[r.stage], Outcome::WouldRun(_)))
        {
            Outcome::WouldRun(format!("after `{}`", plan.stages[r.stage].id))
        } else {
            match preimage(stage, plan, &manifests, &env, &mut hashes) {
                Err(e) => Outcome::Failed(e),
                Ok(pre) => {
                    let key = pre.key();
                    let lookup = ws.cache.lookup(&key);
                    match lookup {
                        Lookup::Hit(m) if !forced[i] => {
                            if selected[i] && !opts.dry_run {
                                ws.cache.record_run(&plan.name, &stage.id, &m)?;
                            }
                            Outcome::Cached(*m)
                        }
                        other if !selected[i] => match other {
                            Lookup::Hit(m) => Outcome::Cached(*m),
                            _ => Outcome::Skipped("not selected and not cached".into()),
                        },
                        other => {
                            let why = match other {
                                Lookup::Hit(_) => "forced".to_string(),
                                Lookup::Missing => "not cached".to_string(),
                                Lookup::Corrupt(why) => {
                                    eprintln!(
                                        "warning: cached artifact of `{}` is corrupt ({why}); recomputing",
                                        stage.id
                                    );
                                    format!("cached artifact corrupt: {why}")
                                }
                            };
                            if opts.dry_run {
                                Outcome::WouldRun(why)
                            } else {
                                execute(plan, i, &pre, &key, &manifests, ws, &env)
                            }
                        }
                    }
                }
            }
        };
        if let Outcome::Failed(_) = outcome
            && !opts.keep_going
        {
            stop = true;
        }
        if let Outcome::Ran(m) = &outcome {
            ws.cache.record_run(&plan.name, &stage.id, m)?;
        }
        print_outcome(stage, &outcome, opts.dry_run);
        manifests[i] = outcome.manifest().cloned();
        outcomes.push(outcome);
    }
    hashes.save()?;

    if !opts.dry_run {
        publish_results(plan, ws, &outcomes)?;
    }
    let failed: Vec<&str> = plan
        .stages
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
        .map(|(s, _)| s.id.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("{} stage(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(outcomes)
}

fn execute(
    plan: &Plan,
    i: usize,
    pre: &Preimage,
    key: &str,
    manifests: &[Option<Manifest>],
    ws: &Workspace,
    env: &Env,
) -> Outcome {
    let stage = &plan.stages[i];
    if !ws.quiet {
        eprintln!("running {} ({})", stage.id, stage.kind.kind());
    }
    let result = (|| -> Result<Manifest> {
        let tmp = ws.cache.begin(key)?;
        let inputs: Vec<Input> = stage
            .inputs
            .iter()
            .zip(&pre.inputs)
            .map(|(r, files)| Input {
                stage_id: plan.stages[r.stage].id.clone(),
                dir: ws
                    .cache
                    .artifact_dir(&manifests[r.stage].as_ref().expect("input cached").key),
                files: files.keys().cloned().collect(),
            })
            .collect();
        let store_dir = ws.cache.store_dir(stage.kind.kind());
        fs::create_dir_all(&store_dir)?;
        let ctx = Context {
            env,
            out_dir: tmp.clone(),
            store_dir,
            seed: stage.seed,
        };
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| {
            stage.kind.run(&stage.params, &inputs, &ctx)
        }));
        let summary: Summary = match result {
            Ok(Ok(summary)) => summary,
            Ok(Err(e)) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(anyhow!(e));
            }
            Err(panic) => {
                let _ = fs::remove_dir_all(&tmp);
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                bail!("stage panicked: {msg}");
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        ws.cache
            .publish(&tmp, key, pre, &stage.id, &summary, seconds)
            .context("publish artifact")
    })();
    match result {
        Ok(m) => Outcome::Ran(m),
        Err(e) => Outcome::Failed(format!("{e:#}")),
    }
}

fn print_outcome(stage: &PlannedStage, outcome: &Outcome, dry_run: bool) {
    let id = &stage.id;
    let line = match outcome {
        Outcome::Cached(m) => format!(
            "cached   {id:<24} {:>9}  {} rows",
            "-",
            thousands(m.rows_out)
        ),
        Outcome::Ran(m) => {
            let mut s = format!(
                "ran      {id:<24} {:>9}  {} rows",
                human_duration(m.seconds),
                thousands(m.rows_out)
            );
            for note in &m.notes {
                s.push_str("; ");
                s.push_str(note);
            }
            s
        }
        Outcome::WouldRun(why) => format!(
            "{} {id:<24} ({why})",
            if dry_run { "will run" } else { "stale   " }
        ),
        Outcome::Failed(e) => format!("FAILED   {id:<24} {e}"),
        Outcome::Skipped(why) => format!("skipped  {id:<24} ({why})"),
    };
    println!("{line}");
}

pub fn human_duration(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        format!("{}m{:04.1}s", (s / 60.0) as u64, s % 60.0)
    }
}

pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Copies the reports (`metrics.json`, `report.md`, PNGs) of every stage that wrote a
/// `metrics.json` to `results/<pipeline name>/` (or `results/<name>/<stage id>/` when several
/// stages report), so that users and scripts find the latest numbers without cache keys.
fn publish_results(plan: &Plan, ws: &Workspace, outcomes: &[Outcome]) -> Result<()> {
    let reporting: Vec<(&PlannedStage, &Manifest)> = plan
        .stages
        .iter()
        .zip(outcomes)
        .filter_map(|(s, o)| o.manifest().map(|m| (s, m)))
        .filter(|(_, m)| m.file("metrics.json").is_some())
        .collect();
    if reporting.is_empty() {
        return Ok(());
    }
    let base = ws.results_dir.join(&plan.name);
    for (stage, manifest) in &reporting {
        let dest = if reporting.len() == 1 {
            base.clone()
        } else {
            base.join(&stage.id)
        };
        fs::create_dir_all(&dest)?;
        let src = ws.cache.artifact_dir(&manifest.key);
        for f in &manifest.files {
            if f.name.ends_with(".json") || f.name.ends_with(".md") || f.name.ends_with(".png") {
                fs::copy(src.join(&f.name), dest.join(&f.name))
                    .with_context(|| format!("copy {} to {}", f.name, dest.display()))?;
            }
        }
        if !ws.quiet {
            println!("results: {}", dest.join("report.md").display());
        }
    }
    Ok(())
}
