//! The one place that talks to the Hugging Face hub: a client built from the Hugging Face
//! environment ([`HubSettings`]: `HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_TOKEN` or the
//! token file, `HF_HUB_OFFLINE`), over hf-hub and its on-disk cache (the layout shared with
//! Python's `huggingface_hub`: `<cache>/{models,datasets}--org--name/{refs,snapshots,blobs}`).
//!
//! Two steps, so that a caller can key its work on what it reads:
//! * [`HubClient::resolve`] turns a revision into a commit. A 40-hex sha is a commit already.
//!   A branch or tag is asked of the hub each time (`main` moves), then written to the cache's
//!   `refs/<revision>`; offline, or when the hub cannot be reached, the cache's ref is used and
//!   [`Resolved::origin`] says so. Online, a branch resolves once per process: a runner that
//!   computes a stage's key and then runs it sees one commit.
//! * [`HubClient::get`] gives a file at that commit: from the cache's `snapshots/<commit>/`
//!   when there, else downloaded (never offline: a missing file is then an error naming the
//!   repo, the file, the revision and the cache folder).
//!
//! **Invariant:** offline, no socket is ever opened (no hf-hub client is even built).

mod settings;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use llmembed_core::{Error, Result};

pub use settings::{DEFAULT_ENDPOINT, HubSettings};

/// What kind of repository: the hub keeps models and datasets apart (URLs, cache folders).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RepoKind {
    Model,
    Dataset,
}

impl RepoKind {
    fn hf(self) -> hf_hub::RepoType {
        match self {
            RepoKind::Model => hf_hub::RepoType::Model,
            RepoKind::Dataset => hf_hub::RepoType::Dataset,
        }
    }

    fn word(self) -> &'static str {
        match self {
            RepoKind::Model => "model",
            RepoKind::Dataset => "dataset",
        }
    }
}

/// Where a resolved commit came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The revision was a commit sha.
    Pinned,
    /// The hub answered (now, or earlier in this process).
    Hub,
    /// The cache's `refs/<revision>`; `why` says why the hub was not asked or not reached.
    CachedRef { why: String },
}

/// A revision of a repository, resolved to a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub kind: RepoKind,
    /// `org/name` (or `name`).
    pub repo: String,
    /// As asked: a branch, a tag or a sha.
    pub revision: String,
    /// The 40-hex commit (lower case): what a cache key should hold.
    pub commit: String,
    pub origin: Origin,
}

impl Resolved {
    /// One line for a run's notes when the commit did not come from the hub or a pin.
    pub fn note(&self) -> Option<String> {
        match &self.origin {
            Origin::CachedRef { why } => Some(format!(
                "{} {} revision `{}` taken from the hub cache's ref ({why})",
                self.kind.word(),
                self.repo,
                self.revision
            )),
            Origin::Pinned | Origin::Hub => None,
        }
    }
}

/// A branch or tag as it was resolved: (endpoint, cache folder, kind, repo, revision).
type AskedRevision = (String, PathBuf, RepoKind, String, String);

/// Branches and tags resolved online in this process: the commit, and where it came from.
static RESOLVED_ONLINE: LazyLock<Mutex<HashMap<AskedRevision, (String, Origin)>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// A Hugging Face hub client with its cache (see the crate docs).
#[derive(Clone, Debug)]
pub struct HubClient {
    settings: HubSettings,
    progress: bool,
}

impl HubClient {
    /// A client for the settings in the process environment.
    pub fn from_env() -> Result<Self> {
        Ok(Self::new(HubSettings::from_env()?))
    }

