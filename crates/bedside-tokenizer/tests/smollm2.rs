//! SmolLM2-135M-Instruct: the byte-level BPE tokenizer rebuilt from the real GGUF (no
//! tokenizer.json ships with it) against transformers' conversion and `offline-resources.md` §3.

mod common;

use bedside_tokenizer::{ChatTemplate, ModelTokenizer, TokenizerKind};
use common::*;

fn smollm2() -> Option<(ModelTokenizer, candle_core::quantized::gguf_file::Content)> {
    let path = bedside_testutil::smollm2_gguf()?;
    Some(gguf_tokenizer(&path))
}

#[test]
fn smollm2_reproduces_transformers_ids() {
    let (Some(cases_path), Some((tok, _))) = (bedside_testutil::fixture("smollm2/tokenizer_cases.json"), smollm2()) else {
        return;
    };
    assert_eq!(tok.kind(), &TokenizerKind::GgufByteLevelBpe { pre: "smollm".into() });
    assert_eq!(tok.vocab_size(), 49152);
    let cases: Vec<TokenizerCase> = read_json(&cases_path);
    check_cases("SmolLM2 GGUF", &tok, &cases);
    for case in &cases {
        let back = tok.decode(&case.ids, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, case.text, "byte-level BPE round-trips exactly");
    }
}

/// The three test vectors of `offline-resources.md` §3 (candle's own GGUF tokenizer gets the
/// first one wrong: `ĠTake`, 7285).
#[test]
fn smollm2_doc_vectors() {
    let Some((tok, _)) = smollm2() else { return };
    let vectors: [(&str, &[u32]); 3] = [
        ("Take 400 mg every 6 hours.", &[12653, 216, 36, 32, 32, 9209, 897, 216, 38, 2737, 30]),
        (
            "I have had a fever for 3 days and 102F fever.",
            &[57, 457, 761, 253, 7971, 327, 216, 35, 2009, 284, 216, 33, 32, 34, 54, 7971, 30],
        ),
        ("I'm scared.\n\nIs it serious?", &[57, 5248, 18439, 30, 198, 198, 4182, 357, 3199, 47]),
    ];
    for (text, ids) in vectors {
        assert_eq!(tok.encode(text, false).unwrap_or_else(|e| panic!("{e}")), ids, "{text:?}");
    }
}

#[test]
fn smollm2_chat_template_from_gguf() {
    let (Some(cases_path), Some((tok, content))) = (bedside_testutil::fixture("smollm2/chat_template_cases.json"), smollm2()) else {
        return;
    };
    let source = ChatTemplate::from_gguf(&content).unwrap_or_else(|| panic!("GGUF has tokenizer.chat_template"));
    let template =
        ChatTemplate::new(source, tok.bos_token().map(String::from), tok.eos_token().map(String::from)).unwrap_or_else(|e| panic!("{e}"));
    let cases: Vec<ChatCase> = read_json(&cases_path);
    assert!(!cases.is_empty());
    for case in &cases {
        let rendered = template.render(&case.messages, case.add_generation_prompt).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rendered, case.rendered);
        let ids = tok.encode(&rendered, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Some(&ids), case.ids.as_ref(), "{rendered:?}");
    }
}

#[test]
fn smollm2_special_tokens() {
    let Some((tok, _)) = smollm2() else { return };
    assert_eq!(tok.encode("<|im_start|>", false).unwrap_or_default(), vec![1]);
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert!(tok.eog_ids().contains(&2), "{:?}", tok.eog_ids());
    assert_eq!(tok.eog_ids().first(), Some(&2), "EOS first");
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.bos_token(), Some("<|im_start|>"));
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
    assert!(!tok.add_bos(), "add_bos_token is false in the GGUF");
    assert_eq!(tok.encode("Hi", true).unwrap_or_default(), tok.encode("Hi", false).unwrap_or_default());
    // No space is prepended after a special token (candle's bug gives Ġsystem, 817).
    assert_eq!(tok.encode("<|im_start|>system\n", false).unwrap_or_default(), vec![1, 9690, 198]);
    // Control tokens are skipped on decode when asked.
    assert_eq!(tok.decode(&[1, 9690, 198, 2], true).unwrap_or_default(), "system\n");
    assert_eq!(tok.decode(&[1, 9690, 198, 2], false).unwrap_or_default(), "<|im_start|>system\n<|im_end|>");
    assert!(tok.decode(&[49152], false).is_err(), "id past the vocabulary");
}
