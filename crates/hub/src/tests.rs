//! The client against a hub cache laid out on disk and a loopback hub.

use std::collections::HashMap;
use std::path::Path;

use crate::testing::{
    HubCacheDir, LoopbackHub, WatchedPort, closed_endpoint, in_child, run_in_child,
};
use crate::{HubClient, Origin, RepoKind};

const OLD: &str = "0123456789abcdef0123456789abcdef01234567";
const NEW: &str = "89abcdef0123456789abcdef0123456789abcdef";

fn vars(items: &[(&str, &str)]) -> HashMap<String, String> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A cache with model `org/tiny` and dataset `org/news` at `OLD`, `main` pointing there.
fn laid_out(dir: &Path) -> HubCacheDir {
    let cache = HubCacheDir(dir.to_path_buf());
    cache.put(
        RepoKind::Model,
        "org/tiny",
        OLD,
        "config.json",
        b"{\"old\":1}",
    );
    cache.set_ref(RepoKind::Model, "org/tiny", "main", OLD);
    cache.put(
        RepoKind::Dataset,
        "org/news",
        OLD,
        "data/train.jsonl",
        b"{}\n",
    );
    cache.set_ref(RepoKind::Dataset, "org/news", "main", OLD);
    cache
}

fn offline_client(cache: &Path, endpoint: &str) -> HubClient {
    HubClient::from_vars(&vars(&[
        ("HF_HUB_CACHE", path_str(cache)),
        ("HF_HUB_OFFLINE", "1"),
        ("HF_ENDPOINT", endpoint),
    ]))
    .unwrap()
}

fn online_client(cache: &Path, endpoint: &str, token: Option<&str>) -> HubClient {
    let mut v = vars(&[("HF_HUB_CACHE", path_str(cache)), ("HF_ENDPOINT", endpoint)]);
    if let Some(token) = token {
        v.insert("HF_TOKEN".into(), token.into());
    }
    HubClient::from_vars(&v).unwrap()
}

#[test]
fn settings_follow_huggingface_hub() {
    let s = |items: &[(&str, &str)]| crate::HubSettings::from_vars(&vars(items)).unwrap();
    let home = tempfile::tempdir().unwrap();
    let h = path_str(home.path());

    let d = s(&[("HOME", h)]);
    assert_eq!(d.home, Some(home.path().join(".cache/huggingface")));
    assert_eq!(d.cache_dir, home.path().join(".cache/huggingface/hub"));
    assert_eq!(d.endpoint, "https://huggingface.co");
    assert_eq!((d.token, d.offline), (None, false));

    let x = s(&[("HOME", h), ("XDG_CACHE_HOME", "/xdg")]);
    assert_eq!(x.cache_dir, Path::new("/xdg/huggingface/hub"));

    // HF_HOME places the cache and the token file; HF_HUB_CACHE moves only the cache.
    std::fs::write(home.path().join("token"), "hf_from_file\n").unwrap();
    let hf = s(&[("HOME", "/nowhere"), ("HF_HOME", h)]);
    assert_eq!(hf.cache_dir, home.path().join("hub"));
    assert_eq!(hf.token.as_deref(), Some("hf_from_file"));
    let moved = s(&[("HF_HOME", h), ("HF_HUB_CACHE", "/elsewhere/hub")]);
    assert_eq!(moved.cache_dir, Path::new("/elsewhere/hub"));
    assert_eq!(moved.token.as_deref(), Some("hf_from_file"));
    let legacy = s(&[("HF_HOME", h), ("HUGGINGFACE_HUB_CACHE", "/old/name")]);
    assert_eq!(legacy.cache_dir, Path::new("/old/name"));
    std::fs::write(home.path().join("other-token"), "hf_other").unwrap();
    let other = home.path().join("other-token");
    let token_path = s(&[("HF_HOME", h), ("HF_TOKEN_PATH", path_str(&other))]);
    assert_eq!(token_path.token.as_deref(), Some("hf_other"));
    // HF_HUB_CACHE alone is enough (no home: no token file).
    let bare = s(&[("HF_HUB_CACHE", "/only/cache")]);
    assert_eq!((bare.home, bare.token), (None, None));
    let tilde = s(&[("HOME", h), ("HF_HUB_CACHE", "~/hubs")]);
    assert_eq!(tilde.cache_dir, home.path().join("hubs"));

    // HF_TOKEN wins over the file; an empty value is unset.
    let t = s(&[("HF_HOME", h), ("HF_TOKEN", "hf_env")]);
    assert_eq!(t.token.as_deref(), Some("hf_env"));
    let empty = s(&[("HF_HOME", h), ("HF_TOKEN", ""), ("HF_ENDPOINT", "")]);
    assert_eq!(empty.token.as_deref(), Some("hf_from_file"));
    assert_eq!(empty.endpoint, "https://huggingface.co");

    let m = s(&[("HOME", h), ("HF_ENDPOINT", "https://hf-mirror.com/")]);
    assert_eq!(m.endpoint, "https://hf-mirror.com");
    for (value, offline) in [("1", true), ("yes", true), ("True", true), ("0", false)] {
        assert_eq!(
            s(&[("HOME", h), ("HF_HUB_OFFLINE", value)]).offline,
            offline
        );
    }
    assert!(s(&[("HOME", h), ("TRANSFORMERS_OFFLINE", "1")]).offline);
    // The token never shows in debug output.
    assert!(!format!("{t:?}").contains("hf_env"), "{t:?}");

    let none = crate::HubSettings::from_vars(&HashMap::new()).unwrap_err();
    assert!(none.to_string().contains("HF_HOME"), "{none}");
}

