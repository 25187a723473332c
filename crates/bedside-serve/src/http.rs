//! Routes, middleware and the OpenAI response shapes.
//!
//! Layers, outermost first: a client `x-request-id` that is not a UUID is dropped, a request id set and
//! echoed, `Authorization` marked sensitive, one access-log line per request written when its
//! last byte is sent (ids, key label, model, token counts, latency, status — never text), every
//! error answered in OpenAI's JSON shape, a request timeout, a body-size limit and a body-read
//! timeout; then authentication on every route but `/health`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::map_request_body::MapRequestBodyLayer;
use tower_http::map_response_body::MapResponseBodyLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

use crate::api::{self, Generation};
use crate::auth::KeyRing;
use crate::error::ApiError;
use crate::scheduler::{Event, Job, Shared};

/// Everything the handlers need.
pub struct App {
    pub shared: Arc<Shared>,
    pub jobs: std::sync::mpsc::Sender<Job>,
    pub keys: Option<KeyRing>,
    pub max_body_bytes: usize,
    /// How long a request may generate.
    pub timeout: Duration,
    pub body_timeout: Duration,
}

/// What the access log says about one request, filled in as it goes.
#[derive(Debug, Default)]
struct AccessRecord {
    key: Option<String>,
    /// Only ever a served model id (base or adapter), never an unknown id a client sent.
    model: Option<String>,
    prompt_tokens: usize,
    completion_tokens: usize,
    time_to_first_token: Option<Duration>,
    finish: Option<&'static str>,
    error: Option<&'static str>,
}

type Record = Arc<Mutex<AccessRecord>>;

fn with_record(rec: &Record, f: impl FnOnce(&mut AccessRecord)) {
    if let Ok(mut r) = rec.lock() {
        f(&mut r);
    }
}

const FINGERPRINT: &str = concat!("fp_bedside_", env!("CARGO_PKG_VERSION"));

pub fn router(app: Arc<App>) -> Router {
    let protected = Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate));
    let timeout = app.timeout + Duration::from_secs(5);
    Router::new()
        .route("/health", get(health))
        .merge(protected)
        .fallback(|| async { ApiError::from_status(StatusCode::NOT_FOUND) })
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn(drop_malformed_request_id))
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION]))
                .layer(middleware::from_fn_with_state(app.clone(), access_log))
                .layer(middleware::map_response(openai_error_bodies))
                .layer(TimeoutLayer::with_status_code(StatusCode::GATEWAY_TIMEOUT, timeout))
                // The limit and body-timeout layers wrap bodies in their own types; axum's inside
                // and outside them.
                .layer(MapResponseBodyLayer::new(Body::new))
                .layer(RequestBodyLimitLayer::new(app.max_body_bytes))
                .layer(RequestBodyTimeoutLayer::new(app.body_timeout))
                .layer(MapRequestBodyLayer::new(Body::new)),
        )
        .with_state(app)
}

/// A client's own `x-request-id` (a proxy's, for correlation) is kept only if it is a UUID: the
/// logs print it, and free text there could carry a patient's words.
async fn drop_malformed_request_id(mut req: Request, next: Next) -> Response {
    let is_uuid = req.headers().get("x-request-id").map(|v| v.to_str().ok().and_then(|s| uuid::Uuid::try_parse(s).ok()).is_some());
    if is_uuid == Some(false) {
        req.headers_mut().remove("x-request-id");
    }
    next.run(req).await
}

/// Errors raised outside the handlers (unknown route, wrong method, body limits, timeouts)
/// get OpenAI's JSON body too.
async fn openai_error_bodies(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        return ApiError::from_status(status).into_response();
    }
    resp
}

async fn access_log(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
    let method = req.method().to_string();
    let rec: Record = Arc::default();
    req.extensions_mut().insert(rec.clone());
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let done = LogOnDrop { app, rec, start, route, request_id, method, status };
    Response::from_parts(parts, Body::new(LoggedBody { inner: body, _done: done }))
}

/// Writes the access-log line and the request metrics when the response body is dropped:
/// after its last byte, or when the client went away.
struct LogOnDrop {
    app: Arc<App>,
    rec: Record,
    start: Instant,
    route: String,
    request_id: String,
    method: String,
    status: u16,
}

