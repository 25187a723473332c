//! `bedside adapter …`: inspect a PEFT LoRA adapter, merge it into its base as an HF checkpoint,
//! or export it as a GGUF LoRA for llama.cpp and Ollama. The work is in `bedside-lora`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bedside_lora::{atomic_write, load_peft, Adapter};
use bedside_model::{LoadOptions, ModelConfig, ModelLocation};
use candle_core::{DType, Device};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::{parse_adapter, DtypeArg, DEFAULT_MODEL};

#[derive(Args)]
#[command(
    about = "Inspect, merge or export PEFT LoRA adapters",
    after_help = "Examples:\n  bedside adapter info runs/demo/adapter\n  bedside adapter merge --adapter runs/demo/adapter --output merged/\n  bedside adapter export-gguf --adapter runs/demo/adapter --output demo-lora.gguf\n  llama-cli -m models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --lora demo-lora.gguf"
)]
pub struct AdapterArgs {
    #[command(subcommand)]
    cmd: AdapterCommand,
}

#[derive(Subcommand)]
enum AdapterCommand {
    Info(InfoArgs),
    Merge(MergeArgs),
    ExportGguf(ExportArgs),
}

#[derive(Args)]
#[command(
    about = "Show what an adapter holds: targets, ranks, alphas, scaling, parameter count",
    after_help = "Examples:\n  bedside adapter info runs/demo/adapter\n  bedside adapter info ../shared/fixtures/tiny-llama/rslora --json"
)]
struct InfoArgs {
    /// The adapter directory (adapter_config.json + adapter_model.safetensors).
    dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(
    about = "Merge adapters into their base and write an HF checkpoint (model.safetensors, config.json, tokenizer)",
    after_help = "Examples:\n  bedside adapter merge --adapter runs/demo/adapter --output merged/\n  bedside adapter merge --model meta-llama/Llama-3.2-1B-Instruct --adapter a/ --adapter b/:0.5 --output merged/ --dtype bf16\n\nA quantized GGUF base is dequantized: the merged checkpoint holds dense weights and computes\nwhat `generate --dequantize --adapter DIR` computes (the quantized run rounds activations to\n8 bits, so near-tied tokens can differ)."
)]
struct MergeArgs {
    /// Base model: a GGUF file, an HF model directory or a hub id org/name[@revision][:QUANT].
    #[arg(short, long, env = "BEDSIDE_MODEL", default_value = DEFAULT_MODEL)]
    model: String,
    /// Adapter directory (or hub id of an adapter repository), optionally with a weight
    /// (DIR:0.5). Repeatable.
    #[arg(long = "adapter", value_name = "DIR[:WEIGHT]", value_parser = parse_adapter, required = true)]
    adapters: Vec<(PathBuf, f64)>,
    /// Output directory (created; must not already hold a model unless --force).
    #[arg(short, long)]
    output: PathBuf,
    /// Dtype of the merged weights (default: the base's own for safetensors, f32 for GGUF).
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    /// Replace an existing model in the output directory.
    #[arg(long)]
    force: bool,
    /// Use only the local hub cache.
    #[arg(long)]
    offline: bool,
}

#[derive(Args)]
#[command(
    about = "Export an adapter as a GGUF LoRA that llama.cpp (--lora) and Ollama (ADAPTER) load",
    after_help = "Examples:\n  bedside adapter export-gguf --adapter runs/demo/adapter --output demo-lora.gguf\n  bedside adapter export-gguf --adapter a/ --model models/llama3/Meta-Llama-3-8B-Instruct.Q4_K_M.gguf --output a.gguf\n\nq/k factors are permuted into GGUF's RoPE layout; rsLoRA and per-module alpha are folded in,\nso llama.cpp's alpha/r scale reproduces PEFT exactly (its own converter does not)."
)]
struct ExportArgs {
    /// The adapter directory.
    #[arg(long)]
    adapter: PathBuf,
    /// The base model the adapter was trained on (GGUF file, HF directory or hub id); only its
    /// hyperparameters are read.
    #[arg(short, long, env = "BEDSIDE_MODEL", default_value = DEFAULT_MODEL)]
    model: String,
    /// Output .gguf file.
    #[arg(short, long)]
    output: PathBuf,
    /// Replace an existing output file.
    #[arg(long)]
    force: bool,
    /// Use only the local hub cache.
    #[arg(long)]
    offline: bool,
}

