//! The Hugging Face environment, read the way Python's `huggingface_hub` reads it, so that a
//! machine set up for the Hugging Face tools needs nothing more for this project.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use llmembed_core::{Error, Result};

/// The hub's address when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where the hub cache is, where to ask, with which token, and whether to ask at all.
#[derive(Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`; `None`
    /// when none of them is set (then `HF_HUB_CACHE` must be).
    pub home: Option<PathBuf>,
    /// The folder holding `models--org--name` and `datasets--org--name`: `HF_HUB_CACHE` (or its
    /// old name `HUGGINGFACE_HUB_CACHE`), else `<home>/hub`.
    pub cache_dir: PathBuf,
    /// `HF_ENDPOINT` (a mirror), else [`DEFAULT_ENDPOINT`]; no trailing `/`.
    pub endpoint: String,
    /// `HF_TOKEN` (or its old name `HUGGING_FACE_HUB_TOKEN`), else the token file:
    /// `HF_TOKEN_PATH`, else `<home>/token` (what `huggingface-cli login` writes).
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is `1`, `ON`, `YES` or `TRUE`: never touch
    /// the network.
    pub offline: bool,
}

// The token stays out of debug output and error messages.
impl std::fmt::Debug for HubSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSettings")
            .field("home", &self.home)
            .field("cache_dir", &self.cache_dir)
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("offline", &self.offline)
            .finish()
    }
}

impl HubSettings {
    /// Reads the settings from `vars` (the process environment in [`HubSettings::from_env`]);
    /// an empty value counts as unset. Reads the token file when no token variable is set.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self> {
        let var = |name: &str| vars.get(name).map(String::as_str).filter(|v| !v.is_empty());
        let home_dir = var("HOME").map(PathBuf::from);
        let expand = |value: &str| -> PathBuf {
            match (value.strip_prefix("~/"), &home_dir) {
                (Some(rest), Some(home)) => home.join(rest),
                _ => PathBuf::from(value),
            }
        };
        let home = match (var("HF_HOME"), var("XDG_CACHE_HOME"), &home_dir) {
            (Some(hf_home), _, _) => Some(expand(hf_home)),
            (None, Some(xdg), _) => Some(expand(xdg).join("huggingface")),
            (None, None, Some(home)) => Some(home.join(".cache").join("huggingface")),
            (None, None, None) => None,
        };
        let cache_dir = match (
            var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")),
            &home,
        ) {
            (Some(dir), _) => expand(dir),
            (None, Some(home)) => home.join("hub"),
            (None, None) => {
                return Err(Error::param(
                    "HF_HOME",
                    "cannot place the Hugging Face cache: none of HF_HOME, HF_HUB_CACHE, \
                     XDG_CACHE_HOME or HOME is set",
                ));
            }
        };
        let endpoint = var("HF_ENDPOINT")
            .unwrap_or(DEFAULT_ENDPOINT)
            .trim_end_matches('/')
            .to_string();
        let token = match var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")) {
            Some(token) => Some(token.trim().to_string()),
            None => match var("HF_TOKEN_PATH")
                .map(expand)
                .or_else(|| home.as_ref().map(|h| h.join("token")))
            {
                Some(path) => read_token_file(&path)?,
                None => None,
            },
        };
        let offline = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"]
            .iter()
            .any(|name| var(name).is_some_and(is_true));
        Ok(HubSettings {
            home,
            cache_dir,
            endpoint,
            token: token.filter(|t| !t.is_empty()),
            offline,
        })
    }

    /// [`HubSettings::from_vars`] of the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(&std::env::vars().collect())
    }
}

/// `huggingface_hub`'s truth values for its boolean variables.
fn is_true(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

/// The token in `path`, trimmed; `None` when there is no such file or it is blank.
fn read_token_file(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read the Hugging Face token file", path, e)),
    }
}