impl Drop for LogOnDrop {
    fn drop(&mut self) {
        let secs = self.start.elapsed().as_secs_f64();
        let m = &self.app.shared.metrics;
        m.count_request(&self.route, self.status);
        m.request_duration.observe(secs);
        let r = self.rec.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default();
        tracing::info!(
            target: "bedside_serve::access",
            request_id = %self.request_id,
            key = r.key.as_deref().unwrap_or("-"),
            method = %self.method,
            route = %self.route,
            model = r.model.as_deref().unwrap_or("-"),
            status = self.status,
            prompt_tokens = r.prompt_tokens,
            completion_tokens = r.completion_tokens,
            ttft_ms = r.time_to_first_token.map_or(-1.0, |d| d.as_secs_f64() * 1e3),
            latency_ms = secs * 1e3,
            finish = r.finish.unwrap_or("-"),
            error = r.error.unwrap_or("-"),
            "request"
        );
    }
}

struct LoggedBody {
    inner: Body,
    _done: LogOnDrop,
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

async fn authenticate(State(app): State<Arc<App>>, Extension(rec): Extension<Record>, req: Request, next: Next) -> Response {
    let Some(keys) = &app.keys else {
        return next.run(req).await;
    };
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    match token.and_then(|t| keys.verify(t)) {
        Some(label) => {
            with_record(&rec, |r| r.key = Some(label.to_string()));
            next.run(req).await
        }
        None => {
            with_record(&rec, |r| r.error = Some("invalid_api_key"));
            let msg = if token.is_some() {
                "Incorrect API key provided."
            } else {
                "You didn't provide an API key. Send it in the Authorization header as `Bearer KEY`."
            };
            ApiError::unauthorized(msg).into_response()
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn health(State(app): State<Arc<App>>) -> Response {
    if crate::scheduler::model_ready(&app.shared) {
        Json(json!({"status": "ok"})).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "loading"}))).into_response()
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut resp = app.shared.metrics.render().into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    resp
}

fn model_entries(app: &App) -> Result<Vec<Value>, ApiError> {
    let loaded = app.shared.loaded.get().filter(|_| crate::scheduler::model_ready(&app.shared)).ok_or_else(ApiError::loading)?;
    let base = &loaded.ids.base;
    let mut out = vec![json!({"id": base, "object": "model", "created": loaded.created, "owned_by": "bedside"})];
    for a in &loaded.ids.adapters {
        out.push(json!({"id": a, "object": "model", "created": loaded.created, "owned_by": "bedside", "root": base, "parent": base}));
    }
    Ok(out)
}

async fn list_models(State(app): State<Arc<App>>) -> Response {
    match model_entries(&app) {
        Ok(data) => Json(json!({"object": "list", "data": data})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn get_model(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    match model_entries(&app) {
        Ok(data) => match data.into_iter().find(|m| m["id"] == id.as_str()) {
            Some(m) => Json(m).into_response(),
            None => ApiError::model_not_found(&id).into_response(),
        },
        Err(e) => e.into_response(),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

async fn chat(State(app): State<Arc<App>>, Extension(rec): Extension<Record>, req: Request) -> Response {
    generate(app, rec, req, Kind::Chat).await
}

async fn completions(State(app): State<Arc<App>>, Extension(rec): Extension<Record>, req: Request) -> Response {
    generate(app, rec, req, Kind::Completion).await
}

/// The body, with its failures told apart: too large (413), too slow (408), broken (400).
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let err = match axum::body::to_bytes(body, limit).await {
        Ok(b) => return Ok(b),
        Err(e) => e,
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return Err(ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE));
        }
        if c.is::<tower_http::timeout::TimeoutError>() {
            return Err(ApiError::from_status(StatusCode::REQUEST_TIMEOUT));
        }
        cause = c.source();
    }
    Err(ApiError::invalid(None, "The request body could not be read."))
}

fn fail(rec: &Record, e: ApiError) -> Response {
    with_record(rec, |r| r.error = Some(e.code.unwrap_or(e.kind)));
    e.into_response()
}

async fn generate(app: Arc<App>, rec: Record, req: Request, kind: Kind) -> Response {
    let received = Instant::now();
    let Some(loaded) = app.shared.loaded.get().filter(|_| crate::scheduler::model_ready(&app.shared)) else {
        return fail(&rec, ApiError::loading());
    };
    let body = match read_body(req.into_body(), app.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return fail(&rec, e),
    };
    let parsed = match kind {
        Kind::Chat => api::parse_chat(&body, &loaded.ids, &loaded.limits),
        Kind::Completion => api::parse_completion(&body, &loaded.ids, &loaded.limits),
    };
    drop(body);
    let generation = match parsed {
        Ok(g) => g,
        Err(e) => return fail(&rec, e),
    };
    with_record(&rec, |r| r.model = Some(generation.model.clone()));
    let Some(ticket) = app.shared.reserve() else {
        return fail(&rec, ApiError::busy(2));
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let id = app.shared.next_id();
    let meta = ResponseMeta::new(kind, &generation);
    let job = Job { id, generation, received, deadline: received + app.timeout, events: tx };
    if app.jobs.send(job).is_err() {
        return fail(&rec, ApiError::internal("The generation thread has stopped."));
    }
    ticket.hand_over();
    let prompt_tokens = match rx.recv().await {
        Some(Event::Started { prompt_tokens, time_to_first_token }) => {
            with_record(&rec, |r| {
                r.prompt_tokens = prompt_tokens;
                r.time_to_first_token = Some(time_to_first_token);
            });
            prompt_tokens
        }
        Some(Event::Rejected(e) | Event::Failed(e)) => return fail(&rec, e),
        _ => return fail(&rec, ApiError::internal("The generation thread dropped the request.")),
    };
    if meta.stream {
        let state = StreamState { rx, pending: VecDeque::new(), finished: false, meta, rec, text_len: 0 };
        let mut st = state;
        st.opening();
        let stream = futures_util::stream::unfold(st, |mut st| async move {
            loop {
                if let Some(e) = st.pending.pop_front() {
                    return Some((Ok::<_, Infallible>(e), st));
                }
                if st.finished {
                    return None;
                }
                let ev = st.rx.recv().await;
                st.on_event(ev);
            }
        });
        return Sse::new(stream).into_response();
    }
    let mut text = String::new();
    let mut logprobs = Vec::new();
    loop {
        match rx.recv().await {
            Some(Event::Text { text: t, logprobs: l }) => {
                text.push_str(&t);
                logprobs.extend(l);
            }
            Some(Event::Finished { reason, completion_tokens, .. }) => {
                let finish = api::finish_reason(reason);
                with_record(&rec, |r| {
                    r.completion_tokens = completion_tokens;
                    r.finish = Some(finish);
                });
                return Json(meta.full_response(&text, &logprobs, finish, prompt_tokens, completion_tokens)).into_response();
            }
            Some(Event::Rejected(e) | Event::Failed(e)) => return fail(&rec, e),
            Some(Event::Started { .. }) | None => return fail(&rec, ApiError::internal("The generation thread dropped the request.")),
        }
    }
}

/// Fields every response of one request repeats.
struct ResponseMeta {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    stream: bool,
    include_usage: bool,
    logprobs: bool,
}

impl ResponseMeta {
    fn new(kind: Kind, g: &Generation) -> Self {
        let prefix = if kind == Kind::Chat { "chatcmpl-" } else { "cmpl-" };
        Self {
            kind,
            id: format!("{prefix}{}", uuid::Uuid::new_v4().simple()),
            created: now_unix(),
            model: g.model.clone(),
            stream: g.stream,
            include_usage: g.include_usage,
            logprobs: g.logprobs.is_some(),
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    fn logprobs_json(&self, entries: &[bedside_generate::ChosenLogprob], offset: usize) -> Value {
        match (self.logprobs, self.kind) {
            (false, _) => Value::Null,
            (true, Kind::Chat) => api::chat_logprobs(entries),
            (true, Kind::Completion) => api::completion_logprobs(entries, offset),
        }
    }

    fn full_response(
        &self,
        text: &str,
        entries: &[bedside_generate::ChosenLogprob],
        finish: &str,
        prompt_tokens: usize,
        completion_tokens: usize,
    ) -> Value {
        let lp = self.logprobs_json(entries, 0);
        let choice = match self.kind {
            Kind::Chat => {
                json!({"index": 0, "message": {"role": "assistant", "content": text, "refusal": null}, "logprobs": lp, "finish_reason": finish})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text, "logprobs": lp, "finish_reason": finish})
            }
        };
        json!({
            "id": self.id, "object": self.object(false), "created": self.created, "model": self.model,
            "system_fingerprint": FINGERPRINT, "choices": [choice], "usage": api::usage(prompt_tokens, completion_tokens),
        })
    }

    /// One streamed chunk; `content` None for the closing chunk (empty delta).
    fn chunk(&self, content: Option<Value>, logprobs: Value, finish: Option<&str>) -> SseEvent {
        let choice = match self.kind {
            Kind::Chat => {
                json!({"index": 0, "delta": content.unwrap_or_else(|| json!({})), "logprobs": logprobs, "finish_reason": finish})
            }
            Kind::Completion => {
                json!({"index": 0, "text": content.unwrap_or_else(|| json!("")), "logprobs": logprobs, "finish_reason": finish})
            }
        };
        let mut v = json!({
            "id": self.id, "object": self.object(true), "created": self.created, "model": self.model,
            "system_fingerprint": FINGERPRINT, "choices": [choice],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        SseEvent::default().data(v.to_string())
    }
}

/// A streamed response: events from the scheduler turned into server-sent events.
struct StreamState {
    rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
    pending: VecDeque<SseEvent>,
    finished: bool,
    meta: ResponseMeta,
    rec: Record,
    /// Bytes of answer sent so far (completions' `text_offset`).
    text_len: usize,
}

impl StreamState {
    /// Chat streams open with the assistant role and empty content, as OpenAI's do.
    fn opening(&mut self) {
        if self.meta.kind == Kind::Chat {
            let lp = if self.meta.logprobs { json!({"content": [], "refusal": null}) } else { Value::Null };
            self.pending.push_back(self.meta.chunk(Some(json!({"role": "assistant", "content": "", "refusal": null})), lp, None));
        }
    }

    fn on_event(&mut self, ev: Option<Event>) {
        match ev {
            Some(Event::Text { text, logprobs }) => {
                let lp = self.meta.logprobs_json(&logprobs, self.text_len);
                self.text_len += text.len();
                let content = match self.meta.kind {
                    Kind::Chat => json!({"content": text}),
                    Kind::Completion => json!(text),
                };
                self.pending.push_back(self.meta.chunk(Some(content), lp, None));
            }
            Some(Event::Finished { reason, prompt_tokens, completion_tokens }) => {
                let finish = api::finish_reason(reason);
                with_record(&self.rec, |r| {
                    r.completion_tokens = completion_tokens;
                    r.finish = Some(finish);
                });
                self.pending.push_back(self.meta.chunk(None, Value::Null, Some(finish)));
                if self.meta.include_usage {
                    let v = json!({
                        "id": self.meta.id, "object": self.meta.object(true), "created": self.meta.created, "model": self.meta.model,
                        "system_fingerprint": FINGERPRINT, "choices": [], "usage": api::usage(prompt_tokens, completion_tokens),
                    });
                    self.pending.push_back(SseEvent::default().data(v.to_string()));
                }
                self.close();
            }
            Some(Event::Rejected(e) | Event::Failed(e)) => {
                with_record(&self.rec, |r| r.error = Some(e.code.unwrap_or(e.kind)));
                self.pending.push_back(SseEvent::default().data(e.body().to_string()));
                self.close();
            }
            Some(Event::Started { .. }) => {}
            None => {
                let e = ApiError::internal("The generation thread dropped the request.");
                with_record(&self.rec, |r| r.error = Some(e.kind));
                self.pending.push_back(SseEvent::default().data(e.body().to_string()));
                self.close();
            }
        }
    }

    fn close(&mut self) {
        self.pending.push_back(SseEvent::default().data("[DONE]"));
        self.finished = true;
    }
}