pub fn run(a: AdapterArgs) -> Result<()> {
    match a.cmd {
        AdapterCommand::Info(a) => info(a),
        AdapterCommand::Merge(a) => merge(a),
        AdapterCommand::ExportGguf(a) => export(a),
    }
}

/// A printable account of an adapter.
pub fn summary(dir: &Path, ad: &Adapter) -> serde_json::Value {
    let c = &ad.config;
    let pairs = ad.pairs();
    // module kind → (count, rank → count, distinct scales)
    type Kind = (usize, BTreeMap<usize, usize>, Vec<f64>);
    let mut kinds: BTreeMap<String, Kind> = BTreeMap::new();
    let mut layers = std::collections::BTreeSet::new();
    for p in &pairs {
        let kind = p.module.rsplit('.').next().unwrap_or(&p.module).to_string();
        let e = kinds.entry(kind).or_default();
        e.0 += 1;
        *e.1.entry(p.rank()).or_insert(0) += 1;
        let s = c.scale_for(&p.module);
        if !e.2.iter().any(|x| (x - s).abs() < 1e-12) {
            e.2.push(s);
        }
        if let Some(l) = p.module.strip_prefix("model.layers.").and_then(|r| r.split('.').next()).and_then(|n| n.parse::<usize>().ok()) {
            layers.insert(l);
        }
    }
    let dtypes: std::collections::BTreeSet<String> = ad.tensors.values().map(|t| format!("{:?}", t.dtype()).to_lowercase()).collect();
    let modules: Vec<serde_json::Value> = kinds
        .iter()
        .map(|(k, (n, ranks, scales))| serde_json::json!({"module": k, "count": n, "ranks": ranks, "scales": scales}))
        .collect();
    serde_json::json!({
        "path": dir.display().to_string(),
        "base_model": c.base_model_name_or_path,
        "target_modules": c.target_modules,
        "r": c.r,
        "lora_alpha": c.lora_alpha,
        "use_rslora": c.use_rslora,
        "lora_dropout": c.lora_dropout,
        "rank_pattern": c.rank_pattern,
        "alpha_pattern": c.alpha_pattern,
        "pairs": pairs.len(),
        "layers": layers.len(),
        "parameters": ad.param_count(),
        "dtypes": dtypes,
        "modules": modules,
    })
}

fn info(a: InfoArgs) -> Result<()> {
    let ad = load_peft(&a.dir, &Device::Cpu)?;
    let s = summary(&a.dir, &ad);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let c = &ad.config;
    println!("adapter      {}", a.dir.display());
    println!("base model   {}", c.base_model_name_or_path.as_deref().unwrap_or("(not recorded)"));
    println!("targets      {}", c.target_modules.join(", "));
    let scaling = if c.use_rslora { "rsLoRA: alpha/sqrt(r)" } else { "alpha/r" };
    let global = if c.use_rslora { c.lora_alpha / (c.r as f64).sqrt() } else { c.lora_alpha / c.r as f64 };
    println!("rank, alpha  r = {}, alpha = {}, scaling {scaling} = {global:.4}", c.r, c.lora_alpha);
    if !c.rank_pattern.is_empty() {
        println!("rank pattern {}", serde_json::to_string(&c.rank_pattern)?);
    }
    if !c.alpha_pattern.is_empty() {
        println!("alpha pattern {}", serde_json::to_string(&c.alpha_pattern)?);
    }
    println!("dropout      {}", c.lora_dropout);
    println!(
        "parameters   {} ({:.2} M) in {} pairs over {} layers, {}",
        s["parameters"],
        ad.param_count() as f64 / 1e6,
        s["pairs"],
        s["layers"],
        s["dtypes"].as_array().map(|d| d.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join("/")).unwrap_or_default()
    );
    println!("modules");
    for m in s["modules"].as_array().into_iter().flatten() {
        let ranks: Vec<String> =
            m["ranks"].as_object().into_iter().flatten().map(|(r, n)| if n == 1 { format!("r{r}") } else { format!("r{r}×{n}") }).collect();
        let scales: Vec<String> =
            m["scales"].as_array().into_iter().flatten().filter_map(|x| x.as_f64()).map(|x| format!("{x:.4}")).collect();
        println!("  {:<10} {:>4}  {}  scale {}", m["module"].as_str().unwrap_or(""), m["count"], ranks.join(" "), scales.join(", "));
    }
    Ok(())
}

