//! `bedside serve`: flags and config file into a [`bedside_serve::ServeConfig`], then the server.

use std::path::PathBuf;

use anyhow::Result;
use bedside_serve::{LogFormat, ServeConfig};
use clap::Args;

use crate::args::{DtypeArg, KvCacheArg};

#[derive(Args)]
#[command(
    about = "Serve a model over an OpenAI-compatible HTTP API (chat, completions, streaming), offline",
    after_help = "Examples:\n  bedside serve\n  bedside serve --adapter tuned=runs/demo/train/adapter --parallel 8\n  bedside serve --parallel 32 --kv-cache f16          # half the key/value memory per answer\n  bedside serve --config /etc/bedside/serve.toml\n  bedside serve --host 0.0.0.0 --port 8443 --api-key-file /etc/bedside/keys \\\n      --tls-cert /etc/bedside/cert.pem --tls-key /etc/bedside/key.pem\n\nThen:\n  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\\n      -d '{\"model\": \"tuned\", \"messages\": [{\"role\": \"user\", \"content\": \"I feel dizzy.\"}]}'\n\nRoutes: GET /v1/models, POST /v1/chat/completions, POST /v1/completions, GET /health,\nGET /metrics (Prometheus). It listens on 127.0.0.1 unless told otherwise, and refuses any other\naddress without --api-key-file (one `label:key` per line) or an explicit --no-auth. Logs hold the\nrequest id, key label, model, token counts, latency and status, never prompt or answer text.\nFlags override the --config file's keys (same names, with `_` for `-`)."
)]
pub struct ServeArgs {
    /// A TOML file with any of these settings; flags given here override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A GGUF file, an HF model directory, or a hub id already in the local cache [default: the embedded SmolLM2].
    #[arg(short, long, env = "BEDSIDE_MODEL")]
    pub model: Option<String>,
    /// The base model's id in the API [default: the model's file or directory name].
    #[arg(long)]
    pub name: Option<String>,
    /// auto, cpu, cuda, cuda:N or metal.
    #[arg(long)]
    pub device: Option<String>,
    /// Weight and activation dtype for safetensors models (and for --dequantize).
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    /// Dequantize GGUF weights instead of running quantized matmuls.
    #[arg(long)]
    pub dequantize: bool,
    /// Store the key/value cache as f16 (half the memory per concurrent answer, llama.cpp's
    /// default) or f32 [default: the activations' type].
    #[arg(long, value_enum, value_name = "TYPE")]
    pub kv_cache: Option<KvCacheArg>,
    /// A Jinja chat template to use instead of the model's own.
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
    /// A PEFT LoRA adapter that requests choose with "model": "NAME" (repeatable): a directory,
    /// or a hub id already in the local cache (`bedside pull`). Every adapter shares the base
    /// weights; a batch mixes them row by row.
    #[arg(long = "adapter", value_name = "NAME=DIR", value_parser = parse_named_adapter)]
    pub adapters: Vec<(String, PathBuf)>,
    /// Serve every adapter found in this folder's subdirectories, named after them.
    #[arg(long, value_name = "DIR")]
    pub adapter_root: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on (0: any free port) [default: 8080].
    #[arg(long)]
    pub port: Option<u16>,
    /// API keys, one `label:key` per line; requests need `Authorization: Bearer KEY`.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Allow a non-loopback address without API keys (something in front authenticates).
    #[arg(long)]
    pub no_auth: bool,
    /// TLS certificate chain (PEM); serves HTTPS with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Requests generated at once [default: 8].
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Requests that may wait for a free slot; more get 429 [default: 64].
    #[arg(long)]
    pub queue: Option<usize>,
    /// Positions (prompt + answer) per request [default: the model's context length].
    #[arg(long)]
    pub ctx: Option<usize>,
    /// The largest max_tokens a request may ask for [default: the context].
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Prompt positions processed per forward pass; longer prompts go in pieces between decode steps [default: 512].
    #[arg(long)]
    pub prefill_chunk: Option<usize>,
    /// Largest request body in bytes [default: 1 MiB].
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// Most messages in one chat request [default: 256].
    #[arg(long)]
    pub max_messages: Option<usize>,
    /// Seconds a request may take before it is stopped with 504 [default: 600].
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Seconds a request body may take to arrive before 408 [default: 30].
    #[arg(long, value_name = "SECS")]
    pub body_timeout: Option<u64>,
    /// Log lines as `text` or `json` (one object per line) [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// `NAME=DIR`.
fn parse_named_adapter(s: &str) -> std::result::Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => Ok((name.to_string(), PathBuf::from(dir))),
        _ => Err(format!("'{s}': expected NAME=DIR, e.g. tuned=runs/demo/train/adapter")),
    }
}

impl ServeArgs {
    /// The config file (or the defaults) with the flags applied.
    pub fn resolve(&self) -> Result<ServeConfig> {
        let mut c = match &self.config {
            Some(p) => ServeConfig::from_file(p)?,
            None => ServeConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = &self.$field { c.$field = v.clone(); })* };
        }
        set!(model, device, host, port, parallel, queue, prefill_chunk, max_body_bytes, max_messages, log_format);
        macro_rules! set_opt {
            ($($field:ident),*) => { $(if let Some(v) = &self.$field { c.$field = Some(v.clone()); })* };
        }
        set_opt!(name, chat_template, adapter_root, api_key_file, tls_cert, tls_key, ctx, max_tokens);
        if let Some(d) = self.dtype {
            c.dtype = Some(
                match d {
                    DtypeArg::F32 => "f32",
                    DtypeArg::F16 => "f16",
                    DtypeArg::Bf16 => "bf16",
                }
                .into(),
            );
        }
        if let Some(k) = self.kv_cache {
            c.kv_cache = Some(
                match k {
                    KvCacheArg::F32 => "f32",
                    KvCacheArg::F16 => "f16",
                }
                .into(),
            );
        }
        if let Some(t) = self.timeout {
            c.timeout_secs = t;
        }
        if let Some(t) = self.body_timeout {
            c.body_timeout_secs = t;
        }
        c.dequantize |= self.dequantize;
        c.no_auth |= self.no_auth;
        for (name, dir) in &self.adapters {
            if c.adapters.insert(name.clone(), dir.clone()).is_some() {
                anyhow::bail!("adapter `{name}` is given twice");
            }
        }
        Ok(c)
    }
}

pub fn run(cfg: ServeConfig) -> Result<()> {
    bedside_serve::serve(cfg)
}
