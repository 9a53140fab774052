//! Files of one hub dataset at one resolved commit, through `llmembed-hub` (the Hugging Face
//! environment: cache, endpoint, token, offline mode).

use std::path::PathBuf;

use llmembed_core::Result;
use llmembed_hub::{HubClient, RepoKind, Resolved};

/// Hub files of one dataset repository at one resolved commit.
pub(crate) struct HubFiles {
    client: HubClient,
    pub(crate) at: Resolved,
    /// Split -> path in the repository.
    files: Vec<(String, String)>,
}

impl HubFiles {
    /// Resolves `revision` of dataset `repo` to a commit (a sha as is; a branch or tag by the
    /// hub, or the cache's ref offline). `cache_dir` overrides the environment's hub cache.
    pub(crate) fn resolve(
        cache_dir: Option<PathBuf>,
        repo: &str,
        revision: &str,
        files: Vec<(String, String)>,
    ) -> Result<Self> {
        let mut client = HubClient::from_env()?;
        if let Some(dir) = cache_dir {
            client = client.with_cache_dir(dir);
        }
        let at = client.resolve(repo, RepoKind::Dataset, revision)?;
        Ok(HubFiles { client, at, files })
    }

    /// Local paths of the files, by split: from the cache, else downloaded.
    pub(crate) fn fetch(&self) -> Result<Vec<(String, PathBuf)>> {
        self.files
            .iter()
            .map(|(split, file)| Ok((split.clone(), self.client.get(&self.at, file)?)))
            .collect()
    }
}
