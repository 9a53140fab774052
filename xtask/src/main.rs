//! `cargo xtask`: run, inspect and clean pipelines. Arguments are parsed and the pipeline file
//! validated before anything runs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use xtask::cache::Cache;
use xtask::dag::{self, DagFormat};
use xtask::pipeline::{self, Plan};
use xtask::runner::{self, RunOptions, Workspace};
use xtask::status::{self, StageStatus};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Run LLM-embedding classification pipelines with a content-addressed cache"
)]
struct Cli {
    /// The cache folder (default: `cache/` at the workspace root).
    #[arg(long, global = true)]
    cache: Option<PathBuf>,
    /// Where reports are copied after a run (default: `results/` at the workspace root).
    #[arg(long, global = true)]
    results: Option<PathBuf>,
    /// No progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline, skipping every stage whose inputs are already cached.
    Run {
        pipeline: PathBuf,
        /// Rerun this stage and everything that depends on it (repeatable).
        #[arg(long)]
        force: Vec<String>,
        /// Run only this stage (its inputs must be cached).
        #[arg(long)]
        only: Option<String>,
        /// Run this stage and what it depends on, nothing after it.
        #[arg(long)]
        until: Option<String>,
        /// Print the plan (what runs and why, what is cached) and run nothing.
        #[arg(long)]
        dry_run: bool,
        /// After a failure, keep running the stages that do not depend on it.
        #[arg(long)]
        keep_going: bool,
        /// Fail at once if another runner holds the cache instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// For each stage: cached, or stale and why.
    Status { pipeline: PathBuf },
    /// Print the pipeline graph.
    Dag {
        pipeline: PathBuf,
        #[arg(long)]
        mermaid: bool,
        #[arg(long)]
        dot: bool,
    },
    /// Remove artifacts not used by the named pipelines (default: all in `pipelines/`),
    /// quarantined artifacts and leftovers of interrupted runs. Waits for a run in progress.
    Gc {
        pipelines: Vec<PathBuf>,
        /// List what would be removed, with sizes (and what a run in progress keeps).
        #[arg(long)]
        dry_run: bool,
        /// Fail at once if another command holds the cache instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Check every artifact (or those of the named pipelines) and every store file in full
    /// against its recorded blake3; exits 1 if any is damaged.
    Verify {
        pipelines: Vec<PathBuf>,
        /// Remove damaged artifacts and quarantine damaged store files, so that the next run
        /// makes them again.
        #[arg(long)]
        repair: bool,
        /// Fail at once if another command holds the cache instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Check a pipeline file and print nothing but its errors.
    Check { pipeline: PathBuf },
    /// Fetch model presets (smollm2-135m, gemma3-270m, minilm-l6) into the cache's models folder.
    Fetch {
        #[arg(required = true)]
        presets: Vec<String>,
    },
    /// Benchmarks, each measured against its peer in the same run.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
enum Bench {
    /// Embed AG News test texts with a model preset: texts/s, real tokens/s, peak memory.
    Extract {
        #[arg(long, default_value = "smollm2-135m")]
        model: String,
        #[arg(long, default_value_t = 500)]
        texts: usize,
        /// Tokens per forward batch (default: the extract stage's default).
        #[arg(long)]
        batch_tokens: Option<usize>,
        #[arg(long, value_enum, default_value = "f32")]
        compute: ComputeArg,
    },
    /// Logistic regression (linfa and the exact L-BFGS) against scikit-learn on a cached
    /// stage's features.
    Logreg {
        pipeline: PathBuf,
        /// The stage whose train/test features to use (default: `fused`).
        #[arg(long, default_value = "fused")]
        stage: String,
        #[arg(long, default_value = "embedding")]
        column: String,
        #[arg(long, default_value_t = 1.0)]
        c: f64,
        /// A Python with scikit-learn and pyarrow.
        #[arg(long, env = "LLMEMBED_PYTHON", default_value = "python3")]
        python: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ComputeArg {
    F32,
    Bf16,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn load(path: &Path) -> Result<Plan> {
    Ok(pipeline::load(path)?)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root();
    let ws = || -> Result<Workspace> {
        Ok(Workspace {
            cache: Cache::new(cli.cache.clone().unwrap_or_else(|| root.join("cache")))?,
            results_dir: cli.results.clone().unwrap_or_else(|| root.join("results")),
            default_data_dir: root.join("..").join("shared").join("data"),
            quiet: cli.quiet,
        })
    };
    match &cli.command {
        Command::Run {
            pipeline,
            force,
            only,
            until,
            dry_run,
            keep_going,
            no_wait,
        } => {
            let plan = load(pipeline)?;
            let ws = ws()?;
            // The checks that look at this machine (models fetched earlier, local files).
            pipeline::check_local(&plan, &ws.env(&plan))?;
            let opts = RunOptions {
                force: force.clone(),
                only: only.clone(),
                until: until.clone(),
                dry_run: *dry_run,
                keep_going: *keep_going,
                wait_for_lock: !*no_wait,
            };
            let started = std::time::Instant::now();
            let outcomes = runner::run(&plan, &ws, &opts)?;
            let ran = outcomes
                .iter()
                .filter(|o| matches!(o, runner::Outcome::Ran(_)))
                .count();
            if !dry_run {
                xtask::outln!(
                    "{}: {} stage(s), {ran} ran, {} cached, in {}",
                    plan.name,
                    outcomes.len(),
                    outcomes
                        .iter()
                        .filter(|o| matches!(o, runner::Outcome::Cached(_)))
                        .count(),
                    runner::human_duration(started.elapsed().as_secs_f64())
                );
            }
        }
        Command::Status { pipeline } => {
            let plan = load(pipeline)?;
            for (id, st) in status::status(&plan, &ws()?)? {
                match st {
                    StageStatus::Cached => xtask::outln!("cached  {id}"),
                    StageStatus::Waiting(why) => xtask::outln!("stale   {id}: {why}"),
                    StageStatus::Stale(reasons) => {
                        xtask::outln!("stale   {id}:");
                        for r in reasons {
                            xtask::outln!("          {r}");
                        }
                    }
                }
            }
        }
        Command::Dag {
            pipeline,
            mermaid,
            dot,
        } => {
            let plan = load(pipeline)?;
            let format = match (mermaid, dot) {
                (true, _) => DagFormat::Mermaid,
                (_, true) => DagFormat::Dot,
                _ => DagFormat::Text,
            };
            xtask::out!("{}", dag::render(&plan, format));
        }
        Command::Gc {
            pipelines,
            dry_run,
            no_wait,
        } => {
            let files: Vec<PathBuf> = if pipelines.is_empty() {
                let dir = root.join("pipelines");
                let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .with_context(|| format!("read {}", dir.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                    .collect();
                v.sort();
                v
            } else {
                pipelines.clone()
            };
            let plans = files.iter().map(|f| load(f)).collect::<Result<Vec<_>>>()?;
            let report = xtask::gc::gc(&plans, &ws()?, *dry_run, !*no_wait)?;
            xtask::gc::print(&report, *dry_run);
        }
        Command::Verify {
            pipelines,
            repair,
            no_wait,
        } => {
            let plans = pipelines
                .iter()
                .map(|f| load(f))
                .collect::<Result<Vec<_>>>()?;
            let report = xtask::verify::verify(&plans, &ws()?, *repair, !*no_wait)?;
            xtask::verify::print(&report);
            if !report.damaged.is_empty() && !*repair {
                anyhow::bail!(
                    "{} damaged item(s); `cargo xtask verify --repair` removes them so that the next run makes them again",
                    report.damaged.len()
                );
            }
        }
        Command::Check { pipeline } => {
            let plan = load(pipeline)?;
            pipeline::check_local(&plan, &ws()?.env(&plan))?;
        }
        Command::Fetch { presets } => {
            xtask::tools::fetch(presets, &ws()?.cache.models_dir())?;
        }
        Command::Bench(Bench::Logreg {
            pipeline,
            stage,
            column,
            c,
            python,
        }) => {
            let plan = load(pipeline)?;
            xtask::tools::bench_logreg(&plan, &ws()?, stage, column, *c, python)?;
        }
        Command::Bench(Bench::Extract {
            model,
            texts,
            batch_tokens,
            compute,
        }) => {
            let ws = ws()?;
            let data_dir = std::env::var_os("LLMEMBED_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| ws.default_data_dir.clone());
            let compute = match compute {
                ComputeArg::F32 => llmembed_extract::ComputeDtype::F32,
                ComputeArg::Bf16 => llmembed_extract::ComputeDtype::Bf16,
            };
            xtask::tools::bench_extract(
                &ws.cache.models_dir(),
                &data_dir,
                model,
                *texts,
                *batch_tokens,
                compute,
            )?;
        }
    }
    Ok(())
}
