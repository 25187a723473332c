//! Training examples keep their whole answer: a conversation longer than `max_seq_len` loses the
//! start of its context, and one whose answer alone is longer is left out (tiny fixture model).

use bedside_tokenizer::ChatMessage;
use bedside_train::data::{encode_conversation, Example};
use bedside_train::loss::IGNORE;

fn scored(e: &Example) -> Vec<u32> {
    e.ids.iter().zip(&e.labels).filter(|(_, l)| **l != IGNORE).map(|(i, _)| *i).collect()
}

#[test]
fn long_conversations_lose_context_not_the_answer() {
    let Some(fx) = bedside_testutil::fixture("tiny-llama") else { return };
    let engine = bedside_generate::Engine::load(fx.to_str().unwrap(), &Default::default()).unwrap();
    let msgs = vec![
        ChatMessage::new("system", "You are a caring clinician. ".repeat(6)),
        ChatMessage::new("user", "My head hurts and I am scared. It started this morning after a long flight."),
        ChatMessage::new("assistant", "Rest, drink water, and call a doctor if it gets worse or you feel faint."),
    ];
    let whole = encode_conversation(&engine, &msgs, 4096).unwrap().unwrap();
    let n = whole.ids.len();
    let answer = scored(&whole);
    assert!(answer.len() > 5 && n > answer.len() + 20, "{n} tokens, {} scored", answer.len());
    // Cut to leave 8 tokens of context: the same answer, whole, at the end.
    let max = answer.len() + 10;
    let cut = encode_conversation(&engine, &msgs, max).unwrap().unwrap();
    assert_eq!(cut.ids.len(), max);
    assert_eq!(scored(&cut), answer, "every answer token keeps its loss");
    assert_eq!(&cut.ids[..], &whole.ids[n - max..], "the start of the context went");
    // An answer longer than the sequence on its own: left out, not cut.
    assert!(encode_conversation(&engine, &msgs, answer.len()).unwrap().is_none());
}

/// The shipped CPU config's sequence length keeps at least 95% of the corpus's training examples
/// whole with the default model's tokenizer and chat template (the share training prints).
#[test]
fn shipped_config_fits_whole_answers() {
    let Some(gguf) = bedside_testutil::smollm2_gguf() else { return };
    let root = bedside_testutil::workspace_root();
    let cfg = bedside_train::config::TrainConfig::load(&root.join("configs/train-smollm2-cpu.toml"), &[]).unwrap();
    let engine = bedside_generate::Engine::load(gguf.to_str().unwrap(), &Default::default()).unwrap();
    let files = bedside_data::jsonl_files(&[root.join("data/dialogues")]).unwrap();
    let dialogues = bedside_data::read_dialogues(&files).unwrap();
    let sys = cfg.data.system_prompt.as_deref();
    let (examples, fit) =
        bedside_train::data::build_examples(&engine, &dialogues, &cfg.data.train_split, sys, cfg.data.max_seq_len).unwrap();
    eprintln!("max_seq_len {}: {fit:?}", cfg.data.max_seq_len);
    assert!(fit.examples > 100 && fit.whole_share() >= 0.95, "{fit:?}");
    assert_eq!(examples.len(), fit.whole + fit.context_cut);
    // The old length (256) cut most answers' ends: the share is measurably lower there.
    let (_, old) = bedside_train::data::build_examples(&engine, &dialogues, &cfg.data.train_split, sys, 256).unwrap();
    eprintln!("max_seq_len 256: {old:?}");
    assert!(old.whole_share() < fit.whole_share(), "{old:?}");
}
