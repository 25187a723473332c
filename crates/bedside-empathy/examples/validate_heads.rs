//! `bedside eval validate-scorer [--record]` without the CLI (for a build of this crate alone):
//! cargo run -p bedside-empathy --example validate_heads -- EPITOME_DIR [HEADS] [OUT.json] [--record]

use anyhow::Result;
use bedside_embed::Embedder;
use bedside_empathy::validate::{render, validate_epitome};
use bedside_empathy::{default_heads_path, validation_record, validation_record_path, EmpathyScorer};
use candle_core::Device;

fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().skip(1).filter(|s| s != "--record").collect();
    let record = std::env::args().any(|s| s == "--record");
    let dir = std::path::PathBuf::from(a.first().map_or("../shared/epitome", String::as_str));
    let heads = a.get(1).map_or_else(default_heads_path, std::path::PathBuf::from);
    let scorer = EmpathyScorer::load(&heads, &Embedder::default_dir(), &Device::Cpu)?;
    let t = std::time::Instant::now();
    let r = validate_epitome(&scorer, &dir, |d, n| eprintln!("{d}/{n} {:.0}s", t.elapsed().as_secs_f64()))?;
    print!("{}", render(&r));
    eprintln!("scored {} distinct pairs in {:.0}s", r.distinct_pairs, t.elapsed().as_secs_f64());
    if let Some(o) = a.get(2) {
        bedside_io::write_atomic(std::path::Path::new(o), serde_json::to_string_pretty(&r)?.as_bytes())?;
    }
    if record {
        let rec = serde_json::to_string_pretty(&validation_record(&r, &heads)?)? + "\n";
        bedside_io::write_atomic(&validation_record_path(&heads), rec.as_bytes())?;
    }
    Ok(())
}
