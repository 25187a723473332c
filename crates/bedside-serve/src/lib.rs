//! `bedside serve`: an offline, OpenAI-compatible HTTP server for a hospital's own machines.
//!
//! - [`api`]: the request bodies accepted (checked field by field) and the response shapes.
//! - [`scheduler`]: the thread that owns the model and runs continuous batching
//!   ([`bedside_generate::ContinuousBatch`]), each request with its own adapter.
//! - [`http`]: routes and middleware (API keys, limits, timeouts, request ids, access log).
//! - [`metrics`]: Prometheus metrics. [`config`]: the TOML file and flags. [`auth`]: API keys.
//!
//! Nothing here opens an outgoing connection, and no log line holds prompt or answer text.

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod scheduler;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bedside_generate::{Engine, EngineOptions, RowAdapters};
use bedside_model::LoadOptions;
use candle_core::DType;

pub use config::{LogFormat, ServeConfig};

use crate::api::{Limits, ModelIds};
use crate::scheduler::{Loaded, Settings, Shared};

/// The base model's id when the config names none: the file name without `.gguf`, the
/// directory's name, or a hub id's name (`org/name@rev:QUANT` → `name-rev:QUANT`), with any
/// character an id may not hold replaced by `-`.
pub fn default_model_id(model: &str) -> String {
    let p = Path::new(model);
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| model.to_string());
    let name = name.strip_suffix(".gguf").map(String::from).unwrap_or(name);
    let id: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':') { c } else { '-' }).collect();
    id.trim_start_matches('.').chars().take(128).collect()
}

