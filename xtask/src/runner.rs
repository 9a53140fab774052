//! Executes a validated [`Plan`] against the cache: computes each stage's key from its inputs'
//! content, reuses intact artifacts, runs the rest, publishes atomically.

use std::collections::BTreeMap;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow, bail};

use llmembed_core::{Context, Env, External, Input, Summary};

use crate::cache::{Cache, FileHashes, Lock, Lookup, Manifest, Preimage, content_mismatch};
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
        let lock = Lock::acquire_for(
            &ws.cache,
            &format!("run {}", plan.file.display()),
            Some(&plan.file),
            opts.wait_for_lock,
        )?;
        let removed = ws.cache.clean_leftovers()?;
        if !removed.is_empty() && !ws.quiet {
            eprintln!(
                "removed {} leftover temporary file(s) or folder(s) of interrupted runs",
                removed.len()
            );
        }
        Some(lock)
    };
    let mut state = RunState {
        plan,
        ws,
        env: ws.env(plan),
        hashes: FileHashes::open(&ws.cache),
        manifests: vec![None; n],
        outcomes: Vec::with_capacity(n),
    };
    let mut stop = false;

    for (i, stage) in plan.stages.iter().enumerate() {
        let outcome = if stop {
            Outcome::Skipped("stopped after an earlier failure (use --keep-going)".into())
        } else if let Some(r) = stage.inputs.iter().find(|r| {
            matches!(
                state.outcomes[r.stage],
                Outcome::Failed(_) | Outcome::Skipped(_)
            )
        }) {
            Outcome::Skipped(format!("input `{}` did not run", plan.stages[r.stage].id))
        } else if let Some(r) = stage
            .inputs
            .iter()
            .find(|r| matches!(state.outcomes[r.stage], Outcome::WouldRun(_)))
        {
            Outcome::WouldRun(format!("after `{}`", plan.stages[r.stage].id))
        } else {
            match state.preimage(i) {
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
                                Lookup::Corrupt(why) if opts.dry_run => {
                                    format!("cached artifact damaged: {why}")
                                }
                                Lookup::Corrupt(why) => {
                                    match ws.cache.quarantine_artifact(&key) {
                                        Ok(moved) => eprintln!(
                                            "warning: cached artifact of `{}` is damaged ({why}); moved to {}, recomputing",
                                            stage.id,
                                            moved.display()
                                        ),
                                        Err(e) => eprintln!(
                                            "warning: cached artifact of `{}` is damaged ({why}), and could not be moved aside ({e:#}); recomputing",
                                            stage.id
                                        ),
                                    }
                                    format!("cached artifact damaged: {why}")
                                }
                            };
                            if opts.dry_run {
                                Outcome::WouldRun(why)
                            } else {
                                state.make(i, Some(pre))
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
        state.manifests[i] = outcome.manifest().cloned();
        state.outcomes.push(outcome);
    }
    if let Err(e) = state.hashes.save() {
        // Only a memo: losing it costs a re-hash next time, never a wrong result.
        eprintln!("warning: {e:#}; the next run hashes external files again");
    }

    let published = if opts.dry_run {
        Ok(())
    } else {
        state.publish_results()
    };
    let failed: Vec<&str> = plan
        .stages
        .iter()
        .zip(&state.outcomes)
        .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
        .map(|(s, _)| s.id.as_str())
        .collect();
    match (failed.is_empty(), published) {
        (true, Ok(())) => Ok(state.outcomes),
        (true, Err(e)) => Err(e),
        (false, published) => {
            if let Err(e) = published {
                eprintln!("error: {e:#}");
            }
            bail!("{} stage(s) failed: {}", failed.len(), failed.join(", "))
        }
    }
}

/// What a run has established so far: the manifest of every stage done, in plan order.
struct RunState<'a> {
    plan: &'a Plan,
    ws: &'a Workspace,
    env: Env,
    hashes: FileHashes,
    manifests: Vec<Option<Manifest>>,
    outcomes: Vec<Outcome>,
}

