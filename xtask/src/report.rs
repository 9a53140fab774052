//! What a run tells its user: one line per stage with the figures first, and a record of the
//! whole run (`run.json`) that says what ran where, with which binary, from which artifacts.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::pipeline::{Plan, PlannedStage};
use crate::runner::Outcome;

/// Prints the line of one stage: state, id, time, rows, rows per second, then the stage's notes.
/// The ids take `plan`'s [`id_width`], so that the columns after them line up in every line.
pub fn print_outcome(plan: &Plan, stage: &PlannedStage, outcome: &Outcome, dry_run: bool) {
    let (id, w) = (&stage.id, id_width(plan));
    let line = match outcome {
        Outcome::Cached(m) | Outcome::Pulled(m) => format!(
            "{:<8} {id:<w$} {:>9} {:>9} rows",
            if matches!(outcome, Outcome::Cached(_)) {
                "cached"
            } else {
                "pulled"
            },
            "-",
            thousands(m.rows_out)
        ),
        Outcome::Ran(m) => {
            let mut s = format!(
                "ran      {id:<w$} {:>9} {:>9} rows {:>9}/s",
                human_duration(m.seconds),
                thousands(m.rows_out),
                thousands(rate(m.rows_out, m.seconds) as usize)
            );
            let mut notes = Vec::new();
            if let Some(peak) = m.peak_rss_bytes {
                notes.push(format!("peak RSS {}", crate::rss::human(peak)));
            }
            notes.extend(m.notes.iter().cloned());
            if !notes.is_empty() {
                s.push_str("  ");
                s.push_str(&notes.join("; "));
            }
            s
        }
        Outcome::WouldRun(why) => format!(
            "{} {id:<w$} ({why})",
            if dry_run { "will run" } else { "stale   " }
        ),
        Outcome::Failed(e) => format!("FAILED   {id:<w$} {e}"),
        Outcome::Skipped(why) => format!("skipped  {id:<w$} ({why})"),
        Outcome::Helped(notes) => format!("helped   {id:<w$} {}", notes.join("; ")),
    };
    crate::outln!("{line}");
}

/// The width of the id column: the plan's longest id, and at least 24.
fn id_width(plan: &Plan) -> usize {
    plan.stages
        .iter()
        .map(|s| s.id.chars().count())
        .max()
        .unwrap_or(0)
        .max(24)
}

fn rate(rows: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        rows as f64 / seconds
    } else {
        0.0
    }
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

/// `run.json`: one run of one pipeline.
#[derive(Serialize)]
pub struct RunRecord {
    pub pipeline: String,
    pub pipeline_file: String,
    /// When the record was written (UTC, RFC 3339).
    pub finished: String,
    pub seconds: f64,
    pub llmembed_version: &'static str,
    pub git_commit: &'static str,
    pub cpu: String,
    pub kernels: String,
    pub ok: bool,
    pub stages: Vec<StageRecord>,
}

#[derive(Serialize)]
pub struct StageRecord {
    pub id: String,
    pub kind: String,
    /// The stage kind's `VERSION` (part of its key).
    pub version: u32,
    /// `ran`, `cached`, `pulled` (from the remote cache), `failed` or `skipped`.
    pub status: &'static str,
    /// The artifact's key (its folder under `cache/artifacts/`), when there is one.
    pub key: Option<String>,
    /// Seconds the stage took when it was made (also for a cached stage: when it was made).
    pub seconds: Option<f64>,
    pub rows: Option<usize>,
    /// The stage's peak resident memory in bytes when it was made (Linux), as its manifest says.
    pub peak_rss_bytes: Option<u64>,
    /// The error, or why the stage was skipped.
    pub message: Option<String>,
}

impl RunRecord {
    pub fn new(plan: &Plan, outcomes: &[Outcome], elapsed: Duration) -> RunRecord {
        let stages = plan
            .stages
            .iter()
            .zip(outcomes)
            .map(|(stage, outcome)| {
                let (status, manifest, message) = match outcome {
                    Outcome::Ran(m) => ("ran", Some(m), None),
                    Outcome::Cached(m) => ("cached", Some(m), None),
                    Outcome::Pulled(m) => ("pulled", Some(m), None),
                    Outcome::Failed(e) => ("failed", None, Some(e.clone())),
                    Outcome::Skipped(why) | Outcome::WouldRun(why) => {
                        ("skipped", None, Some(why.clone()))
                    }
                    Outcome::Helped(notes) => ("helped", None, Some(notes.join("; "))),
                };
                StageRecord {
                    id: stage.id.clone(),
                    kind: stage.kind.kind().to_string(),
                    version: stage.kind.version(),
                    status,
                    key: manifest.map(|m| m.key.clone()),
                    seconds: manifest.map(|m| m.seconds),
                    rows: manifest.map(|m| m.rows_out),
                    peak_rss_bytes: manifest.and_then(|m| m.peak_rss_bytes),
                    message,
                }
            })
            .collect::<Vec<_>>();
        RunRecord {
            pipeline: plan.name.clone(),
            pipeline_file: plan.file.display().to_string(),
            finished: jiff::Timestamp::now().to_string(),
            seconds: elapsed.as_secs_f64(),
            llmembed_version: env!("CARGO_PKG_VERSION"),
            git_commit: crate::version::GIT_COMMIT,
            cpu: crate::version::cpu_name(),
            kernels: llmembed_kernels::in_use(),
            ok: stages
                .iter()
                .all(|s| matches!(s.status, "ran" | "cached" | "pulled")),
            stages,
        }
    }

    /// Writes `run.json` into `dir` (atomically).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join("run.json");
        let json = serde_json::to_vec_pretty(self).expect("run record serializes");
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        llmembed_core::fsutil::write_bytes_atomic(&path, &json)
            .with_context(|| format!("write the run record {}", path.display()))
    }
}
