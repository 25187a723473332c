//! Rebuild the shipped heads exactly as `bedside eval train-scorer --output data/empathy/heads-v1.safetensors`
//! does, without the CLI: cargo run -p bedside-empathy --example train_shipped -- [DATE]

use anyhow::Result;
use bedside_embed::Embedder;
use bedside_empathy::data::labelled_parts;
use bedside_empathy::fit::{train_from_files, utc_date_today};
use bedside_empathy::FeatureSet;
use candle_core::Device;

fn main() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize()?;
    let date = std::env::args().nth(1).unwrap_or_else(utc_date_today);
    let dir = Embedder::default_dir();
    let e = Embedder::load(&dir, &Device::Cpu)?;
    let inputs = labelled_parts(&root)?;
    let name = dir.file_name().and_then(|s| s.to_str()).unwrap_or("").to_string();
    let (heads, rep) = train_from_files(&inputs, &e, &name, FeatureSet::LexicalResponse, None, &date, |s, d, t| eprintln!("{s} {d}/{t}"))?;
    let out = root.join(bedside_empathy::DEFAULT_HEADS);
    heads.save(&out)?;
    println!(
        "{}",
        serde_json::to_string_pretty(
            &serde_json::json!({"lambda": rep.lambda, "cv_macro_f1": rep.cv_macro_f1, "n": rep.n, "metadata": heads.metadata})
        )?
    );
    Ok(())
}
