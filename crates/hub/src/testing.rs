//! Test support (the `testing` feature, for other crates' tests; this crate's own tests use it
//! too): a hub cache laid out on disk exactly as hf-hub and `huggingface_hub` write it, a
//! loopback HTTP server that answers the two hub endpoints the client uses and records what
//! it was sent, and a way to run a test again in a child process with its own Hugging Face
//! environment (the process environment is shared by every test thread, so no test sets it).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::{RepoKind, is_commit_sha};

/// The variables of the Hugging Face environment, all of which [`run_in_child`] clears.
pub const HF_VARS: &[&str] = &[
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_ENDPOINT",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "XDG_CACHE_HOME",
];

/// Set in the child process [`run_in_child`] starts.
const CHILD_VAR: &str = "LLMEMBED_HUB_TEST_CHILD";

/// A hub cache folder (the one holding `models--org--name`).
pub struct HubCacheDir(pub PathBuf);

impl HubCacheDir {
    fn repo_dir(&self, kind: RepoKind, repo: &str) -> PathBuf {
        let prefix = match kind {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        };
        self.0
            .join(format!("{prefix}--{}", repo.replace('/', "--")))
    }

    /// Writes `refs/<revision>` (the commit, no line break, as both libraries write it).
    pub fn set_ref(&self, kind: RepoKind, repo: &str, revision: &str, commit: &str) {
        let path = self.repo_dir(kind, repo).join("refs").join(revision);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, commit).unwrap();
    }

    /// The ref's commit, if any.
    pub fn get_ref(&self, kind: RepoKind, repo: &str, revision: &str) -> Option<String> {
        std::fs::read_to_string(self.repo_dir(kind, repo).join("refs").join(revision)).ok()
    }

    /// Puts `file` at `commit`: the bytes in `blobs/<etag>`, and `snapshots/<commit>/<file>` a
    /// relative symbolic link to it (a copy where there are no symbolic links). Returns the
    /// snapshot path.
    pub fn put(
        &self,
        kind: RepoKind,
        repo: &str,
        commit: &str,
        file: &str,
        bytes: &[u8],
    ) -> PathBuf {
        let repo_dir = self.repo_dir(kind, repo);
        let blob = repo_dir.join("blobs").join(etag(bytes));
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, bytes).unwrap();
        let pointer = repo_dir.join("snapshots").join(commit).join(file);
        std::fs::create_dir_all(pointer.parent().unwrap()).unwrap();
        let depth = file.split('/').count() + 1;
        let target = Path::new(&"../".repeat(depth))
            .join("blobs")
            .join(etag(bytes));
        #[cfg(unix)]
        std::os::unix::fs::symlink(target, &pointer).unwrap();
        #[cfg(not(unix))]
        {
            let _ = target;
            std::fs::write(&pointer, bytes).unwrap();
        }
        pointer
    }
}

/// A content tag for a blob name (hex, like the hub's sha256 etags; not a cryptographic hash,
/// tests only need distinct names).
fn etag(bytes: &[u8]) -> String {
    use std::hash::{DefaultHasher, Hasher};
    let mut h = DefaultHasher::new();
    h.write(bytes);
    format!("{:016x}{:08x}", h.finish(), bytes.len())
}

/// `http://127.0.0.1:<port>` where nothing listens (the port was free a moment ago).
pub fn closed_endpoint() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

/// A loopback port that counts the connections made to it and closes each at once (so a
/// client that should not have connected fails fast instead of waiting for an answer).
pub struct WatchedPort {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WatchedPort {
    pub fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (connections, stop) = (connections.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    connections.fetch_add(1, Ordering::SeqCst);
                    drop(stream);
                }
            })
        };
        WatchedPort {
            addr,
            connections,
            stop,
            thread: Some(thread),
        }
    }

    /// The value for `HF_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Panics if anything has connected so far.
    pub fn assert_untouched(&self) {
        let n = self.connections.load(Ordering::SeqCst);
        assert_eq!(n, 0, "{n} connection(s) to {}", self.endpoint());
    }
}

