//! Supervised fine-tuning examples from the dialogue corpus: the chat rendered by the model's own
//! template, loss only on the assistant's answer and its end-of-turn token.

use bedside_data::Dialogue;
use bedside_generate::Engine;
use bedside_tokenizer::ChatMessage;

use crate::error::{Result, TrainError};
use crate::loss::IGNORE;

/// One tokenised conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    /// Same length as `ids`: the id where the token is scored, else [`IGNORE`].
    pub labels: Vec<i64>,
}

impl Example {
    pub fn scored(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE).count()
    }
}

/// The chat a dialogue becomes: `[system?, user = patient, assistant = answer]`.
pub fn dialogue_messages(d: &Dialogue, system: Option<&str>) -> Vec<ChatMessage> {
    let mut m = Vec::with_capacity(3);
    if let Some(s) = system {
        m.push(ChatMessage::new("system", s));
    }
    m.push(ChatMessage::new("user", d.patient.clone()));
    m.push(ChatMessage::new("assistant", d.answer.clone()));
    m
}

/// How the examples of a split fit the sequence length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Fit {
    pub examples: usize,
    /// Examples that fit whole.
    pub whole: usize,
    /// Examples whose context (the start of the prompt) was cut so the whole answer fits.
    pub context_cut: usize,
    /// Examples whose answer alone is longer than the sequence length: left out.
    pub skipped: usize,
}

impl Fit {
    /// The share of examples that fit untruncated.
    pub fn whole_share(&self) -> f64 {
        if self.examples == 0 {
            return f64::NAN;
        }
        self.whole as f64 / self.examples as f64
    }
}

/// Tokenise a conversation whose last message is the assistant's. The prompt (everything
/// before, rendered with the generation prompt) gets no loss; the answer tokens up to and
/// including the first end-of-generation token do; anything the template writes after that
/// (a trailing newline) does not. A conversation longer than `max_len` tokens loses the start
/// of its context, never the end of its answer; `None` when the answer alone does not fit.
pub fn encode_conversation(engine: &Engine, messages: &[ChatMessage], max_len: usize) -> Result<Option<Example>> {
    let (last, head) = messages.split_last().ok_or_else(|| TrainError::Data("a conversation needs at least one message".into()))?;
    if last.role != "assistant" {
        return Err(TrainError::Data(format!("the last message must be the assistant's, found role '{}'", last.role)));
    }
    // The ids inference sees for the same chat (message text never becomes special tokens).
    let p_ids = engine.encode_chat_with(head, true)?;
    let f_ids = engine.encode_chat_with(messages, false)?;
    if f_ids.len() <= p_ids.len() || f_ids[..p_ids.len()] != p_ids[..] {
        return Err(TrainError::Data(
            "the chat template's prompt tokens are not a prefix of the full conversation's tokens (a token merge crosses the prompt/answer boundary), so the loss mask cannot be derived".into(),
        ));
    }
    let eog = engine.tokenizer.eog_ids();
    let answer = &f_ids[p_ids.len()..];
    let end = answer.iter().position(|t| eog.contains(t)).map(|i| i + 1).unwrap_or(answer.len());
    let mut labels = vec![IGNORE; p_ids.len()];
    labels.extend(answer[..end].iter().map(|&t| t as i64));
    labels.extend(std::iter::repeat_n(IGNORE, answer.len() - end));
    let mut ids = f_ids;
    if ids.len() > max_len {
        // Cut the context from its start, keeping the whole answer (and one token before it, so
        // its first token is predicted from something).
        let cut = ids.len() - max_len;
        if cut >= p_ids.len() {
            return Ok(None);
        }
        ids.drain(..cut);
        labels.drain(..cut);
    }
    Ok(Some(Example { ids, labels }))
}

