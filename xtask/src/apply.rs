//! A pipeline's path from text to a classifier, loaded once from the cache and applied to new
//! texts: what `predict` and `serve` share. Each stage on the path is loaded from its published
//! artifact through `Stage::applier` (found by its key, as `status` and `show` find it); nothing
//! is fitted and nothing is written to the cache (extraction adds new texts to its store).
//! A loaded chain holds the cache lock shared, as a run does, so that `gc` never removes an
//! artifact it was loaded from or a store folder it reads and adds to: `gc` waits for the
//! process to end (a server too), while runs go on beside it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use llmembed_core::{Apply, ApplyEnv, Input, Predictions, Rows, TextTable, UNLABELLED};
use serde::Serialize;

use crate::pipeline::Plan;
use crate::runner::Workspace;

/// One stage of the path, loaded.
struct Step {
    id: String,
    kind: &'static str,
    /// The steps it reads, in the order of its pipeline inputs; none for a source (ingest),
    /// which is given the new texts.
    inputs: Vec<usize>,
    applier: Box<dyn Apply>,
}

/// What was loaded, for `/v1/info` and the first line `predict` prints.
#[derive(Clone, Debug, Serialize)]
pub struct ChainInfo {
    pub pipeline: String,
    pub stage: String,
    pub kind: String,
    pub classes: Vec<String>,
    /// Every stage on the path with the key of the artifact it was loaded from.
    pub artifacts: Vec<StageArtifact>,
    /// The `model` param of the stages that have one (the extractors).
    pub models: Vec<StageModel>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StageArtifact {
    pub stage: String,
    pub kind: String,
    pub key: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct StageModel {
    pub stage: String,
    pub model: serde_json::Value,
}

/// The stages from text to a classifier, each loaded once.
pub struct Chain {
    steps: Vec<Step>,
    pub info: ChainInfo,
    /// The cache lock, shared, for as long as the chain lives.
    _lock: crate::cache::Lock,
}

/// The index of `stage_id` in `plan`, if it is a stage `predict` and `serve` can end at.
pub fn target_stage(plan: &Plan, stage_id: &str) -> Result<usize> {
    let classifiers: Vec<&str> = plan
        .stages
        .iter()
        .filter(|s| crate::registry::predicts(s.kind.kind()))
        .map(|s| s.id.as_str())
        .collect();
    let choices = if classifiers.is_empty() {
        "it has none".to_string()
    } else {
        format!("its classifier stages: {}", classifiers.join(", "))
    };
    let i = plan.index_of(stage_id).ok_or_else(|| {
        anyhow!(
            "no stage `{stage_id}` in {} ({choices})",
            plan.file.display()
        )
    })?;
    let kind = plan.stages[i].kind.kind();
    if !crate::registry::predicts(kind) {
        bail!(
            "stage `{stage_id}` ({kind}) does not classify texts: give a stage that predicts classes ({choices})"
        );
    }
    Ok(i)
}

impl Chain {
    /// Loads the path from text to `stage_id`. `store_root`: where the stages' stores are
    /// (default: the cache's, so that extraction reuses the vectors of texts it has seen; the
    /// bench gives an empty folder). `program` names the command in messages.
    pub fn load(
        plan: &Plan,
        ws: &Workspace,
        stage_id: &str,
        program: &str,
        store_root: Option<&Path>,
    ) -> Result<Chain> {
        let target = target_stage(plan, stage_id)?;
        let what = format!("apply {} up to `{stage_id}`", plan.file.display());
        let lock = crate::cache::Lock::acquire_shared(&ws.cache, &what, Some(&plan.file), true)?;
        let artifacts = crate::status::path_artifacts(plan, ws, target, program)?;
        let env = ws.env(plan);
        let mut steps: Vec<Step> = Vec::with_capacity(artifacts.len());
        let mut step_of = vec![None; plan.stages.len()];
        let mut info = ChainInfo {
            pipeline: plan.name.clone(),
            stage: stage_id.to_string(),
            kind: plan.stages[target].kind.kind().to_string(),
            classes: Vec::new(),
            artifacts: Vec::new(),
            models: Vec::new(),
        };
        for (i, manifest) in &artifacts {
            let stage = &plan.stages[*i];
            let kind = stage.kind.kind();
            let store_dir = match store_root {
                Some(root) => root.join(kind),
                None => ws.cache.store_dir(kind),
            };
            std::fs::create_dir_all(&store_dir)
                .with_context(|| format!("create {}", store_dir.display()))?;
            let fitted = Input {
                stage_id: stage.id.clone(),
                dir: ws.cache.artifact_dir(&manifest.key),
                files: manifest.files.iter().map(|f| f.name.clone()).collect(),
            };
            let apply_env = ApplyEnv {
                env: env.clone(),
                store_dir,
            };
            let applier = stage
                .kind
                .applier(&stage.params, &fitted, &apply_env)
                .with_context(|| format!("load stage `{}` ({kind})", stage.id))?
                .ok_or_else(|| {
                    anyhow!(
                        "stage `{}` ({kind}) cannot be applied to new texts",
                        stage.id
                    )
                })?;
            let inputs = stage
                .inputs
                .iter()
                .map(|r| step_of[r.stage].expect("inputs come first in the plan"))
                .collect();
            step_of[*i] = Some(steps.len());
            steps.push(Step {
                id: stage.id.clone(),
                kind,
                inputs,
                applier,
            });
            info.artifacts.push(StageArtifact {
                stage: stage.id.clone(),
                kind: kind.to_string(),
                key: manifest.key.clone(),
            });
            if let Some(model) = stage.params.get("model") {
                info.models.push(StageModel {
                    stage: stage.id.clone(),
                    model: model.clone(),
                });
            }
            if *i == target {
                let fitted_predictions = fitted.path("predictions.parquet")?;
                info.classes = llmembed_core::read_predictions(&fitted_predictions)?.label_names;
            }
        }
        Ok(Chain {
            steps,
            info,
            _lock: lock,
        })
    }

    /// Classifies `texts` (ids unique): every stage of the path applied in turn. A panic in a
    /// stage is an error of this call, not of the process (`serve` goes on).
    pub fn classify(&self, ids: Vec<String>, texts: Vec<String>) -> Result<Predictions> {
        catch_unwind(AssertUnwindSafe(|| self.classify_inner(ids, texts))).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(anyhow!("a stage panicked: {msg}"))
        })
    }

