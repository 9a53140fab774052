//! `serve`: a pipeline's classifier behind HTTP (axum on tokio). `POST /v1/classify`
//! (`{"texts": [...]}`), `GET /health`, `GET /v1/info`. Texts of concurrent requests are
//! classified together: a batching task takes every request waiting (up to a batch size, or what
//! arrives within a few milliseconds) and runs the chain once for all of them. Bad requests get
//! a 4xx with a JSON error body; nothing a client sends can stop the server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use llmembed_core::Predictions;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::apply::{Chain, ChainInfo, refuse_text};

/// The server's limits and batching.
#[derive(Clone, Debug, Serialize)]
pub struct ServeLimits {
    /// Largest request body (413 above).
    pub max_body_bytes: usize,
    /// Most texts in one request (422 above).
    pub max_texts: usize,
    /// Longest text (that text gets an error; the others are classified).
    pub max_text_bytes: usize,
    /// Texts of concurrent requests classified together, at most (a larger request is one batch).
    pub batch_texts: usize,
    /// How long the first request of a batch waits for others.
    pub batch_wait_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifyRequest {
    texts: Vec<String>,
}

/// Texts of one request sent to the batching task; the answer: its rows, or why none.
struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<std::result::Result<Predictions, String>>,
}

struct App {
    info: ChainInfo,
    limits: ServeLimits,
    jobs: mpsc::Sender<Job>,
}

/// How many texts a request carried, for its log line.
#[derive(Clone, Copy)]
struct TextCount(usize);

fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() });
    (status, axum::Json(body)).into_response()
}

/// Serves `chain` on `addr` until SIGTERM or Ctrl-C; requests being answered are finished.
pub fn serve(chain: Chain, addr: SocketAddr, limits: ServeLimits) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen on {addr}"))?;
        let local = listener.local_addr()?;
        log::info!(
            "serving `{}` of {} on http://{local} (POST /v1/classify, GET /health, GET /v1/info); Ctrl-C or SIGTERM stops",
            chain.info.stage,
            chain.info.pipeline
        );
        run(listener, Arc::new(chain), limits, shutdown_signal()).await?;
        log::info!("stopped");
        Ok(())
    })
}

/// The server on `listener` until `shutdown` completes (then it finishes the requests it has).
pub async fn run(
    listener: tokio::net::TcpListener,
    chain: Arc<Chain>,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (jobs, queue) = mpsc::channel(1024);
    let batcher = tokio::spawn(batch(chain.clone(), queue, limits.clone()));
    let app = Arc::new(App {
        info: chain.info.clone(),
        limits: limits.clone(),
        jobs,
    });
    let router = Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/v1/info", get(info))
        .route("/v1/classify", post(classify))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "no such route") })
        .layer(middleware::from_fn(log_request))
        .with_state(app);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serve")?;
    // The router, and with it the last sender of jobs, is gone: the batcher ends.
    let _ = batcher.await;
    Ok(())
}

/// SIGTERM or Ctrl-C, whichever comes first.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            log::warn!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                log::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    log::info!("shutting down: finishing the requests in progress");
}

/// One line per request: method, path, status, texts, time.
async fn log_request(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let response = next.run(req).await;
    let texts = response
        .extensions()
        .get::<TextCount>()
        .map(|t| format!(" {} text(s)", t.0))
        .unwrap_or_default();
    log::info!(
        "{method} {path} {}{texts} {:.1} ms",
        response.status().as_u16(),
        started.elapsed().as_secs_f64() * 1e3
    );
    response
}

async fn info(State(app): State<Arc<App>>) -> Response {
    axum::Json(serde_json::json!({
        "pipeline": app.info.pipeline,
        "stage": app.info.stage,
        "kind": app.info.kind,
        "classes": app.info.classes,
        "artifacts": app.info.artifacts,
        "models": app.info.models,
        "limits": app.limits,
    }))
    .into_response()
}

/// The answer for one text: its class and probabilities, or why it was not classified.
struct TextResult<'a> {
    classes: &'a [String],
    row: std::result::Result<(usize, &'a [f32]), String>,
}

impl Serialize for TextResult<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        match &self.row {
            Ok((pred, probs)) => {
                map.serialize_entry("label", &self.classes[*pred])?;
                map.serialize_entry("probability", &probs[*pred])?;
                map.serialize_entry("probs", &ClassProbs(self.classes, probs))?;
            }
            Err(e) => map.serialize_entry("error", e)?,
        }
        map.end()
    }
}

/// Class name to probability, in class order.
struct ClassProbs<'a>(&'a [String], &'a [f32]);

impl Serialize for ClassProbs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, p) in self.0.iter().zip(self.1) {
            map.serialize_entry(name, p)?;
        }
        map.end()
    }
}

/// Bodies over the limit are still read (and dropped) up to this size, so that the client, which
/// writes its whole body before it reads, gets the 413 rather than a reset connection.
const DRAIN_BYTES: usize = 64 * 1024 * 1024;

