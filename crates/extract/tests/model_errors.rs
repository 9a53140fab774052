//! Model files that are there but wrong: every loading error is one line naming the file and
//! what is wrong, never a candle backtrace (candle appends one to its errors' text when
//! RUST_BACKTRACE is set). The bad files are made in a temporary folder: garbage bytes, small
//! JSON files, and truncated copies of the real SmolLM2 GGUF (those tests skip without it).

mod common;
mod decoder_common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};
use decoder_common::{SMOLLM2, locate};
use llmembed_core::TextTable;
use llmembed_extract::{
    ComputeDtype, ExtractParams, LoadSpec, LocalSpec, ModelParam, ModelSpec, load,
};
use serde_json::Value;

fn spec(weights: &Path) -> LoadSpec {
    LoadSpec {
        weights: weights.to_path_buf(),
        config: None,
        tokenizer: None,
        compute: ComputeDtype::F32,
    }
}

/// The error `load` gives for these weights, as text, checked to be one line.
fn load_error(weights: &Path) -> String {
    match load(&spec(weights)) {
        Ok(_) => panic!("{} loaded", weights.display()),
        Err(e) => one_line(e.to_string()),
    }
}

/// The error of the extract stage run on a local model path (what the runner prints after
/// `FAILED   <stage id>`), checked to be one line.
fn stage_error(model: &Path, root: &Path) -> String {
    let t = TextTable::new(
        vec!["a".into()],
        vec!["hello".into()],
        vec![0],
        vec!["x".into()],
    );
    let input = common::write_input(&root.join("in"), &[("train", &t)]);
    let params = ExtractParams::new(ModelParam::Spec(ModelSpec::Local(LocalSpec {
        path: model.to_path_buf(),
    })));
    let out = root.join("out");
    let store = root.join("store");
    match common::run_stage(&params, &input, &out, &store, root) {
        Ok(_) => panic!("the stage ran on {}", model.display()),
        Err(e) => one_line(e.to_string()),
    }
}

fn one_line(msg: String) -> String {
    assert!(!msg.contains('\n'), "more than one line:\n{msg}");
    msg
}

fn fixture() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_decoders_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A folder with a valid tiny llama config.json and tokenizer.json (weights up to the caller).
fn llama_folder(dir: &Path) -> PathBuf {
    let fx = fixture();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        fx["models"]["llama"]["config"].to_string(),
    )
    .unwrap();
    std::fs::write(dir.join("tokenizer.json"), fx["tokenizer_json"].to_string()).unwrap();
    dir.to_path_buf()
}

const BERT_CONFIG: &str = r#"{"model_type": "bert", "vocab_size": 64, "hidden_size": 16,
 "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
 "hidden_act": "gelu", "max_position_embeddings": 32}"#;

/// The same with a tiny BERT config.json.
fn bert_folder(dir: &Path) -> PathBuf {
    llama_folder(dir);
    std::fs::write(dir.join("config.json"), BERT_CONFIG).unwrap();
    dir.to_path_buf()
}

const MPNET_CONFIG: &str = r#"{"model_type": "mpnet", "vocab_size": 64, "hidden_size": 16,
 "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
 "hidden_act": "gelu", "max_position_embeddings": 34}"#;

/// The same with a tiny MPNet config.json.
fn mpnet_folder(dir: &Path) -> PathBuf {
    llama_folder(dir);
    std::fs::write(dir.join("config.json"), MPNET_CONFIG).unwrap();
    dir.to_path_buf()
}

/// The first `n` bytes of `src`, written to `dst`.
fn truncated_copy(src: &Path, dst: &Path, n: u64) {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(src)
        .unwrap()
        .take(n)
        .read_to_end(&mut bytes)
        .unwrap();
    assert_eq!(bytes.len() as u64, n);
    std::fs::write(dst, bytes).unwrap();
}

#[test]
fn not_a_gguf_file_is_named_with_its_first_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.gguf");
    std::fs::write(&path, b"<!DOCTYPE html>\n<html>Not Found</html>\n").unwrap();
    let want = format!(
        "load model: {}: not a GGUF file (starts with bytes 3c 21 44 4f, GGUF files start with \
         `GGUF`)",
        path.display()
    );
    assert_eq!(load_error(&path), want);
    // Through the stage, given the file or its folder.
    assert_eq!(stage_error(&path, &tmp.path().join("r1")), want);
    let dir = tmp.path().join("folder");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&path, dir.join("model.gguf")).unwrap();
    assert_eq!(
        stage_error(&dir, &tmp.path().join("r2")),
        want.replace(
            &path.display().to_string(),
            &dir.join("model.gguf").display().to_string()
        )
    );

    // Another name, no config.json: neither kind of model.
    let bin = tmp.path().join("model.bin");
    std::fs::copy(&path, &bin).unwrap();
    assert_eq!(
        load_error(&bin),
        format!(
            "load model: {}: not a GGUF file (starts with bytes 3c 21 44 4f), nor a safetensors \
             checkpoint (no {} next to it)",
            bin.display(),
            tmp.path().join("config.json").display()
        )
    );

    std::fs::write(&path, b"GG").unwrap();
    assert_eq!(
        load_error(&path),
        format!(
            "load model: {}: not a GGUF file (the file has only 2 bytes: 47 47, GGUF files start \
             with `GGUF`)",
            path.display()
        )
    );
    std::fs::write(&path, b"").unwrap();
    assert_eq!(
        load_error(&path),
        format!(
            "load model: {}: not a GGUF file (the file is empty, GGUF files start with `GGUF`)",
            path.display()
        )
    );
}

