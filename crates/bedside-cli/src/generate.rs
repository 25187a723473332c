use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bedside_tokenizer::ChatMessage;
use clap::Args;

use crate::args::{ModelArgs, SamplingArgs};

#[derive(Args)]
#[command(
    about = "Generate an answer; the answer alone is streamed to stdout",
    after_help = "Examples:\n  bedside generate --user \"I'm terrified my chest pain is a heart attack. What should I do?\"\n  bedside generate --system \"You are a kind, careful clinician.\" --user \"...\" --temperature 0\n  bedside generate --messages chat.json --json\n  bedside generate --prompt \"Fever in children is\" --max-tokens 40\n  bedside generate -m path/to/Llama-3-8B-Instruct --device cuda --dtype bf16 --user \"...\"\n\nchat.json holds [{\"role\": \"system\", \"content\": \"...\"}, {\"role\": \"user\", \"content\": \"...\"}]."
)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// A raw prompt, sent without the chat template ("-" reads stdin).
    #[arg(long, conflicts_with_all = ["user", "messages", "system"])]
    pub prompt: Option<String>,
    /// System message for the chat template.
    #[arg(long)]
    pub system: Option<String>,
    /// User message for the chat template ("-" reads stdin).
    #[arg(long, conflicts_with = "messages")]
    pub user: Option<String>,
    /// A JSON file with an array of {"role", "content"} messages.
    #[arg(long, value_name = "FILE")]
    pub messages: Option<PathBuf>,
    /// Print one JSON object (text, token counts, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

fn stdin_if_dash(s: &str) -> Result<String> {
    if s == "-" {
        let mut buf = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf).context("reading stdin")?;
        Ok(buf)
    } else {
        Ok(s.to_string())
    }
}

pub fn read_messages(path: &PathBuf) -> Result<Vec<ChatMessage>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let msgs: Vec<ChatMessage> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON array of {{\"role\": ..., \"content\": ...}} objects", path.display()))?;
    if msgs.is_empty() {
        bail!("{}: no messages", path.display());
    }
    Ok(msgs)
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let params = a.sampling.params()?;
    let engine = a.model.load()?;
    let ids = if let Some(p) = &a.prompt {
        engine.encode_prompt(&stdin_if_dash(p)?)?
    } else {
        let mut msgs = match &a.messages {
            Some(f) => read_messages(f)?,
            None => Vec::new(),
        };
        if let Some(s) = &a.system {
            msgs.insert(0, ChatMessage { role: "system".into(), content: s.clone() });
        }
        if let Some(u) = &a.user {
            msgs.push(ChatMessage { role: "user".into(), content: stdin_if_dash(u)? });
        }
        if msgs.is_empty() {
            bail!("nothing to answer: give --user TEXT, --messages FILE or --prompt TEXT");
        }
        engine.encode_chat(&msgs)?
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let json = a.json;
    let gen = engine.generate(&ids, &params, &mut |s| {
        if !json {
            out.write_all(s.as_bytes()).and_then(|_| out.flush()).map_err(|e| bedside_generate::GenerateError::Callback(e.to_string()))?;
        }
        Ok(())
    })?;
    if json {
        let v = serde_json::json!({
            "model": a.model.model,
            "text": gen.text,
            "finish_reason": gen.finish_reason,
            "prompt_tokens": gen.prompt_tokens,
            "completion_tokens": gen.tokens.len(),
            "prompt_secs": gen.prompt_secs,
            "decode_secs": gen.decode_secs,
            "prompt_tokens_per_sec": gen.prompt_tokens as f64 / gen.prompt_secs.max(1e-9),
            "decode_tokens_per_sec": gen.tokens.len() as f64 / gen.decode_secs.max(1e-9),
            "seed": params.seed,
        });
        writeln!(out, "{}", serde_json::to_string(&v)?)?;
    } else {
        writeln!(out)?;
    }
    tracing::info!(prompt_tokens = gen.prompt_tokens, completion_tokens = gen.tokens.len(), finish = ?gen.finish_reason, "generated");
    Ok(())
}
