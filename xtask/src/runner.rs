//! Executes a validated [`Plan`] against the cache: computes each stage's key from its inputs'
//! content, reuses intact artifacts, runs the rest, publishes atomically.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow, bail};

use llmembed_core::Env;

use crate::cache::{Cache, FileHashes, Lock, Lookup, Manifest, Preimage, content_mismatch};
use crate::execute::execute;
use crate::pipeline::Plan;
use crate::preimage::input_files;
pub use crate::preimage::preimage;
use crate::remote::{Pulled, Remote, RemoteLink};
use crate::report;
pub use crate::report::{human_duration, thousands};

/// Where a run reads and writes, outside the pipeline file itself.
pub struct Workspace {
    pub cache: Cache,
    pub results_dir: PathBuf,
    /// Used when neither `LLMEMBED_DATA_DIR` nor the pipeline's `settings.data_dir` is set.
    pub default_data_dir: PathBuf,
    pub quiet: bool,
    /// The remote cache (`--remote` / `LLMEMBED_REMOTE`; else the pipeline's `settings.remote`).
    pub remote: Option<String>,
    /// Fail instead of going on locally when the remote cache fails.
    pub remote_required: bool,
}

impl Workspace {
    /// Opens the remote cache this workspace or `plan` names, if any.
    pub fn remote(&self, plan: &Plan) -> Result<Option<RemoteLink>> {
        let Some(url) = self.remote.as_ref().or(plan.remote.as_ref()) else {
            return Ok(None);
        };
        Ok(Some(RemoteLink::new(
            Remote::open(url)?,
            self.remote_required,
        )))
    }

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
    /// Where to write this run's record (`run.json`); none for runs nobody keeps.
    pub record_dir: Option<PathBuf>,
    /// `--worker`: help with the stages several processes share (extraction shards) and with
    /// what they need, make nothing that waits on another process, stop at the first stage
    /// whose inputs are not made yet.
    pub worker: bool,
}

/// What happened to (or would happen to) one stage.
#[derive(Debug, Clone)]
pub enum Outcome {
    Cached(Manifest),
    /// Taken from the remote cache (checked, then published locally).
    Pulled(Manifest),
    Ran(Manifest),
    WouldRun(String),
    Failed(String),
    Skipped(String),
    /// A worker did its share of the stage (its notes); others, or a later run, finish it.
    Helped(Vec<String>),
}