#[test]
fn gguf_cut_in_the_header_is_named() {
    let Some(full) = locate(&SMOLLM2) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cut = 1 << 20;
    let header_end = Content::read(&mut std::fs::File::open(&full).unwrap())
        .unwrap()
        .tensor_data_offset;
    assert!(header_end > cut, "the header ends at {header_end}");
    let path = tmp.path().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    truncated_copy(&full, &path, cut);
    let want = format!(
        "load model: {}: truncated GGUF file: the header (metadata and tensor list) runs past \
         the end of the file (1048576 bytes)",
        path.display()
    );
    assert_eq!(load_error(&path), want);
    assert_eq!(stage_error(&path, tmp.path()), want);
}

#[test]
fn gguf_cut_in_the_tensor_data_names_the_tensor() {
    let Some(full) = locate(&SMOLLM2) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // Where the tensor lies, and its size as candle reads it from the whole file.
    let mut file = std::fs::File::open(&full).unwrap();
    let content = Content::read(&mut file).unwrap();
    let name = "blk.3.attn_q.weight";
    let start = content.tensor_data_offset + content.tensor_infos[name].offset;
    let size = content
        .tensor(&mut file, name, &Device::Cpu)
        .unwrap()
        .storage_size_in_bytes() as u64;
    let cut = start + size / 2;
    let path = tmp.path().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    truncated_copy(&full, &path, cut);
    let want = format!(
        "load model: {}: truncated GGUF file: tensor `{name}` needs bytes {start}..{}, the file \
         has {cut} bytes",
        path.display(),
        start + size
    );
    assert_eq!(load_error(&path), want);
    assert_eq!(stage_error(&path, tmp.path()), want);
}

#[test]
fn blocks_loaded_side_by_side_report_the_first_bad_block() {
    let Some(full) = locate(&SMOLLM2) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // Blocks 2 and 3 each lose a tensor (renamed in the header to a name of the same length,
    // so that every offset stays valid). Four threads load blocks 0..4 side by side, so both
    // fail at once, in either order: the error must still be block 2's, as a load one block at
    // a time gives.
    let mut bytes = std::fs::read(&full).unwrap();
    for l in [2, 3] {
        let name = format!("blk.{l}.ffn_up.weight");
        let at = bytes
            .windows(name.len())
            .position(|w| w == name.as_bytes())
            .unwrap();
        bytes[at + name.len() - 4] = b'x';
    }
    let path = tmp.path().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    std::fs::write(&path, bytes).unwrap();
    let want = format!(
        "load model: {}: tensor `blk.2.ffn_up.weight` is missing",
        path.display()
    );
    for threads in [1, 4] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        assert_eq!(
            pool.install(|| load_error(&path)),
            want,
            "{threads} threads"
        );
    }
}

#[test]
fn bad_safetensors_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    for (arch, dir) in [
        ("llama", llama_folder(&tmp.path().join("llama"))),
        ("bert", bert_folder(&tmp.path().join("bert"))),
        ("mpnet", mpnet_folder(&tmp.path().join("mpnet"))),
    ] {
        let st = dir.join("model.safetensors");
        // Not a safetensors file: the first 8 bytes are taken as the header length.
        let html = b"<!DOCTYPE html>\n<html>Not Found</html>\n";
        std::fs::write(&st, html).unwrap();
        let n = u64::from_le_bytes(*b"<!DOCTYP");
        assert_eq!(
            load_error(&st),
            format!(
                "load model: {}: not a safetensors file, or truncated: it starts with bytes 3c 21 \
                 44 4f 43 54 59 50, a header length of {n} bytes, and the file has {} bytes",
                st.display(),
                html.len()
            ),
            "{arch}"
        );
        // A header that is not JSON.
        let mut bytes = 4u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"oops");
        std::fs::write(&st, &bytes).unwrap();
        assert_eq!(
            load_error(&st),
            format!(
                "load model: {}: not a safetensors file (its header is not a JSON map: expected \
                 value at line 1 column 1)",
                st.display()
            ),
            "{arch}"
        );
        // Cut in the tensor data: 16 x 8 f32 = 512 bytes after the header.
        let t = Tensor::zeros((16, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("w".to_string(), t)]), &st).unwrap();
        let bytes = std::fs::read(&st).unwrap();
        let data = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert_eq!(bytes.len() as u64, data + 512);
        std::fs::write(&st, &bytes[..bytes.len() - 100]).unwrap();
        let want = format!(
            "load model: {}: truncated safetensors file: tensor `w` needs bytes {data}..{}, the \
             file has {} bytes",
            st.display(),
            data + 512,
            data + 412
        );
        assert_eq!(load_error(&st), want, "{arch}");
        assert_eq!(stage_error(&dir, &tmp.path().join(arch)), want);
    }
}

