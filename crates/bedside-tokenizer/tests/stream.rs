//! TokenStream: token-by-token decoding must add up to the full decode and never emit a U+FFFD
//! that only comes from a character split across tokens.

mod common;

use bedside_tokenizer::{ModelTokenizer, TokenStream};
use common::*;

const TEXT: &str = "Fièvre à 39°C — naïve café, Ünïcödé. 東京で頭痛がします。 Привет! emoji 😟💊🙂👍🏽 ñandú, 中文 ok.";

/// Stream `ids` one by one; check the chunks and return how many pushes held text back.
fn check_stream(label: &str, tok: &ModelTokenizer, ids: &[u32]) -> usize {
    let mut stream = TokenStream::new(tok);
    let mut out = String::new();
    let mut held = 0;
    for &id in ids {
        match stream.push(id).unwrap_or_else(|e| panic!("{label}: {e}")) {
            Some(chunk) => {
                assert!(!chunk.contains('\u{FFFD}'), "{label}: chunk {chunk:?} has U+FFFD");
                out.push_str(&chunk);
            }
            None => held += 1,
        }
    }
    if let Some(rest) = stream.finish().unwrap_or_else(|e| panic!("{label}: {e}")) {
        assert!(!rest.contains('\u{FFFD}'), "{label}: final chunk {rest:?} has U+FFFD");
        out.push_str(&rest);
    }
    let full = tok.decode(ids, true).unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_eq!(out, full, "{label}");
    held
}

/// The sequence really splits characters: some single tokens decode to U+FFFD on their own.
fn assert_has_split_characters(label: &str, tok: &ModelTokenizer, ids: &[u32]) {
    let split = ids.iter().filter(|&&id| tok.decode(&[id], true).is_ok_and(|s| s.contains('\u{FFFD}'))).count();
    assert!(split > 0, "{label}: test text does not split any character");
}

#[test]
fn stream_smollm2_byte_level() {
    let Some(path) = bedside_testutil::smollm2_gguf() else {
        return;
    };
    let (tok, _) = gguf_tokenizer(&path);
    let ids = tok.encode(TEXT, false).unwrap_or_else(|e| panic!("{e}"));
    assert_has_split_characters("SmolLM2", &tok, &ids);
    let held = check_stream("SmolLM2", &tok, &ids);
    assert!(held > 0);
    assert_eq!(tok.decode(&ids, true).unwrap_or_default(), TEXT);

    // A chat turn with special tokens around it: they are skipped, the text stays intact.
    let mut chat = tok.encode("<|im_start|>assistant\n", false).unwrap_or_default();
    chat.extend(&ids);
    chat.extend(tok.encode("<|im_end|>", false).unwrap_or_default());
    check_stream("SmolLM2 chat", &tok, &chat);
}

#[test]
fn stream_sentencepiece_byte_fallback() {
    let Some(dir) = fixture_dir("tiny-llama") else {
        return;
    };
    let (gguf, _) = gguf_tokenizer(&dir.join("model-f32.gguf"));
    let hf = ModelTokenizer::from_hf_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    for (label, tok) in [("tiny-llama GGUF", &gguf), ("tiny-llama tokenizer.json", &hf)] {
        // With BOS, as a prompt would start.
        let ids = tok.encode(TEXT, true).unwrap_or_else(|e| panic!("{e}"));
        assert!(ids.iter().any(|&id| (3..=258).contains(&id)), "{label}: byte-fallback tokens expected");
        assert_has_split_characters(label, tok, &ids);
        let held = check_stream(label, tok, &ids);
        assert!(held > 0);
        assert_eq!(tok.decode(&ids, true).unwrap_or_default(), TEXT);
        // Runs of spaces: SentencePiece's decoder strips one leading space of the whole text only.
        let ids = tok.encode("a  b   c ", false).unwrap_or_else(|e| panic!("{e}"));
        check_stream(&format!("{label} spaces"), tok, &ids);
    }
}

#[test]
fn finish_flushes_a_truncated_character() {
    let Some(dir) = fixture_dir("tiny-llama") else {
        return;
    };
    let (tok, _) = gguf_tokenizer(&dir.join("model-f32.gguf"));
    // "中" is not in the vocabulary: three byte tokens. Stop after two of them.
    let ids = tok.encode("ok 中", false).unwrap_or_else(|e| panic!("{e}"));
    let cut = &ids[..ids.len() - 1];
    let mut stream = TokenStream::new(&tok);
    let mut out = String::new();
    for &id in cut {
        out.extend(stream.push(id).unwrap_or_else(|e| panic!("{e}")));
    }
    assert_eq!(out, "ok ", "the two bytes of 中 are held back");
    let rest = stream.finish().unwrap_or_else(|e| panic!("{e}")).unwrap_or_default();
    assert!(!rest.is_empty() && rest.chars().all(|c| c == '\u{FFFD}'), "{rest:?}");
}
