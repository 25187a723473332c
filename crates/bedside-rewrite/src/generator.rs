//! Text generation behind a trait, so the pipeline runs on a loaded [`Engine`] and tests run on a
//! scripted generator.

use anyhow::Result;
use bedside_generate::{Engine, FinishReason, SamplingParams};
use bedside_tokenizer::ChatMessage;

use crate::prompts::Prompt;

/// Which turn is being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    Patient,
    Answer,
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenRequest<'a> {
    /// The record being rewritten (for scripted generators; engines ignore it).
    pub id: &'a str,
    pub turn: Turn,
    /// 0-based attempt.
    pub attempt: usize,
    pub prompt: &'a Prompt,
    pub seed: u64,
    pub max_tokens: usize,
}

/// A generated text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub text: String,
    /// Generation stopped at the token limit, so the text is probably cut off.
    pub truncated: bool,
}

/// Something that writes a turn from a prompt.
pub trait Generator {
    /// What made the text, recorded as `provenance.by` (the `--model` spec for an engine).
    fn spec(&self) -> String;
    fn generate(&mut self, req: &GenRequest) -> Result<Generated>;
}

/// A loaded model with base sampling parameters; each request sets its own seed and token limit.
pub struct EngineGenerator {
    pub engine: Engine,
    pub params: SamplingParams,
    pub spec: String,
}

impl Generator for EngineGenerator {
    fn spec(&self) -> String {
        self.spec.clone()
    }

    fn generate(&mut self, req: &GenRequest) -> Result<Generated> {
        let mut msgs = Vec::new();
        if let Some(s) = &req.prompt.system {
            msgs.push(ChatMessage { role: "system".into(), content: s.clone() });
        }
        msgs.push(ChatMessage { role: "user".into(), content: req.prompt.user.clone() });
        let ids = self.engine.encode_chat(&msgs)?;
        let params = SamplingParams { seed: req.seed, max_tokens: req.max_tokens, ..self.params.clone() };
        let g = self.engine.generate(&ids, &params, &mut |_| Ok(()))?;
        Ok(Generated { text: clean(&g.text), truncated: g.finish_reason == FinishReason::Length })
    }
}

/// Light clean-up of a model's reply: trims it, drops a first line that only announces the text
/// (`Here is the rewritten message:`, `Rewritten answer:`), and removes quotes wrapping the whole
/// text. Nothing inside the text is changed.
pub fn clean(text: &str) -> String {
    let mut t = text.trim();
    if let Some((first, rest)) = t.split_once('\n') {
        let f = first.trim().to_lowercase();
        let announces =
            f.ends_with(':') && (f.starts_with("here") || f.starts_with("sure") || f.starts_with("rewritten") || f.starts_with("rewrite"));
        if announces {
            t = rest.trim();
        }
    }
    for (open, close) in [('"', '"'), ('\u{201c}', '\u{201d}')] {
        if t.len() > 2 && t.starts_with(open) && t.ends_with(close) && !t[open.len_utf8()..t.len() - close.len_utf8()].contains(open) {
            t = t[open.len_utf8()..t.len() - close.len_utf8()].trim();
        }
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn clean_strips_announcements_and_wrapping_quotes_only() {
        assert_eq!(clean("Here is the rewritten message:\n\"I'm scared.\"\n"), "I'm scared.");
        assert_eq!(clean("  I said \"no\" twice.  "), "I said \"no\" twice.");
        assert_eq!(clean("Why: because.\nSecond line."), "Why: because.\nSecond line.");
    }
}
