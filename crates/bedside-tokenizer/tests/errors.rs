//! Refusals: each error names the file and the key or the problem.

use std::path::{Path, PathBuf};

use bedside_tokenizer::{ChatMessage, ChatTemplate, ModelTokenizer, TokenizerError};
use candle_core::quantized::gguf_file::{self, Content, Value};

/// Write a tensor-less GGUF with this metadata and read it back, as a loader would.
fn gguf_with(dir: &Path, name: &str, metadata: &[(&str, Value)]) -> (PathBuf, Content) {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut f, &md, &[]).unwrap_or_else(|e| panic!("{e}"));
    drop(f);
    let mut f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let content = Content::read(&mut f).unwrap_or_else(|e| panic!("{e}"));
    (path, content)
}

fn strings(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect())
}

/// A minimal valid byte-level vocabulary plus `extra` keys.
fn byte_level_meta(extra: Vec<(&'static str, Value)>) -> Vec<(&'static str, Value)> {
    let mut md = vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strings(&["<|endoftext|>", "a", "b", "ab"])),
        ("tokenizer.ggml.token_type", Value::Array(vec![Value::I32(3), Value::I32(1), Value::I32(1), Value::I32(1)])),
        ("tokenizer.ggml.merges", strings(&["a b"])),
        ("tokenizer.ggml.eos_token_id", Value::U32(0)),
    ];
    md.extend(extra);
    md
}

fn load_err(name: &str, md: &[(&str, Value)]) -> (String, String) {
    let Ok(dir) = tempfile::tempdir() else { panic!("tempdir") };
    let (path, content) = gguf_with(dir.path(), name, md);
    match ModelTokenizer::from_gguf(&path, &content) {
        Ok(_) => panic!("{name}: expected an error"),
        Err(e) => (e.to_string(), path.display().to_string()),
    }
}

#[test]
fn synthetic_byte_level_gguf_loads() {
    let Ok(dir) = tempfile::tempdir() else { panic!("tempdir") };
    let md = byte_level_meta(vec![("tokenizer.ggml.pre", Value::String("smollm".into()))]);
    let (path, content) = gguf_with(dir.path(), "ok.gguf", &md);
    let tok = ModelTokenizer::from_gguf(&path, &content).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tok.encode("abab<|endoftext|>", false).unwrap_or_default(), vec![3, 3, 0]);
    assert_eq!(tok.eog_ids(), &[0]);
}

#[test]
fn synthetic_llama3_adds_bos_and_eos_when_asked() {
    let Ok(dir) = tempfile::tempdir() else { panic!("tempdir") };
    let md = byte_level_meta(vec![
        ("tokenizer.ggml.pre", Value::String("llama-bpe".into())),
        ("tokenizer.ggml.bos_token_id", Value::U32(0)),
        ("tokenizer.ggml.add_eos_token", Value::Bool(true)),
    ]);
    let (path, content) = gguf_with(dir.path(), "llama3.gguf", &md);
    let tok = ModelTokenizer::from_gguf(&path, &content).unwrap_or_else(|e| panic!("{e}"));
    // add_bos_token is absent: the LLAMA3 group adds BOS anyway, as llama.cpp does.
    assert!(tok.add_bos());
    assert_eq!(tok.encode("ab", true).unwrap_or_default(), vec![0, 3, 0]);
    assert_eq!(tok.encode("ab", false).unwrap_or_default(), vec![3]);
}

#[test]
fn unknown_pre_is_refused() {
    let md = byte_level_meta(vec![("tokenizer.ggml.pre", Value::String("foo".into()))]);
    let (err, path) = load_err("unknown-pre.gguf", &md);
    assert!(err.contains(&path), "{err}");
    assert!(err.contains("tokenizer.ggml.pre = 'foo' is not supported"), "{err}");
    assert!(err.contains("smollm") && err.contains("tokenizer.json"), "{err}");
}

