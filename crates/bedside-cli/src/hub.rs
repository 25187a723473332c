//! `bedside pull` and `bedside cache ls | export | import`: models from the Hugging Face hub into
//! the standard cache, and from there to machines without a network.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bedside_hub::transfer::{self, ExportItem, Moved};
use bedside_hub::{human_bytes, Fetched, Hub, Kind, RepoSpec};
use clap::{Args, Subcommand};

#[derive(Args)]
#[command(
    about = "Download a model (and adapters) from the Hugging Face hub into the local cache; prints each file with its size and sha256",
    long_about = "Download everything a run needs (weights, tokenizer, config, chat template) into the standard Hugging Face cache \
(HF_HUB_CACHE, shared with Python), and print each file with its size and sha256. Later runs with the same \
--model read it from the cache; --offline (or HF_HUB_OFFLINE=1) keeps them off the network.\n\n\
Gated models (Llama, …) need a token: `huggingface-cli login` (or HF_TOKEN), after accepting the licence on the model's page.",
    after_help = "Examples:\n  bedside pull HuggingFaceTB/SmolLM2-135M-Instruct\n  bedside pull bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M\n  bedside pull meta-llama/Llama-3.2-1B-Instruct@main --adapter my-org/bedside-lora\n  HF_TOKEN=hf_… bedside pull meta-llama/Llama-3.1-8B-Instruct --json\n\n\
Environment: HF_TOKEN (or the token file of `huggingface-cli login`), HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_HUB_OFFLINE,\nHTTPS_PROXY / NO_PROXY."
)]
pub struct PullArgs {
    /// A hub id org/name[@revision][:QUANT or :file.gguf].
    pub model: String,
    /// An adapter repository org/name[@revision] to fetch as well (repeatable).
    #[arg(long = "adapter", value_name = "ORG/NAME[@REV]")]
    pub adapters: Vec<String>,
    /// Only check the cache (no network code runs) and print what is there.
    #[arg(long)]
    pub offline: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
#[command(
    about = "The local hub cache: list it, export models to a folder (removable media) and import them on another machine",
    after_help = "Examples:\n  bedside cache ls\n  bedside cache export /media/usb HuggingFaceTB/SmolLM2-135M-Instruct --adapter my-org/bedside-lora\n  bedside cache export /media/usb                # everything in the cache\n  bedside cache import /media/usb                # on the air-gapped machine\n  bedside generate --model HuggingFaceTB/SmolLM2-135M-Instruct --offline --user \"…\"\n\n\
An export holds blobs/<sha256> and bedside-export.json (repository, commit, refs and each file's size and sha256);\n\
import checks every byte against it before anything enters the cache. The cache is HF_HUB_CACHE\n(default ~/.cache/huggingface/hub)."
)]
pub struct CacheArgs {
    #[command(subcommand)]
    cmd: CacheCommand,
}

#[derive(Subcommand)]
enum CacheCommand {
    Ls(LsArgs),
    Export(ExportArgs),
    Import(ImportArgs),
}

#[derive(Args)]
#[command(
    about = "List the models in the hub cache: repository, refs, commit, files and size",
    after_help = "Examples:\n  bedside cache ls\n  bedside cache ls --json\n  HF_HUB_CACHE=/srv/models bedside cache ls"
)]
struct LsArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(
    about = "Copy models from the cache to a folder, with a manifest of sha256 sums (adds to an export already there)",
    after_help = "Examples:\n  bedside cache export /media/usb HuggingFaceTB/SmolLM2-135M-Instruct\n  bedside cache export /media/usb bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M --adapter my-org/bedside-lora\n  bedside cache export /media/usb"
)]
struct ExportArgs {
    /// The folder to write (created).
    dir: PathBuf,
    /// Hub ids to export, as --model takes them (only the files a run needs); none: everything.
    models: Vec<String>,
    /// Adapter repositories to export too (repeatable).
    #[arg(long = "adapter", value_name = "ORG/NAME[@REV]")]
    adapters: Vec<String>,
}

#[derive(Args)]
#[command(
    about = "Verify an export against its manifest and put it into the hub cache; nothing is imported unless every file checks out",
    after_help = "Examples:\n  bedside cache import /media/usb\n  HF_HUB_CACHE=/srv/models bedside cache import /media/usb"
)]
struct ImportArgs {
    /// The folder `bedside cache export` wrote.
    dir: PathBuf,
}

fn parse_spec(s: &str, what: &str) -> Result<RepoSpec> {
    if Path::new(s).exists() {
        bail!("{s} is a local path; {what} takes hub ids org/name[@revision]");
    }
    RepoSpec::parse(s).with_context(|| format!("{s:?} is not a hub id of the form org/name[@revision][:QUANT or :file.gguf]"))
}

fn fetch_all(hub: &Hub, model: Option<&str>, adapters: &[String], what: &str) -> Result<Vec<(Fetched, Kind)>> {
    let mut out = Vec::new();
    if let Some(m) = model {
        out.push((hub.fetch(&parse_spec(m, what)?, Kind::Model)?, Kind::Model));
    }
    for a in adapters {
        let spec = parse_spec(a, what)?;
        if spec.pick.is_some() {
            bail!("--adapter {a}: an adapter is a whole repository, org/name[@revision]");
        }
        out.push((hub.fetch(&spec, Kind::Adapter)?, Kind::Adapter));
    }
    Ok(out)
}

