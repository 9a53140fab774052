//! Hub datasets through the Hugging Face environment. Each test runs its stage in a child
//! process with its own `HF_*` variables (`llmembed_hub::testing::run_in_child`), the way a user
//! sets them, without tests racing on the shared process environment.

use std::path::Path;

use llmembed_core::{External, Stage};
use llmembed_hub::RepoKind;
use llmembed_hub::testing::{
    HubCacheDir, LoopbackHub, WatchedPort, closed_endpoint, in_child, run_in_child,
};
use llmembed_ingest::{HubSource, Ingest, IngestParams};

use crate::common::*;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const NEW: &str = "89abcdef0123456789abcdef0123456789abcdef";

/// A hub cache under `root/hub` with dataset `repo` at `SHA` (and `main` there if `with_ref`),
/// laid out as hf-hub and huggingface_hub write it.
fn hub_cache(root: &Path, repo: &str, with_ref: bool, files: &[(&str, &[u8])]) -> HubCacheDir {
    let cache = HubCacheDir(root.join("hub"));
    if with_ref {
        cache.set_ref(RepoKind::Dataset, repo, "main", SHA);
    }
    for (name, content) in files {
        cache.put(RepoKind::Dataset, repo, SHA, name, content);
    }
    cache
}

/// Runs `test` in a child with `HF_HUB_OFFLINE=1` and the endpoint on a loopback port that
/// fails the test if anything connects to it.
fn run_offline(test: &str) {
    let port = WatchedPort::new();
    run_in_child(
        test,
        &[("HF_HUB_OFFLINE", "1"), ("HF_ENDPOINT", &port.endpoint())],
    );
    port.assert_untouched();
}

fn tiny_news_params(revision: &str, cache: Option<&Path>) -> IngestParams {
    IngestParams {
        hub: Some(HubSource {
            repo: "someorg/tiny_news".into(),
            revision: revision.into(),
            files: [
                (
                    "train".to_string(),
                    "data/train-00000-of-00001.parquet".to_string(),
                ),
                ("test".to_string(), "data/test.jsonl".to_string()),
            ]
            .into(),
        }),
        hub_cache_dir: cache.map(Path::to_path_buf),
        files: None,
        ..local(&[])
    }
}

