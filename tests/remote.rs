//! The remote cache against a real S3 API on loopback (`moto` in server mode, from PyPI):
//! a second machine computes nothing, damage in the remote is never used, concurrent pushes
//! leave intact objects, a remote that goes down costs one warning, and an extraction killed on
//! one machine resumes on another through the remote store, byte for byte.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Fixture, ag_news, needs, small_pipeline};

/// A moto S3 server on a free loopback port, stopped when dropped.
struct Moto {
    child: Child,
    port: u16,
    venv: PathBuf,
}

impl Moto {
    fn start() -> Option<Moto> {
        let venv = needs("moto[server]", llmembed_testkit::moto_venv())?;
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(venv.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let moto = Moto { child, port, venv };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto.python("s3.create_bucket(Bucket='cache')");
        Some(moto)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs Python with a boto3 client `s3` on this server.
    fn python(&self, code: &str) -> String {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='testing', \
             aws_secret_access_key='testing', region_name='us-east-1')\n{code}\n",
            self.endpoint()
        );
        let out = Command::new(self.venv.join("bin/python"))
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The AWS variables a client of this server needs.
    fn env(&self, cmd: &mut Command) {
        cmd.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", self.endpoint())
            .env("AWS_ALLOW_HTTP", "true")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE");
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `xtask` on `fx`'s cache with the remote `url`.
fn with_remote(fx: &Fixture, moto: &Moto, url: &str) -> Command {
    let mut cmd = fx.xtask();
    cmd.args(["--remote", url]);
    moto.env(&mut cmd);
    cmd
}

/// `xtask <command> <file>` on `fx`'s cache with the remote `url`; its stdout and stderr, after
/// checking it succeeded.
fn remote_cmd(
    fx: &Fixture,
    moto: &Moto,
    url: &str,
    command: &str,
    file: &Path,
) -> (String, String) {
    ok(with_remote(fx, moto, url)
        .arg(command)
        .arg(file)
        .output()
        .unwrap())
}

fn ok(out: Output) -> (String, String) {
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// Each stage's state word (`ran`, `cached`, `pulled`, ...) from a run's output, by id.
fn states(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let state = words.next()?;
            let id = words.next()?;
            ["ran", "cached", "pulled", "FAILED", "skipped"]
                .contains(&state)
                .then(|| (id.to_string(), state.to_string()))
        })
        .collect()
}

fn all(stdout: &str, state: &str) -> bool {
    let s = states(stdout);
    !s.is_empty() && s.iter().all(|(_, st)| st == state)
}

fn report(fx: &Fixture) -> Vec<u8> {
    std::fs::read(fx.results_dir().join("small/report.md")).unwrap()
}

/// The key of stage `id` in `fx`'s cache (from `show --json`).
fn key_of(fx: &Fixture, file: &Path, id: &str) -> String {
    let out = ok(fx
        .xtask()
        .args(["show", "--json"])
        .arg(file)
        .arg(id)
        .output()
        .unwrap())
    .0;
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    shown["stages"][0]["key"].as_str().unwrap().to_string()
}

#[test]
fn a_second_machine_pulls_everything_and_computes_nothing() {
    let (Some(_), Some(moto)) = (needs("AG News", ag_news()), Moto::start()) else {
        return;
    };
    let url = "s3://cache/team";
    let text = small_pipeline(1.0, 10);
    let (a, b, c) = (Fixture::new(), Fixture::new(), Fixture::new());
    let file = a.write_pipeline("p.yaml", &text);

    let (out, _) = remote_cmd(&a, &moto, url, "run", &file);
    assert!(all(&out, "ran"), "{out}");
    // Machine B: every stage pulled, the same bytes, the same report.
    let (out, _) = remote_cmd(&b, &moto, url, "run", &file);
    assert!(all(&out, "pulled"), "{out}");
    assert!(
        out.contains("4 stage(s), 0 ran, 0 cached, 4 pulled"),
        "{out}"
    );
    assert_eq!(a.artifact_bytes(), b.artifact_bytes());
    assert_eq!(report(&a), report(&b));
    // The objects are where the layout says, under the URL's prefix.
    let listed = moto.python(
        "print('\\n'.join(o['Key'] for o in s3.list_objects_v2(Bucket='cache')['Contents']))",
    );
    let key = key_of(&a, &file, "lr");
    assert!(
        listed.contains(&format!("team/artifacts/{key}/manifest.json")),
        "{listed}"
    );

    // Machine C: `status` sees the remote, `pull` fills the cache, then nothing runs.
    let (out, _) = remote_cmd(&c, &moto, url, "status", &file);
    assert_eq!(
        out,
        "remote  data\nremote  features\nremote  lr\nremote  report\n"
    );
    let (out, _) = remote_cmd(&c, &moto, url, "pull", &file);
    assert!(
        out.contains("4 artifact(s) pulled, 0 already there, 0 missing"),
        "{out}"
    );
    let (out, _) = ok(c.xtask().arg("run").arg(&file).output().unwrap());
    assert!(all(&out, "cached"), "{out}");
    assert_eq!(a.artifact_bytes(), c.artifact_bytes());
    // A pushes again: everything is there already, nothing is overwritten.
    let (out, _) = remote_cmd(&a, &moto, url, "push", &file);
    assert!(
        out.contains("0 artifact(s) pushed, 4 already there, 0 missing"),
        "{out}"
    );
}

#[test]
fn a_damaged_remote_object_is_detected_recomputed_and_never_used() {
    let (Some(_), Some(moto)) = (needs("AG News", ag_news()), Moto::start()) else {
        return;
    };
    let url = "s3://cache/damage";
    let (a, b, c) = (Fixture::new(), Fixture::new(), Fixture::new());
    let file = a.write_pipeline("p.yaml", &small_pipeline(1.0, 10));
    remote_cmd(&a, &moto, url, "run", &file);

    // One flipped byte in the middle of the TF-IDF features in the remote.
    let key = key_of(&a, &file, "features");
    moto.python(&format!(
        "k = 'damage/artifacts/{key}/train.parquet'\n\
         b = bytearray(s3.get_object(Bucket='cache', Key=k)['Body'].read())\n\
         b[len(b) // 2] ^= 1\n\
         s3.put_object(Bucket='cache', Key=k, Body=bytes(b))"
    ));
    let (out, err) = remote_cmd(&b, &moto, url, "run", &file);
    assert!(
        err.contains(&format!(
            "warning: the remote cache's artifact of `features` is damaged (damage/artifacts/{key}/train.parquet: content does not match its manifest (blake3 "
        )),
        "{err}"
    );
    let st = states(&out);
    assert_eq!(st[0], ("data".into(), "pulled".into()));
    assert_eq!(st[1], ("features".into(), "ran".into()));
    // Recomputed to the same bytes: what depends on it is pulled as before.
    assert_eq!(st[2], ("lr".into(), "pulled".into()));
    assert_eq!(a.artifact_bytes(), b.artifact_bytes());
    // B replaced the damaged object: C pulls everything without a warning.
    let (out, err) = remote_cmd(&c, &moto, url, "run", &file);
    assert!(
        all(&out, "pulled") && !err.contains("damaged"),
        "{out}\n{err}"
    );
    assert_eq!(a.artifact_bytes(), c.artifact_bytes());
}

#[test]
fn concurrent_pushes_of_one_key_leave_one_intact_object() {
    let (Some(_), Some(moto)) = (needs("AG News", ag_news()), Moto::start()) else {
        return;
    };
    let url = "s3://cache/race";
    let fixtures: Vec<Fixture> = (0..3).map(|_| Fixture::new()).collect();
    let file = fixtures[0].write_pipeline("p.yaml", &small_pipeline(0.5, 10));
    // Two machines compute the same pipeline at once and both push every artifact.
    let children: Vec<Child> = fixtures[..2]
        .iter()
        .map(|fx| {
            with_remote(fx, &moto, url)
                .arg("run")
                .arg(&file)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        ok(child.wait_with_output().unwrap());
    }
    assert_eq!(fixtures[0].artifact_bytes(), fixtures[1].artifact_bytes());
    let (out, err) = remote_cmd(&fixtures[2], &moto, url, "run", &file);
    assert!(
        all(&out, "pulled") && !err.contains("damaged"),
        "{out}\n{err}"
    );
    assert_eq!(fixtures[0].artifact_bytes(), fixtures[2].artifact_bytes());
}

#[test]
fn a_remote_that_goes_down_mid_run_costs_one_warning() {
    let (Some(_), Some(mut moto)) = (needs("AG News", ag_news()), Moto::start()) else {
        return;
    };
    let url = "s3://cache/down";
    let (a, local) = (Fixture::new(), Fixture::new());
    let file = a.write_pipeline("p.yaml", &small_pipeline(1.0, 10));
    let mut child = with_remote(&a, &moto, url)
        .arg("run")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stop the server once the first stage is done (and pushed).
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("ran      data") {
        assert!(stdout.read_line(&mut seen).unwrap() > 0, "{seen}");
    }
    moto.stop();
    let rest = child.wait_with_output().unwrap();
    let err = String::from_utf8(rest.stderr).unwrap();
    assert!(rest.status.success(), "{err}");
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("warning: remote cache s3://cache/down failed ("))
        .collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].ends_with("); going on with the local cache only"),
        "{err}"
    );
    // The local result is the one a run without a remote makes.
    ok(local.xtask().arg("run").arg(&file).output().unwrap());
    assert_eq!(a.artifact_bytes(), local.artifact_bytes());