#[test]
fn bad_config_json_is_named_with_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = llama_folder(tmp.path());
    let st = dir.join("model.safetensors");
    std::fs::write(&st, b"unused").unwrap();
    let cfg = dir.join("config.json");
    let c = cfg.display();
    let cases: &[(&str, String)] = &[
        (
            "{oops",
            format!("load model: {c}: not JSON: key must be a string at line 1 column 2"),
        ),
        (
            r#"{"hidden_size": 64}"#,
            format!("load model: {c}: field `model_type` is missing"),
        ),
        (
            r#"{"model_type": 7}"#,
            format!("load model: {c}: field `model_type` is not a string"),
        ),
        (
            r#"{"model_type": "gpt_neox"}"#,
            format!(
                "load model: {c}: field `model_type`: `gpt_neox` is not supported (bert, mpnet, llama, \
                 mistral, qwen2, qwen3, phi, gemma3_text)"
            ),
        ),
        (
            "{\"model_type\": \"llama\",\n \"hidden_size\": \"64\"}",
            format!(
                "load model: {c}: not a decoder config: invalid type: string \"64\", expected \
                 usize at line 2 column 20"
            ),
        ),
        (
            r#"{"model_type": "llama", "hidden_size": 64}"#,
            format!(
                "load model: {c}: not a decoder config: missing field `num_hidden_layers` at \
                 line 1 column 42"
            ),
        ),
        (
            r#"{"model_type": "bert"}"#,
            format!(
                "load model: {c}: not a BERT config: missing field `vocab_size` at line 1 column \
                 22"
            ),
        ),
        (
            r#"{"model_type": "mpnet", "vocab_size": 64}"#,
            format!(
                "load model: {c}: not an MPNet config: missing field `hidden_size` at line 1 \
                 column 41"
            ),
        ),
        (
            &MPNET_CONFIG.replace("34}", "34, \"relative_attention_num_buckets\": 16}"),
            format!(
                "load model: {c}: field `relative_attention_num_buckets`: 16 is fewer than the 32 \
                 buckets MPNet's attention uses"
            ),
        ),
        (
            &MPNET_CONFIG.replace("34}", "3}"),
            format!(
                "load model: {c}: field `max_position_embeddings`: 3 leaves no room for two \
                 tokens after the pad position 1"
            ),
        ),
        (
            &BERT_CONFIG.replace("\"gelu\"", "\"swish\""),
            format!(
                "load model: {c}: field `hidden_act`: `swish` is not supported (gelu, gelu_new, \
                 relu)"
            ),
        ),
    ];
    for (text, want) in cases {
        std::fs::write(&cfg, text).unwrap();
        assert_eq!(&load_error(&st), want, "config {text}");
    }
    // Through the stage, with the last case.
    assert_eq!(&stage_error(&dir, tmp.path()), &cases.last().unwrap().1);
}

#[test]
fn bad_tokenizer_json_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    for (arch, dir) in [
        ("llama", llama_folder(&tmp.path().join("llama"))),
        ("bert", bert_folder(&tmp.path().join("bert"))),
        ("mpnet", mpnet_folder(&tmp.path().join("mpnet"))),
    ] {
        let st = dir.join("model.safetensors");
        std::fs::write(&st, b"unused").unwrap();
        let tok = dir.join("tokenizer.json");
        std::fs::write(&tok, b"\x00\x01garbage").unwrap();
        let want = format!(
            "load model: {}: not a tokenizer.json: expected value at line 1 column 1",
            tok.display()
        );
        assert_eq!(load_error(&st), want, "{arch}");
        std::fs::write(&tok, r#"{"version": "1.0"}"#).unwrap();
        let want = format!(
            "load model: {}: not a tokenizer.json: Model missing. at line 1 column 18",
            tok.display()
        );
        assert_eq!(load_error(&st), want, "{arch}");
        assert_eq!(stage_error(&dir, &tmp.path().join(arch)), want);
    }
}
