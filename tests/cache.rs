//! The cache on its own, without a pipeline: key stability, what a lookup calls damaged, and
//! what the clean-up of interrupted runs removes and keeps.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use llmembed_core::Summary;
use serde_json::json;
use xtask::cache::{Cache, Lookup, Manifest, Preimage};

fn preimage() -> Preimage {
    Preimage {
        kind: "logreg".into(),
        version: 3,
        params: json!({"c": 1.0, "column": "embedding"}),
        seed: Some(42),
        // Absent unless the stage's own `seed` param replaced the pipeline's: not encoded, so
        // the keys of every other stage are what they were before it existed (the pinned key).
        pipeline_seed: None,
        inputs: vec![BTreeMap::from([
            ("test.parquet".to_string(), "ab".repeat(32)),
            ("train.parquet".to_string(), "cd".repeat(32)),
        ])],
        externals: BTreeMap::from([("model".to_string(), "pkg==1.0".to_string())]),
    }
}

/// Keys are the blake3 of the canonical JSON of the preimage: pinned, so that a change to the
/// encoding (which would orphan every cache) cannot pass unnoticed; every field counts.
#[test]
fn keys_are_stable_and_every_field_counts() {
    let base = preimage();
    // Python's blake3 of `json.dumps(preimage, separators=(",", ":"))` with the fields in
    // declaration order and map keys sorted: the documented encoding, computed independently.
    // A new value here means every user's cache goes stale.
    assert_eq!(
        base.key(),
        "6dbc012801a888fce01ea5e6816964567a5ed713fc6be422d01ff62638cd3226"
    );
    // Object key order in params does not matter (the encoding sorts), values do.
    let mut reordered = base.clone();
    reordered.params = serde_json::from_str(r#"{"column": "embedding", "c": 1.0}"#).unwrap();
    assert_eq!(reordered.key(), base.key());
    type Change = Box<dyn Fn(&mut Preimage)>;
    let changes: Vec<(&str, Change)> = vec![
        ("kind", Box::new(|p| p.kind = "mlp".into())),
        ("version", Box::new(|p| p.version += 1)),
        ("params", Box::new(|p| p.params["c"] = json!(0.1))),
        ("seed", Box::new(|p| p.seed = Some(43))),
        ("no seed", Box::new(|p| p.seed = None)),
        ("pipeline seed", Box::new(|p| p.pipeline_seed = Some(7))),
        (
            "input content",
            Box::new(|p| {
                p.inputs[0].insert("train.parquet".into(), "ce".repeat(32));
            }),
        ),
        (
            "external",
            Box::new(|p| {
                p.externals.insert("model".into(), "pkg==1.1".into());
            }),
        ),
    ];
    for (what, change) in changes {
        let mut p = base.clone();
        change(&mut p);
        assert_ne!(p.key(), base.key(), "{what} does not change the key");
    }
}

/// Publishes a one-file artifact of `bytes` under the preimage's key.
fn publish(cache: &Cache, bytes: &[u8]) -> Manifest {
    let pre = preimage();
    let key = pre.key();
    let tmp = cache.begin(&key).unwrap();
    fs::write(tmp.join("train.parquet"), bytes).unwrap();
    let summary = Summary {
        rows_out: 7,
        notes: vec!["a note".into()],
        ..Default::default()
    };
    cache
        .publish(&tmp, &key, &pre, "lr", &summary, 1.5)
        .unwrap()
}

fn corrupt_reason(cache: &Cache, key: &str) -> String {
    match cache.lookup(key) {
        Lookup::Corrupt(why) => why,
        Lookup::Hit(_) => panic!("damaged artifact found intact"),
        Lookup::Missing => panic!("damaged artifact reported missing"),
    }
}

#[test]
fn a_lookup_finds_what_was_published_and_calls_damage_damage() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path().to_path_buf()).unwrap();
    let key = preimage().key();
    assert!(matches!(cache.lookup(&key), Lookup::Missing));
    // 300 KiB: the three sampled windows (start, middle, end) do not cover it all.
    let bytes: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    let manifest = publish(&cache, &bytes);
    assert_eq!(manifest.key, key);
    assert_eq!(manifest.rows_out, 7);
    assert_eq!(
        manifest.file("train.parquet").unwrap().blake3,
        blake3::hash(&bytes).to_hex().as_str()
    );
    let Lookup::Hit(hit) = cache.lookup(&key) else {
        panic!("published artifact not found")
    };
    assert_eq!(hit.files.len(), 1);
    assert!(
        fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );

    let file = cache.artifact_dir(&key).join("train.parquet");
    let flip = |at: usize| {
        let mut b = bytes.clone();
        b[at] ^= 1;
        fs::write(&file, &b).unwrap();
    };
    // A byte in the middle window: the cheap check sees it.
    flip(bytes.len() / 2);
    assert!(
        corrupt_reason(&cache, &key)
            .ends_with("content does not match its manifest (sampled check)")
    );
    // A byte outside the windows: only the full check (before use) sees it.
    flip(100 * 1024);
    assert!(matches!(cache.lookup(&key), Lookup::Hit(_)));
    let why = cache.verify_files(&manifest, None).unwrap_err();
    assert!(
        why.contains("content does not match its manifest (blake3 "),
        "{why}"
    );
    // Truncated, missing, a manifest for another key, an unreadable manifest.
    fs::write(&file, &bytes[..1000]).unwrap();
    assert!(
        corrupt_reason(&cache, &key)
            .ends_with(&format!("1000 bytes, its manifest says {}", bytes.len()))
    );
    fs::remove_file(&file).unwrap();
    assert!(corrupt_reason(&cache, &key).ends_with("train.parquet: missing"));
    fs::write(&file, &bytes).unwrap();
    let manifest_path = cache.artifact_dir(&key).join("manifest.json");
    let text = fs::read_to_string(&manifest_path).unwrap();
    fs::write(&manifest_path, text.replace(&key, &"0".repeat(64))).unwrap();
    assert!(corrupt_reason(&cache, &key).contains(&format!("made for key {}", "0".repeat(64))));
    fs::write(&manifest_path, &text[..text.len() / 2]).unwrap();
    assert!(corrupt_reason(&cache, &key).contains("manifest.json: unreadable: "));
    // Publishing again replaces the damaged artifact.
    fs::write(&manifest_path, &text).unwrap();
    flip(bytes.len() / 2);
    publish(&cache, &bytes);
    assert!(matches!(cache.lookup(&key), Lookup::Hit(_)));
}