/// Run the server until Ctrl-C or SIGTERM (then it finishes what is in flight, up to 30 s).
pub fn serve(cfg: ServeConfig) -> Result<()> {
    let addr = cfg.validate()?;
    let keys = cfg.api_key_file.as_deref().map(auth::KeyRing::from_file).transpose()?;
    let adapters = cfg.adapter_dirs()?;
    let base_id = cfg.name.clone().unwrap_or_else(|| default_model_id(&cfg.model));
    config::check_adapter_name(&base_id).context("the base model's id (set `name`)")?;
    if adapters.iter().any(|(n, _)| *n == base_id) {
        anyhow::bail!("adapter `{base_id}` has the base model's id; rename one of them");
    }
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => Some(tls_config(c, k)?),
        _ => None,
    };
    let load = LoadOptions {
        device: bedside_model::parse_device(&cfg.device)?,
        dtype: match cfg.dtype.as_deref() {
            Some("f16") => Some(DType::F16),
            Some("bf16") => Some(DType::BF16),
            Some(_) => Some(DType::F32),
            None => None,
        },
        dequantize: cfg.dequantize,
        kv_cache: match cfg.kv_cache.as_deref() {
            Some("f16") => Some(DType::F16),
            Some(_) => Some(DType::F32),
            None => None,
        },
    };
    // Never the network: hub ids resolve from the local cache only.
    let engine_opts = EngineOptions { load, offline: true, chat_template: cfg.chat_template.clone(), adapters: Vec::new() };

    let shared = Arc::new(Shared::new(cfg.queue));
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel();
    let app = Arc::new(http::App {
        shared: shared.clone(),
        jobs: jobs_tx,
        keys,
        max_body_bytes: cfg.max_body_bytes,
        timeout: Duration::from_secs(cfg.timeout_secs),
        body_timeout: Duration::from_secs(cfg.body_timeout_secs),
    });
    let settings = Settings {
        parallel: cfg.parallel,
        context: cfg.ctx,
        max_tokens: cfg.max_tokens,
        max_messages: cfg.max_messages,
        prefill_chunk: cfg.prefill_chunk,
        timeout: Duration::from_secs(cfg.timeout_secs),
    };

    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("bedside-http").enable_all().build()?;
    let (load_tx, load_rx) = tokio::sync::oneshot::channel::<Result<()>>();
    let model_spec = cfg.model.clone();
    let model_thread = std::thread::Builder::new().name("bedside-model".into()).spawn({
        let shared = shared.clone();
        move || {
            let started = std::time::Instant::now();
            let loaded = load_model(&model_spec, &engine_opts, &adapters, &base_id, &settings);
            match loaded {
                Ok((engine, row_adapters, facts)) => {
                    tracing::info!(
                        model = %engine.location.path().display(),
                        id = %facts.ids.base,
                        adapters = ?facts.ids.adapters,
                        context = facts.context,
                        parallel = settings.parallel,
                        kv_cache = ?engine.model.kv_cache_dtype().unwrap_or(engine.model.dtype()),
                        secs = started.elapsed().as_secs_f64(),
                        "model loaded; ready"
                    );
                    let _ = shared.loaded.set(facts);
                    shared.ready.store(true, Ordering::Release);
                    let _ = load_tx.send(Ok(()));
                    scheduler::run(engine, row_adapters, jobs_rx, shared, settings);
                }
                Err(e) => {
                    let _ = load_tx.send(Err(e));
                }
            }
        }
    })?;

    let result = runtime.block_on(async move {
        let handle = axum_server::Handle::new();
        let service = http::router(app).into_make_service();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = match tls {
            Some(t) => tokio::spawn(configure(axum_server::tls_rustls::from_tcp_rustls(listener, t)?, &handle).serve(service)),
            None => tokio::spawn(configure(axum_server::from_tcp(listener)?, &handle).serve(service)),
        };
        tracing::info!(addr = %bound, url = %format!("{scheme}://{bound}"), "listening; loading the model");
        let load = async {
            match load_rx.await {
                Ok(r) => r,
                Err(_) => Err(anyhow!("the model thread stopped while loading")),
            }
        };
        tokio::select! {
            r = load => {
                if let Err(e) = r {
                    handle.shutdown();
                    return Err(e);
                }
            }
            r = shutdown_signal() => {
                r?;
                handle.shutdown();
                return Ok(());
            }
        }
        shutdown_signal().await?;
        tracing::info!("shutting down: finishing requests in flight (30 s at most)");
        handle.graceful_shutdown(Some(Duration::from_secs(30)));
        match server.await {
            Ok(r) => r.context("the HTTP server failed"),
            Err(e) => Err(anyhow!("the HTTP server task failed: {e}")),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    // The model thread ends once the last job sender (in the router) is gone.
    drop(model_thread);
    result
}

fn configure<Acc>(
    mut server: axum_server::Server<SocketAddr, Acc>,
    handle: &axum_server::Handle<SocketAddr>,
) -> axum_server::Server<SocketAddr, Acc> {
    // Slow-loris protection: headers must arrive promptly.
    server.http_builder().http1().header_read_timeout(Duration::from_secs(10)).timer(hyper_util::rt::TokioTimer::new());
    server.handle(handle.clone())
}

fn load_model(
    spec: &str,
    opts: &EngineOptions,
    adapters: &[(String, PathBuf)],
    base_id: &str,
    settings: &Settings,
) -> Result<(Engine, RowAdapters, Loaded)> {
    let mut engine = Engine::load(spec, opts).with_context(|| format!("loading the model `{spec}`"))?;
    let device = engine.model.device().clone();
    let mut loaded = Vec::with_capacity(adapters.len());
    for (name, dir) in adapters {
        let a = bedside_lora::load_peft(dir, &device).with_context(|| format!("adapter `{name}` ({})", dir.display()))?;
        loaded.push((name.clone(), a, 1.0));
    }
    let row_adapters = RowAdapters::attach(&mut engine.model, loaded)?;
    let model_ctx = engine.model.context_length();
    let context = settings.context.map_or(model_ctx, |c| c.min(model_ctx));
    let facts = Loaded {
        ids: ModelIds { base: base_id.to_string(), adapters: row_adapters.names().to_vec() },
        limits: Limits { max_messages: settings.max_messages, max_tokens: settings.max_tokens.map_or(context, |m| m.min(context)) },
        context,
        created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    };
    Ok((engine, row_adapters, facts))
}

fn tls_config(cert: &Path, key: &Path) -> Result<axum_server::tls_rustls::RustlsConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("{}: cannot read the TLS certificate", cert.display()))?
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate in the file", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("{}: cannot read a PEM private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not fit together")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config)))
}

async fn shutdown_signal() -> Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::default_model_id;

    #[test]
    fn default_ids_are_valid_api_ids() {
        for (model, want) in [
            ("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1"),
            ("/srv/models/Llama-3-8B", "Llama-3-8B"),
            ("tiny/llama", "llama"),
            ("tiny/llama@v1", "llama-v1"),
            ("bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "Llama-3.2-1B-Instruct-GGUF:Q4_K_M"),
            ("org/name@main:q8_0", "name-main:q8_0"),
            (".hidden model", "hidden-model"),
        ] {
            let id = default_model_id(model);
            assert_eq!(id, want, "{model}");
            crate::config::check_adapter_name(&id).unwrap();
        }
    }
}