#[test]
fn offline_resolution_reads_the_cache_and_opens_no_socket() {
    let tmp = tempfile::tempdir().unwrap();
    laid_out(tmp.path());
    // A port that is listening: any connection attempt would be accepted and seen.
    let port = WatchedPort::new();
    for endpoint in [port.endpoint(), closed_endpoint()] {
        let client = offline_client(tmp.path(), &endpoint);
        let model = client.resolve("org/tiny", RepoKind::Model, "main").unwrap();
        assert_eq!(model.commit, OLD);
        assert!(matches!(model.origin, Origin::CachedRef { .. }));
        assert!(model.note().unwrap().contains("HF_HUB_OFFLINE"));
        let config = client.get(&model, "config.json").unwrap();
        assert_eq!(std::fs::read(&config).unwrap(), b"{\"old\":1}");
        assert!(config.ends_with(format!("models--org--tiny/snapshots/{OLD}/config.json")));

        let data = client
            .resolve("org/news", RepoKind::Dataset, "main")
            .unwrap();
        let train = client.get(&data, "data/train.jsonl").unwrap();
        assert_eq!(std::fs::read(train).unwrap(), b"{}\n");

        // A pinned sha needs no ref; upper case names the same commit.
        let pinned = client
            .resolve("org/tiny", RepoKind::Model, &OLD.to_uppercase())
            .unwrap();
        assert_eq!(
            (pinned.commit.as_str(), &pinned.origin),
            (OLD, &Origin::Pinned)
        );
        assert_eq!(client.get(&pinned, "config.json").unwrap(), config);
    }
    port.assert_untouched();
}

#[test]
fn offline_misses_name_repo_file_and_revision() {
    let tmp = tempfile::tempdir().unwrap();
    laid_out(tmp.path());
    let client = offline_client(tmp.path(), &closed_endpoint());
    let model = client.resolve("org/tiny", RepoKind::Model, "main").unwrap();
    let e = client
        .get(&model, "model.safetensors")
        .unwrap_err()
        .to_string();
    for part in [
        "model.safetensors",
        "model org/tiny",
        "revision `main`",
        OLD,
        "HF_HUB_OFFLINE",
    ] {
        assert!(e.contains(part), "`{part}` not in: {e}");
    }
    let e = client
        .resolve("org/tiny", RepoKind::Model, "v2")
        .unwrap_err()
        .to_string();
    for part in [
        "model org/tiny",
        "revision `v2`",
        "HF_HUB_OFFLINE",
        "refs/v2",
    ] {
        assert!(e.contains(part), "`{part}` not in: {e}");
    }
    // A dataset is not a model of the same name.
    let e = client
        .resolve("org/tiny", RepoKind::Dataset, "main")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dataset org/tiny") && e.contains("datasets--org--tiny"),
        "{e}"
    );
    for bad in ["../x", "a/b/c", ""] {
        assert!(
            client.resolve(bad, RepoKind::Model, "main").is_err(),
            "{bad}"
        );
    }
    assert!(
        client
            .resolve("org/tiny", RepoKind::Model, "../../x")
            .is_err()
    );
    assert!(client.get(&model, "../../../etc/passwd").is_err());
}