/// A pid that is not running (pids are below 2^22 on Linux).
const DEAD_PID: u32 = 4_194_303;

fn touch(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, b"partial").unwrap();
}

#[test]
fn clean_up_removes_what_dead_processes_left_and_keeps_the_living() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path().to_path_buf()).unwrap();
    let root = dir.path();
    // Every in-flight folder in tmp/ (only the lock holder writes there).
    fs::create_dir_all(
        root.join("tmp")
            .join(format!("{}-{DEAD_PID}", "a".repeat(64))),
    )
    .unwrap();
    touch(&root.join("tmp/stray-file"));
    // Temporaries under stores/ and models/: removed when their process is gone.
    let dead_shard = root.join(format!("stores/extract/fp/.s1.parquet.tmp-{DEAD_PID}"));
    let live_shard = root.join(format!(
        "stores/extract/fp/.s2.parquet.tmp-{}",
        std::process::id()
    ));
    let dead_fetch = root.join(format!("models/pypi/.work-pkg-1.0.tmp-{DEAD_PID}/part"));
    let legacy_fetch = root.join(format!("models/pypi/.work-pkg-1.0-{DEAD_PID}/part"));
    let shard = root.join("stores/extract/fp/s3.parquet");
    for p in [&dead_shard, &live_shard, &dead_fetch, &legacy_fetch, &shard] {
        touch(p);
    }
    let mut removed = cache.clean_leftovers().unwrap();
    removed.sort();
    let mut expected = vec![
        root.join("tmp")
            .join(format!("{}-{DEAD_PID}", "a".repeat(64))),
        root.join("tmp/stray-file"),
        dead_shard.clone(),
        dead_fetch.parent().unwrap().to_path_buf(),
        legacy_fetch.parent().unwrap().to_path_buf(),
    ];
    expected.sort();
    assert_eq!(removed, expected);
    assert!(live_shard.exists() && shard.exists());
    assert!(!dead_shard.exists() && !dead_fetch.exists() && !legacy_fetch.exists());
    // Nothing left to remove the second time.
    assert!(cache.clean_leftovers().unwrap().is_empty());
}
