//! `slurm`: the sbatch scripts that run a pipeline on a Slurm cluster, the binary built here on
//! every node (no cargo there): a job array of workers (`run --worker`: extraction shards,
//! claimed through the shared cache) and a finishing job, after the array (`afterany`: a
//! cancelled or failed worker's shards are taken over by it), that runs the whole pipeline to its
//! report and checks that every stage is cached.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// What `slurm` takes.
pub struct SlurmOptions {
    pub workers: usize,
    pub partition: Option<String>,
    pub time: Option<String>,
    pub cpus_per_task: usize,
    pub mem: Option<String>,
    pub until: Option<String>,
    pub submit: bool,
}

/// The scripts written, and with `submit` the job ids.
pub struct Written {
    pub dir: PathBuf,
    pub worker_script: PathBuf,
    pub finish_script: PathBuf,
    pub logs: PathBuf,
    /// (array job id, finishing job id)
    pub jobs: Option<(String, String)>,
}

/// Single quotes for the shell.
fn sh(s: &Path) -> String {
    format!("'{}'", s.display().to_string().replace('\'', r"'\''"))
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

fn header(name: &str, o: &SlurmOptions, root: &Path, log: &Path) -> String {
    let mut s = String::from("#!/bin/bash\n");
    let _ = writeln!(s, "#SBATCH --job-name={name}");
    let _ = writeln!(s, "#SBATCH --output={}", log.display());
    let _ = writeln!(s, "#SBATCH --chdir={}", root.display());
    let _ = writeln!(s, "#SBATCH --cpus-per-task={}", o.cpus_per_task);
    if let Some(p) = &o.partition {
        let _ = writeln!(s, "#SBATCH --partition={p}");
    }
    if let Some(t) = &o.time {
        let _ = writeln!(s, "#SBATCH --time={t}");
    }
    if let Some(m) = &o.mem {
        let _ = writeln!(s, "#SBATCH --mem={m}");
    }
    s
}

/// Writes the two scripts for `pipeline` into `results/<name>/slurm/<time>/` and, with
/// `submit`, submits them. `cache` and `results` are the folders every job uses (on a shared
/// filesystem); `exe` is the binary the jobs run.
pub fn write(
    pipeline: &Path,
    name: &str,
    root: &Path,
    cache: &Path,
    results: &Path,
    exe: &Path,
    o: &SlurmOptions,
) -> Result<Written> {
    if o.workers == 0 {
        bail!("--workers must be at least 1");
    }
    if o.cpus_per_task == 0 {
        bail!("--cpus-per-task must be at least 1");
    }
    let (pipeline, cache, results) = (absolute(pipeline)?, absolute(cache)?, absolute(results)?);
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
    let dir = results
        .join(name)
        .join("slurm")
        .join(format!("{stamp}-{}", std::process::id()));
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
    let common = format!(
        "{} --cache {} --results {}",
        sh(exe),
        sh(&cache),
        sh(&results)
    );
    let until = o
        .until
        .as_ref()
        .map(|u| format!(" --until '{}'", u.replace('\'', r"'\''")))
        .unwrap_or_default();
    // Each worker uses the CPUs Slurm gave it, not every core of its node (task/none binds
    // nothing, so rayon would otherwise see them all).
    let threads = "export RAYON_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}\n";

    let mut worker = header(
        &format!("llmembed-{name}-worker"),
        o,
        root,
        &logs.join("worker-%A_%a.out"),
    );
    let _ = writeln!(worker, "#SBATCH --array=0-{}", o.workers - 1);
    worker.push_str("set -euo pipefail\n");
    worker.push_str(threads);
    let _ = writeln!(
        worker,
        "echo \"worker $SLURM_ARRAY_TASK_ID of {} on $(hostname), job $SLURM_JOB_ID\"",
        o.workers
    );
    let _ = writeln!(
        worker,
        "exec {common} run {}{until} --worker",
        sh(&pipeline)
    );

    let mut finish = header(
        &format!("llmembed-{name}-finish"),
        o,
        root,
        &logs.join("finish-%j.out"),
    );
    finish.push_str("set -euo pipefail\n");
    finish.push_str(threads);
    finish.push_str(
        "# After the array, whatever became of its tasks (afterany): the shards of a worker that\n\
         # was cancelled or failed are taken over here, and the run goes to the report.\n",
    );
    let _ = writeln!(finish, "{common} run {}{until}", sh(&pipeline));
    finish.push_str("# The check: every stage of the pipeline is cached now.\n");
    let _ = writeln!(
        finish,
        "if {common} status {} | grep -E '^stale'; then echo 'stages still stale after the run' >&2; exit 1; fi",
        sh(&pipeline)
    );

    let worker_script = dir.join("worker.sbatch");
    let finish_script = dir.join("finish.sbatch");
    llmembed_core::fsutil::write_bytes_atomic(&worker_script, worker.as_bytes())?;
    llmembed_core::fsutil::write_bytes_atomic(&finish_script, finish.as_bytes())?;
    let submit_sh = format!(
        "#!/bin/bash\n# Submits the worker array, then the finishing job after it.\nset -euo pipefail\n\
         array=$(sbatch --parsable {})\nfinish=$(sbatch --parsable --dependency=afterany:${{array%%;*}} {})\n\
         echo \"array job $array, finishing job $finish\"\n",
        sh(&worker_script),
        sh(&finish_script)
    );
    llmembed_core::fsutil::write_bytes_atomic(&dir.join("submit.sh"), submit_sh.as_bytes())?;

    let jobs = if o.submit {
        let array = sbatch(&[], &worker_script)?;
        let finish = sbatch(&[format!("--dependency=afterany:{array}")], &finish_script)?;
        Some((array, finish))
    } else {
        None
    };
    Ok(Written {
        dir,
        worker_script,
        finish_script,
        logs,
        jobs,
    })
}

/// Submits a script; returns its job id.
fn sbatch(args: &[String], script: &Path) -> Result<String> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .arg(script)
        .output()
        .context("run sbatch (is Slurm installed and its controller reachable?)")?;
    if !out.status.success() {
        bail!(
            "sbatch {} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // `--parsable` prints `id` or `id;cluster`.
    Ok(id.split(';').next().unwrap_or_default().to_string())
}

/// What `slurm` prints.
pub fn print(w: &Written, workers: usize) {
    crate::outln!("worker array: {}", w.worker_script.display());
    crate::outln!("finishing job: {}", w.finish_script.display());
    match &w.jobs {
        Some((array, finish)) => {
            crate::outln!(
                "submitted array job {array} ({workers} workers) and finishing job {finish} (afterany:{array})"
            );
            crate::outln!(
                "logs: {} (worker-{array}_<task>.out, finish-{finish}.out)",
                w.logs.display()
            );
        }
        None => {
            crate::outln!("logs will go to {}", w.logs.display());
            crate::outln!("submit with: bash {}", w.dir.join("submit.sh").display());
        }
    }
}