    /// A client for the settings in `vars` (tests use this instead of the process environment).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self> {
        Ok(Self::new(HubSettings::from_vars(vars)?))
    }

    pub fn new(settings: HubSettings) -> Self {
        HubClient {
            settings,
            progress: false,
        }
    }

    /// Uses `dir` as the hub cache (a stage's own cache-folder param) instead of the
    /// environment's; the token still comes from the environment.
    pub fn with_cache_dir(mut self, dir: PathBuf) -> Self {
        self.settings.cache_dir = dir;
        self
    }

    /// Shows a progress bar while downloading (off by default).
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }

    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    /// The cache folder of one repository (`<cache>/models--org--name`).
    pub fn repo_dir(&self, kind: RepoKind, repo: &str) -> PathBuf {
        self.settings
            .cache_dir
            .join(hf_repo(kind, repo, "main").folder_name())
    }

    /// Resolves `revision` of `repo` to a commit (see the crate docs).
    pub fn resolve(&self, repo: &str, kind: RepoKind, revision: &str) -> Result<Resolved> {
        check_repo(repo)?;
        check_revision(revision)?;
        let resolved = |commit: String, origin| Resolved {
            kind,
            repo: repo.to_string(),
            revision: revision.to_string(),
            commit,
            origin,
        };
        if is_commit_sha(revision) {
            return Ok(resolved(revision.to_ascii_lowercase(), Origin::Pinned));
        }
        let ref_path = self.repo_dir(kind, repo).join("refs").join(revision);
        if self.settings.offline {
            let commit = read_ref(&ref_path)?.ok_or_else(|| {
                Error::compute(
                    "resolve hub revision",
                    format!(
                        "{} {repo} revision `{revision}`: HF_HUB_OFFLINE is set and the hub \
                         cache has no {} (run once online, or pin a commit sha)",
                        kind.word(),
                        ref_path.display()
                    ),
                )
            })?;
            let why = "HF_HUB_OFFLINE is set".to_string();
            return Ok(resolved(commit, Origin::CachedRef { why }));
        }
        let memo_key = (
            self.settings.endpoint.clone(),
            self.settings.cache_dir.clone(),
            kind,
            repo.to_string(),
            revision.to_string(),
        );
        let memo = RESOLVED_ONLINE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((commit, origin)) = memo.get(&memo_key) {
            return Ok(resolved(commit.clone(), origin.clone()));
        }
        drop(memo);
        let (commit, origin) = self.resolve_online(kind, repo, revision, &ref_path)?;
        RESOLVED_ONLINE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(memo_key, (commit.clone(), origin.clone()));
        Ok(resolved(commit, origin))
    }

    /// Asks the hub for the commit of a branch or tag and records it in the cache's ref; when
    /// the hub cannot be reached, the cache's ref stands in.
    fn resolve_online(
        &self,
        kind: RepoKind,
        repo: &str,
        revision: &str,
        ref_path: &Path,
    ) -> Result<(String, Origin)> {
        match self.ask_hub(kind, repo, revision) {
            Ok(commit) => {
                // Later offline runs resolve through this ref, as huggingface_hub's do. A cache
                // that cannot be written (read-only, shared) only loses that.
                let _ = hf_hub::Cache::new(self.settings.cache_dir.clone())
                    .repo(hf_repo(kind, repo, revision))
                    .create_ref(&commit);
                Ok((commit, Origin::Hub))
            }
            // As huggingface_hub does: an unreachable hub falls back to the cache's ref; an
            // answer from the hub (unknown repo, no access) does not.
            Err(HubFailure::Unreachable(why)) => match read_ref(ref_path)? {
                Some(commit) => {
                    let why = format!("{} unreachable: {why}", self.settings.endpoint);
                    Ok((commit, Origin::CachedRef { why }))
                }
                None => Err(Error::compute(
                    "resolve hub revision",
                    format!(
                        "{} {repo} revision `{revision}`: {} unreachable ({why}) and the hub \
                         cache has no {}",
                        kind.word(),
                        self.settings.endpoint,
                        ref_path.display()
                    ),
                )),
            },
            Err(HubFailure::Answered(why)) => Err(Error::compute(
                "resolve hub revision",
                format!(
                    "{} {repo} revision `{revision}` at {}: {why}",
                    kind.word(),
                    self.settings.endpoint
                ),
            )),
        }
    }

    /// The file `file` of the repository at `at.commit`, from the cache, else downloaded.
    pub fn get(&self, at: &Resolved, file: &str) -> Result<PathBuf> {
        check_file(file)?;
        let path = self.snapshot_path(at, file);
        if path.is_file() {
            return Ok(path);
        }
        let missing = format!(
            "{file} of {} {} at revision `{}` (commit {}) is not in the hub cache ({})",
            at.kind.word(),
            at.repo,
            at.revision,
            at.commit,
            path.display()
        );
        if self.settings.offline {
            return Err(Error::compute(
                "find hub file",
                format!("{missing} and HF_HUB_OFFLINE is set"),
            ));
        }
        self.api()?
            .repo(hf_repo(at.kind, &at.repo, &at.commit))
            .download(file)
            .map_err(|e| {
                Error::compute(
                    "download hub file",
                    format!(
                        "{missing}, and the download from {} failed: {}",
                        self.settings.endpoint,
                        HubFailure::from(e).reason()
                    ),
                )
            })
    }

    /// Where `file` at `at.commit` is in the cache, whether or not it is there.
    pub fn snapshot_path(&self, at: &Resolved, file: &str) -> PathBuf {
        self.repo_dir(at.kind, &at.repo)
            .join("snapshots")
            .join(&at.commit)
            .join(file)
    }

    /// The commit the hub gives for `revision` (the `/api/{models,datasets}/<repo>/revision/`
    /// endpoint).
    fn ask_hub(&self, kind: RepoKind, repo: &str, revision: &str) -> Result<String, HubFailure> {
        let api = self
            .api()
            .map_err(|e| HubFailure::Unreachable(e.to_string()))?;
        let info = api
            .repo(hf_repo(kind, repo, revision))
            .info()
            .map_err(HubFailure::from)?;
        let commit = info.sha.trim().to_ascii_lowercase();
        if is_commit_sha(&commit) {
            Ok(commit)
        } else {
            Err(HubFailure::Answered(format!(
                "the hub answered `{commit}`, not a commit sha"
            )))
        }
    }

    /// An hf-hub client with these settings; only ever built online.
    fn api(&self) -> Result<hf_hub::api::sync::Api> {
        debug_assert!(!self.settings.offline, "no hub client offline");
        ApiBuilder::from_cache(hf_hub::Cache::new(self.settings.cache_dir.clone()))
            .with_endpoint(self.settings.endpoint.clone())
            .with_token(self.settings.token.clone())
            .with_progress(self.progress)
            .build()
            .map_err(|e| Error::compute("open hub client", e))
    }
}

