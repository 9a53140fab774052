//! Runs one stage into a temporary folder of the cache and publishes what it wrote: the part of
//! a run that calls stage code (a panic in a stage is an error of that stage, not of the run).

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow, bail};

use llmembed_core::{Context, Env, Input, Summary};

use crate::cache::{Manifest, Preimage};
use crate::pipeline::Plan;
use crate::runner::{Outcome, Workspace};

#[allow(clippy::too_many_arguments)]
pub(crate) fn execute(
    plan: &Plan,
    i: usize,
    pre: &Preimage,
    key: &str,
    manifests: &[Option<Manifest>],
    ws: &Workspace,
    env: &Env,
    replace: bool,
    store_ready: Option<llmembed_core::StoreReady<'_>>,
) -> Outcome {
    let stage = &plan.stages[i];
    if !ws.quiet {
        log::info!("running {} ({})", stage.id, stage.kind.kind());
    }
    let result = (|| -> Result<Manifest> {
        let tmp = ws.cache.begin(key)?;
        let inputs = stage_inputs(plan, i, pre, manifests, ws);
        let store_dir = ws.cache.store_dir(stage.kind.kind());
        fs::create_dir_all(&store_dir)
            .with_context(|| format!("create {}", store_dir.display()))?;
        let env = stage_env(env, plan, i);
        let ctx = Context {
            env: &env,
            out_dir: tmp.clone(),
            store_dir,
            seed: stage.seed,
            store_ready,
        };
        // Stages run one at a time in this process: its high-water mark, reset here, is the
        // stage's peak.
        let measured = crate::rss::reset_peak();
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
        let peak = if measured {
            crate::rss::peak_bytes()
        } else {
            None
        };
        ws.cache
            .publish_with(&tmp, key, pre, &stage.id, &summary, seconds, replace, peak)
            .context("publish artifact")
    })();
    match result {
        Ok(m) => Outcome::Ran(m),
        Err(e) => Outcome::Failed(format!("{e:#}")),
    }
}

/// `run --worker`: the part of stage `i` that several processes share (`Stage::share`:
/// extraction shards), done until nothing is left to claim. `None` when the stage has no such
/// part.
pub(crate) fn help(
    plan: &Plan,
    i: usize,
    pre: &Preimage,
    manifests: &[Option<Manifest>],
    ws: &Workspace,
    env: &Env,
) -> Result<Option<Vec<String>>> {
    let stage = &plan.stages[i];
    let inputs = stage_inputs(plan, i, pre, manifests, ws);
    let store_dir = ws.cache.store_dir(stage.kind.kind());
    fs::create_dir_all(&store_dir).with_context(|| format!("create {}", store_dir.display()))?;
    let env = stage_env(env, plan, i);
    let ctx = Context {
        env: &env,
        // Never written: a worker makes no outputs.
        out_dir: ws.cache.root.join("tmp").join("worker-outputs-unused"),
        store_dir,
        seed: stage.seed,
        // Workers share the cache's filesystem: they neither pull nor push stores.
        store_ready: None,
    };
    match catch_unwind(AssertUnwindSafe(|| {
        stage.kind.share(&stage.params, &inputs, &ctx)
    })) {
        Ok(r) => Ok(r?),
        Err(_) => bail!("stage `{}` panicked while helping", stage.id),
    }
}

/// The `Env` stage `i` runs with: `Env::seed` is the pipeline's seed only for a stage that
/// declares it reads it (`Stage::READS_PIPELINE_SEED`, which puts it in the key); any other
/// stage is given its own seed there too, so what it reads is in its key.
fn stage_env(env: &Env, plan: &Plan, i: usize) -> Env {
    let stage = &plan.stages[i];
    let mut env = env.clone();
    if !stage.kind.reads_pipeline_seed() {
        env.seed = stage.seed;
    }
    env
}

/// Stage `i`'s inputs as it reads them: each upstream artifact's folder and the files of it that
/// the preimage hashed (all of them, or the one the pipeline named).
fn stage_inputs(
    plan: &Plan,
    i: usize,
    pre: &Preimage,
    manifests: &[Option<Manifest>],
    ws: &Workspace,
) -> Vec<Input> {
    plan.stages[i]
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
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stage reads the pipeline's seed in `Env::seed` only where it declares it (and so has it
    /// in its key); any other stage with its own seed finds its own there.
    #[test]
    fn env_seed_is_the_pipelines_only_for_a_stage_that_declares_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(
            &file,
            "name: p\nsettings:\n  seed: 7\nstages:\n  \
             - {id: data, kind: ingest, params: {dataset: ag_news, seed: 5}}\n  \
             - {id: feats, kind: tfidf, inputs: [data]}\n  \
             - {id: mlp, kind: mlp, inputs: [feats], params: {seed: 3}}\n",
        )
        .unwrap();
        let plan = crate::pipeline::load(&file).unwrap();
        let env = Env {
            data_dir: dir.path().into(),
            models_dir: dir.path().into(),
            pipeline_dir: dir.path().into(),
            seed: plan.seed,
            quiet: true,
        };
        let seeds: Vec<(u64, u64)> = (0..3)
            .map(|i| (plan.stages[i].seed, stage_env(&env, &plan, i).seed))
            .collect();
        // ingest: its own seed, undeclared; tfidf: none of its own; mlp: its own, declared.
        assert_eq!(seeds, [(5, 5), (7, 7), (3, 7)]);
    }
}
