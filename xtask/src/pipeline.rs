//! Pipeline files: YAML in, a validated [`Plan`] out. Nothing runs until the whole file has been
//! checked; every problem found is reported with its file, line and column.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::{Location, Spanned};

use llmembed_core::Env;

use crate::registry::{self, ParamIssue, StageKind};

/// The seed used when a pipeline does not name one.
pub const DEFAULT_SEED: u64 = 42;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Spanned<String>,
    #[serde(default)]
    settings: Option<RawSettings>,
    stages: Spanned<Vec<RawStage>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    seed: Option<u64>,
    data_dir: Option<String>,
    models_dir: Option<String>,
    /// A remote cache (`s3://…`, `gs://…`, `az://…`, `file://…`); see `remote.rs`.
    remote: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    id: Spanned<String>,
    kind: Spanned<String>,
    #[serde(default)]
    inputs: Vec<Spanned<String>>,
    #[serde(default)]
    params: Option<Spanned<BTreeMap<String, Spanned<Value>>>>,
}

/// One problem in a pipeline file.
#[derive(Debug, Clone)]
pub struct PipelineError {
    pub file: PathBuf,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// All the problems found in a pipeline file.
#[derive(Debug)]
pub struct PipelineErrors(pub Vec<PipelineError>);

impl fmt::Display for PipelineErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} error{} in pipeline file:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PipelineErrors {}

/// Where an input comes from: a stage (by index into `Plan::stages`) and optionally one of its
/// outputs (a file stem such as `train` or `predictions`).
#[derive(Debug, Clone)]
pub struct InputRef {
    pub stage: usize,
    pub output: Option<String>,
}

#[derive(Clone)]
pub struct PlannedStage {
    pub id: String,
    pub kind: &'static dyn StageKind,
    /// Canonical params: the stage's typed params with defaults filled in, as sorted JSON.
    pub params: Value,
    pub inputs: Vec<InputRef>,
    pub seed: u64,
    /// Where its params are in the pipeline file, for the checks made after loading.
    pub params_at: ParamLocations,
}

/// Where a stage's params are in the pipeline file.
#[derive(Clone, Debug)]
pub struct ParamLocations {
    /// The `params` map, or the stage id when the stage has none.
    pub map: Location,
    /// The value of each param given.
    pub each: BTreeMap<String, Location>,
}

impl ParamLocations {
    /// Where a problem with a param is: at the value of the top-level param it names (`model`
    /// for `model.sha256`, `sources` for `sources[1].layers`), else at the whole map.
    fn of(&self, issue: &ParamIssue) -> Location {
        issue
            .path
            .first()
            .map(|top| top.split('[').next().unwrap_or(top))
            .and_then(|top| self.each.get(top))
            .copied()
            .unwrap_or(self.map)
    }
}

/// A validated pipeline, stages in an order where every stage comes after its inputs.
#[derive(Clone)]
pub struct Plan {
    pub name: String,
    pub file: PathBuf,
    pub seed: u64,
    pub data_dir: Option<PathBuf>,
    pub models_dir: Option<PathBuf>,
    /// `settings.remote`: the remote cache, unless `--remote` or `LLMEMBED_REMOTE` says another.
    pub remote: Option<String>,
    pub stages: Vec<PlannedStage>,
}

impl Plan {
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.id == id)
    }

    /// Indices of the stages that depend on `i`, directly or not, including `i`.
    pub fn downstream_of(&self, i: usize) -> Vec<bool> {
        let mut mark = vec![false; self.stages.len()];
        mark[i] = true;
        for (j, stage) in self.stages.iter().enumerate() {
            if stage.inputs.iter().any(|inp| mark[inp.stage]) {
                mark[j] = true;
            }
        }
        mark
    }

    /// Indices of the stages that `i` depends on, directly or not, including `i`.
    pub fn upstream_of(&self, i: usize) -> Vec<bool> {
        let mut mark = vec![false; self.stages.len()];
        mark[i] = true;
        for j in (0..self.stages.len()).rev() {
            if mark[j] {
                for inp in &self.stages[j].inputs {
                    mark[inp.stage] = true;
                }
            }
        }
        mark
    }
}

struct Errors<'a> {
    file: &'a Path,
    list: Vec<PipelineError>,
}

impl Errors<'_> {
    /// A problem with the params of `stage` (`kind`), located by `at`.
    fn param(&mut self, at: &ParamLocations, stage: &str, kind: &str, issue: ParamIssue) {
        let place = if issue.path.is_empty() {
            String::new()
        } else {
            format!(" `{}`", issue.path.join("."))
        };
        self.at(
            &at.of(&issue),
            format!("stage `{stage}` ({kind}), param{place}: {}", issue.message),
        );
    }

    fn at(&mut self, loc: &Location, message: impl Into<String>) {
        self.list.push(PipelineError {
            file: self.file.to_path_buf(),
            line: loc.line() as u32,
            column: loc.column() as u32,
            message: message.into(),
        });
    }
}