impl Outcome {
    fn manifest(&self) -> Option<&Manifest> {
        match self {
            Outcome::Cached(m) | Outcome::Pulled(m) | Outcome::Ran(m) => Some(m),
            _ => None,
        }
    }
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
    let started = Instant::now();
    // Validate the options against the plan before touching anything.
    let (forced, selected) = selection(plan, opts)?;
    let _lock = if opts.dry_run {
        None
    } else {
        Some(lock_cache(plan, ws, opts)?)
    };
    let remote = ws.remote(plan)?;
    let mut state = RunState {
        plan,
        ws,
        remote,
        damaged_remote: Default::default(),
        env: ws.env(plan),
        hashes: FileHashes::open(&ws.cache),
        manifests: vec![None; plan.stages.len()],
        outcomes: Vec::with_capacity(plan.stages.len()),
    };
    let mut stop = false;
    for (i, stage) in plan.stages.iter().enumerate() {
        let outcome = if stop {
            Outcome::Skipped("stopped after an earlier failure (use --keep-going)".into())
        } else if opts.worker {
            state.work(i, selected[i])?
        } else {
            state.decide(i, forced[i], selected[i], opts)?
        };
        if let Outcome::Failed(_) = outcome
            && !opts.keep_going
        {
            stop = true;
        }
        if let Outcome::Ran(m) | Outcome::Pulled(m) = &outcome {
            ws.cache.record_run(plan, &stage.id, m)?;
        }
        report::print_outcome(plan, stage, &outcome, opts.dry_run);
        state.manifests[i] = outcome.manifest().cloned();
        state.outcomes.push(outcome);
    }
    if let Err(e) = state.hashes.save() {
        // Only a memo: losing it costs a re-hash next time, never a wrong result.
        log::warn!("{e:#}; the next run hashes external files again");
    }
    if opts.dry_run {
        return Ok(state.outcomes);
    }
    let published = if opts.worker && state.outcomes.iter().any(|o| o.manifest().is_none()) {
        // A worker that left stages to others has no complete reports to copy.
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
    if let Some(dir) = &opts.record_dir {
        let record = report::RunRecord::new(plan, &state.outcomes, started.elapsed());
        if let Err(e) = record.write(dir) {
            log::warn!("{e:#}");
        }
    }
    match (failed.is_empty(), published) {
        (true, Ok(())) => Ok(state.outcomes),
        (true, Err(e)) => Err(e),
        (false, published) => {
            if let Err(e) = published {
                log::error!("{e:#}");
            }
            bail!("{} stage(s) failed: {}", failed.len(), failed.join(", "))
        }
    }
}

/// Which stages `--force` reruns and which `--only` / `--until` select, by plan index.
fn selection(plan: &Plan, opts: &RunOptions) -> Result<(Vec<bool>, Vec<bool>)> {
    let n = plan.stages.len();
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
    Ok((forced, selected))
}

/// Takes the cache lock, shared with other runs, for the whole run. A run alone on the cache
/// (it gets the lock exclusively at first) removes what interrupted runs left behind; with
/// other runs at work, their temporary folders are theirs, and the last one alone cleans.
fn lock_cache(plan: &Plan, ws: &Workspace, opts: &RunOptions) -> Result<Lock> {
    let what = format!(
        "run {}{}",
        plan.file.display(),
        if opts.worker { " --worker" } else { "" }
    );
    if let Some(_alone) = Lock::try_exclusive(&ws.cache, &what, Some(&plan.file))? {
        let removed = ws.cache.clean_leftovers()?;
        if !removed.is_empty() && !ws.quiet {
            log::info!(
                "removed {} leftover temporary file(s) or folder(s) of interrupted runs",
                removed.len()
            );
        }
    }
    Lock::acquire_shared(&ws.cache, &what, Some(&plan.file), opts.wait_for_lock)
}

/// What a run has established so far: the manifest of every stage done, in plan order.
struct RunState<'a> {
    plan: &'a Plan,
    ws: &'a Workspace,
    remote: Option<RemoteLink>,
    /// Keys whose remote copy was found damaged: pushed again over it once made.
    damaged_remote: std::collections::HashSet<String>,
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

    /// What to do with stage `i`: skip it, reuse its cached artifact, or make it.
    fn decide(
        &mut self,
        i: usize,
        forced: bool,
        selected: bool,
        opts: &RunOptions,
    ) -> Result<Outcome> {
        let (plan, ws) = (self.plan, self.ws);
        let stage = &plan.stages[i];
        let after = |pred: fn(&Outcome) -> bool| {
            stage
                .inputs
                .iter()
                .find(|r| pred(&self.outcomes[r.stage]))
                .map(|r| plan.stages[r.stage].id.clone())
        };
        if let Some(id) = after(|o| matches!(o, Outcome::Failed(_) | Outcome::Skipped(_))) {
            return Ok(Outcome::Skipped(format!("input `{id}` did not run")));
        }
        if let Some(id) = after(|o| matches!(o, Outcome::WouldRun(_))) {
            return Ok(Outcome::WouldRun(format!("after `{id}`")));
        }
        let pre = match self.preimage(i) {
            Err(e) => return Ok(Outcome::Failed(e)),
            Ok(pre) => pre,
        };
        let key = pre.key();
        let lookup = ws.cache.lookup(&key);
        if matches!(lookup, Lookup::Missing) && !forced {
            if opts.dry_run {
                if self.in_remote(&key)? {
                    return Ok(Outcome::WouldRun("in the remote cache".into()));
                }
            } else if let Some(m) = self.pull(i, &key)? {
                return Ok(Outcome::Pulled(m));
            }
        }
        let why = match lookup {
            Lookup::Hit(m) if !forced => {
                if selected && !opts.dry_run {
                    ws.cache.record_run(plan, &stage.id, &m)?;
                }
                return Ok(Outcome::Cached(*m));
            }
            Lookup::Hit(m) if !selected => return Ok(Outcome::Cached(*m)),
            _ if !selected => {
                return Ok(Outcome::Skipped("not selected and not cached".into()));
            }
            Lookup::Hit(_) => "forced".to_string(),
            Lookup::Missing => "not cached".to_string(),
            Lookup::Corrupt(why) => {
                if !opts.dry_run {
                    match ws.cache.quarantine_artifact(&key) {
                        Ok(moved) => log::warn!(
                            "cached artifact of `{}` is damaged ({why}); moved to {}, recomputing",
                            stage.id,
                            moved.display()
                        ),
                        Err(e) => log::warn!(
                            "cached artifact of `{}` is damaged ({why}), and could not be moved aside ({e:#}); recomputing",
                            stage.id
                        ),
                    }
                }
                format!("cached artifact damaged: {why}")
            }
        };
        Ok(if opts.dry_run {
            Outcome::WouldRun(why)
        } else {
            self.make(i, Some(pre), forced)
        })
    }