impl RunState<'_> {
    fn preimage(&mut self, i: usize) -> std::result::Result<Preimage, String> {
        preimage(
            &self.plan.stages[i],
            self.plan,
            &self.manifests,
            &self.env,
            &mut self.hashes,
        )
    }

    /// Runs stage `i` and publishes its artifact, after checking in full every input file it
    /// reads (an input found damaged is quarantined and made again first, so no artifact is
    /// ever computed from damaged bytes).
    /// `pre` is the stage's preimage when the caller has it.
    fn make(&mut self, i: usize, pre: Option<Preimage>) -> Outcome {
        let repaired = match self.repair_inputs(i) {
            Ok(repaired) => repaired,
            Err(e) => return Outcome::Failed(e),
        };
        // After a repair the preimage is computed again: a remade input normally has its old
        // bytes, but the key must follow the bytes actually read.
        let pre = match pre
            .filter(|_| !repaired)
            .map_or_else(|| self.preimage(i), Ok)
        {
            Ok(pre) => pre,
            Err(e) => return Outcome::Failed(e),
        };
        let key = pre.key();
        execute(
            self.plan,
            i,
            &pre,
            &key,
            &self.manifests,
            self.ws,
            &self.env,
        )
    }

    /// Checks in full the input files stage `i` reads; remakes each input that fails. Says
    /// whether it remade any.
    fn repair_inputs(&mut self, i: usize) -> std::result::Result<bool, String> {
        let mut repaired = false;
        let stage = &self.plan.stages[i];
        let reads = input_files(stage, self.plan, &self.manifests)?;
        for (r, files) in stage.inputs.iter().zip(reads) {
            let names: Vec<String> = files.into_keys().collect();
            let manifest = self.manifests[r.stage]
                .as_ref()
                .expect("input_files checked it");
            if let Err(why) = self.ws.cache.verify_files(manifest, Some(&names)) {
                self.remake(r.stage, &why)?;
                repaired = true;
            }
        }
        Ok(repaired)
    }

    /// Quarantines the damaged artifact of stage `j` and makes it again.
    fn remake(&mut self, j: usize, why: &str) -> std::result::Result<(), String> {
        let id = self.plan.stages[j].id.clone();
        let key = self.manifests[j].as_ref().expect("done").key.clone();
        let moved = self
            .ws
            .cache
            .quarantine_artifact(&key)
            .map_err(|e| format!("cached artifact of `{id}` is damaged ({why}): {e:#}"))?;
        eprintln!(
            "warning: cached artifact of `{id}` is damaged ({why}); moved to {}, recomputing",
            moved.display()
        );
        match self.make(j, None) {
            Outcome::Ran(m) => {
                if let Err(e) = self.ws.cache.record_run(&self.plan.name, &id, &m) {
                    eprintln!("warning: {e:#}");
                }
                self.manifests[j] = Some(m.clone());
                self.outcomes[j] = Outcome::Ran(m);
                print_outcome(&self.plan.stages[j], &self.outcomes[j], false);
                Ok(())
            }
            Outcome::Failed(e) => Err(format!(
                "input `{id}` was damaged and could not be made again: {e}"
            )),
            other => Err(format!("input `{id}` was damaged: {other:?}")),
        }
    }

    /// Copies the reports (`metrics.json`, `report.md`, PNGs) of every stage that wrote a
    /// `metrics.json` to `results/<pipeline name>/` (or `results/<name>/<stage id>/` when several
    /// stages report), so that users and scripts find the latest numbers without cache keys.
    /// Each file is checked in full on the way and written atomically.
    fn publish_results(&mut self) -> Result<()> {
        let reporting: Vec<usize> = (0..self.plan.stages.len())
            .filter(|&i| {
                self.outcomes[i]
                    .manifest()
                    .is_some_and(|m| m.file("metrics.json").is_some())
            })
            .collect();
        let base = self.ws.results_dir.join(&self.plan.name);
        for &i in &reporting {
            let dest = if reporting.len() == 1 {
                base.clone()
            } else {
                base.join(&self.plan.stages[i].id)
            };
            fs::create_dir_all(&dest).with_context(|| format!("create {}", dest.display()))?;
            if let Err(why) = self.copy_reports(i, &dest)? {
                self.remake(i, &why).map_err(|e| anyhow!(e))?;
                if let Err(why) = self.copy_reports(i, &dest)? {
                    bail!(
                        "report of `{}` still damaged: {why}",
                        self.plan.stages[i].id
                    );
                }
            }
            if !self.ws.quiet {
                crate::outln!("results: {}", dest.join("report.md").display());
            }
        }
        Ok(())
    }

    /// Copies stage `i`'s report files into `dest`; `Ok(Err(why))` when one is damaged.
    fn copy_reports(&self, i: usize, dest: &Path) -> Result<std::result::Result<(), String>> {
        let manifest = self.manifests[i].as_ref().expect("reporting stage done");
        let src = self.ws.cache.artifact_dir(&manifest.key);
        for f in &manifest.files {
            if !(f.name.ends_with(".json") || f.name.ends_with(".md") || f.name.ends_with(".png")) {
                continue;
            }
            let path = src.join(&f.name);
            let bytes = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            let actual = llmembed_core::fsutil::hash_bytes(&bytes);
            if actual != f.blake3 {
                return Ok(Err(content_mismatch(&path, &actual, &f.blake3)));
            }
            llmembed_core::fsutil::write_bytes_atomic(&dest.join(&f.name), &bytes)?;
        }
        Ok(Ok(()))
    }
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
        fs::create_dir_all(&store_dir)
            .with_context(|| format!("create {}", store_dir.display()))?;
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
    crate::outln!("{line}");
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
