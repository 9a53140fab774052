//! `bench serve`: the server of `serve` started in this process on a loopback port, measured
//! from HTTP clients (requests/s, p50/p99 latency for 1-text and 32-text requests), against
//! `bench extract` on the same model in the same run (texts/s). The stages' stores are an empty
//! folder, so every text is embedded (as `bench extract` embeds them): nothing is reused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::apply::Chain;
use crate::pipeline::Plan;
use crate::runner::Workspace;
use crate::serve::ServeLimits;

/// What `bench serve` takes besides the pipeline.
pub struct BenchServeOptions {
    pub stage: String,
    /// Texts sent one per request.
    pub single: usize,
    /// Texts sent 32 per request.
    pub batched: usize,
    /// Clients sending at once.
    pub clients: usize,
    pub limits: ServeLimits,
}

/// Latencies of one phase, and its wall time.
struct Phase {
    latencies: Vec<f64>,
    texts: usize,
    wall: f64,
}

impl Phase {
    fn quantile(&self, q: f64) -> f64 {
        let mut v = self.latencies.clone();
        v.sort_by(f64::total_cmp);
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v.get(i).copied().unwrap_or(f64::NAN)
    }

    fn print(&self, what: &str) {
        crate::outln!(
            "  {what}: {} requests, {:.2} requests/s, {:.1} texts/s, latency p50 {:.0} ms, p99 {:.0} ms",
            self.latencies.len(),
            self.latencies.len() as f64 / self.wall,
            self.texts as f64 / self.wall,
            self.quantile(0.5) * 1e3,
            self.quantile(0.99) * 1e3
        );
    }
}

/// The CPU's model name, as /proc/cpuinfo gives it.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Sends `requests` (each a list of texts) from `clients` threads, each request once, and
/// times each; fails on any answer that is not 200 with one result per text.
fn phase(url: &str, requests: Vec<Vec<String>>, clients: usize) -> Result<Phase> {
    let texts = requests.iter().map(Vec::len).sum();
    let queue = Arc::new(std::sync::Mutex::new(requests.into_iter()));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients.max(1))
        .map(|_| {
            let (queue, url) = (queue.clone(), url.to_string());
            std::thread::spawn(move || -> Result<Vec<f64>> {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(600))
                    .build();
                let mut latencies = Vec::new();
                loop {
                    let next = queue.lock().map_err(|_| anyhow!("queue poisoned"))?.next();
                    let Some(texts) = next else { break };
                    let body = serde_json::json!({ "texts": texts }).to_string();
                    let t = Instant::now();
                    let answer = agent
                        .post(&url)
                        .set("Content-Type", "application/json")
                        .send_string(&body)
                        .map_err(|e| anyhow!("POST {url}: {e}"))?
                        .into_string()?;
                    latencies.push(t.elapsed().as_secs_f64());
                    let v: serde_json::Value = serde_json::from_str(&answer)?;
                    let results = v["results"].as_array().map(Vec::len);
                    if results != Some(texts.len()) || answer.contains("\"error\"") {
                        bail!("unexpected answer: {answer}");
                    }
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.join().map_err(|_| anyhow!("a client panicked"))??);
    }
    Ok(Phase {
        latencies,
        texts,
        wall: started.elapsed().as_secs_f64(),
    })
}

/// `texts/s` out of `bench extract`'s note (`... in 3.2s: 41.0 texts/s, ...`).
fn texts_per_second(notes: &[String]) -> Option<f64> {
    notes.iter().find_map(|n| {
        let before = n.split(" texts/s").next().filter(|b| b.len() < n.len())?;
        before.rsplit(' ').next()?.parse().ok()
    })
}

/// Runs the bench: the chain loaded on an empty store, the server on a free loopback port,
/// `single` 1-text requests, then `batched` texts in 32-text requests, then `bench extract`.
pub fn bench_serve(
    plan: &Plan,
    ws: &Workspace,
    opts: &BenchServeOptions,
    program: &str,
) -> Result<()> {
    let store = tempfile::tempdir()?;
    let chain = Chain::load(plan, ws, &opts.stage, program, Some(store.path()))?;
    let model = chain
        .info
        .models
        .first()
        .and_then(|m| m.model.as_str().map(str::to_string));
    let env = ws.env(plan);
    let data_dir = env.data_dir.clone();
    let texts = crate::tools::ag_news_test_texts(&data_dir, opts.single + opts.batched + 1)?.texts;
    if texts.len() < opts.single + opts.batched + 1 {
        bail!(
            "AG News has {} test texts; asked for {}",
            texts.len(),
            opts.single + opts.batched + 1
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}/v1/classify", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(crate::serve::run(
        listener,
        Arc::new(chain),
        opts.limits.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    crate::outln!(
        "serve bench: `{}` of {}, on {}",
        opts.stage,
        plan.name,
        cpu_model()
    );
    // A first request loads what the stages load lazily; not measured.
    phase(&url, vec![vec![texts[0].clone()]], 1).context("warm-up request")?;
    let single: Vec<Vec<String>> = texts[1..=opts.single]
        .iter()
        .map(|t| vec![t.clone()])
        .collect();
    let one = phase(&url, single, opts.clients)?;
    one.print(&format!("1-text requests, {} clients", opts.clients));
    let batched: Vec<Vec<String>> = texts[1 + opts.single..]
        .chunks(32)
        .map(<[String]>::to_vec)
        .collect();
    let many = phase(&url, batched, opts.clients)?;
    many.print(&format!("32-text requests, {} clients", opts.clients));
    let _ = stop.send(());
    runtime.block_on(server)??;
    let Some(model) = model else {
        crate::outln!("  (no model preset on the path: no extract bench to compare with)");
        return Ok(());
    };
    let notes = crate::tools::bench_extract(
        &env.models_dir,
        &data_dir,
        &model,
        opts.batched,
        None,
        llmembed_extract::ComputeDtype::F32,
        None,
    )?;
    let extract = texts_per_second(&notes).context("bench extract gave no texts/s")?;
    let served = many.texts as f64 / many.wall;
    crate::outln!(
        "  32-text requests: {served:.1} texts/s = {:.0}% of bench extract's {extract:.1} texts/s ({model}, {} texts, every layer: a pipeline that taps fewer layers runs fewer blocks; the bar is 80%)",
        100.0 * served / extract,
        opts.batched
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn texts_per_second_is_read_from_the_extract_note() {
        let notes = vec![
            "model x".to_string(),
            "embedded 500 texts (12000 tokens) in 12.5s: 40.0 texts/s, 960 tokens/s".to_string(),
        ];
        assert_eq!(super::texts_per_second(&notes), Some(40.0));
        assert_eq!(super::texts_per_second(&notes[..1]), None);
    }
}
