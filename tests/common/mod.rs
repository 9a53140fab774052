//! What the runner's integration tests share: a temporary cache and results folder, the shared
//! data folder, a small real pipeline, and the `xtask` binary.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use xtask::cache::Cache;
use xtask::pipeline;
use xtask::runner::{self, Outcome, RunOptions, Workspace};

#[allow(unused_imports)] // not every test file uses both
pub use llmembed_testkit::{data_dir, needs};

/// The AG News folder of the shared data, or why it is missing.
pub fn ag_news() -> Result<PathBuf, String> {
    llmembed_testkit::ag_news_dir()
}

/// The models folder CI fetches into (`cache/models` at the repo root) with `preset` in it,
/// fetched through the project's own preset resolution (verified by sha256), or why not.
pub fn models_dir_with(preset: &str) -> Result<PathBuf, String> {
    let dir = llmembed_testkit::models_dir();
    llmembed_extract::fetch_preset(preset, &dir)
        .map(|_| dir)
        .map_err(|e| format!("preset `{preset}`: {e}"))
}

/// A small real pipeline: 80 train / 40 test AG News rows, TF-IDF, logistic regression, evaluate.
pub fn small_pipeline(c: f64, per_class_test: usize) -> String {
    llmembed_testkit::pipeline_header("small", 7, None)
        + &llmembed_testkit::ag_news_stage(20, per_class_test)
        + &format!(
            "  - id: features\n    kind: tfidf\n    inputs: [data]\n    params:\n      min_df: 1\n  \
             - id: lr\n    kind: logreg\n    inputs: [features]\n    params:\n      c: {c}\n  \
             - id: report\n    kind: evaluate\n    inputs: [lr]\n"
        )
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn write_pipeline(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, text).unwrap();
        path
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    pub fn results_dir(&self) -> PathBuf {
        self.dir.path().join("results")
    }

    pub fn workspace(&self) -> Workspace {
        Workspace {
            cache: Cache::new(self.cache_dir()).unwrap(),
            results_dir: self.results_dir(),
            default_data_dir: data_dir(),
            quiet: true,
            remote: None,
            remote_required: false,
        }
    }

    pub fn run(&self, file: &Path, opts: RunOptions) -> Vec<Outcome> {
        let plan = pipeline::load(file).unwrap_or_else(|e| panic!("{e}"));
        runner::run(&plan, &self.workspace(), &opts).unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn artifacts(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.cache_dir().join("artifacts"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Every file of every artifact with its blake3: the bytes of a whole cache, comparable
    /// between two runs.
    pub fn artifact_bytes(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for key in self.artifacts() {
            let dir = self.cache_dir().join("artifacts").join(&key);
            let mut names: Vec<String> = fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != "manifest.json")
                .collect();
            names.sort();
            for name in names {
                let bytes = fs::read(dir.join(&name)).unwrap();
                out.push((
                    format!("{key}/{name}"),
                    blake3::hash(&bytes).to_hex().to_string(),
                ));
            }
        }
        out
    }

    /// The `xtask` binary with this fixture's cache, results and the shared data.
    pub fn xtask(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.args(["--quiet", "--cache"])
            .arg(self.cache_dir())
            .arg("--results")
            .arg(self.results_dir())
            .env("LLMEMBED_DATA_DIR", data_dir());
        cmd
    }
}

/// A fresh fixture with `small_pipeline(1.0, 10)` written as `p.yaml`; `None` (the test skips, or
/// fails under `LLMEMBED_REQUIRE_TEST_INPUTS=1`) without AG News.
pub fn small_fixture() -> Option<(Fixture, PathBuf)> {
    needs("AG News", ag_news())?;
    let fx = Fixture::new();
    let file = fx.write_pipeline("p.yaml", &small_pipeline(1.0, 10));
    Some((fx, file))
}

pub fn opts() -> RunOptions {
    RunOptions {
        wait_for_lock: true,
        ..Default::default()
    }
}

/// `gc` options: remove what no pipeline uses (not the stores), waiting for the lock.
pub fn gc_now() -> xtask::gc::GcOptions {
    xtask::gc::GcOptions {
        wait: true,
        ..Default::default()
    }
}

/// `gc --dry-run` options.
pub fn dry_run() -> xtask::gc::GcOptions {
    xtask::gc::GcOptions {
        dry_run: true,
        ..gc_now()
    }
}

pub fn kinds(outcomes: &[Outcome]) -> Vec<&'static str> {
    outcomes
        .iter()
        .map(|o| match o {
            Outcome::Cached(_) => "cached",
            Outcome::Pulled(_) => "pulled",
            Outcome::Ran(_) => "ran",
            Outcome::WouldRun(_) => "would-run",
            Outcome::Failed(_) => "failed",
            Outcome::Skipped(_) => "skipped",
            Outcome::Helped(_) => "helped",
        })
        .collect()
}

pub fn key_of(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Cached(m) | Outcome::Pulled(m) | Outcome::Ran(m) => m.key.clone(),
        other => panic!("no artifact: {other:?}"),
    }
}

/// A small seeded generator (splitmix64) for picking offsets: the same offsets every run.
pub struct Offsets(pub u64);

impl Offsets {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

/// Flips every bit of one byte of a file.
pub fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0xff;
    fs::write(path, bytes).unwrap();
}

/// Flips one byte of an artifact's file and records the damaged content's sampled hash in the
/// manifest: bit rot that the cheap check of a cache hit happens to miss, so that only the full
/// check before use can catch it.
pub fn flip_unsampled(artifact: &Path, name: &str, offset: u64) {
    let file = artifact.join(name);
    flip_byte(&file, offset);
    let manifest_path = artifact.join("manifest.json");
    let mut manifest: xtask::cache::Manifest =
        serde_json::from_slice(&fs::read(&manifest_path).unwrap()).unwrap();
    for f in &mut manifest.files {
        if f.name == name {
            f.sample = xtask::cache::sample_hash(&file).unwrap();
        }
    }
    fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
}