/// The body, at most `max` bytes of it; `Err` is the answer to give instead (413, 400).
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    max: usize,
) -> std::result::Result<Vec<u8>, Response> {
    use futures::StreamExt as _;
    let too_large = |n: usize| {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a body of {n} bytes or more is over the limit of {max} bytes (--max-body-bytes)"
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared.filter(|&n| n > DRAIN_BYTES) {
        return Err(too_large(n));
    }
    let mut stream = body.into_data_stream();
    let (mut bytes, mut total) = (Vec::new(), 0usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            json_error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            )
        })?;
        total += chunk.len();
        if total <= max {
            bytes.extend_from_slice(&chunk);
        } else if total > DRAIN_BYTES {
            break;
        }
    }
    if total > max {
        return Err(too_large(total));
    }
    Ok(bytes)
}

async fn classify(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let bytes = match read_body(body, &headers, app.limits.max_body_bytes).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !json {
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected `Content-Type: application/json`",
        );
    }
    let texts = match serde_json::from_slice::<ClassifyRequest>(&bytes) {
        Ok(req) => req.texts,
        Err(e) if e.is_data() => {
            return json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("expected {{\"texts\": [strings]}}: {e}"),
            );
        }
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")),
    };
    let count = texts.len();
    let mut response = answer(&app, texts).await;
    response.extensions_mut().insert(TextCount(count));
    response
}

async fn answer(app: &App, texts: Vec<String>) -> Response {
    let limits = &app.limits;
    if texts.is_empty() {
        return json_error(StatusCode::UNPROCESSABLE_ENTITY, "`texts` is empty");
    }
    if texts.len() > limits.max_texts {
        return json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "{} texts in one request; the limit is {} (--max-texts)",
                texts.len(),
                limits.max_texts
            ),
        );
    }
    let refused: Vec<Option<String>> = texts
        .iter()
        .map(|t| refuse_text(t, limits.max_text_bytes))
        .collect();
    let valid: Vec<String> = texts
        .into_iter()
        .zip(&refused)
        .filter(|(_, r)| r.is_none())
        .map(|(t, _)| t)
        .collect();
    let predictions = if valid.is_empty() {
        None
    } else {
        let (reply, answer) = oneshot::channel();
        if app
            .jobs
            .send(Job {
                texts: valid,
                reply,
            })
            .await
            .is_err()
        {
            return json_error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping");
        }
        match answer.await {
            Ok(Ok(p)) => Some(p),
            Ok(Err(e)) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e),
            Err(_) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, "the batch was lost"),
        }
    };
    let classes = &app.info.classes;
    let mut k = 0;
    let results: Vec<TextResult> = refused
        .into_iter()
        .map(|r| match (r, &predictions) {
            (Some(e), _) => TextResult {
                classes,
                row: Err(e),
            },
            (None, Some(p)) => {
                k += 1;
                let pred = usize::try_from(p.preds[k - 1])
                    .ok()
                    .filter(|&c| c < classes.len());
                TextResult {
                    classes,
                    row: pred.map(|c| (c, p.row_probs(k - 1))).ok_or_else(|| {
                        format!("class {} is not among the classes", p.preds[k - 1])
                    }),
                }
            }
            (None, None) => unreachable!("a valid text was sent for classification"),
        })
        .collect();
    axum::Json(serde_json::json!({ "results": results })).into_response()
}

/// The batching task: takes the first waiting request, then every request that arrives within
/// `batch_wait_ms` up to `batch_texts` texts, classifies all their texts in one call of the
/// chain (on a blocking thread), and answers each request its rows.
async fn batch(chain: Arc<Chain>, mut queue: mpsc::Receiver<Job>, limits: ServeLimits) {
    while let Some(first) = queue.recv().await {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(limits.batch_wait_ms);
        let mut count = first.texts.len();
        let mut jobs = vec![first];
        while count < limits.batch_texts {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(job)) => {
                    count += job.texts.len();
                    jobs.push(job);
                }
                _ => break,
            }
        }
        let texts: Vec<String> = jobs.iter().flat_map(|j| j.texts.iter().cloned()).collect();
        let ids: Vec<String> = (0..texts.len()).map(|i| i.to_string()).collect();
        let chain = chain.clone();
        let result = tokio::task::spawn_blocking(move || chain.classify(ids, texts)).await;
        let all = match result {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(e) => Err(format!("the classification task failed: {e}")),
        };
        if let Err(e) = &all {
            log::error!("a batch of {count} text(s) failed: {e}");
        }
        let mut start = 0;
        for job in jobs {
            let n = job.texts.len();
            let part = all
                .as_ref()
                .map(|p| rows(p, start, n))
                .map_err(Clone::clone);
            start += n;
            // A client that went away does not take its answer: nothing to do.
            let _ = job.reply.send(part);
        }
    }
}

/// Rows `start..start + n` of `p`.
fn rows(p: &Predictions, start: usize, n: usize) -> Predictions {
    let c = p.num_classes();
    Predictions {
        ids: p.ids[start..start + n].to_vec(),
        labels: p.labels[start..start + n].to_vec(),
        preds: p.preds[start..start + n].to_vec(),
        probs: p.probs[start * c..(start + n) * c].to_vec(),
        label_names: p.label_names.clone(),
        producer: p.producer.clone(),
    }
}

/// The socket address `--addr` names.
pub fn parse_addr(addr: &str) -> Result<SocketAddr> {
    addr.parse()
        .with_context(|| format!("--addr {addr}: expected IP:PORT, such as 127.0.0.1:8080"))
}
