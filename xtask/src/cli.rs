//! The command line of `llmembed` (the installable binary, `crates/llmembed`) and of `cargo
//! xtask` (the in-repo alias): run, inspect and clean pipelines. Both binaries are one line that
//! calls [`main`]. Arguments are parsed and the pipeline file validated before anything runs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, anyhow};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::cache::Cache;
use crate::dag::{self, DagFormat};
use crate::pipeline::{self, Plan};
use crate::runner::{self, RunOptions, Workspace};
use crate::status::{self, StageStatus};

/// Which binary is running: they differ in their name and in where the project root is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    /// `cargo xtask`: the root is the workspace this binary was built from.
    Xtask,
    /// `llmembed`: the root is the nearest folder at or above the current one that holds a
    /// `pipelines/` folder or a `cache/` folder (else the current folder), or `LLMEMBED_ROOT`.
    Llmembed,
}

#[derive(Parser)]
#[command(
    about = "Run LLM-embedding classification pipelines with a content-addressed cache",
    version = crate::version::SHORT,
    long_version = crate::version::long()
)]
struct Cli {
    /// The cache folder (default: `cache/` at the workspace root).
    #[arg(long, global = true)]
    cache: Option<PathBuf>,
    /// Where reports are copied after a run (default: `results/` at the workspace root).
    #[arg(long, global = true)]
    results: Option<PathBuf>,
    /// No progress bars or progress lines.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// A remote cache shared with other machines: s3://bucket/prefix (credentials, region and
    /// endpoint from the AWS_* variables), gs://, az:// or file:///path. Overrides the
    /// pipeline's `settings.remote`.
    #[arg(long, global = true, env = "LLMEMBED_REMOTE", value_name = "URL")]
    remote: Option<String>,
    /// Fail when the remote cache fails, instead of warning once and going on locally.
    #[arg(long, global = true)]
    remote_required: bool,
    /// Keep a copy of everything the command prints in this file (`run` keeps one in
    /// `results/<pipeline>/run.log` anyway).
    #[arg(long, global = true, value_name = "FILE")]
    log: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline, skipping every stage whose inputs are already cached.
    Run(RunArgs),
    /// For each stage: cached, or stale and why.
    Status {
        pipeline: PathBuf,
        /// One JSON object for scripts: each stage's id, kind, state, reasons and key.
        #[arg(long)]
        json: bool,
    },
    /// Each stage's artifact: its folder, files and key, and what the stage reported.
    Show {
        pipeline: PathBuf,
        /// Only this stage.
        stage: Option<String>,
        /// JSON for scripts (paths are absolute).
        #[arg(long)]
        json: bool,
    },
    /// Classify new texts with a pipeline's trained stages (never trains: says what to run if a
    /// stage is not cached). Writes id, text, label, probability and one column per class.
    Predict(PredictArgs),
    /// Serve a pipeline's classifier over HTTP: POST /v1/classify {"texts": [...]}, GET /health,
    /// GET /v1/info. Stops on Ctrl-C or SIGTERM.
    Serve(ServeArgs),
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
        /// Also remove the store folders (extraction's embedded texts, per model) that no kept
        /// artifact names, unless a rerun would resume from them or they were written in the
        /// last 24 hours. Without it they are listed.
        #[arg(long)]
        stores: bool,
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
    /// Copy the pipeline's cached artifacts (and the store folders they use) to the remote
    /// cache.
    Push { pipeline: PathBuf },
    /// Copy the pipeline's artifacts (and the store folders they use) from the remote cache,
    /// each file checked against its manifest.
    Pull { pipeline: PathBuf },
    /// Check pipeline files (by default every file in `pipelines/`) and print nothing but their
    /// errors; exits 1 if any has one.
    Check { pipelines: Vec<PathBuf> },
    /// Write (and with --submit, submit) Slurm jobs for a pipeline: an array of workers
    /// (`run --worker`) on the shared cache, then a job that runs the pipeline to its report.
    Slurm {
        pipeline: PathBuf,
        /// Tasks in the worker array.
        #[arg(long)]
        workers: usize,
        #[arg(long)]
        partition: Option<String>,
        /// Time limit of each job (Slurm's format, e.g. 2:00:00).
        #[arg(long)]
        time: Option<String>,
        /// CPUs of each job (the threads each worker uses).
        #[arg(long, default_value_t = 1)]
        cpus_per_task: usize,
        /// Memory of each job (Slurm's format, e.g. 8G).
        #[arg(long)]
        mem: Option<String>,
        /// Workers and the finishing job stop after this stage.
        #[arg(long)]
        until: Option<String>,
        /// Submit with sbatch and print the job ids.
        #[arg(long)]
        submit: bool,
    },
    /// Fetch model presets (smollm2-135m, gemma3-270m, minilm-l6, qwen2.5-coder-0.5b,
    /// qwen2.5-coder-1.5b, embeddinggemma-300m, mpnet-base) into the cache's models folder (an
    /// interrupted fetch resumes).
    Fetch {
        #[arg(required = true)]
        presets: Vec<String>,
    },
    /// Benchmarks, each measured against its peer in the same run.
    #[command(subcommand)]
    Bench(Bench),
    /// A stage kind's params (name, type, default, help), or the list of kinds; `--json`: the
    /// JSON Schema of a kind's params, or of whole pipeline files (for editors).
    Params {
        kind: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (e.g. `llmembed completions bash > ~/.local/share/bash-completion/completions/llmembed`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// What `run` takes besides the global options.
#[derive(clap::Args)]
struct RunArgs {
    pub pipeline: PathBuf,
    /// Rerun this stage and everything that depends on it (repeatable).
    #[arg(long)]
    pub force: Vec<String>,
    /// Run only this stage (its inputs must be cached).
    #[arg(long)]
    pub only: Option<String>,
    /// Run this stage and what it depends on, nothing after it.
    #[arg(long)]
    pub until: Option<String>,
    /// Print the plan (what runs and why, what is cached) and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// After a failure, keep running the stages that do not depend on it.
    #[arg(long)]
    pub keep_going: bool,
    /// Fail at once if `gc` or `verify` holds the cache instead of waiting for it.
    #[arg(long)]
    pub no_wait: bool,
    /// Help other runners on the same cache: do the stages' shared parts (extraction shards,
    /// claimed one at a time) and what they need, and exit when nothing is left to claim. The
    /// run that finishes the pipeline is a plain `run`.
    #[arg(long, conflicts_with_all = ["only", "dry_run", "force"])]
    pub worker: bool,
}

/// The default longest text `predict` and `serve` classify; a longer one gets an error.
const DEFAULT_MAX_TEXT_BYTES: usize = 64 * 1024;

#[derive(clap::Args)]
struct PredictArgs {
    pipeline: PathBuf,
    /// The classifier stage (logreg, mlp, ensemble, layer_sweep) whose predictions to make.
    #[arg(long)]
    stage: String,
    /// The texts: Parquet, CSV/TSV or JSON Lines (by extension), or - for JSON Lines on
    /// standard input.
    #[arg(long)]
    input: PathBuf,
    #[arg(long, default_value = "text")]
    text_column: String,
    /// The column of row ids (default: `id` if the file has one, else the row numbers from 1).
    #[arg(long)]
    id_column: Option<String>,
    /// Where to write: .parquet, .csv, .tsv, .jsonl, or - for JSON Lines on standard output.
    #[arg(long)]
    out: PathBuf,
    /// Longer texts are not classified (their row gets an error).
    #[arg(long, default_value_t = DEFAULT_MAX_TEXT_BYTES)]
    max_text_bytes: usize,
}

#[derive(clap::Args)]
struct ServeArgs {
    pipeline: PathBuf,
    /// The classifier stage (logreg, mlp, ensemble, layer_sweep) to serve.
    #[arg(long)]
    stage: String,
    #[command(flatten)]
    server: ServerArgs,
}

/// The server's address, limits and batching (`serve` and `bench serve`).
#[derive(clap::Args, Clone)]
struct ServerArgs {
    /// Where to listen (loopback by default; 0.0.0.0:PORT exposes it to the network).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Largest request body; larger ones get 413.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Most texts in one request; more get 422.
    #[arg(long, default_value_t = 256)]
    max_texts: usize,
    /// Longer texts get an error (the other texts of the request are classified).
    #[arg(long, default_value_t = DEFAULT_MAX_TEXT_BYTES)]
    max_text_bytes: usize,
    /// Texts of concurrent requests classified together, at most.
    #[arg(long, default_value_t = 64)]
    batch_texts: usize,
    /// How long a request waits for others to share its batch (milliseconds).
    #[arg(long, default_value_t = 5)]
    batch_wait_ms: u64,
}

impl ServerArgs {
    fn limits(&self) -> crate::serve::ServeLimits {
        crate::serve::ServeLimits {
            max_body_bytes: self.max_body_bytes,
            max_texts: self.max_texts,
            max_text_bytes: self.max_text_bytes,
            batch_texts: self.batch_texts.max(1),
            batch_wait_ms: self.batch_wait_ms,
        }
    }
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
        /// A prompt template holding `{text}` once (the stage's `prompt` param); a decoder runs
        /// the template's leading tokens once for the texts that share them.
        #[arg(long)]
        prompt: Option<String>,
        /// Pooling with `--prompt`: `mean` (over the text's tokens) or `last`.
        #[arg(long, default_value = "last", requires = "prompt")]
        pooling: String,
        /// Tokens per prompted text at most (the stage's `max_tokens`; a long template needs
        /// more than the default).
        #[arg(long, requires = "prompt")]
        max_tokens: Option<usize>,
    },
    /// The server of `serve` on a loopback port: requests/s and p50/p99 latency for 1-text and
    /// 32-text requests (AG News test texts, none seen before), and texts/s against `bench
    /// extract` on the same model in the same run.
    Serve {
        pipeline: PathBuf,
        #[arg(long)]
        stage: String,
        /// Texts sent one per request.
        #[arg(long, default_value_t = 32)]
        single: usize,
        /// Texts sent 32 per request.
        #[arg(long, default_value_t = 256)]
        batched: usize,
        /// Clients sending at once.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        #[command(flatten)]
        server: ServerArgs,
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
    Int8,
}

impl ComputeArg {
    fn dtype(self) -> llmembed_extract::ComputeDtype {
        match self {
            ComputeArg::F32 => llmembed_extract::ComputeDtype::F32,
            ComputeArg::Bf16 => llmembed_extract::ComputeDtype::Bf16,
            ComputeArg::Int8 => llmembed_extract::ComputeDtype::Int8,
        }
    }
}

/// An error already printed (and written to the run log) before the log was closed.
#[derive(Debug)]
struct AlreadyReported(anyhow::Error);

impl std::fmt::Display for AlreadyReported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for AlreadyReported {}

/// Copies a run's `run.log` and `run.json` next to the pipeline's reports, as the latest run's.
fn keep_latest(run_dir: &Path, results: &Path) {
    for name in ["run.log", "run.json"] {
        let from = run_dir.join(name);
        if from.exists()
            && let Err(e) = std::fs::read(&from)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| {
                    Ok(llmembed_core::fsutil::write_bytes_atomic(
                        &results.join(name),
                        &bytes,
                    )?)
                })
        {
            log::warn!("copy {} to {}: {e:#}", from.display(), results.display());
        }
    }
}

/// `run`: the pipeline, its run log and its record.
fn run_pipeline(cli: &Cli, args: &RunArgs, ws: Workspace) -> Result<()> {
    let RunArgs {
        pipeline,
        force,
        only,
        until,
        dry_run,
        keep_going,
        no_wait,
        worker,
    } = args;
    let plan = load(pipeline)?;
    // The checks that look at this machine (models fetched earlier, local files).
    pipeline::check_local(&plan, &ws.env(&plan))?;
    // Each run keeps its log and record in `results/<pipeline>/runs/<time>-<pid>/`; the
    // latest are copied next to the reports.
    let results = ws.results_dir.join(&plan.name);
    let record_dir = (!dry_run).then(|| {
        let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
        results
            .join("runs")
            .join(format!("{stamp}-{}", std::process::id()))
    });
    if cli.log.is_none()
        && let Some(dir) = &record_dir
    {
        // The log is a copy of what the terminal shows: a run goes on without it.
        let path = dir.join("run.log");
        if let Err(e) = crate::console::start_run_log(&path) {
            log::warn!(
                "open the run log {}: {e}; this run keeps no log",
                path.display()
            );
        }
    }
    if !dry_run {
        warn_if_another_file_reported(&results, &plan.file, &plan.name);
    }
    let opts = RunOptions {
        force: force.clone(),
        only: only.clone(),
        until: until.clone(),
        dry_run: *dry_run,
        keep_going: *keep_going,
        wait_for_lock: !*no_wait,
        record_dir: record_dir.clone(),
        worker: *worker,
    };
    let started = std::time::Instant::now();
    let result = runner::run(&plan, &ws, &opts);
    if let Ok(outcomes) = &result
        && !dry_run
    {
        let count = |f: fn(&runner::Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
        let helped = count(|o| matches!(o, runner::Outcome::Helped(_)));
        crate::outln!(
            "{}: {} stage(s), {} ran, {} cached, {} pulled,{} in {}",
            plan.name,
            outcomes.len(),
            count(|o| matches!(o, runner::Outcome::Ran(_))),
            count(|o| matches!(o, runner::Outcome::Cached(_))),
            count(|o| matches!(o, runner::Outcome::Pulled(_))),
            if *worker {
                format!(" {helped} helped,")
            } else {
                String::new()
            },
            runner::human_duration(started.elapsed().as_secs_f64())
        );
    }
    if let Some(dir) = &record_dir {
        if let Err(e) = &result {
            // Into the run log too, before it is closed.
            log::error!("{e:#}");
        }
        crate::console::stop_run_log();
        keep_latest(dir, &results);
        if let Err(e) = result {
            return Err(AlreadyReported(e).into());
        }
    } else {
        result?;
    }
    Ok(())
}

/// `status`: a line per stage (or, with `json`, what `show --json` prints).
fn print_status(plan: &Plan, ws: &Workspace, json: bool) -> Result<()> {
    let states = status::states(plan, ws)?;
    if json {
        let shown = crate::show::show(plan, ws, states, None)?;
        crate::outln!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(());
    }
    for s in states {
        let id = s.id;
        match s.status {
            _ if s.in_remote => crate::outln!("remote  {id}"),
            StageStatus::Cached => crate::outln!("cached  {id}"),
            StageStatus::Waiting(why) => crate::outln!("stale   {id}: {why}"),
            StageStatus::Stale(reasons) => {
                crate::outln!("stale   {id}:");
                for r in reasons {
                    crate::outln!("          {r}");
                }
            }
        }
    }
    // Work shared by several runners, in the stores of the pipeline's stage kinds.
    let mut kinds: Vec<_> = plan.stages.iter().map(|s| s.kind).collect();
    kinds.sort_by_key(|k| k.kind());
    kinds.dedup_by_key(|k| k.kind());
    for kind in kinds {
        for line in kind.shared_progress(&ws.cache.store_dir(kind.kind()))? {
            crate::outln!("{line}");
        }
    }
    Ok(())
}

/// `check`: each file loaded and checked against this machine, its errors printed as soon as
/// it is done, so that one bad file does not hide the next one's; then an error when any had
/// errors (counting them where there were several files).
fn check(files: &[PathBuf], ws: &Workspace) -> Result<()> {
    let mut failed = 0;
    for file in files {
        let checked = load(file).and_then(|plan| Ok(pipeline::check_local(&plan, &ws.env(&plan))?));
        if let Err(e) = checked {
            log::error!("{e:#}");
            failed += 1;
        }
    }
    match failed {
        0 => Ok(()),
        _ if files.len() == 1 => {
            Err(AlreadyReported(anyhow!("{} has errors", files[0].display())).into())
        }
        _ => Err(anyhow!(
            "{failed} of {} pipeline files have errors",
            files.len()
        )),
    }
}

/// `verify`: every artifact and store file checked in full; an error when any is damaged
/// (unless `repair` removed it).
fn verify(pipelines: &[PathBuf], ws: &Workspace, repair: bool, wait: bool) -> Result<()> {
    let plans = pipelines
        .iter()
        .map(|f| load(f))
        .collect::<Result<Vec<_>>>()?;
    let report = crate::verify::verify(&plans, ws, repair, wait)?;
    crate::verify::print(&report);
    if !report.damaged.is_empty() && !repair {
        anyhow::bail!(
            "{} damaged item(s); `llmembed verify --repair` removes them so that the next run makes them again",
            report.damaged.len()
        );
    }
    Ok(())
}

/// Warns when `results` (`results/<name>/`) holds the reports of another pipeline file with the
/// same `name`, as its latest `run.json` says: results go by name, so a copy of a file tried
/// under the original's name would replace the original's reports without a word. Quiet when
/// the recorded file is not found from here (renamed, moved, or recorded relative to another
/// folder).
fn warn_if_another_file_reported(results: &Path, file: &Path, name: &str) {
    #[derive(serde::Deserialize)]
    struct Recorded {
        pipeline_file: PathBuf,
    }
    let Ok(bytes) = std::fs::read(results.join("run.json")) else {
        return;
    };
    let Ok(recorded) = serde_json::from_slice::<Recorded>(&bytes) else {
        return;
    };
    if pipeline::is_another_file(&recorded.pipeline_file, file) {
        log::warn!(
            "{} holds the reports of {}, another pipeline file with the same `name: {name}`; \
             this run replaces them (give one of the files a `name:` of its own to keep both)",
            results.display(),
            recorded.pipeline_file.display()
        );
    }
}

/// The pipeline files named, or every `*.yaml` in the project's `pipelines/` folder.
fn pipeline_files(root: &Path, named: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if !named.is_empty() {
        return Ok(named.to_vec());
    }
    let dir = root.join("pipelines");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    v.sort();
    Ok(v)
}

fn project_root(binary: Binary) -> PathBuf {
    if let Some(root) = std::env::var_os("LLMEMBED_ROOT") {
        return PathBuf::from(root);
    }
    match binary {
        Binary::Xtask => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives in the workspace")
            .to_path_buf(),
        Binary::Llmembed => {
            let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
            cwd.ancestors()
                .find(|d| d.join("pipelines").is_dir() || d.join("cache").is_dir())
                .unwrap_or(&cwd)
                .to_path_buf()
        }
    }
}

fn load(path: &Path) -> Result<Plan> {
    Ok(pipeline::load(path)?)
}

/// Parses the arguments and runs the command; what `main` of both binaries calls.
pub fn main(binary: Binary) -> ExitCode {
    let name = match binary {
        Binary::Xtask => "cargo xtask",
        Binary::Llmembed => "llmembed",
    };
    let matches = Cli::command().name(name).bin_name(name).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    crate::console::init_logger();
    if let Some(path) = &cli.log
        && let Err(e) = crate::console::start_run_log(path)
    {
        log::error!("open the log file {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    let code = match run(cli, binary, name) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.downcast_ref::<AlreadyReported>().is_none() {
                log::error!("{e:#}");
            }
            ExitCode::FAILURE
        }
    };
    crate::console::stop_run_log();
    code
}

fn run(cli: Cli, binary: Binary, name: &str) -> Result<()> {
    let root = project_root(binary);
    let ws = || -> Result<Workspace> {
        Ok(Workspace {
            cache: Cache::new(cli.cache.clone().unwrap_or_else(|| root.join("cache")))?,
            results_dir: cli.results.clone().unwrap_or_else(|| root.join("results")),
            default_data_dir: root.join("..").join("shared").join("data"),
            quiet: cli.quiet,
            remote: cli.remote.clone(),
            remote_required: cli.remote_required,
        })
    };
    match &cli.command {
        Command::Run(args) => run_pipeline(&cli, args, ws()?)?,
        Command::Status { pipeline, json } => print_status(&load(pipeline)?, &ws()?, *json)?,
        Command::Show {
            pipeline,
            stage,
            json,
        } => {
            let plan = load(pipeline)?;
            let ws = ws()?;
            let states = status::states(&plan, &ws)?;
            let shown = crate::show::show(&plan, &ws, states, stage.as_deref())?;
            if *json {
                crate::outln!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                crate::show::print(&shown);
            }
        }
        Command::Predict(args) => {
            let opts = crate::predict::PredictOptions {
                stage: args.stage.clone(),
                input: args.input.clone(),
                text_column: args.text_column.clone(),
                id_column: args.id_column.clone(),
                out: args.out.clone(),
                max_text_bytes: args.max_text_bytes,
            };
            crate::predict::predict(&load(&args.pipeline)?, &ws()?, &opts, name)?;
        }
        Command::Serve(args) => {
            let addr = crate::serve::parse_addr(&args.server.addr)?;
            let plan = load(&args.pipeline)?;
            let chain = crate::apply::Chain::load(&plan, &ws()?, &args.stage, name, None)?;
            crate::serve::serve(chain, addr, args.server.limits())?;
        }
        Command::Push { pipeline } => {
            let plan = load(pipeline)?;
            crate::sync::print(&crate::sync::push(&plan, &ws()?)?, "pushed");
        }
        Command::Pull { pipeline } => {
            let plan = load(pipeline)?;
            crate::sync::print(&crate::sync::pull(&plan, &ws()?)?, "pulled");
        }
        Command::Params { kind, json } => {
            if *json {
                let schema = crate::params::json_schema(kind.as_deref())?;
                crate::outln!("{}", serde_json::to_string_pretty(&schema)?);
            } else {
                crate::params::print(kind.as_deref())?;
            }
        }
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), name, &mut out);
            crate::out!("{}", String::from_utf8_lossy(&out));
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
            crate::out!("{}", dag::render(&plan, format));
        }
        Command::Gc {
            pipelines,
            dry_run,
            no_wait,
            stores,
        } => {
            let files = pipeline_files(&root, pipelines)?;
            let plans = files.iter().map(|f| load(f)).collect::<Result<Vec<_>>>()?;
            let opts = crate::gc::GcOptions {
                dry_run: *dry_run,
                wait: !*no_wait,
                stores: *stores,
            };
            let report = crate::gc::gc(&plans, &ws()?, opts)?;
            crate::gc::print(&report, *dry_run);
        }
        Command::Verify {
            pipelines,
            repair,
            no_wait,
        } => verify(pipelines, &ws()?, *repair, !*no_wait)?,
        Command::Check { pipelines } => check(&pipeline_files(&root, pipelines)?, &ws()?)?,
        Command::Slurm {
            pipeline,
            workers,
            partition,
            time,
            cpus_per_task,
            mem,
            until,
            submit,
        } => {
            let plan = load(pipeline)?;
            let ws = ws()?;
            let exe = std::env::current_exe().context("find the running binary")?;
            let opts = crate::slurm::SlurmOptions {
                workers: *workers,
                partition: partition.clone(),
                time: time.clone(),
                cpus_per_task: *cpus_per_task,
                mem: mem.clone(),
                until: until.clone(),
                submit: *submit,
            };
            let written = crate::slurm::write(
                pipeline,
                &plan.name,
                &root,
                &ws.cache.root,
                &ws.results_dir,
                &exe,
                &opts,
            )?;
            crate::slurm::print(&written, *workers);
        }
        Command::Fetch { presets } => {
            crate::tools::fetch(presets, &ws()?.cache.models_dir())?;
        }
        Command::Bench(Bench::Logreg {
            pipeline,
            stage,
            column,
            c,
            python,
        }) => {
            let plan = load(pipeline)?;
            crate::tools::bench_logreg(&plan, &ws()?, stage, column, *c, python)?;
        }
        Command::Bench(Bench::Extract {
            model,
            texts,
            batch_tokens,
            compute,
            prompt,
            pooling,
            max_tokens,
        }) => {
            let prompt = prompt.as_ref().map(|t| crate::tools::BenchPrompt {
                template: t.clone(),
                pooling: pooling.clone(),
                max_tokens: *max_tokens,
            });
            let ws = ws()?;
            let data_dir = std::env::var_os("LLMEMBED_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| ws.default_data_dir.clone());
            crate::tools::bench_extract(
                &ws.cache.models_dir(),
                &data_dir,
                model,
                *texts,
                *batch_tokens,
                compute.dtype(),
                prompt.as_ref(),
            )?;
        }
        Command::Bench(Bench::Serve {
            pipeline,
            stage,
            single,
            batched,
            clients,
            server,
        }) => {
            let opts = crate::bench_serve::BenchServeOptions {
                stage: stage.clone(),
                single: *single,
                batched: *batched,
                clients: *clients,
                limits: server.limits(),
            };
            crate::bench_serve::bench_serve(&load(pipeline)?, &ws()?, &opts, name)?;
        }
    }
    Ok(())
}