/// Whether `recorded` (a pipeline file a record names) is another file than `file`, both found
/// from here: runs are recorded by the pipeline's name, which two files may share. False when
/// either is not found (renamed, moved, or recorded relative to another folder).
pub fn is_another_file(recorded: &Path, file: &Path) -> bool {
    match (recorded.canonicalize(), file.canonicalize()) {
        (Ok(recorded), Ok(file)) => recorded != file,
        _ => false,
    }
}

/// Reads and validates a pipeline file.
pub fn load(file: &Path) -> Result<Plan, PipelineErrors> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        PipelineErrors(vec![PipelineError {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        }])
    })?;
    parse(file, &text)
}

/// Validates pipeline text; `file` is used for messages and for resolving relative paths.
pub fn parse(file: &Path, text: &str) -> Result<Plan, PipelineErrors> {
    let raw: RawPipeline = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line() as u32, l.column() as u32))
            .unwrap_or((0, 0));
        PipelineErrors(vec![PipelineError {
            file: file.to_path_buf(),
            line,
            column,
            message: first_line(&e.to_string()),
        }])
    })?;
    let mut errors = Errors {
        file,
        list: Vec::new(),
    };

    if raw.name.value.trim().is_empty() {
        errors.at(&raw.name.referenced, "`name` must not be empty");
    }
    if raw.stages.value.is_empty() {
        errors.at(
            &raw.stages.referenced,
            "`stages` is empty: a pipeline needs at least one stage",
        );
    }
    let raw_stages = &raw.stages.value;

    // Ids first, so that inputs can refer to stages defined later in the file.
    let index = index_ids(raw_stages, &mut errors);
    let checked: Vec<CheckedStage> = raw_stages
        .iter()
        .map(|stage| check_stage(stage, &index, &mut errors))
        .collect();

    // Cycles: whatever cannot be ordered is on or behind a cycle.
    let n = raw_stages.len();
    let inputs: Vec<Vec<InputRef>> = checked.iter().map(|c| c.inputs.clone()).collect();
    let order = dependency_order(&inputs);
    if order.len() < n {
        for (i, stage) in raw_stages.iter().enumerate() {
            if !order.contains(&i) {
                errors.at(
                    &stage.id.referenced,
                    format!(
                        "stage `{}` is part of (or depends on) a cycle",
                        stage.id.value
                    ),
                );
            }
        }
    }

    if !errors.list.is_empty() {
        errors.list.sort_by_key(|e| (e.line, e.column));
        return Err(PipelineErrors(errors.list));
    }

    let settings = raw.settings.unwrap_or(RawSettings {
        seed: None,
        data_dir: None,
        models_dir: None,
        remote: None,
    });
    Ok(build_plan(
        file,
        raw.name.value,
        settings,
        raw_stages,
        &order,
        checked,
    ))
}

/// The plan of a file that passed every check: stages in dependency order, inputs renumbered
/// to that order, paths resolved against the file's folder.
fn build_plan(
    file: &Path,
    name: String,
    settings: RawSettings,
    raw_stages: &[RawStage],
    order: &[usize],
    checked: Vec<CheckedStage>,
) -> Plan {
    let n = order.len();
    let base = file.parent().unwrap_or(Path::new("."));
    let resolve = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let seed = settings.seed.unwrap_or(DEFAULT_SEED);
    let position: Vec<usize> = {
        let mut pos = vec![0; n];
        for (k, &i) in order.iter().enumerate() {
            pos[i] = k;
        }
        pos
    };
    let stages = order
        .iter()
        .map(|&i| {
            let c = &checked[i];
            PlannedStage {
                id: raw_stages[i].id.value.clone(),
                kind: c.kind.expect("validated"),
                params: c.params.clone(),
                inputs: c
                    .inputs
                    .iter()
                    .map(|r| InputRef {
                        stage: position[r.stage],
                        output: r.output.clone(),
                    })
                    .collect(),
                seed: llmembed_core::stage_seed(&c.params, seed),
                params_at: c.params_at.clone(),
            }
        })
        .collect();
    Plan {
        name,
        file: file.to_path_buf(),
        seed,
        data_dir: settings.data_dir.as_deref().map(resolve),
        models_dir: settings.models_dir.as_deref().map(resolve),
        remote: settings.remote,
        stages,
    }
}

