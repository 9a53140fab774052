//! A runner killed at each moment of publishing an artifact: while hashing the stage's files,
//! with the manifest written but the folder not yet renamed, with the existing artifact of the same
//! key moved aside (a forced rerun), and just after the rename. Each time the cache holds either no artifact for
//! the stage or a complete, intact one; `verify` finds nothing damaged; the next run completes and
//! leaves the cache byte for byte (keys included) as a clean run does.
//!
//! The kill is placed exactly, not by timing: the child runs with `LLMEMBED_FAULT_AT=<point>`,
//! which makes it SIGKILL itself at that point of `Cache::publish` (see `fault_point` in
//! `xtask/src/cache.rs`). Each test checks that the child really died of SIGKILL, so a point that
//! is never reached fails the test instead of passing it.

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use common::*;
use xtask::cache::Lookup;

const FAULT_ENV: &str = "LLMEMBED_FAULT_AT";
const SIGKILL: i32 = 9;

/// Runs `xtask run <file>` in a child killed at `point` of the first artifact it publishes;
/// asserts it died there.
fn run_killed_at(fx: &Fixture, file: &Path, point: &str) {
    let out = fx
        .xtask()
        .arg("run")
        .arg(file)
        .env(FAULT_ENV, point)
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(SIGKILL),
        "the run was not killed at {point} ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `xtask verify` over the whole cache finds nothing damaged.
fn assert_verify_clean(fx: &Fixture, point: &str) {
    let out = fx.xtask().arg("verify").output().unwrap();
    assert!(
        out.status.success(),
        "after a kill at {point}, verify found damage: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The features stage (the second of the small pipeline) is killed at `point` while publishing;
/// `published` says whether its artifact must then be there (complete) or absent.
fn kill_while_publishing_features(point: &str, published: bool) {
    let Some((clean_fx, file)) = small_fixture() else {
        return;
    };
    let clean = clean_fx.run(&file, opts());
    let clean_bytes = clean_fx.artifact_bytes();
    let data_key = key_of(&clean[0]);
    let features_key = key_of(&clean[1]);
    let features_files = clean_fx
        .workspace()
        .cache
        .manifest(&features_key)
        .unwrap()
        .files;
    // "While hashing" is after the first file and before the others.
    assert!(features_files.len() >= 2, "{features_files:?}");

    let fx = Fixture::new();
    let file = fx.write_pipeline("p.yaml", &small_pipeline(1.0, 10));
    // The upstream stage first, so that the first publication of the killed run is `features`.
    let status = fx
        .xtask()
        .arg("run")
        .arg(&file)
        .args(["--until", "data"])
        .status()
        .unwrap();
    assert!(status.success());
    run_killed_at(&fx, &file, point);

    let mut expected = vec![data_key.clone()];
    if published {
        expected.push(features_key.clone());
        expected.sort();
    }
    assert_eq!(
        fx.artifacts(),
        expected,
        "after a kill at {point}: wrong artifacts"
    );
    let cache = fx.workspace().cache;
    if published {
        let manifest = match cache.lookup(&features_key) {
            Lookup::Hit(m) => m,
            other => panic!("after a kill at {point}, the artifact is not complete: {other:?}"),
        };
        cache.verify_files(&manifest, None).unwrap();
        let hashes = |files: &[xtask::cache::FileEntry]| -> Vec<(String, String)> {
            files
                .iter()
                .map(|f| (f.name.clone(), f.blake3.clone()))
                .collect()
        };
        assert_eq!(hashes(&manifest.files), hashes(&features_files));
    } else {
        // The kill really fell inside publication: the stage's work folder is left behind.
        let left: Vec<String> = fs::read_dir(fx.cache_dir().join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            left.len() == 1 && left[0].starts_with(&format!("{features_key}-")),
            "after a kill at {point}: tmp/ holds {left:?}"
        );
    }
    assert_verify_clean(&fx, point);

    let rerun = fx.run(&file, opts());
    let features_outcome = if published { "cached" } else { "ran" };
    assert_eq!(
        kinds(&rerun),
        ["cached", features_outcome, "ran", "ran"],
        "rerun after a kill at {point}"
    );
    assert_eq!(
        fx.artifact_bytes(),
        clean_bytes,
        "after a kill at {point} and a rerun, the cache differs from a clean run"
    );
    assert_eq!(
        fs::read_dir(fx.cache_dir().join("tmp")).unwrap().count(),
        0,
        "leftovers of the killed run not removed"
    );
}

#[test]
fn killed_while_hashing_leaves_no_artifact() {
    kill_while_publishing_features("publish:hashing", false);
}

#[test]
fn killed_after_writing_the_manifest_leaves_no_artifact() {
    kill_while_publishing_features("publish:manifest", false);
}

#[test]
fn killed_just_after_the_rename_leaves_a_complete_artifact() {
    kill_while_publishing_features("publish:renamed", true);
}

/// A forced stage replaces its existing artifact: killed after the old one is moved aside and
/// before the new one is renamed into place, the cache holds no artifact of that key (never a
/// mix of the two), and the next run makes it again with the same bytes.
#[test]
fn killed_while_replacing_an_artifact_leaves_none() {
    let Some((fx, file)) = small_fixture() else {
        return;
    };
    let clean = fx.run(&file, opts());
    let clean_bytes = fx.artifact_bytes();
    let features_key = key_of(&clean[1]);
    let out = fx
        .xtask()
        .arg("run")
        .arg(&file)
        .args(["--force", "features"])
        .env(FAULT_ENV, "publish:aside")
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(SIGKILL),
        "the run was not killed at publish:aside ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut expected: Vec<String> = clean.iter().map(key_of).collect();
    expected.retain(|k| *k != features_key);
    expected.sort();
    assert_eq!(fx.artifacts(), expected, "after a kill at publish:aside");
    assert_verify_clean(&fx, "publish:aside");
    let rerun = fx.run(&file, opts());
    assert_eq!(kinds(&rerun), ["cached", "ran", "cached", "cached"]);
    assert_eq!(fx.artifact_bytes(), clean_bytes);
    assert_eq!(fs::read_dir(fx.cache_dir().join("tmp")).unwrap().count(), 0);
}
