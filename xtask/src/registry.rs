//! The table of stage kinds. This is the only place that names the stage crates: the runner
//! itself sees every stage through [`StageKind`], a type-erased view of `llmembed_core::Stage`.

use std::marker::PhantomData;

use llmembed_core::{Apply, ApplyEnv, Arity, Context, Env, External, Input, Stage, Summary};
use serde_json::Value;

/// A problem with a stage's params, located by its path inside `params`.
#[derive(Debug, Clone)]
pub struct ParamIssue {
    /// Keys from the top of `params` down to the offending field (may be empty).
    pub path: Vec<String>,
    pub message: String,
}

/// A stage kind as the runner sees it: params are JSON values, validated by the stage's own
/// serde types.
pub trait StageKind: Sync {
    fn kind(&self) -> &'static str;
    fn version(&self) -> u32;
    fn inputs(&self) -> Arity;
    fn seeded(&self) -> bool;
    fn reads_pipeline_seed(&self) -> bool;
    /// The JSON Schema of the stage's params, derived from the same serde types `validate`
    /// uses (subschemas inlined, so that it can be embedded in a pipeline file's schema).
    fn params_schema(&self) -> schemars::Schema;
    /// Deserializes `params` into the stage's params type (filling defaults), checks them, also
    /// against the number of inputs the stage is given, and returns them in canonical form: the
    /// JSON value of the typed params, keys sorted.
    fn validate(&self, params: Value, inputs: usize) -> Result<Value, ParamIssue>;
    /// Checks canonical params against what is already on this machine (`Stage::check_local`).
    fn check_local(&self, params: &Value, env: &Env) -> Result<(), ParamIssue>;
    fn externals(&self, params: &Value, env: &Env) -> llmembed_core::Result<Vec<External>>;
    fn run(
        &self,
        params: &Value,
        inputs: &[Input],
        ctx: &Context,
    ) -> llmembed_core::Result<Summary>;
    /// `Stage::share`: the part of `run` several processes do at once (`run --worker`).
    fn share(
        &self,
        params: &Value,
        inputs: &[Input],
        ctx: &Context,
    ) -> llmembed_core::Result<Option<Vec<String>>>;
    /// `Stage::shared_progress`: shared work in progress in this kind's store folder.
    fn shared_progress(&self, store_dir: &std::path::Path) -> llmembed_core::Result<Vec<String>>;
    /// `Stage::unfinished`: what a rerun would resume from one folder of this kind's store.
    fn unfinished(&self, folder: &std::path::Path) -> llmembed_core::Result<Option<String>>;
    /// `Stage::applier`: the stage loaded from its artifact for new rows (`predict`, `serve`).
    fn applier(
        &self,
        params: &Value,
        fitted: &Input,
        env: &ApplyEnv,
    ) -> llmembed_core::Result<Option<Box<dyn Apply>>>;
}

struct Kind<S>(PhantomData<fn() -> S>);

impl<S: Stage> Kind<S> {
    fn typed(params: &Value) -> llmembed_core::Result<S::Params> {
        serde_json::from_value(params.clone())
            .map_err(|e| llmembed_core::Error::param("params", e.to_string()))
    }
}