    fn classify_inner(&self, ids: Vec<String>, texts: Vec<String>) -> Result<Predictions> {
        let n = ids.len();
        let expected_ids = ids.clone();
        let new = Rows::Text(TextTable::new(ids, texts, vec![UNLABELLED; n], Vec::new()));
        // How many later steps read each step's rows: the last reader takes them, no copy.
        let mut readers = vec![0usize; self.steps.len()];
        for step in &self.steps {
            for &j in &step.inputs {
                readers[j] += 1;
            }
        }
        let mut outputs: Vec<Option<Rows>> = vec![None; self.steps.len()];
        for (k, step) in self.steps.iter().enumerate() {
            let inputs: Vec<Rows> = if step.inputs.is_empty() {
                vec![new.clone()]
            } else {
                step.inputs
                    .iter()
                    .map(|&j| {
                        readers[j] -= 1;
                        if readers[j] == 0 {
                            outputs[j].take()
                        } else {
                            outputs[j].clone()
                        }
                        .expect("a step's rows are kept until its last reader")
                    })
                    .collect()
            };
            let rows = step
                .applier
                .apply(&inputs)
                .with_context(|| format!("stage `{}` ({})", step.id, step.kind))?;
            if rows.len() != n {
                bail!(
                    "stage `{}` ({}) made {} rows of {n} texts",
                    step.id,
                    step.kind,
                    rows.len()
                );
            }
            outputs[k] = Some(rows);
        }
        let last = self.steps.last().context("an empty path")?;
        match outputs.pop().flatten() {
            Some(Rows::Predictions(p)) if p.ids == expected_ids => Ok(p),
            Some(Rows::Predictions(_)) => bail!(
                "stage `{}` ({}) returned its rows in another order than the texts",
                last.id,
                last.kind
            ),
            Some(other) => bail!(
                "stage `{}` ({}) made {} rows, not predictions",
                last.id,
                last.kind,
                other.kind()
            ),
            None => bail!("stage `{}` made nothing", last.id),
        }
    }
}

/// Why `text` is not classified, if it is not: empty (or only blanks), or over `max_bytes`.
pub fn refuse_text(text: &str, max_bytes: usize) -> Option<String> {
    if text.trim().is_empty() {
        Some("empty text".into())
    } else if text.len() > max_bytes {
        Some(format!(
            "text of {} bytes is over the limit of {max_bytes} bytes (--max-text-bytes)",
            text.len()
        ))
    } else {
        None
    }
}