#[test]
fn hub_dataset_from_cache_offline() {
    if !in_child() {
        return run_offline("hub::hub_dataset_from_cache_offline");
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_parquet(&root.join("src.parquet"));
    let parquet = std::fs::read(root.join("src.parquet")).unwrap();
    let cache = hub_cache(
        root,
        "someorg/tiny_news",
        true,
        &[
            ("data/train-00000-of-00001.parquet", &parquet),
            (
                "data/test.jsonl",
                b"{\"title\": \"t\", \"description\": \"d\", \"label\": 2}\n",
            ),
        ],
    );
    let e = env(&root.join("no-data"), root, 0);
    let p = tiny_news_params("main", Some(&cache.0));
    let ext = Ingest::externals(&p, &e).unwrap();
    assert_eq!(
        ext,
        [External::Value {
            name: "hub:someorg/tiny_news".into(),
            value: SHA.into()
        }]
    );
    let out = run(&p, &e, root, "main").unwrap();
    let train = read(&out, "train");
    assert_eq!(train.len(), ROWS.len());
    assert_eq!(train.texts[1], "Cup final A late goal won it");
    assert_eq!(read(&out, "test").labels, [2]);

    // A pinned sha needs no ref (Python's huggingface_hub writes none for it).
    std::fs::remove_file(cache.0.join("datasets--someorg--tiny_news/refs/main")).unwrap();
    let pinned = tiny_news_params(&SHA.to_uppercase(), Some(&cache.0));
    assert_eq!(Ingest::externals(&pinned, &e).unwrap(), ext);
    let out2 = run(&pinned, &e, root, "pinned").unwrap();
    assert_eq!(bytes(&out, "train"), bytes(&out2, "train"));

    // Offline, a branch the cache has no ref for, and a file it lacks, are named.
    let e1 = Ingest::externals(&p, &e).unwrap_err().to_string();
    assert!(
        e1.contains("someorg/tiny_news") && e1.contains("HF_HUB_OFFLINE"),
        "{e1}"
    );
    let mut missing = pinned.clone();
    let hub = missing.hub.as_mut().unwrap();
    hub.files.insert("dev".into(), "data/dev.jsonl".into());
    let e2 = run(&missing, &e, root, "missing").unwrap_err().to_string();
    for part in ["data/dev.jsonl", "someorg/tiny_news", SHA, "HF_HUB_OFFLINE"] {
        assert!(e2.contains(part), "`{part}` not in: {e2}");
    }
}

#[test]
fn hf_hub_cache_places_the_hub_cache() {
    if !in_child() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = hub_cache(
            tmp.path(),
            "someorg/tiny_news",
            true,
            &[(
                "data/test.jsonl",
                b"{\"title\": \"t\", \"description\": \"d\", \"label\": 1}\n",
            )],
        );
        let home = tmp.path().join("home");
        let closed = closed_endpoint();
        let vars = [
            ("HF_HUB_CACHE", cache.0.to_str().unwrap()),
            // Not where the cache is: HF_HUB_CACHE wins over HF_HOME/hub.
            ("HF_HOME", home.to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
            ("HF_ENDPOINT", &closed),
        ];
        return run_in_child("hub::hf_hub_cache_places_the_hub_cache", &vars);
    }
    let cache = std::path::PathBuf::from(std::env::var("HF_HUB_CACHE").unwrap());
    let root = cache.parent().unwrap();
    let e = env(&root.join("no-data"), root, 0);
    let mut p = tiny_news_params("main", None);
    p.hub.as_mut().unwrap().files.remove("train");
    let out = run(&p, &e, root, "out").unwrap();
    assert_eq!(read(&out, "test").labels, [1]);
}

#[test]
fn named_dataset_falls_back_to_hub_cache() {
    if !in_child() {
        return run_offline("hub::named_dataset_falls_back_to_hub_cache");
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let line =
        |t: &str, l: i64| format!("{{\"text\": \"{t}\", \"label\": {l}, \"label_text\": \"x\"}}\n");
    let train = format!(
        "{}{}{}",
        line("a fine film", 1),
        line("dull", 0),
        line("great fun", 1)
    );
    let dev = line("meh", 0);
    let test = format!("{}{}", line("superb", 1), line("awful", 0));
    let cache = hub_cache(
        root,
        "SetFit/sst2",
        true,
        &[
            ("train.jsonl", train.as_bytes()),
            ("validation.jsonl", dev.as_bytes()),
            ("test.jsonl", test.as_bytes()),
        ],
    );
    // An empty data directory: sst2 is not there, so the hub (cache) is used.
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let e = env(&data, root, 0);
    let p = IngestParams {
        dataset: Some("sst2".into()),
        hub_cache_dir: Some(cache.0),
        ..Default::default()
    };
    assert_eq!(
        Ingest::externals(&p, &e).unwrap(),
        [External::Value {
            name: "hub:SetFit/sst2".into(),
            value: SHA.into()
        }]
    );
    let out = run(&p, &e, root, "out").unwrap();
    let t = read(&out, "train");
    assert_eq!(t.label_names, ["negative", "positive"]);
    assert_eq!(t.labels, [1, 0, 1]);
    assert_eq!(read(&out, "dev").ids, ["dev-0"]);
    assert_eq!(read(&out, "test").texts, ["superb", "awful"]);
}

#[test]
fn online_main_follows_the_hub() {
    let repo = "someorg/moving";
    let row = |t: &str| format!("{{\"title\": \"{t}\", \"description\": \"d\", \"label\": 0}}\n");
    if in_child() {
        let root = Path::new(&std::env::var("HF_HOME").unwrap()).to_path_buf();
        let e = env(&root.join("no-data"), &root, 0);
        let mut p = tiny_news_params("main", None);
        let hub = p.hub.as_mut().unwrap();
        hub.repo = repo.into();
        hub.files = [("test".to_string(), "test.jsonl".to_string())].into();
        // The key takes the commit the hub gives now, not the one the cache saw first.
        let ext = Ingest::externals(&p, &e).unwrap();
        assert_eq!(
            ext,
            [External::Value {
                name: format!("hub:{repo}"),
                value: NEW.into()
            }]
        );
        let out = run(&p, &e, &root, "out").unwrap();
        assert_eq!(read(&out, "test").texts, ["new d"]);
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = HubCacheDir(tmp.path().join("hub"));
    cache.set_ref(RepoKind::Dataset, repo, "main", SHA);
    cache.put(
        RepoKind::Dataset,
        repo,
        SHA,
        "test.jsonl",
        row("old").as_bytes(),
    );
    let hub = LoopbackHub::start();
    hub.set_ref(RepoKind::Dataset, repo, "main", NEW);
    hub.put(
        RepoKind::Dataset,
        repo,
        NEW,
        "test.jsonl",
        row("new").as_bytes(),
    );
    let endpoint = hub.endpoint();
    run_in_child(
        "hub::online_main_follows_the_hub",
        &[
            ("HF_HOME", tmp.path().to_str().unwrap()),
            ("HF_ENDPOINT", &endpoint),
            ("HF_TOKEN", "hf_test_token"),
        ],
    );
    assert_eq!(
        cache.get_ref(RepoKind::Dataset, repo, "main").as_deref(),
        Some(NEW)
    );
    let requests = hub.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths.iter().filter(|p| p.starts_with("/api/")).count(),
        1,
        "main is asked once per process: {paths:?}"
    );
    assert!(paths.contains(&format!("/datasets/{repo}/resolve/{NEW}/test.jsonl").as_str()));
    assert!(
        requests
            .iter()
            .all(|r| r.header("authorization") == Some("Bearer hf_test_token"))
    );
}