/// Checks that stage ids are well formed and unique; returns where each id is defined.
fn index_ids<'a>(raw_stages: &'a [RawStage], errors: &mut Errors) -> HashMap<&'a str, usize> {
    let mut index: HashMap<&'a str, usize> = HashMap::new();
    for (i, stage) in raw_stages.iter().enumerate() {
        let id = stage.id.value.as_str();
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            errors.at(
                &stage.id.referenced,
                format!("stage id `{id}`: expected letters, digits, `_` or `-`"),
            );
        }
        if let Some(&first) = index.get(id) {
            errors.at(
                &stage.id.referenced,
                format!(
                    "duplicate stage id `{id}` (first defined at line {})",
                    raw_stages[first].id.referenced.line()
                ),
            );
        } else {
            index.insert(id, i);
        }
    }
    index
}

/// What one stage of the file resolved to (`None` / `Null` where it has errors).
struct CheckedStage {
    kind: Option<&'static dyn StageKind>,
    inputs: Vec<InputRef>,
    params: Value,
    params_at: ParamLocations,
}

/// Checks one stage: its kind, its inputs (against `index`), their number, its params.
fn check_stage(
    stage: &RawStage,
    index: &HashMap<&str, usize>,
    errors: &mut Errors,
) -> CheckedStage {
    let kind = registry::find(&stage.kind.value);
    if kind.is_none() {
        let known: Vec<&str> = registry::all().iter().map(|k| k.kind()).collect();
        errors.at(
            &stage.kind.referenced,
            format!(
                "unknown stage kind `{}`: expected one of {}",
                stage.kind.value,
                known.join(", ")
            ),
        );
    }

    let mut refs = Vec::new();
    for input in &stage.inputs {
        let (id, output) = match input.value.split_once('.') {
            Some((id, out)) => (id, Some(out.to_string())),
            None => (input.value.as_str(), None),
        };
        match index.get(id) {
            Some(&j) => refs.push(InputRef { stage: j, output }),
            None => errors.at(
                &input.referenced,
                format!(
                    "input `{}` of stage `{}` names no stage in this pipeline",
                    input.value, stage.id.value
                ),
            ),
        }
    }
    if let Some(kind) = kind
        && !kind.inputs().accepts(stage.inputs.len())
    {
        errors.at(
            &stage.id.referenced,
            format!(
                "stage `{}` ({}) takes {}, got {}",
                stage.id.value,
                kind.kind(),
                kind.inputs(),
                stage.inputs.len()
            ),
        );
    }

    let (map, at) = match &stage.params {
        Some(p) => (&p.value, p.referenced),
        None => (&BTreeMap::new(), stage.id.referenced),
    };
    let at = ParamLocations {
        map: at,
        each: map.iter().map(|(k, v)| (k.clone(), v.referenced)).collect(),
    };
    let json = Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect(),
    );
    let canonical = match kind.map(|k| k.validate(json, stage.inputs.len())) {
        Some(Ok(v)) => v,
        Some(Err(issue)) => {
            errors.param(&at, &stage.id.value, &stage.kind.value, issue);
            Value::Null
        }
        None => Value::Null,
    };
    CheckedStage {
        kind,
        inputs: refs,
        params: canonical,
        params_at: at,
    }
}

/// The stages in an order where each comes after its inputs (Kahn's algorithm, file order among
/// stages ready together); stages on or behind a cycle are left out.
fn dependency_order(inputs: &[Vec<InputRef>]) -> Vec<usize> {
    let n = inputs.len();
    let mut indegree = vec![0usize; n];
    for (i, refs) in inputs.iter().enumerate() {
        indegree[i] = refs.len();
    }
    let mut order = Vec::with_capacity(n);
    let mut ready: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    ready.reverse();
    while let Some(i) = ready.pop() {
        order.push(i);
        let mut next = Vec::new();
        for (j, refs) in inputs.iter().enumerate() {
            for r in refs.iter().filter(|r| r.stage == i) {
                let _ = r;
                indegree[j] -= 1;
                if indegree[j] == 0 {
                    next.push(j);
                }
            }
        }
        // Keep file order among stages that become ready together.
        next.sort_unstable_by(|a, b| b.cmp(a));
        ready.extend(next);
        ready.sort_unstable_by(|a, b| b.cmp(a));
    }
    order
}

/// The checks that look at this machine (`Stage::check_local`: a model fetched earlier, a local
/// model's config), run on a loaded plan before anything runs; each problem located like the
/// ones [`load`] finds.
pub fn check_local(plan: &Plan, env: &Env) -> Result<(), PipelineErrors> {
    let mut errors = Errors {
        file: &plan.file,
        list: Vec::new(),
    };
    for stage in &plan.stages {
        if let Err(issue) = stage.kind.check_local(&stage.params, env) {
            errors.param(&stage.params_at, &stage.id, stage.kind.kind(), issue);
        }
    }
    if errors.list.is_empty() {
        Ok(())
    } else {
        errors.list.sort_by_key(|e| (e.line, e.column));
        Err(PipelineErrors(errors.list))
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}