pub fn pull(a: PullArgs) -> Result<()> {
    let hub = Hub::from_env(a.offline);
    let fetched = fetch_all(&hub, Some(&a.model), &a.adapters, "pull")?;
    let mut models = Vec::new();
    for (f, kind) in &fetched {
        let mut files = Vec::new();
        for file in &f.files {
            let sha256 = match &file.sha256 {
                Some(s) => s.clone(),
                None => bedside_hub::sha256_file(&file.path)?,
            };
            files.push(serde_json::json!({"name": file.name, "size": file.size, "sha256": sha256, "downloaded": file.downloaded, "path": file.path}));
        }
        models.push(serde_json::json!({
            "spec": f.spec.to_string(),
            "kind": if *kind == Kind::Adapter { "adapter" } else { "model" },
            "repo": f.spec.repo,
            "revision": f.spec.revision,
            "commit": f.commit,
            "path": f.main_path(),
            "files": files,
        }));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"cache": hub.cache_dir(), "models": models}))?);
        return Ok(());
    }
    for m in &models {
        println!(
            "{} {} → commit {}",
            m["kind"].as_str().unwrap_or(""),
            m["spec"].as_str().unwrap_or(""),
            m["commit"].as_str().unwrap_or("")
        );
        for f in m["files"].as_array().into_iter().flatten() {
            println!(
                "  {:<10} {:<40} {:>10}  sha256 {}",
                if f["downloaded"].as_bool().unwrap_or(false) { "downloaded" } else { "cached" },
                f["name"].as_str().unwrap_or(""),
                human_bytes(f["size"].as_u64().unwrap_or(0)),
                f["sha256"].as_str().unwrap_or("")
            );
        }
        println!("  path {}", m["path"].as_str().unwrap_or(""));
    }
    println!("cache {}", hub.cache_dir().display());
    Ok(())
}

pub fn cache(a: CacheArgs) -> Result<()> {
    match a.cmd {
        CacheCommand::Ls(a) => ls(a),
        CacheCommand::Export(a) => export(a),
        CacheCommand::Import(a) => import(a),
    }
}

fn ls(a: LsArgs) -> Result<()> {
    let hub = Hub::from_env(true);
    let repos = bedside_hub::cache::list_cache(hub.cache_dir())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"cache": hub.cache_dir(), "repos": repos}))?);
        return Ok(());
    }
    println!("cache {}", hub.cache_dir().display());
    if repos.is_empty() {
        println!("(empty)");
        return Ok(());
    }
    println!("{:<48} {:<16} {:<12} {:>5} {:>10}", "REPOSITORY", "REFS", "COMMIT", "FILES", "SIZE");
    for r in &repos {
        for s in &r.snapshots {
            let refs: Vec<&str> = r.refs.iter().filter(|(_, c)| *c == s.commit).map(|(n, _)| n.as_str()).collect();
            let size: u64 = s.files.iter().map(|f| f.1).sum();
            let refs = if refs.is_empty() { "-".to_string() } else { refs.join(",") };
            println!(
                "{:<48} {:<16} {:<12} {:>5} {:>10}",
                r.repo,
                refs,
                &s.commit[..12.min(s.commit.len())],
                s.files.len(),
                human_bytes(size)
            );
        }
        if r.snapshots.is_empty() {
            println!("{:<48} {:<16} {:<12} {:>5} {:>10}", r.repo, "-", "-", 0, "0 B");
        }
        if r.partial_bytes > 0 {
            println!("{:<48} (+ {} of unfinished downloads; the next pull resumes them)", "", human_bytes(r.partial_bytes));
        }
    }
    Ok(())
}

fn print_moved(moved: &[Moved], verb_new: &str, verb_old: &str) {
    for m in moved {
        println!(
            "  {:<10} {} {:<40} {:>10}  sha256 {}",
            if m.copied { verb_new } else { verb_old },
            m.repo,
            m.path,
            human_bytes(m.size),
            m.sha256
        );
    }
}

fn export(a: ExportArgs) -> Result<()> {
    // Only the cache is read: exporting never touches the network.
    let hub = Hub::from_env(true);
    let items: Vec<ExportItem> = if a.models.is_empty() && a.adapters.is_empty() {
        transfer::everything(hub.cache_dir())?
    } else {
        let mut items = Vec::new();
        for m in &a.models {
            items.extend(fetch_all(&hub, Some(m), &[], "cache export")?.iter().map(|(f, _)| ExportItem::from(f)));
        }
        items.extend(fetch_all(&hub, None, &a.adapters, "cache export")?.iter().map(|(f, _)| ExportItem::from(f)));
        items
    };
    if items.is_empty() {
        bail!("the hub cache {} holds no models to export", hub.cache_dir().display());
    }
    let moved = transfer::export(hub.cache_dir(), &a.dir, &items)?;
    println!("exported to {} (manifest {})", a.dir.display(), a.dir.join(transfer::MANIFEST).display());
    print_moved(&moved, "copied", "present");
    Ok(())
}

fn import(a: ImportArgs) -> Result<()> {
    let hub = Hub::from_env(true);
    let moved = transfer::import(hub.cache_dir(), &a.dir)?;
    println!("imported into {} (every file verified against its sha256)", hub.cache_dir().display());
    print_moved(&moved, "imported", "present");
    Ok(())
}
