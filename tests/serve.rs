//! `serve` end to end: the `xtask` binary serves a small real pipeline's classifier (AG News,
//! SmolLM2 features, logistic regression) on a free loopback port; good requests get the pipeline's own
//! predictions, bad ones a clear 4xx with a JSON error, concurrent clients their own answers;
//! the process stays up until SIGTERM, which ends it cleanly.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// The server process and the lines it writes to standard error.
struct Server {
    child: Child,
    base: String,
    lines: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failed test must not leave its server behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(fx: &Fixture, file: &Path) -> Server {
        let mut child = fx
            .xtask()
            .args(["serve", "--stage", "lr", "--addr", "127.0.0.1:0"])
            .arg(file)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let base = loop {
            let line = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the server says where it listens");
            if let Some(rest) = line.split("on http://").nth(1) {
                break format!("http://{}", rest.split_whitespace().next().unwrap());
            }
        };
        Server { child, base, lines }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// Status and body of a request (a 4xx or 5xx is an answer, not an error).
fn send(method: &str, url: &str, content_type: Option<&str>, body: Option<&str>) -> (u16, String) {
    let mut req = ureq::request(method, url).timeout(Duration::from_secs(300));
    if let Some(ct) = content_type {
        req = req.set("Content-Type", ct);
    }
    let result = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    match result {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

fn classify(base: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, text) = send(
        "POST",
        &format!("{base}/v1/classify"),
        Some("application/json"),
        Some(body),
    );
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, v)
}

fn texts_body(texts: &[String]) -> String {
    serde_json::json!({ "texts": texts }).to_string()
}

/// An error answer: the status, and a JSON body with an `error` that mentions `what`.
fn assert_refused(answer: (u16, serde_json::Value), status: u16, what: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    let e = answer.1["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {}", answer.1));
    assert!(e.contains(what), "`{what}` not in: {e}");
}

fn artifact_dir(fx: &Fixture, file: &Path, stage: &str) -> PathBuf {
    let plan = xtask::pipeline::load(file).unwrap();
    let states = xtask::status::states(&plan, &fx.workspace()).unwrap();
    let s = states.into_iter().find(|s| s.id == stage).unwrap();
    fx.cache_dir()
        .join("artifacts")
        .join(s.manifest.unwrap().key)
}

/// AG News (8 train and 5 test texts per class), SmolLM2's layers 4 and 8 averaged, `lr`.
fn pipeline(models: &Path) -> String {
    llmembed_testkit::pipeline_header("served", 5, Some(models))
        + &llmembed_testkit::ag_news_stage(8, 5)
        + &llmembed_testkit::smollm2_stage("[4, 8]", 64)
        + "  - id: fused\n    kind: fuse\n    inputs: [llm]\n    params:\n      sources: [{layers: all}]\n      method: mean\n  \
           - id: lr\n    kind: logreg\n    inputs: [fused]\n"
}

#[test]
fn the_server_answers_good_and_bad_requests_and_stops_on_sigterm() {
    let Some(models) = needs("smollm2-135m", models_dir_with("smollm2-135m")) else {
        return;
    };
    if needs("AG News", ag_news()).is_none() {
        return;
    }
    let fx = Fixture::new();
    let file = fx.write_pipeline("p.yaml", &pipeline(&models));
    let ran = fx.xtask().arg("run").arg(&file).output().unwrap();
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let test =
        llmembed_core::read_text_table(&artifact_dir(&fx, &file, "data").join("test.parquet"))
            .unwrap();
    let expected = llmembed_core::read_predictions(
        &artifact_dir(&fx, &file, "lr").join("predictions.parquet"),
    )
    .unwrap();
    let want: HashMap<&str, (String, Vec<f32>)> = expected
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let label = expected.label_names[expected.preds[i] as usize].clone();
            (id.as_str(), (label, expected.row_probs(i).to_vec()))
        })
        .collect();
    let want_of_text: Vec<(String, (String, Vec<f32>))> = test
        .ids
        .iter()
        .zip(&test.texts)
        .map(|(id, t)| (t.clone(), want[id.as_str()].clone()))
        .collect();
    let classes = expected.label_names.clone();
    let check = |results: &serde_json::Value, expected: &[(String, (String, Vec<f32>))]| {
        let results = results["results"].as_array().expect("results");
        assert_eq!(results.len(), expected.len());
        for (r, (text, (label, probs))) in results.iter().zip(expected) {
            assert_eq!(r["label"].as_str(), Some(label.as_str()), "{text}: {r}");
            for (c, p) in probs.iter().enumerate() {
                let got = r["probs"][&classes[c]].as_f64().unwrap();
                assert!((got - f64::from(*p)).abs() <= 1e-6, "{text}: {got} vs {p}");
            }
        }
    };

    let mut server = Server::start(&fx, &file);
    let base = server.base.clone();
    assert_eq!(send("GET", &format!("{base}/health"), None, None).0, 200);
    let (status, info) = send("GET", &format!("{base}/v1/info"), None, None);
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["stage"], "lr");
    assert_eq!(info["classes"], serde_json::json!(expected.label_names));
    assert_eq!(info["artifacts"].as_array().unwrap().len(), 4, "{info}");
    assert_eq!(info["models"][0]["model"], "smollm2-135m");

    // Good texts: the pipeline's own predictions.
    let texts: Vec<String> = want_of_text.iter().map(|(t, _)| t.clone()).collect();
    let (status, answer) = classify(&base, &texts_body(&texts));
    assert_eq!(status, 200, "{answer}");
    check(&answer, &want_of_text);

    // An empty text among good ones: an error for it alone.
    let mixed = vec![texts[0].clone(), "  ".to_string(), texts[1].clone()];
    let (status, answer) = classify(&base, &texts_body(&mixed));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][1]["error"], "empty text");
    assert_eq!(
        answer["results"][0]["label"].as_str(),
        Some(want_of_text[0].1.0.as_str())
    );
    assert_eq!(
        answer["results"][2]["label"].as_str(),
        Some(want_of_text[1].1.0.as_str())
    );

    // Bad requests: clear 4xx with a JSON error.
    assert_refused(
        classify(&base, "{\"texts\": [\"unclosed"),
        400,
        "malformed JSON",
    );
    assert_refused(classify(&base, "{\"words\": [\"a\"]}"), 422, "texts");
    assert_refused(classify(&base, "{\"texts\": [1, 2]}"), 422, "");
    assert_refused(classify(&base, "{\"texts\": []}"), 422, "empty");
    let thousand: Vec<String> = (0..1000).map(|i| format!("headline number {i}")).collect();
    assert_refused(classify(&base, &texts_body(&thousand)), 422, "limit is 256");
    let huge = texts_body(&["a".repeat(10 * 1024 * 1024)]);
    let (status, body) = send(
        "POST",
        &format!("{base}/v1/classify"),
        Some("application/json"),
        Some(&huge),
    );
    assert_eq!(status, 413, "{body}");
    assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].is_string());
    let (status, body) = send(
        "POST",
        &format!("{base}/v1/classify"),
        None,
        Some(&texts_body(&texts)),
    );
    assert_eq!(status, 415, "{body}");
    assert_eq!(send("GET", &format!("{base}/nope"), None, None).0, 404);
    assert!(server.alive());

    // Eight clients at once, each with its own texts: each gets its own answers.
    let clients: Vec<_> = (0..8)
        .map(|k| {
            let base = base.clone();
            let part: Vec<(String, (String, Vec<f32>))> =
                want_of_text.iter().skip(k).step_by(8).cloned().collect();
            std::thread::spawn(move || {
                let texts: Vec<String> = part.iter().map(|(t, _)| t.clone()).collect();
                let (status, answer) = classify(&base, &texts_body(&texts));
                (status, answer, part)
            })
        })
        .collect();
    for c in clients {
        let (status, answer, part) = c.join().unwrap();
        assert_eq!(status, 200, "{answer}");
        check(&answer, &part);
    }
    assert!(server.alive());

    // One log line per request, then SIGTERM ends it cleanly.
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let log: Vec<String> = server.lines.try_iter().collect();
    let requests = log
        .iter()
        .filter(|l| l.starts_with("POST /v1/classify "))
        .count();
    assert_eq!(requests, 2 + 5 + 2 + 8, "{log:#?}");
    assert!(
        log.iter().any(|l| l.starts_with("POST /v1/classify 413")),
        "{log:#?}"
    );
}
