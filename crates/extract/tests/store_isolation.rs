//! The extraction store never hands one computation's vectors to another: runs that differ in
//! compute dtype (f32, bf16) or in the bf16 matmul kernel (`LLMEMBED_NO_AVX512BF16=1` /
//! `LLMEMBED_NO_AMX=1` in a child process) and share one store folder each write exactly the
//! bytes they write with a fresh store of their own. Real SmolLM2-135M on real AG News texts.

mod common;
mod decoder_common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use llmembed_extract::{
    ComputeDtype, ExtractParams, Layers, LoadSpec, LocalSpec, ModelParam, ModelSpec,
};

/// Set in the child process of [`a_different_bf16_kernel_gets_its_own_store`]: the folder it
/// works in.
const CHILD_ENV: &str = "LLMEMBED_STORE_ISOLATION_CHILD";

fn params(gguf: &Path, compute: ComputeDtype) -> ExtractParams {
    let mut p = ExtractParams::new(ModelParam::Spec(ModelSpec::Local(LocalSpec {
        path: gguf.to_path_buf(),
    })));
    p.layers = Layers::List(vec![0, 15, 30]);
    p.max_tokens = 64;
    p.batch_tokens = 256;
    p.shard_rows = 5;
    p.compute = compute;
    p
}

/// Embeds the first 12 AG News train texts into `root/<out>` with the store `root/<store>`;
/// returns the output's bytes.
fn extract(
    gguf: &Path,
    data: &Path,
    compute: ComputeDtype,
    root: &Path,
    store: &str,
    out: &str,
) -> Vec<u8> {
    let train = ag_news(data, "train", 12);
    let input = write_input(&root.join(format!("in-{out}")), &[("train", &train)]);
    let out = root.join(out);
    run_stage(
        &params(gguf, compute),
        &input,
        &out,
        &root.join(store),
        root,
    )
    .unwrap();
    fs::read(out.join("train.parquet")).unwrap()
}

/// The `fingerprint.json` of every fingerprint folder of a store: what each was made from.
fn fingerprints(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(store)
        .unwrap()
        .map(|e| fs::read_to_string(e.unwrap().path().join("fingerprint.json")).unwrap())
        .collect();
    v.sort();
    v
}

/// The `matmul=` tag of the model's description (the kernel of its products).
fn matmul_tag(gguf: &Path, compute: ComputeDtype) -> String {
    let m = llmembed_extract::load(&LoadSpec {
        weights: gguf.to_path_buf(),
        config: None,
        tokenizer: None,
        compute,
    })
    .unwrap();
    let d = m.describe();
    let tag = d
        .split(",matmul=")
        .nth(1)
        .expect("description names its matmul");
    tag.split([',', ')']).next().unwrap().to_string()
}

#[test]
fn f32_and_bf16_runs_sharing_a_store_never_read_each_others_vectors() {
    let (Some(gguf), Some(data)) = (decoder_common::locate(&decoder_common::SMOLLM2), data_dir())
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let fresh_f32 = extract(&gguf, &data, ComputeDtype::F32, root, "fresh-f32", "f32");
    let fresh_bf16 = extract(&gguf, &data, ComputeDtype::Bf16, root, "fresh-bf16", "bf16");
    // Otherwise the comparisons below could not tell the two apart.
    assert_ne!(fresh_f32, fresh_bf16, "f32 and bf16 gave the same bytes");

    // One store, in turn: f32 (fills it), bf16 (must not reuse f32's vectors), f32 again (all
    // its texts are in the store now: must read f32's, not bf16's), bf16 again likewise.
    let runs = [
        (ComputeDtype::F32, "shared-f32-1", &fresh_f32),
        (ComputeDtype::Bf16, "shared-bf16-1", &fresh_bf16),
        (ComputeDtype::F32, "shared-f32-2", &fresh_f32),
        (ComputeDtype::Bf16, "shared-bf16-2", &fresh_bf16),
    ];
    for (compute, out, fresh) in runs {
        let bytes = extract(&gguf, &data, compute, root, "shared", out);
        assert!(
            bytes == *fresh,
            "{out}: with a store shared by f32 and bf16 runs, the {compute:?} output differs \
             from a fresh store's"
        );
    }
    let shared = fingerprints(&root.join("shared"));
    assert_eq!(shared.len(), 2, "one fingerprint per dtype: {shared:#?}");
    // The second runs of each dtype embedded nothing: every text came from the store.
    for (compute, fresh_store) in [("f32", "fresh-f32"), ("bf16", "fresh-bf16")] {
        let own = fingerprints(&root.join(fresh_store));
        assert!(
            shared.contains(&own[0]),
            "{compute}'s fingerprint is not in the shared store"
        );
    }
}

/// The kernel switch this CPU offers for bf16 products: the environment variable that moves
/// the model off its first kernel, or `None` when it has only the f32 fallback.
fn kernel_switch(first: &str) -> Option<&'static str> {
    match first {
        amx if amx.starts_with("amx-") => Some("LLMEMBED_NO_AMX"),
        "avx512bf16" => Some("LLMEMBED_NO_AVX512BF16"),
        _ => None,
    }
}

#[test]
fn a_different_bf16_kernel_gets_its_own_store() {
    let (Some(gguf), Some(data)) = (decoder_common::locate(&decoder_common::SMOLLM2), data_dir())
    else {
        return;
    };
    if let Some(root) = std::env::var_os(CHILD_ENV) {
        // The child: the kernel switch is set, so the bf16 products use another kernel.
        let root = PathBuf::from(root);
        extract(
            &gguf,
            &data,
            ComputeDtype::Bf16,
            &root,
            "shared",
            "child-shared",
        );
        extract(
            &gguf,
            &data,
            ComputeDtype::Bf16,
            &root,
            "fresh-child",
            "child-fresh",
        );
        fs::write(
            root.join("child-tag"),
            matmul_tag(&gguf, ComputeDtype::Bf16),
        )
        .unwrap();
        return;
    }
    let first = matmul_tag(&gguf, ComputeDtype::Bf16);
    let Some(switch) = kernel_switch(&first) else {
        // Only one bf16 kernel on this CPU: there is no other kernel's store to keep apart.
        // (The kernels' own tests say which kernels ran.)
        eprintln!("only the `{first}` bf16 kernel on this CPU: nothing to compare");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let parent = extract(&gguf, &data, ComputeDtype::Bf16, root, "shared", "parent");
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_different_bf16_kernel_gets_its_own_store",
            "--nocapture",
        ])
        .env(CHILD_ENV, root)
        .env(switch, "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child with {switch}=1 failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let child_tag = fs::read_to_string(root.join("child-tag")).unwrap();
    assert_ne!(child_tag, first, "{switch}=1 did not change the kernel");
    let child_shared = fs::read(root.join("child-shared/train.parquet")).unwrap();
    let child_fresh = fs::read(root.join("child-fresh/train.parquet")).unwrap();
    // Otherwise the comparison below could not tell the kernels apart.
    assert_ne!(
        child_fresh, parent,
        "the `{first}` and `{child_tag}` kernels gave the same bytes"
    );
    assert!(
        child_shared == child_fresh,
        "the `{child_tag}` kernel's output with a store the `{first}` kernel filled differs from a \
         fresh store's"
    );
    // And the other way: after the child, the first kernel still reads only its own vectors.
    let again = extract(
        &gguf,
        &data,
        ComputeDtype::Bf16,
        root,
        "shared",
        "parent-again",
    );
    assert!(
        again == parent,
        "the `{first}` kernel read another kernel's vectors"
    );
    assert_eq!(fingerprints(&root.join("shared")).len(), 2);
}
