use std::io::{BufRead, Write};

use anyhow::Result;
use bedside_tokenizer::ChatMessage;
use clap::Args;

use crate::args::{ModelArgs, SamplingArgs};

#[derive(Args)]
#[command(
    about = "Talk with a model in the terminal; the conversation history is kept between turns",
    after_help = "Commands inside the chat:\n  /reset          forget the conversation (keeps the system message)\n  /system TEXT    set the system message and start over\n  /quit           leave (Ctrl-D works too)\n\nExamples:\n  bedside chat\n  bedside chat --system \"You are a caring, careful clinician.\" --temperature 0.3"
)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// System message.
    #[arg(long)]
    pub system: Option<String>,
}

pub fn run(a: ChatArgs) -> Result<()> {
    let params = a.sampling.params()?;
    let engine = a.model.load()?;
    let mut system = a.system.clone();
    let mut history: Vec<ChatMessage> = Vec::new();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    eprintln!("bedside chat: {} (type /quit to leave, /reset to start over)", a.model.model);
    let mut turn = 0u64;
    loop {
        eprint!("> ");
        std::io::stderr().flush()?;
        let Some(line) = lines.next() else { break };
        let line = line?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        match text {
            "/quit" | "/exit" => break,
            "/reset" => {
                history.clear();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ if text.starts_with("/system") => {
                let s = text.trim_start_matches("/system").trim();
                system = (!s.is_empty()).then(|| s.to_string());
                history.clear();
                eprintln!("(system message {}; conversation cleared)", if system.is_some() { "set" } else { "removed" });
                continue;
            }
            _ if text.starts_with('/') => {
                eprintln!("unknown command {text}: use /reset, /system TEXT or /quit");
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage { role: "user".into(), content: text.to_string() });
        // Drop the oldest exchanges until the prompt leaves room for an answer.
        let ids = loop {
            let mut msgs = Vec::new();
            if let Some(s) = &system {
                msgs.push(ChatMessage { role: "system".into(), content: s.clone() });
            }
            msgs.extend(history.iter().cloned());
            let ids = engine.encode_chat(&msgs)?;
            if ids.len() + params.max_tokens.min(64) < engine.model.context_length() || history.len() <= 1 {
                break ids;
            }
            history.drain(..2.min(history.len() - 1));
            eprintln!("(oldest turns dropped to fit the context)");
        };
        let mut p = params.clone();
        p.seed = params.seed.wrapping_add(turn);
        turn += 1;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let gen = match engine.generate(&ids, &p, &mut |s| {
            out.write_all(s.as_bytes()).and_then(|_| out.flush()).map_err(|e| bedside_generate::GenerateError::Callback(e.to_string()))
        }) {
            Ok(g) => g,
            Err(e) => {
                history.pop();
                eprintln!("error: {e}");
                continue;
            }
        };
        writeln!(out)?;
        history.push(ChatMessage { role: "assistant".into(), content: gen.text });
    }
    Ok(())
}