#[test]
fn missing_pre_is_refused() {
    let (err, path) = load_err("no-pre.gguf", &byte_level_meta(vec![]));
    assert!(err.contains(&path), "{err}");
    assert!(err.contains("tokenizer.ggml.pre is missing"), "{err}");
}

#[test]
fn missing_tokens_is_refused() {
    let md = vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.merges", strings(&["a b"])),
    ];
    let (err, path) = load_err("no-tokens.gguf", &md);
    assert!(err.contains(&path), "{err}");
    assert!(err.contains("tokenizer.ggml.tokens") && err.contains("missing"), "{err}");
}

#[test]
fn unknown_model_is_refused() {
    let mut md = byte_level_meta(vec![]);
    md[0].1 = Value::String("bert".into());
    let (err, _) = load_err("bert.gguf", &md);
    assert!(err.contains("tokenizer.ggml.model = 'bert' is not supported"), "{err}");
}

#[test]
fn bad_metadata_values_name_the_key() {
    let md = byte_level_meta(vec![("tokenizer.ggml.pre", Value::String("gpt-2".into())), ("tokenizer.ggml.bos_token_id", Value::U32(99))]);
    let (err, _) = load_err("bad-bos.gguf", &md);
    assert!(err.contains("tokenizer.ggml.bos_token_id") && err.contains("99"), "{err}");

    let mut md = byte_level_meta(vec![("tokenizer.ggml.pre", Value::String("gpt-2".into()))]);
    md[3] = ("tokenizer.ggml.merges", strings(&["ab"]));
    let (err, _) = load_err("bad-merge.gguf", &md);
    assert!(err.contains("tokenizer.ggml.merges") && err.contains("no space"), "{err}");

    md[3] = ("tokenizer.ggml.merges", strings(&["a c"]));
    let (err, _) = load_err("merge-out-of-vocab.gguf", &md);
    assert!(err.contains("tokenizer.ggml.merges"), "{err}");

    let md = vec![("tokenizer.ggml.model", Value::String("llama".into())), ("tokenizer.ggml.tokens", strings(&["<unk>", "a"]))];
    let (err, _) = load_err("no-scores.gguf", &md);
    assert!(err.contains("tokenizer.ggml.scores") && err.contains("missing"), "{err}");
}

#[test]
fn template_syntax_error_is_reported() {
    let err = ChatTemplate::new("{% for m in messages %}{{ m.content }".into(), None, None);
    match err {
        Err(e @ TokenizerError::TemplateSyntax(_)) => {
            assert!(e.to_string().contains("syntax error"), "{e}")
        }
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(_) => panic!("a broken template compiled"),
    }
}

#[test]
fn raise_exception_surfaces_its_message() {
    let source = "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}\
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\
        {% endif %}{{ m['content'] }}{% endfor %}";
    let Ok(t) = ChatTemplate::new(source.into(), None, None) else { panic!("compiles") };
    let ok = t.render(&[ChatMessage::new("user", "hi")], false);
    assert_eq!(ok.ok().as_deref(), Some("hi"));
    let err = t.render(&[ChatMessage::new("user", "a"), ChatMessage::new("user", "b")], false);
    let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("Conversation roles must alternate"), "{msg}");
}

#[test]
fn template_features_match_transformers() {
    // trim_blocks/lstrip_blocks, pycompat string methods, loop controls, tojson, strftime_now.
    let source = "{% for m in messages %}\n    {% if m.role == 'system' %}{% continue %}{% endif %}\n\
        {{ m.content.strip().upper() }}|{{ m | tojson }}\n{% endfor %}\
        {% if add_generation_prompt %}{{ bos_token }}{{ strftime_now('%Y')|length }}{% endif %}";
    let Ok(t) = ChatTemplate::new(source.into(), Some("<s>".into()), None) else { panic!("compiles") };
    let msgs = [ChatMessage::new("system", "sys"), ChatMessage::new("user", "  héllo ")];
    let out = t.render(&msgs, true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out, "HÉLLO|{\"content\": \"  héllo \", \"role\": \"user\"}\n<s>4");
    assert_eq!(t.source(), source);
}