    /// `--worker`: stage `i` cached (or pulled), or its shared part done (`Stage::share`), or,
    /// for a stage without one, made here (another runner making it at the same time is
    /// harmless: the first published artifact is kept). Stages whose inputs are not made yet
    /// are left to the run that finishes the pipeline.
    fn work(&mut self, i: usize, selected: bool) -> Result<Outcome> {
        let (plan, ws) = (self.plan, self.ws);
        let stage = &plan.stages[i];
        if !selected {
            return Ok(Outcome::Skipped("not selected".into()));
        }
        if let Some(r) = stage
            .inputs
            .iter()
            .find(|r| self.manifests[r.stage].is_none())
        {
            return Ok(Outcome::Skipped(format!(
                "input `{}` is not made yet",
                plan.stages[r.stage].id
            )));
        }
        let pre = match self.preimage(i) {
            Err(e) => return Ok(Outcome::Failed(e)),
            Ok(pre) => pre,
        };
        let key = pre.key();
        match ws.cache.lookup(&key) {
            Lookup::Hit(m) => return Ok(Outcome::Cached(*m)),
            Lookup::Missing => {
                if let Some(m) = self.pull(i, &key)? {
                    return Ok(Outcome::Pulled(m));
                }
            }
            // The run that finishes the pipeline repairs it.
            Lookup::Corrupt(why) => {
                return Ok(Outcome::Skipped(format!("cached artifact damaged: {why}")));
            }
        }
        if let Err(e) = self.repair_inputs(i) {
            return Ok(Outcome::Failed(e));
        }
        if !ws.quiet {
            log::info!("helping with {} ({})", stage.id, stage.kind.kind());
        }
        match crate::execute::help(plan, i, &pre, &self.manifests, ws, &self.env) {
            Ok(Some(notes)) => Ok(Outcome::Helped(notes)),
            Ok(None) => Ok(self.make(i, Some(pre), false)),
            Err(e) => Ok(Outcome::Failed(format!("{e:#}"))),
        }
    }

    /// Runs stage `i` and publishes its artifact, after checking in full every input file it
    /// reads (an input found damaged is quarantined and made again first, so no artifact is
    /// ever computed from damaged bytes).
    /// `pre` is the stage's preimage when the caller has it.
    fn make(&mut self, i: usize, pre: Option<Preimage>, replace: bool) -> Outcome {
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
        let kind = self.plan.stages[i].kind.kind();
        let outcome = self.execute_with_remote_store(i, &pre, &key, replace);
        if let (Outcome::Ran(m), Some(link)) = (&outcome, &self.remote) {
            let overwrite = self.damaged_remote.contains(&key);
            let folders = m.stores.as_deref().unwrap_or_default();
            let pushed = link.call("push", |r| {
                r.push_store(&self.ws.cache, kind, Some(folders))?;
                r.push_artifact(&self.ws.cache, m, overwrite)
            });
            if let Err(e) = pushed {
                return Outcome::Failed(format!("{e:#}"));
            }
        }
        outcome
    }