/// Tokenise every dialogue of `split`, counting how they fit `max_len` (see
/// [`encode_conversation`]; examples whose answer alone is too long are left out).
pub fn build_examples(
    engine: &Engine,
    dialogues: &[bedside_data::Located<Dialogue>],
    split: &str,
    system: Option<&str>,
    max_len: usize,
) -> Result<(Vec<Example>, Fit)> {
    let mut out = Vec::new();
    let mut fit = Fit::default();
    for d in dialogues.iter().filter(|d| d.record.split == split) {
        let msgs = dialogue_messages(&d.record, system);
        let ex = encode_conversation(engine, &msgs, max_len)
            .map_err(|e| TrainError::Data(format!("{}:{} (id {}): {e}", d.file.display(), d.line, d.record.id)))?;
        fit.examples += 1;
        match ex {
            Some(ex) if ex.scored() > 0 => {
                if ex.labels.len() < max_len || encode_len(engine, &msgs)? <= max_len {
                    fit.whole += 1;
                } else {
                    fit.context_cut += 1;
                }
                out.push(ex);
            }
            _ => fit.skipped += 1,
        }
    }
    Ok((out, fit))
}

/// The untruncated token length of a conversation.
fn encode_len(engine: &Engine, messages: &[ChatMessage]) -> Result<usize> {
    Ok(engine.encode_chat_with(messages, false)?.len())
}

/// SplitMix64: a tiny, portable, seedable generator (its whole state is one `u64`, which
/// checkpoints store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The micro-batches of one epoch: examples shuffled, grouped into runs of `50·batch` by
/// similar length (less padding), cut into batches, and the batch order shuffled. A pure
/// function of `(seed, epoch)`, so a resumed run sees the same batches.
pub fn epoch_batches(examples: &[Example], batch: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let mut rng = SplitMix64(seed ^ epoch.wrapping_mul(0xd1b5_4a32_d192_ed03));
    let mut idx: Vec<usize> = (0..examples.len()).collect();
    for i in (1..idx.len()).rev() {
        idx.swap(i, rng.below(i + 1));
    }
    if batch <= 1 {
        return idx.into_iter().map(|i| vec![i]).collect();
    }
    let mut batches = Vec::new();
    for chunk in idx.chunks(batch * 50) {
        let mut c = chunk.to_vec();
        c.sort_by_key(|&i| (examples[i].ids.len(), i));
        batches.extend(c.chunks(batch).map(|b| b.to_vec()));
    }
    for i in (1..batches.len()).rev() {
        batches.swap(i, rng.below(i + 1));
    }
    batches
}

/// Right-pad a batch: `(ids, labels)` as `b` rows of the longest length. Padding positions are
/// [`IGNORE`]d; under the causal mask they cannot affect the real tokens before them.
pub fn pad_batch(examples: &[&Example], pad_id: u32) -> (Vec<u32>, Vec<Vec<i64>>, usize) {
    let t = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(examples.len() * t);
    let mut labels = Vec::with_capacity(examples.len());
    for e in examples {
        ids.extend_from_slice(&e.ids);
        ids.extend(std::iter::repeat_n(pad_id, t - e.ids.len()));
        let mut l = e.labels.clone();
        l.extend(std::iter::repeat_n(IGNORE, t - e.labels.len()));
        labels.push(l);
    }
    (ids, labels, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(n: usize) -> Example {
        Example { ids: vec![1; n], labels: vec![1; n] }
    }

    #[test]
    fn batches_cover_every_example_once_and_repeat_per_seed() {
        let exs: Vec<Example> = (1..=23).map(ex).collect();
        let a = epoch_batches(&exs, 4, 7, 0);
        let b = epoch_batches(&exs, 4, 7, 0);
        assert_eq!(a, b);
        assert_ne!(a, epoch_batches(&exs, 4, 7, 1));
        let mut all: Vec<usize> = a.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..23).collect::<Vec<_>>());
        // Bucketed: within a batch lengths are sorted neighbours.
        for bt in &a {
            let lens: Vec<usize> = bt.iter().map(|&i| exs[i].ids.len()).collect();
            assert!(lens.windows(2).all(|w| w[0] <= w[1]));
        }
    }

    #[test]
    fn padding_is_ignored() {
        let a = Example { ids: vec![5, 6, 7], labels: vec![IGNORE, 6, 7] };
        let b = Example { ids: vec![8], labels: vec![8] };
        let (ids, labels, t) = pad_batch(&[&a, &b], 0);
        assert_eq!(t, 3);
        assert_eq!(ids, vec![5, 6, 7, 8, 0, 0]);
        assert_eq!(labels[1], vec![8, IGNORE, IGNORE]);
    }
}