impl Default for WatchedPort {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for WatchedPort {
    fn drop(&mut self) {
        stop_accepting(&self.stop, self.addr, self.thread.take());
    }
}

/// Stops a thread blocked in `accept` on `addr`: sets the flag, then wakes it with a connection.
fn stop_accepting(
    stop: &AtomicBool,
    addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
) {
    stop.store(true, Ordering::SeqCst);
    let _ = TcpStream::connect(addr);
    if let Some(thread) = thread {
        let _ = thread.join();
    }
}

/// Whether this process is the child [`run_in_child`] started.
pub fn in_child() -> bool {
    std::env::var(CHILD_VAR).is_ok_and(|v| v == "1")
}

/// Runs test `name` (its full path in the test binary, `module::test`) of this test binary in
/// a child process whose Hugging Face environment is exactly `vars`; panics with the child's
/// output unless that one test ran and passed. The test does its real work when [`in_child`].
pub fn run_in_child(name: &str, vars: &[(&str, &str)]) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = std::process::Command::new(exe);
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"]);
    for var in HF_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(vars.iter().copied()).env(CHILD_VAR, "1");
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "child test {name} with {vars:?}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One request the loopback hub received. Header names are lower case.
#[derive(Clone, Debug)]
pub struct Request {
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct HubState {
    /// (kind, repo, branch or tag) -> commit.
    refs: HashMap<(RepoKind, String, String), String>,
    /// (kind, repo, commit, file) -> bytes.
    files: HashMap<(RepoKind, String, String, String), Vec<u8>>,
    /// Requests without `Authorization: Bearer <this>` are answered 401.
    token: Option<String>,
    requests: Vec<Request>,
}

/// A hub on a loopback port answering `GET /api/{models,datasets}/<repo>/revision/<rev>` and
/// `GET /[datasets/]<repo>/resolve/<rev>/<file>` (with `Range`) as huggingface.co does, for
/// what was put into it. One connection at a time; stops when dropped.
pub struct LoopbackHub {
    addr: SocketAddr,
    state: Arc<Mutex<HubState>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoopbackHub {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(HubState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        serve(stream, &state);
                    }
                }
            })
        };
        LoopbackHub {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// The value for `HF_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_ref(&self, kind: RepoKind, repo: &str, revision: &str, commit: &str) {
        let key = (kind, repo.to_string(), revision.to_string());
        self.state
            .lock()
            .unwrap()
            .refs
            .insert(key, commit.to_string());
    }

    pub fn put(&self, kind: RepoKind, repo: &str, commit: &str, file: &str, bytes: &[u8]) {
        let key = (kind, repo.to_string(), commit.to_string(), file.to_string());
        self.state.lock().unwrap().files.insert(key, bytes.to_vec());
    }

    /// Answers 401 to requests without this bearer token.
    pub fn require_token(&self, token: &str) {
        self.state.lock().unwrap().token = Some(token.to_string());
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for LoopbackHub {
    fn drop(&mut self) {
        stop_accepting(&self.stop, self.addr, self.thread.take());
    }
}

fn serve(mut stream: TcpStream, state: &Mutex<HubState>) {
    let Some(request) = read_request(&stream) else {
        return;
    };
    let mut state = state.lock().unwrap();
    state.requests.push(request.clone());
    let (status, headers, body) = answer(&state, &request);
    drop(state);
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Some(Request { path, headers })
}

type Answer = (&'static str, Vec<(&'static str, String)>, Vec<u8>);

fn answer(state: &HubState, request: &Request) -> Answer {
    let not_found = || {
        (
            "404 Not Found",
            Vec::new(),
            b"{\"error\":\"not found\"}".to_vec(),
        )
    };
    if let Some(token) = &state.token
        && request.header("authorization") != Some(&format!("Bearer {token}"))
    {
        return ("401 Unauthorized", Vec::new(), Vec::new());
    }
    let commit_of = |kind: RepoKind, repo: &str, rev: &str| -> Option<String> {
        let rev = rev.replace("%2F", "/");
        if is_commit_sha(&rev) {
            return Some(rev.to_ascii_lowercase());
        }
        state.refs.get(&(kind, repo.to_string(), rev)).cloned()
    };
    if let Some(rest) = request.path.strip_prefix("/api/") {
        let Some((kind, rest)) = split_kind(rest, "models/") else {
            return not_found();
        };
        let Some((repo, rev)) = rest.rsplit_once("/revision/") else {
            return not_found();
        };
        let Some(commit) = commit_of(kind, repo, rev) else {
            return not_found();
        };
        let body = format!("{{\"sha\":\"{commit}\",\"siblings\":[]}}");
        let headers = vec![("Content-Type", "application/json".to_string())];
        return ("200 OK", headers, body.into_bytes());
    }
    let path = request.path.trim_start_matches('/');
    let (kind, rest) = split_kind(path, "").unwrap_or((RepoKind::Model, path));
    let Some((repo, rest)) = rest.split_once("/resolve/") else {
        return not_found();
    };
    let Some((rev, file)) = rest.split_once('/') else {
        return not_found();
    };
    let Some(commit) = commit_of(kind, repo, rev) else {
        return not_found();
    };
    let key = (kind, repo.to_string(), commit.clone(), file.to_string());
    let Some(bytes) = state.files.get(&key) else {
        return not_found();
    };
    let (start, end) = range(request.header("range"), bytes.len());
    let headers = vec![
        ("ETag", format!("\"{}\"", etag(bytes))),
        ("X-Repo-Commit", commit),
        (
            "Content-Range",
            format!("bytes {start}-{}/{}", end.saturating_sub(1), bytes.len()),
        ),
    ];
    ("206 Partial Content", headers, bytes[start..end].to_vec())
}

/// `datasets/<rest>` or `<model_prefix><rest>`.
fn split_kind<'a>(path: &'a str, model_prefix: &str) -> Option<(RepoKind, &'a str)> {
    if let Some(rest) = path.strip_prefix("datasets/") {
        Some((RepoKind::Dataset, rest))
    } else {
        path.strip_prefix(model_prefix)
            .map(|rest| (RepoKind::Model, rest))
    }
}

/// The byte range `[start, end)` a `Range: bytes=a-[b]` header asks for; all bytes without one.
fn range(header: Option<&str>, len: usize) -> (usize, usize) {
    let Some((a, b)) = header
        .and_then(|h| h.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
    else {
        return (0, len);
    };
    let start = a.parse().unwrap_or(0).min(len);
    let end = b.parse::<usize>().map_or(len, |b| (b + 1).min(len));
    (start, end.max(start))
}