#[test]
fn online_a_branch_is_resolved_again_and_new_files_downloaded() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = laid_out(tmp.path());
    let hub = LoopbackHub::start();
    // `main` moved on the hub since the cache saw it.
    hub.set_ref(RepoKind::Model, "org/tiny", "main", NEW);
    hub.put(
        RepoKind::Model,
        "org/tiny",
        NEW,
        "config.json",
        b"{\"new\":2}",
    );
    hub.set_ref(RepoKind::Dataset, "org/news", "main", NEW);
    hub.put(
        RepoKind::Dataset,
        "org/news",
        NEW,
        "data/train.jsonl",
        b"{\"a\":1}\n",
    );
    let client = online_client(tmp.path(), &hub.endpoint(), None);

    let model = client.resolve("org/tiny", RepoKind::Model, "main").unwrap();
    assert_eq!((model.commit.as_str(), &model.origin), (NEW, &Origin::Hub));
    assert_eq!(model.note(), None);
    assert_eq!(
        cache
            .get_ref(RepoKind::Model, "org/tiny", "main")
            .as_deref(),
        Some(NEW)
    );
    let config = client.get(&model, "config.json").unwrap();
    assert_eq!(std::fs::read(&config).unwrap(), b"{\"new\":2}");
    assert_eq!(config, client.snapshot_path(&model, "config.json"));

    let data = client
        .resolve("org/news", RepoKind::Dataset, "main")
        .unwrap();
    assert_eq!(data.commit, NEW);
    let train = client.get(&data, "data/train.jsonl").unwrap();
    assert_eq!(std::fs::read(train).unwrap(), b"{\"a\":1}\n");

    let paths: Vec<String> = hub.requests().into_iter().map(|r| r.path).collect();
    assert!(
        paths.contains(&"/api/models/org/tiny/revision/main".to_string()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/api/datasets/org/news/revision/main".to_string()),
        "{paths:?}"
    );
    assert!(paths.contains(&format!(
        "/datasets/org/news/resolve/{NEW}/data/train.jsonl"
    )));

    // Within this process `main` is asked once: a later move is not seen, so a stage keyed on
    // the commit runs on that commit.
    let asked = hub.requests().len();
    hub.set_ref(RepoKind::Model, "org/tiny", "main", OLD);
    let again = client.resolve("org/tiny", RepoKind::Model, "main").unwrap();
    assert_eq!((again.commit.as_str(), hub.requests().len()), (NEW, asked));
    // A file already in the snapshot is not downloaded again; a pinned sha is not asked.
    client.get(&model, "config.json").unwrap();
    client.resolve("org/tiny", RepoKind::Model, OLD).unwrap();
    assert_eq!(hub.requests().len(), asked);

    // The hub's refusals are errors, not fallbacks.
    let e = client
        .resolve("org/absent", RepoKind::Model, "main")
        .unwrap_err()
        .to_string();
    assert!(e.contains("404") && e.contains("org/absent"), "{e}");
    let e = client.get(&model, "absent.bin").unwrap_err().to_string();
    assert!(e.contains("absent.bin") && e.contains("404"), "{e}");
}

#[test]
fn the_token_is_sent_as_a_bearer() {
    let tmp = tempfile::tempdir().unwrap();
    laid_out(tmp.path());
    let hub = LoopbackHub::start();
    hub.require_token("hf_secret");
    hub.set_ref(RepoKind::Model, "org/gated", "main", NEW);
    hub.put(RepoKind::Model, "org/gated", NEW, "config.json", b"{}");

    let e = online_client(tmp.path(), &hub.endpoint(), None)
        .resolve("org/gated", RepoKind::Model, "main")
        .unwrap_err()
        .to_string();
    assert!(e.contains("401") && e.contains("HF_TOKEN"), "{e}");

    let client = online_client(tmp.path(), &hub.endpoint(), Some("hf_secret"));
    let at = client
        .resolve("org/gated", RepoKind::Model, "main")
        .unwrap();
    client.get(&at, "config.json").unwrap();
    let requests = hub.requests();
    assert!(requests.len() >= 3, "{requests:?}");
    for r in &requests[1..] {
        assert_eq!(r.header("authorization"), Some("Bearer hf_secret"), "{r:?}");
    }
    assert!(!format!("{client:?}").contains("hf_secret"));
}

#[test]
fn an_unreachable_hub_falls_back_to_the_cached_ref() {
    let tmp = tempfile::tempdir().unwrap();
    laid_out(tmp.path());
    let client = online_client(tmp.path(), &closed_endpoint(), None);
    let at = client.resolve("org/tiny", RepoKind::Model, "main").unwrap();
    assert_eq!(at.commit, OLD);
    let note = at.note().unwrap();
    assert!(note.contains("unreachable"), "{note}");
    assert!(client.get(&at, "config.json").is_ok());
    let e = client
        .resolve("org/tiny", RepoKind::Model, "dev")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unreachable") && e.contains("refs/dev"), "{e}");
}

#[test]
fn from_env_reads_the_process_environment() {
    if in_child() {
        let client = HubClient::from_env().unwrap();
        assert!(client.settings().offline);
        let at = client
            .resolve("org/news", RepoKind::Dataset, "main")
            .unwrap();
        assert_eq!(at.commit, OLD);
        assert_eq!(
            std::fs::read(client.get(&at, "data/train.jsonl").unwrap()).unwrap(),
            b"{}\n"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    laid_out(&tmp.path().join("elsewhere"));
    let cache = tmp.path().join("elsewhere");
    let port = WatchedPort::new();
    run_in_child(
        "tests::from_env_reads_the_process_environment",
        &[
            ("HF_HOME", path_str(&tmp.path().join("home"))),
            ("HF_HUB_CACHE", path_str(&cache)),
            ("HF_HUB_OFFLINE", "1"),
            ("HF_ENDPOINT", &port.endpoint()),
        ],
    );
    port.assert_untouched();
}