/// Why the hub gave no commit or file.
enum HubFailure {
    /// No answer (connection refused, DNS, timeout, TLS): the cache may stand in.
    Unreachable(String),
    /// The hub answered with an error (unknown repo, no access), or something else failed.
    Answered(String),
}

impl HubFailure {
    fn reason(self) -> String {
        match self {
            HubFailure::Unreachable(why) => format!("unreachable: {why}"),
            HubFailure::Answered(why) => why,
        }
    }
}

impl From<ApiError> for HubFailure {
    fn from(e: ApiError) -> Self {
        let ApiError::RequestError(request) = &e else {
            return HubFailure::Answered(e.to_string());
        };
        match request.as_ref() {
            ureq::Error::Transport(t) => HubFailure::Unreachable(t.to_string()),
            ureq::Error::Status(code, _) => HubFailure::Answered(match code {
                401 => "401 unauthorized: a private or gated repo needs a token (set HF_TOKEN \
                        or run `huggingface-cli login`)"
                    .to_string(),
                403 => "403 forbidden: the token has no access (for a gated repo, accept its \
                        terms on the hub)"
                    .to_string(),
                404 => "404 not found: no such repo, revision or file (a private repo also \
                        answers 404 without a token)"
                    .to_string(),
                other => format!("HTTP {other}"),
            }),
        }
    }
}

fn hf_repo(kind: RepoKind, repo: &str, revision: &str) -> hf_hub::Repo {
    hf_hub::Repo::with_revision(repo.to_string(), kind.hf(), revision.to_string())
}

/// A 40-hex commit sha (either case).
pub fn is_commit_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commit in a cache ref file; `None` when there is no such file.
fn read_ref(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) if is_commit_sha(text.trim()) => Ok(Some(text.trim().to_ascii_lowercase())),
        Ok(other) => Err(Error::schema(
            path,
            "-",
            format!("expected a commit sha, found `{}`", other.trim()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read hub ref", path, e)),
    }
}

/// Path segments that stay inside the folder they are joined to.
fn plain_segments(s: &str) -> bool {
    !s.is_empty()
        && !s.contains('\\')
        && s.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

fn check_repo(repo: &str) -> Result<()> {
    if plain_segments(repo) && repo.split('/').count() <= 2 {
        Ok(())
    } else {
        Err(Error::param(
            "repo",
            format!("`{repo}` is not `org/name` (or `name`)"),
        ))
    }
}

fn check_revision(revision: &str) -> Result<()> {
    if plain_segments(revision) {
        Ok(())
    } else {
        Err(Error::param(
            "revision",
            format!("`{revision}` is not a branch, tag or commit sha"),
        ))
    }
}

fn check_file(file: &str) -> Result<()> {
    if plain_segments(file) {
        Ok(())
    } else {
        Err(Error::param(
            "file",
            format!("`{file}` is not a path inside a repository"),
        ))
    }
}