impl<S: Stage> StageKind for Kind<S> {
    fn kind(&self) -> &'static str {
        S::KIND
    }

    fn version(&self) -> u32 {
        S::VERSION
    }

    fn inputs(&self) -> Arity {
        S::INPUTS
    }

    fn seeded(&self) -> bool {
        S::SEEDED
    }

    fn reads_pipeline_seed(&self) -> bool {
        S::READS_PIPELINE_SEED
    }

    fn params_schema(&self) -> schemars::Schema {
        schemars::generate::SchemaSettings::draft2020_12()
            .with(|s| s.inline_subschemas = true)
            .into_generator()
            .into_root_schema_for::<S::Params>()
    }

    fn validate(&self, params: Value, inputs: usize) -> Result<Value, ParamIssue> {
        let typed: S::Params = serde_path_to_error::deserialize(params).map_err(|e| {
            let mut path: Vec<String> = e
                .path()
                .iter()
                .filter_map(|seg| match seg {
                    serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                    serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                    _ => None,
                })
                .collect();
            let message = e.inner().to_string();
            // serde reports an unknown field at its parent; point at the field itself.
            if let Some(field) = backquoted_after(&message, "unknown field ") {
                path.push(field);
            }
            ParamIssue { path, message }
        })?;
        S::check(&typed).map_err(issue)?;
        S::check_inputs(&typed, inputs).map_err(issue)?;
        serde_json::to_value(&typed).map_err(|e| ParamIssue {
            path: Vec::new(),
            message: format!("params do not serialize back: {e}"),
        })
    }

    fn check_local(&self, params: &Value, env: &Env) -> Result<(), ParamIssue> {
        S::check_local(&Self::typed(params).map_err(issue)?, env).map_err(issue)
    }

    fn externals(&self, params: &Value, env: &Env) -> llmembed_core::Result<Vec<External>> {
        S::externals(&Self::typed(params)?, env)
    }

    fn run(
        &self,
        params: &Value,
        inputs: &[Input],
        ctx: &Context,
    ) -> llmembed_core::Result<Summary> {
        S::run(&Self::typed(params)?, inputs, ctx)
    }

    fn share(
        &self,
        params: &Value,
        inputs: &[Input],
        ctx: &Context,
    ) -> llmembed_core::Result<Option<Vec<String>>> {
        S::share(&Self::typed(params)?, inputs, ctx)
    }

    fn shared_progress(&self, store_dir: &std::path::Path) -> llmembed_core::Result<Vec<String>> {
        S::shared_progress(store_dir)
    }

    fn unfinished(&self, folder: &std::path::Path) -> llmembed_core::Result<Option<String>> {
        S::unfinished(folder)
    }

    fn applier(
        &self,
        params: &Value,
        fitted: &Input,
        env: &ApplyEnv,
    ) -> llmembed_core::Result<Option<Box<dyn Apply>>> {
        S::applier(&Self::typed(params)?, fitted, env)
    }
}

/// A stage's error as a param issue: located at the param it names, if it names one.
fn issue(e: llmembed_core::Error) -> ParamIssue {
    match e {
        llmembed_core::Error::Param { param, message } => ParamIssue {
            path: param.split('.').map(str::to_string).collect(),
            message,
        },
        other => ParamIssue {
            path: Vec::new(),
            message: other.to_string(),
        },
    }
}

fn backquoted_after(message: &str, prefix: &str) -> Option<String> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    let rest = rest.strip_prefix('`')?;
    Some(rest[..rest.find('`')?].to_string())
}

macro_rules! kinds {
    ($($stage:ty),* $(,)?) => {
        &[$(&Kind::<$stage>(PhantomData)),*]
    };
}

/// Every stage kind a pipeline may name.
pub fn all() -> &'static [&'static dyn StageKind] {
    kinds![
        llmembed_ingest::Ingest,
        llmembed_augment::Augment,
        llmembed_extract::Extract,
        llmembed_fuse::Fuse,
        llmembed_fuse::Tfidf,
        llmembed_contrastive::Contrastive,
        llmembed_classify::LogReg,
        llmembed_classify::Mlp,
        llmembed_classify::Ensemble,
        llmembed_classify::LayerSweep,
        llmembed_classify::Select,
        llmembed_evaluate::Evaluate,
    ]
}

pub fn find(kind: &str) -> Option<&'static dyn StageKind> {
    all().iter().copied().find(|k| k.kind() == kind)
}

/// Whether stages of `kind` make class predictions: the stages `predict` and `serve` end at.
pub fn predicts(kind: &str) -> bool {
    use llmembed_classify::{Ensemble, LayerSweep, LogReg, Mlp, Select};
    [
        LogReg::KIND,
        Mlp::KIND,
        Ensemble::KIND,
        LayerSweep::KIND,
        Select::KIND,
    ]
    .contains(&kind)
}
