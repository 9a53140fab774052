//! Many runners on one cache: worker processes sharing an extraction through the store's shard
//! claims, with and without Slurm. Every scenario ends with the artifacts of a single-process
//! run, byte for byte.
//!
//! The Slurm tests need a running cluster (`scripts/slurm/start-local-cluster.sh`); without one
//! they print why they skip, unless `LLMEMBED_SLURM_EXPECTED=1` (CI starts the cluster and sets
//! it), where a missing cluster is a missing test input.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Fixture, ag_news, needs};

/// Texts: 80 train + 20 test per class of AG News's 4 (400, in shards of 20).
const TRAIN: usize = 80;
const TEST: usize = 20;
const SHARD_ROWS: usize = 20;

/// The test pipeline: AG News sample, SmolLM2 layer 8, logistic regression, evaluate.
fn pipeline_text(models: &Path) -> String {
    llmembed_testkit::pipeline_header("cluster", 7, Some(models))
        + &llmembed_testkit::ag_news_stage(TRAIN, TEST)
        + &llmembed_testkit::smollm2_stage("[8]", SHARD_ROWS)
        + "  - id: lr\n    kind: logreg\n    inputs: [llm]\n    params:\n      c: 1\n  \
           - id: report\n    kind: evaluate\n    inputs: [lr]\n"
}

/// What every process here logs: the runner's lines, and each shard a process publishes.
const RUST_LOG: &str = "warn,xtask=info,llmembed=info,llmembed_extract=debug";

fn xtask(fx: &Fixture) -> Command {
    let mut cmd = fx.xtask();
    cmd.env("RUST_LOG", RUST_LOG)
        .env("LLMEMBED_CLAIM_HEARTBEAT_SECS", "0.5");
    cmd
}

/// Every artifact file but the manifests (which hold timings), by stage folder and name.
fn artifact_bytes(cache: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for dir in fs::read_dir(cache.join("artifacts")).unwrap() {
        let dir = dir.unwrap().path();
        for f in fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.file_name().unwrap() == "manifest.json" {
                continue;
            }
            let name = format!(
                "{}/{}",
                dir.file_name().unwrap().to_string_lossy(),
                f.file_name().unwrap().to_string_lossy()
            );
            out.insert(name, fs::read(&f).unwrap());
        }
    }
    out
}

/// The single-process run every scenario is compared with: (artifacts, report.md), made once.
fn reference() -> &'static (BTreeMap<String, Vec<u8>>, String) {
    static REF: OnceLock<(BTreeMap<String, Vec<u8>>, String)> = OnceLock::new();
    REF.get_or_init(|| {
        let fx = Fixture::new();
        let models = llmembed_testkit::models_dir();
        let file = fx.write_pipeline("p.yaml", &pipeline_text(&models));
        let out = xtask(&fx).arg("run").arg(&file).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report =
            fs::read_to_string(fx.results_dir().join("cluster").join("report.md")).unwrap();
        let bytes = artifact_bytes(&fx.cache_dir());
        // Kept alive for the process: the fixture's folder goes when the binary exits.
        std::mem::forget(fx);
        (bytes, report)
    })
}

/// The scenarios run one at a time: each starts several processes (or Slurm jobs) on a
/// two-core machine, and the Slurm ones share one small cluster.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn inputs() -> Option<PathBuf> {
    needs("AG News", ag_news())?;
    needs("SmolLM2-135M", common::models_dir_with("smollm2-135m"))
}

/// The shards each log says its process published: `(plan, index)` -> how many times.
fn published(logs: &[String]) -> BTreeMap<(String, usize), usize> {
    let mut out = BTreeMap::new();
    for log in logs {
        for line in log.lines() {
            if let Some(rest) = line.split("extract: published shard ").nth(1) {
                let (index, plan) = rest.split_once(" of plan ").unwrap();
                *out.entry((plan.trim().to_string(), index.parse().unwrap()))
                    .or_insert(0) += 1;
            }
        }
    }
    out
}