    // Required, a remote that is down fails the run, saying so.
    let b = Fixture::new();
    let out = with_remote(&b, &moto, url)
        .args(["--remote-required", "run"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(
        err.contains("remote cache s3://cache/down (pull); it is required (--remote-required)"),
        "{err}"
    );
}

/// What the extraction tests need: AG News, SmolLM2's folder, and a moto server; `None` (the
/// test skips, or fails under `LLMEMBED_REQUIRE_TEST_INPUTS=1`) when one is missing.
fn smollm2_and_moto() -> Option<(PathBuf, Moto)> {
    needs("AG News", ag_news())?;
    let models = needs("SmolLM2", common::models_dir_with("smollm2-135m"))?;
    Some((models, Moto::start()?))
}

/// SmolLM2 over 200 AG News texts in shards of 8.
fn extraction_pipeline(models: &Path) -> String {
    llmembed_testkit::pipeline_header("resume", 5, Some(models))
        + &llmembed_testkit::ag_news_stage(45, 5)
        + &llmembed_testkit::smollm2_stage("[4, 20]", 8)
}

#[test]
fn an_extraction_killed_on_one_machine_resumes_on_another_through_the_remote() {
    let Some((models, moto)) = smollm2_and_moto() else {
        return;
    };
    let url = "s3://cache/resume";
    let (a, b, clean) = (Fixture::new(), Fixture::new(), Fixture::new());
    let file = a.write_pipeline("p.yaml", &extraction_pipeline(&models));

    // Machine A, with progress lines and a store push every 0.2 s, killed mid-extraction.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(["--cache"])
        .arg(a.cache_dir())
        .arg("--results")
        .arg(a.results_dir())
        .args(["--remote", url, "run"])
        .arg(&file)
        .env("LLMEMBED_DATA_DIR", common::data_dir())
        .env("LLMEMBED_PROGRESS_SECS", "0")
        .env("LLMEMBED_REMOTE_PUSH_SECS", "0.2")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    moto.env(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let done = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "A ended early");
        if let Some(rest) = line.trim().strip_prefix("extract ") {
            let done: usize = rest.split('/').next().unwrap().parse().unwrap();
            if done >= 64 {
                break done;
            }
        }
    };
    assert!(
        done < 200,
        "the extraction finished before it could be killed"
    );
    // Two push rounds, then SIGKILL.
    std::thread::sleep(Duration::from_millis(600));
    child.kill().unwrap();
    child.wait().unwrap();

    // Machine B, empty cache, same remote: it pulls A's shards and embeds only the rest.
    let (out, err) = remote_cmd(&b, &moto, url, "run", &file);
    assert!(err.is_empty() || !err.contains("warning"), "{err}");
    let llm = out
        .lines()
        .find(|l| l.starts_with("ran      llm "))
        .unwrap();
    let reused: usize = llm
        .split("reused ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(reused >= done, "{llm} (A had done {done})");
    assert!(reused < 200, "{llm}");
    // Byte for byte what an uninterrupted single run makes.
    ok(clean.xtask().arg("run").arg(&file).output().unwrap());
    assert_eq!(b.artifact_bytes(), clean.artifact_bytes());
}

/// A pipeline moves only the store folders it uses: a forced extraction on a second machine
/// takes from the remote store only the folder it opens (and reuses every text in it), and
/// `pull` only the folders the pipeline's artifacts name. Another model's embedded texts, in the
/// same remote, stay there.
#[test]
fn only_the_store_folders_a_pipeline_uses_travel() {
    let Some((models, moto)) = smollm2_and_moto() else {
        return;
    };
    let url = "s3://cache/folders";
    let (a, b, c) = (Fixture::new(), Fixture::new(), Fixture::new());
    let text = |name: &str, layers: &str| {
        llmembed_testkit::pipeline_header(name, 3, Some(&models))
            + &llmembed_testkit::ag_news_stage(4, 2)
            + &llmembed_testkit::smollm2_stage(layers, 8)
    };
    let two = a.write_pipeline("two.yaml", &text("two", "[2]"));
    let three = a.write_pipeline("three.yaml", &text("three", "[3]"));
    remote_cmd(&a, &moto, url, "run", &two);
    remote_cmd(&a, &moto, url, "run", &three);
    let folders = |fx: &Fixture| -> Vec<String> {
        let dir = fx.cache_dir().join("stores").join("extract");
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    assert_eq!(folders(&a).len(), 2, "one folder per set of layers");
    let shown = ok(a
        .xtask()
        .args(["show", "--json"])
        .arg(&three)
        .arg("llm")
        .output()
        .unwrap())
    .0;
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let used = Path::new(shown["stages"][0]["stores"][0].as_str().unwrap())
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(folders(&a).contains(&used));

    let (out, _) = ok(with_remote(&b, &moto, url)
        .args(["run", "--force", "llm"])
        .arg(&three)
        .output()
        .unwrap());
    let llm = out
        .lines()
        .find(|l| l.starts_with("ran      llm "))
        .unwrap();
    assert!(llm.contains("reused 24 of 24 texts"), "{llm}");
    assert_eq!(folders(&b), std::slice::from_ref(&used));

    let (out, _) = remote_cmd(&c, &moto, url, "pull", &three);
    assert!(out.contains("2 artifact(s) pulled"), "{out}");
    assert_eq!(folders(&c), [used]);
}
