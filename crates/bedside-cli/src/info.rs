use anyhow::Result;
use bedside_tokenizer::ModelTokenizer;
use clap::Args;

#[derive(Args)]
#[command(
    about = "Show what a model holds: architecture, parameters, quantization, context, tokenizer, chat template",
    after_help = "Examples:\n  bedside info models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf\n  bedside info path/to/hf-model-dir --json\n  bedside info HuggingFaceTB/SmolLM2-135M-Instruct --offline\n  bedside info bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M"
)]
pub struct InfoArgs {
    /// A GGUF file, an HF model directory, or a hub id org/name[@revision][:QUANT or :file.gguf]
    /// (a quant tag such as Q4_K_M picks the repository's GGUF file, as llama.cpp's -hf does).
    pub model: String,
    /// Use only the local hub cache; no network code runs (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InfoArgs) -> Result<()> {
    let loc = bedside_model::resolve(&a.model, a.offline)?;
    let (info, content) = bedside_model::inspect(&loc)?;
    let (tok, template) = ModelTokenizer::for_model(loc.path(), content.as_ref())?;
    let c = &info.config;
    let tok_kind = match tok.kind() {
        bedside_tokenizer::TokenizerKind::HfJson => "tokenizer.json".to_string(),
        bedside_tokenizer::TokenizerKind::GgufByteLevelBpe { pre } => format!("byte-level BPE from GGUF (pre = {pre})"),
        bedside_tokenizer::TokenizerKind::GgufSentencePiece => "SentencePiece from GGUF (byte fallback)".to_string(),
    };
    let eog: Vec<String> = tok.eog_ids().iter().map(|&i| format!("{i} {}", tok.inner().id_to_token(i).unwrap_or_default())).collect();
    if a.json {
        let v = serde_json::json!({
            "model": info,
            "tokenizer": { "kind": tok_kind, "vocab_size": tok.vocab_size(), "bos": tok.bos_token(), "eos": tok.eos_token(), "end_of_generation": eog },
            "chat_template": template,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("model        {}", info.path);
    if let Some(n) = &info.name {
        println!("name         {n}");
    }
    println!("format       {}{}", info.format, info.file_type.as_deref().map(|t| format!(" ({t})")).unwrap_or_default());
    println!(
        "architecture {}{}",
        c.arch.name(),
        c.moe.as_ref().map(|m| format!(" (MoE: {} experts, top-{})", m.num_experts, m.top_k)).unwrap_or_default()
    );
    println!("parameters   {} ({:.1} M)", info.parameters, info.parameters as f64 / 1e6);
    println!("size         {:.1} MB", info.bytes as f64 / 1e6);
    let types: Vec<String> = info.tensor_types.iter().map(|(t, n)| format!("{t}×{n}")).collect();
    println!("tensors      {}", types.join(", "));
    println!(
        "layers       {}  hidden {}  ffn {}  heads {}/{} (kv)  head dim {}",
        c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim
    );
    println!("context      {} tokens", c.max_position_embeddings);
    println!("rope         theta {}{}", c.rope_theta, c.rope_scaling.as_ref().map(|s| format!(", scaling {s:?}")).unwrap_or_default());
    println!("embeddings   {}", if c.tie_word_embeddings { "tied (no separate LM head)" } else { "untied" });
    println!("tokenizer    {tok_kind}, vocab {}", tok.vocab_size());
    println!("specials     bos {:?}, eos {:?}, end of generation [{}]", tok.bos_token(), tok.eos_token(), eog.join(", "));
    match template {
        Some(t) => {
            let first: String = t.chars().take(160).collect::<String>().replace('\n', "\\n");
            println!("chat template {} chars: {first}{}", t.len(), if t.len() > 160 { "…" } else { "" });
        }
        None => println!("chat template none (use --chat-template FILE)"),
    }
    Ok(())
}