/// The store's shard files and what dead processes may have left in it.
fn store_files(cache: &Path) -> (usize, Vec<PathBuf>) {
    let mut shards = 0;
    let mut leftovers = Vec::new();
    let root = cache.join("stores").join("extract");
    for fp in fs::read_dir(&root).unwrap() {
        let fp = fp.unwrap().path();
        for f in fs::read_dir(&fp).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".parquet") {
                shards += 1;
            } else if name == ".claims" {
                leftovers.extend(fs::read_dir(&f).unwrap().map(|e| e.unwrap().path()));
            } else if name.starts_with('.') {
                leftovers.push(f);
            }
        }
    }
    leftovers.extend(
        fs::read_dir(cache.join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    (shards, leftovers)
}

/// A small deterministic generator (the test's own choices; no seed to thread through).
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn spawn_worker(fx: &Fixture, file: &Path, n: usize) -> (Child, PathBuf) {
    let log = fx.dir.path().join(format!("worker-{n}.log"));
    let child = xtask(fx)
        .env("RAYON_NUM_THREADS", "1")
        .arg("run")
        .arg(file)
        .arg("--worker")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (child, log)
}

/// 4 workers on one cache, 20 of them SIGKILLed at random moments (each replaced by a new
/// one), then the finishing run: artifacts byte-identical to one process's, every shard
/// published once by whoever held it (a killed holder publishes nothing; its shard is taken
/// over), no claim or temporary file left.
#[test]
fn workers_killed_at_random_leave_the_bytes_of_a_single_process() {
    let _serial = one_at_a_time();
    let Some(models) = inputs() else { return };
    let (expected, expected_report) = reference();
    let fx = Fixture::new();
    let file = fx.write_pipeline("p.yaml", &pipeline_text(&models));
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut started = 0;
    let mut workers: Vec<(Child, PathBuf)> = Vec::new();
    let mut logs: Vec<PathBuf> = Vec::new();
    for _ in 0..4 {
        workers.push(spawn_worker(&fx, &file, started));
        started += 1;
    }
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while kills < 20 && !workers.is_empty() {
        assert!(
            Instant::now() < deadline,
            "workers still running after 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(300 + rng.below(1200)));
        // Workers that finished on their own are done.
        workers.retain_mut(|(c, log)| {
            let done = c.try_wait().unwrap().is_some();
            if done {
                logs.push(log.clone());
            }
            !done
        });
        if workers.is_empty() {
            break;
        }
        let victim = rng.below(workers.len() as u64) as usize;
        let (mut child, log) = workers.swap_remove(victim);
        child.kill().unwrap();
        child.wait().unwrap();
        logs.push(log);
        kills += 1;
        workers.push(spawn_worker(&fx, &file, started));
        started += 1;
    }
    for (mut c, log) in workers {
        c.wait().unwrap();
        logs.push(log);
    }
    let finish_log = fx.dir.path().join("finish.log");
    let out = xtask(&fx)
        .arg("run")
        .arg(&file)
        .stderr(fs::File::create(&finish_log).unwrap())
        .output()
        .unwrap();
    logs.push(finish_log.clone());
    let texts: Vec<String> = logs
        .iter()
        .map(|l| fs::read_to_string(l).unwrap())
        .collect();
    assert!(out.status.success(), "{}", texts.last().unwrap());
    eprintln!("{started} workers started, {kills} killed");

    let counts = published(&texts);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "shards published more than once: {twice:?}"
    );
    let (shards, leftovers) = store_files(&fx.cache_dir());
    assert_eq!(shards, (TRAIN + TEST) * 4 / SHARD_ROWS);
    // A holder killed between the rename and its log line published without saying so.
    assert!(counts.len() <= shards && counts.len() + kills >= shards);
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    assert_eq!(&artifact_bytes(&fx.cache_dir()), expected);
    let report = fs::read_to_string(fx.results_dir().join("cluster").join("report.md")).unwrap();
    assert_eq!(&report, expected_report);
}

/// A worker stopped (SIGSTOP) while it holds a shard stops its heartbeat: once the claim is
/// older than `LLMEMBED_CLAIM_STALE_SECS`, the run takes the shard over and finishes, not before.
#[test]
fn a_stale_claim_is_taken_over_after_the_timeout() {
    let _serial = one_at_a_time();
    let Some(models) = inputs() else { return };
    let (expected, _) = reference();
    let fx = Fixture::new();
    let file = fx.write_pipeline("p.yaml", &pipeline_text(&models));
    let (mut stopped, _) = spawn_worker(&fx, &file, 0);
    let pid = stopped.id();
    let claims = |cache: &Path| -> Vec<PathBuf> {
        let root = cache.join("stores").join("extract");
        fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flat_map(|fp| {
                fs::read_dir(fp.unwrap().path().join(".claims"))
                    .into_iter()
                    .flatten()
            })
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let held = loop {
        assert!(
            Instant::now() < deadline,
            "the worker never claimed a shard"
        );
        if let Some(c) = claims(&fx.cache_dir())
            .into_iter()
            .find(|c| fs::read_to_string(c).is_ok_and(|s| s.contains(&format!("\"pid\":{pid},"))))
        {
            break c;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    let stopped_at = Instant::now();
    let status = xtask(&fx).arg("status").arg(&file).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.contains("shards done, 1 claimed"), "{status}");
    assert!(status.contains(&format!("pid {pid}, claimed")), "{status}");
    let out = xtask(&fx)
        .env("LLMEMBED_CLAIM_STALE_SECS", "4")
        .arg("run")
        .arg(&file)
        .output()
        .unwrap();
    let waited = stopped_at.elapsed();
    let _ = stopped.kill();
    stopped.wait().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let index: usize = held
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .rsplit('-')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        err.contains(&format!("took over shard {index} of plan")),
        "{err}"
    );
    assert!(
        waited >= Duration::from_secs(4),
        "taken over after {waited:?}"
    );
    assert_eq!(&artifact_bytes(&fx.cache_dir()), expected);
    let (_, leftovers) = store_files(&fx.cache_dir());
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

// ---- Slurm ----

/// Whether the local cluster is up (a node idle or in use), or why not.
fn slurm() -> Result<(), String> {
    let out = Command::new("sinfo")
        .args(["-h", "-o", "%t"])
        .output()
        .map_err(|e| format!("sinfo: {e} (start scripts/slurm/start-local-cluster.sh)"))?;
    let states = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success()
        && states
            .lines()
            .any(|s| s.starts_with("idle") || s.starts_with("mix") || s.starts_with("alloc"))
    {
        Ok(())
    } else {
        Err(format!(
            "no usable Slurm node (sinfo: {} {}); start scripts/slurm/start-local-cluster.sh",
            states.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The cluster, or `None` after saying why the test does not run.
fn needs_slurm() -> Option<()> {
    if std::env::var("LLMEMBED_SLURM_EXPECTED").is_ok_and(|v| v == "1") {
        return needs("a Slurm cluster", slurm());
    }
    match slurm() {
        Ok(()) => Some(()),
        Err(why) => {
            eprintln!("SKIP (set LLMEMBED_SLURM_EXPECTED=1 to require it): {why}");
            None
        }
    }
}

/// `slurm --submit` in `fx`: (array job, finishing job, the folder of the logs).
fn submit(fx: &Fixture, file: &Path) -> (String, String, PathBuf) {
    let out = xtask(fx)
        .args([
            "slurm",
            "--workers",
            "3",
            "--cpus-per-task",
            "1",
            "--submit",
        ])
        .arg(file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("submitted array job "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let (array, finish) = (words[3].to_string(), words[9].to_string());
    let logs = stdout
        .lines()
        .find_map(|l| l.strip_prefix("logs: "))
        .and_then(|l| l.split(" (").next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{stdout}"));
    (array, finish, logs)
}

/// `scontrol`'s state of a job (for an array, of its first task still known).
fn job_state(id: &str) -> String {
    let out = Command::new("scontrol")
        .args(["show", "job", id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("JobState="))
        .unwrap_or("GONE")
        .to_string()
}

fn wait_for_job(id: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let state = job_state(id);
        if !matches!(
            state.as_str(),
            "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING"
        ) {
            return state;
        }
        assert!(Instant::now() < deadline, "job {id} still {state}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn read_logs(dir: &Path) -> Vec<String> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v.iter().map(|p| fs::read_to_string(p).unwrap()).collect()
}

/// A 3-task worker array and its finishing job: the report of a single-process run, artifact
/// bytes identical, each shard published once.
#[test]
fn slurm_array_of_three_workers_gives_the_single_process_bytes() {
    let _serial = one_at_a_time();
    let Some(models) = inputs() else { return };
    let Some(()) = needs_slurm() else { return };
    let (expected, expected_report) = reference();
    let fx = Fixture::new();
    let file = fx.write_pipeline("p.yaml", &pipeline_text(&models));
    let (array, finish, logs) = submit(&fx, &file);
    let state = wait_for_job(&finish, Duration::from_secs(900));
    let texts = read_logs(&logs);
    assert_eq!(state, "COMPLETED", "{}", texts.join("\n----\n"));
    let counts = published(&texts);
    assert_eq!(counts.len(), (TRAIN + TEST) * 4 / SHARD_ROWS);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    let workers_did = texts
        .iter()
        .filter(|t| t.starts_with("worker "))
        .map(|t| published(std::slice::from_ref(t)).len())
        .collect::<Vec<_>>();
    eprintln!("array {array}: shards published by each worker {workers_did:?}");
    assert_eq!(&artifact_bytes(&fx.cache_dir()), expected);
    let report = fs::read_to_string(fx.results_dir().join("cluster").join("report.md")).unwrap();
    assert_eq!(&report, expected_report);
    let (_, leftovers) = store_files(&fx.cache_dir());
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

/// Jobs cancelled (`scancel`) while workers are in the middle of shards, then submitted again:
/// the second submission publishes exactly the shards the first did not, and the bytes are a
/// single process's.
#[test]
fn slurm_jobs_cancelled_mid_shard_and_resubmitted_recompute_only_unfinished_shards() {
    let _serial = one_at_a_time();
    let Some(models) = inputs() else { return };
    let Some(()) = needs_slurm() else { return };
    let (expected, _) = reference();
    let fx = Fixture::new();
    let file = fx.write_pipeline("p.yaml", &pipeline_text(&models));
    let total = (TRAIN + TEST) * 4 / SHARD_ROWS;
    let (array, finish, logs) = submit(&fx, &file);
    // Cancelled once a few shards are out and workers hold claims (in the middle of shards).
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        assert!(Instant::now() < deadline, "no shards published");
        let done = published(&read_logs(&logs)).len();
        if done >= 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let cancel = Command::new("scancel")
        .args(["--signal=KILL", &array, &finish])
        .status()
        .unwrap();
    assert!(cancel.success());
    wait_for_job(&finish, Duration::from_secs(60));
    // Until every task of the array is gone.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !String::from_utf8_lossy(
        &Command::new("squeue")
            .args(["-h", "-j", &array])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .is_empty()
    {
        assert!(Instant::now() < deadline, "array {array} not gone");
        std::thread::sleep(Duration::from_millis(200));
    }
    let first = published(&read_logs(&logs));
    let (on_disk, _) = store_files(&fx.cache_dir());
    assert!(
        first.len() < total,
        "all shards were done before the cancel"
    );

    let (_, finish2, logs2) = submit(&fx, &file);
    let state = wait_for_job(&finish2, Duration::from_secs(900));
    let texts = read_logs(&logs2);
    assert_eq!(state, "COMPLETED", "{}", texts.join("\n----\n"));
    let second = published(&texts);
    eprintln!(
        "cancelled with {} of {total} shards published; the resubmission computed {}",
        on_disk,
        second.len()
    );
    assert_eq!(second.len(), total - on_disk, "{second:?}");
    assert!(second.keys().all(|k| !first.contains_key(k)));
    let all: BTreeSet<_> = first.keys().chain(second.keys()).collect();
    // A task killed between a shard's rename and its log line published it silently.
    assert!(all.len() + 3 >= total, "{all:?}");
    assert_eq!(&artifact_bytes(&fx.cache_dir()), expected);
}