fn bar(total: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} tensors, {per_sec}, ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn merge(a: MergeArgs) -> Result<()> {
    let loc = bedside_model::resolve(&a.model, a.offline)?;
    let adapters =
        a.adapters.iter().map(|(d, w)| Ok((bedside_model::resolve_adapter(d, a.offline)?, *w))).collect::<Result<Vec<(PathBuf, f64)>>>()?;
    // Writing into the base's or an adapter's own directory would replace what is being read.
    let mut inputs: Vec<PathBuf> = adapters.iter().map(|(d, _)| d.clone()).collect();
    if let ModelLocation::HfDir(d) = &loc {
        inputs.push(d.clone());
    }
    bedside_io::check_output_not_input(&a.output, &inputs)?;
    let existing = a.output.join("model.safetensors");
    if existing.exists() && !a.force {
        bail!("{} already exists; pass --force to replace it", existing.display());
    }
    let dtype_override: Option<DType> = a.dtype.map(Into::into);
    let loaded = bedside_model::load(&loc, &LoadOptions { device: Device::Cpu, dtype: dtype_override, dequantize: false, kv_cache: None })?;
    let mut model = loaded.model;
    for (dir, w) in &adapters {
        let ad = load_peft(dir, &Device::Cpu)?;
        bedside_lora::attach(&mut model, &ad, *w).with_context(|| format!("attaching {}", dir.display()))?;
    }
    let dtype = dtype_override.unwrap_or(match &loc {
        ModelLocation::Gguf(_) => DType::F32,
        ModelLocation::HfDir(_) => model.dtype(),
    });
    let pb = bar(0, "merging");
    bedside_lora::merge::write_hf_checkpoint(&mut model, &loc, loaded.gguf.as_ref(), &a.adapters, &a.output, dtype, &mut |done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    })?;
    pb.finish_and_clear();
    let torch = bedside_lora::merge::torch_dtype_name(dtype);
    eprintln!("wrote {} ({} parameters, {torch})", a.output.display(), model.weight_summary().0);
    Ok(())
}

fn export(a: ExportArgs) -> Result<()> {
    let loc = bedside_model::resolve(&a.model, a.offline)?;
    let inputs = [loc.path().to_path_buf(), a.adapter.join(bedside_lora::WEIGHTS_FILE), a.adapter.join(bedside_lora::CONFIG_FILE)];
    bedside_io::check_output_not_input(&a.output, &inputs)?;
    if a.output.exists() && !a.force {
        bail!("{} already exists; pass --force to replace it", a.output.display());
    }
    let ad = load_peft(&a.adapter, &Device::Cpu)?;
    let (cfg, arch) = match &loc {
        ModelLocation::Gguf(p) => {
            let content = bedside_model::read_gguf_header(p)?;
            let arch =
                content.metadata.get("general.architecture").and_then(|v| v.to_string().ok().cloned()).unwrap_or_else(|| "llama".into());
            (ModelConfig::from_gguf(p, &content)?, arch)
        }
        ModelLocation::HfDir(d) => (ModelConfig::from_hf_file(&d.join("config.json"))?, "llama".to_string()),
    };
    let name = a.adapter.file_name().map(|n| n.to_string_lossy().into_owned());
    let out = bedside_lora::gguf::export_gguf(&ad, &cfg, &arch, name.as_deref())?;
    atomic_write(&a.output, &out.bytes)?;
    let how = if out.folded {
        "per-module scaling folded into lora_b, adapter.lora.alpha = 0".to_string()
    } else {
        format!("adapter.lora.alpha = {}", out.alpha)
    };
    eprintln!("wrote {} ({} LoRA pairs, {how})", a.output.display(), out.pairs);
    if out.zero_filled_experts > 0 {
        eprintln!("note: {} experts had no factors and were written as zeros", out.zero_filled_experts);
    }
    Ok(())
}
