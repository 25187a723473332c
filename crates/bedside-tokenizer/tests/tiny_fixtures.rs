//! The tiny Llama / Mixtral fixtures (SentencePiece BPE with byte fallback): `tokenizer.json` and
//! the tokenizer rebuilt from `model-f32.gguf` must both reproduce HF's ids, and the chat
//! templates must render as transformers renders them.

mod common;

use std::collections::HashMap;

use bedside_tokenizer::{ChatTemplate, ModelTokenizer, TokenizerKind};
use common::*;

const FIXTURES: [&str; 2] = ["tiny-llama", "tiny-mixtral"];

#[test]
fn tokenizer_json_reproduces_hf_ids() {
    for name in FIXTURES {
        let Some(dir) = fixture_dir(name) else { return };
        let tok = ModelTokenizer::from_hf_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tok.kind(), &TokenizerKind::HfJson);
        let cases: Vec<TokenizerCase> = read_json(&dir.join("tokenizer_cases.json"));
        check_cases(&format!("{name} tokenizer.json"), &tok, &cases);
    }
}

#[test]
fn gguf_rebuild_reproduces_hf_ids() {
    for name in FIXTURES {
        let Some(dir) = fixture_dir(name) else { return };
        let (tok, _) = gguf_tokenizer(&dir.join("model-f32.gguf"));
        assert_eq!(tok.kind(), &TokenizerKind::GgufSentencePiece);
        assert_eq!(tok.vocab_size(), 512);
        let cases: Vec<TokenizerCase> = read_json(&dir.join("tokenizer_cases.json"));
        check_cases(&format!("{name} GGUF"), &tok, &cases);
    }
}

#[test]
fn gguf_vocabulary_matches_tokenizer_json_id_by_id() {
    let Some(dir) = fixture_dir("tiny-llama") else {
        return;
    };
    let hf = ModelTokenizer::from_hf_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    let (gg, _) = gguf_tokenizer(&dir.join("model-f32.gguf"));
    assert_eq!(hf.vocab_size(), gg.vocab_size());
    for id in 0..gg.vocab_size() as u32 {
        assert_eq!(hf.inner().id_to_token(id), gg.inner().id_to_token(id), "id {id}");
    }
}

/// decode(encode(text)) gives the text back. SentencePiece decoders strip the one leading space
/// the encoder prepends; a text that already starts with a space gets no extra one (HF's
/// Metaspace), so it comes back with one space less, from `tokenizer.json` and GGUF alike.
#[test]
fn decode_round_trips_fixture_texts() {
    for name in FIXTURES {
        let Some(dir) = fixture_dir(name) else { return };
        let hf = ModelTokenizer::from_hf_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        let (gg, _) = gguf_tokenizer(&dir.join("model-f32.gguf"));
        let cases: Vec<TokenizerCase> = read_json(&dir.join("tokenizer_cases.json"));
        for tok in [&hf, &gg] {
            for case in &cases {
                let ids = tok.encode(&case.text, false).unwrap_or_else(|e| panic!("{e}"));
                let back = tok.decode(&ids, false).unwrap_or_else(|e| panic!("{e}"));
                let expected = case.text.strip_prefix(' ').unwrap_or(&case.text);
                assert_eq!(back, expected, "{name} {:?}", tok.kind());
            }
        }
    }
}

/// A direct port of llama.cpp's SPM tokenizer (`llm_tokenizer_spm`): prepend a space, replace
/// spaces with `▁`, repeatedly merge the adjacent pair whose concatenation is the best-scoring
/// vocabulary token (leftmost on ties), emit unknown single characters as byte tokens.
fn llama_cpp_spm(text: &str, vocab: &HashMap<String, (u32, f32)>) -> Vec<u32> {
    if text.is_empty() {
        return Vec::new();
    }
    let escaped = format!(" {text}").replace(' ', "▁");
    let mut symbols: Vec<String> = escaped.chars().map(String::from).collect();
    loop {
        let mut best: Option<(usize, f32)> = None;
        for i in 0..symbols.len().saturating_sub(1) {
            let joined = format!("{}{}", symbols[i], symbols[i + 1]);
            if let Some(&(_, score)) = vocab.get(&joined) {
                if best.is_none_or(|(_, s)| score > s) {
                    best = Some((i, score));
                }
            }
        }
        let Some((i, _)) = best else { break };
        let right = symbols.remove(i + 1);
        symbols[i].push_str(&right);
    }
    let mut ids = Vec::new();
    for s in symbols {
        match vocab.get(&s) {
            Some(&(id, _)) => ids.push(id),
            None => ids.extend(s.bytes().map(|b| vocab[&format!("<0x{b:02X}>")].0)),
        }
    }
    ids
}