    /// Runs the stage with a remote cache at hand for its store: each store folder the stage
    /// opens (`Context::store_folder`) is first filled with what the remote holds of it, and
    /// only of it, and a helper thread copies the new files of the opened folders (finished
    /// extraction shards) to the remote every `LLMEMBED_REMOTE_PUSH_SECS` (default 10), so that
    /// another machine can resume from them even if this one is killed.
    fn execute_with_remote_store(
        &self,
        i: usize,
        pre: &Preimage,
        key: &str,
        replace: bool,
    ) -> Outcome {
        let run = |store_ready: Option<llmembed_core::StoreReady<'_>>| {
            execute(
                self.plan,
                i,
                pre,
                key,
                &self.manifests,
                self.ws,
                &self.env,
                replace,
                store_ready,
            )
        };
        let Some(link) = &self.remote else {
            return run(None);
        };
        let every = std::env::var("LLMEMBED_REMOTE_PUSH_SECS")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .unwrap_or(10.0);
        let kind = self.plan.stages[i].kind.kind();
        let cache = &self.ws.cache;
        let opened = std::sync::Mutex::new(std::collections::BTreeSet::<String>::new());
        let ready = |folder: &str| -> llmembed_core::Result<()> {
            let folders = [folder.to_string()];
            match link.call("pull the store", |r| {
                r.pull_store(cache, kind, Some(&folders))
            }) {
                Ok(Some(n)) if n > 0 => {
                    log::info!("pulled {n} {kind} store file(s) from {}", link.remote.url())
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(llmembed_core::Error::compute(
                        "pull the store from the remote cache",
                        format!("{e:#}"),
                    ));
                }
            }
            opened
                .lock()
                .expect("not poisoned")
                .insert(folder.to_string());
            Ok(())
        };
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let opened_now = &opened;
        std::thread::scope(|scope| {
            scope.spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(std::time::Duration::from_secs_f64(every))
                {
                    let folders: Vec<String> = opened_now
                        .lock()
                        .expect("not poisoned")
                        .iter()
                        .cloned()
                        .collect();
                    if folders.is_empty() {
                        continue;
                    }
                    // A failure marks the remote down (reported once); the run goes on.
                    let _ = link.call("push the store", |r| {
                        r.push_store(cache, kind, Some(&folders))
                    });
                }
            });
            let outcome = run(Some(&ready));
            drop(stop);
            outcome
        })
    }

    /// Whether the remote cache has the artifact `key` (false when there is no remote or it is
    /// down).
    fn in_remote(&self, key: &str) -> Result<bool> {
        let Some(link) = &self.remote else {
            return Ok(false);
        };
        Ok(link
            .call("look up", |r| r.has_artifact(key))?
            .unwrap_or(false))
    }

    /// Takes stage `i`'s artifact from the remote cache, if it has an intact one.
    fn pull(&mut self, i: usize, key: &str) -> Result<Option<Manifest>> {
        let Some(link) = &self.remote else {
            return Ok(None);
        };
        match link.call("pull", |r| r.pull_artifact(&self.ws.cache, key))? {
            Some(Pulled::Published(m)) => Ok(Some(*m)),
            Some(Pulled::Damaged(why)) => {
                log::warn!(
                    "the remote cache's artifact of `{}` is damaged ({why}): not used; computing it",
                    self.plan.stages[i].id
                );
                self.damaged_remote.insert(key.to_string());
                Ok(None)
            }
            Some(Pulled::Absent) | None => Ok(None),
        }
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
        log::warn!(
            "cached artifact of `{id}` is damaged ({why}); moved to {}, recomputing",
            moved.display()
        );
        match self.make(j, None, true) {
            Outcome::Ran(m) => {
                if let Err(e) = self.ws.cache.record_run(self.plan, &id, &m) {
                    log::warn!("{e:#}");
                }
                self.manifests[j] = Some(m.clone());
                self.outcomes[j] = Outcome::Ran(m);
                report::print_outcome(self.plan, &self.plan.stages[j], &self.outcomes[j], false);
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