#[test]
fn gguf_sentencepiece_matches_llama_cpp_merge_loop() {
    use candle_core::quantized::gguf_file::Value;
    let Some(dir) = fixture_dir("tiny-llama") else {
        return;
    };
    let (tok, content) = gguf_tokenizer(&dir.join("model-f32.gguf"));
    let get = |k: &str| content.metadata.get(k).and_then(|v| v.to_vec().ok()).expect(k);
    let tokens = get("tokenizer.ggml.tokens");
    let scores = get("tokenizer.ggml.scores");
    let vocab: HashMap<String, (u32, f32)> = tokens
        .iter()
        .zip(scores)
        .enumerate()
        .map(|(i, (t, s))| match (t, s) {
            (Value::String(t), Value::F32(s)) => (t.clone(), (i as u32, *s)),
            _ => panic!("unexpected metadata types"),
        })
        .collect();
    let cases: Vec<TokenizerCase> = read_json(&dir.join("tokenizer_cases.json"));
    let mut texts: Vec<String> = cases.into_iter().map(|c| c.text).filter(|t| !t.starts_with(' ')).collect();
    texts.extend(
        ["My chest hurts while I sleep", "Please take your medication twice a day.", "ñandú 中文 🙂 — ok", "aaaaaaaaab"].map(String::from),
    );
    for text in &texts {
        let ours = tok.encode(text, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ours, llama_cpp_spm(text, &vocab), "{text:?}");
    }
    // llama.cpp prefixes a space to the text after every special token, not only at the start.
    let ours = tok.encode("<s>[INST] Hi [/INST]Hello!</s>", false).unwrap_or_else(|e| panic!("{e}"));
    let mut expected = vec![1];
    expected.extend(llama_cpp_spm("[INST] Hi [/INST]Hello!", &vocab));
    expected.push(2);
    assert_eq!(ours, expected);
}

fn check_chat_cases(label: &str, template: &ChatTemplate, cases: &[ChatCase]) {
    for case in cases {
        let rendered = template.render(&case.messages, case.add_generation_prompt).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(rendered, case.rendered, "{label}");
    }
}

#[test]
fn chat_templates_reproduce_hf_rendering() {
    for name in FIXTURES {
        let Some(dir) = fixture_dir(name) else { return };
        let tok = ModelTokenizer::from_hf_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        let cases: Vec<ChatCase> = read_json(&dir.join("chat_template_cases.json"));

        let source =
            ChatTemplate::from_hf_dir(&dir).unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|| panic!("{name}: no chat template found"));
        let template = ChatTemplate::new(source, tok.bos_token().map(String::from), tok.eos_token().map(String::from))
            .unwrap_or_else(|e| panic!("{e}"));
        check_chat_cases(&format!("{name} HF dir"), &template, &cases);

        let (gg, content) = gguf_tokenizer(&dir.join("model-f32.gguf"));
        if let Some(source) = ChatTemplate::from_gguf(&content) {
            let template = ChatTemplate::new(source, gg.bos_token().map(String::from), gg.eos_token().map(String::from))
                .unwrap_or_else(|e| panic!("{e}"));
            check_chat_cases(&format!("{name} GGUF"), &template, &cases);
        }
    }
}

/// tiny-llama keeps its template in `tokenizer_config.json`, tiny-mixtral in
/// `chat_template.jinja`; both layouts must be found.
#[test]
fn chat_template_sources_in_both_hub_layouts() {
    let (Some(llama), Some(mixtral)) = (fixture_dir("tiny-llama"), fixture_dir("tiny-mixtral")) else {
        return;
    };
    let from_config = ChatTemplate::from_hf_dir(&llama).unwrap_or_else(|e| panic!("{e}"));
    let config: serde_json::Value = read_json(&llama.join("tokenizer_config.json"));
    assert_eq!(from_config.as_deref(), config["chat_template"].as_str());

    let from_jinja = ChatTemplate::from_hf_dir(&mixtral).unwrap_or_else(|e| panic!("{e}"));
    let jinja = std::fs::read_to_string(mixtral.join("chat_template.jinja")).unwrap_or_default();
    assert!(!jinja.is_empty());
    assert_eq!(from_jinja.as_deref(), Some(jinja.as_str()));
}

fn check_llama_specials(label: &str, tok: &ModelTokenizer) {
    assert_eq!(tok.bos_id(), Some(1), "{label}");
    assert_eq!(tok.bos_token(), Some("<s>"), "{label}");
    assert_eq!(tok.eos_token(), Some("</s>"), "{label}");
    assert!(tok.eog_ids().contains(&2), "{label}: {:?}", tok.eog_ids());
    assert!(tok.add_bos(), "{label}");
    assert_eq!(tok.token_to_id("</s>"), Some(2), "{label}");
    let ids = tok.encode("Hello", true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ids.first(), Some(&1), "{label}: BOS added with add_special");
    let ids = tok.encode("Hello", false).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(ids.first(), Some(&1), "{label}: no BOS without add_special");
    // `<s>` in chat-rendered text is the special token, and skipped on decode.
    let ids = tok.encode("<s>[INST] Hi [/INST]", false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ids.first(), Some(&1), "{label}");
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 1, "{label}");
    let text = tok.decode(&ids, true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(text, "[INST] Hi [/INST]", "{label}");
}

#[test]
fn tiny_llama_special_tokens() {
    let Some(dir) = fixture_dir("tiny-llama") else {
        return;
    };
    check_llama_specials("tokenizer.json", &ModelTokenizer::from_hf_dir(&dir).unwrap_or_else(|e| panic!("{e}")));
    check_llama_specials("GGUF", &gguf_tokenizer(&dir.join("model-f32.gguf")).0);
}

#[test]
fn missing_tokenizer_json_names_the_file() {
    let Ok(dir) = tempfile::tempdir() else { panic!("tempdir") };
    let err = ModelTokenizer::from_hf_dir(dir.path()).err().map(|e| e.to_string()).unwrap_or_default();
    let path = dir.path().join("tokenizer.json");
    assert!(err.contains(&path.display().to_string()), "{err}");
}
