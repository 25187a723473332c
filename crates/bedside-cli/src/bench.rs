//! Prompt-processing and decode speed, and peak memory, measured the way llama.cpp's
//! llama-bench reports them: a synthetic prompt of N tokens, then M greedy decode steps that do
//! not stop at end-of-generation, several runs, the median reported.

use std::time::Instant;

use anyhow::{bail, Result};
use bedside_metrics::median;
use candle_core::{Device, Tensor};
use clap::{Args, ValueEnum};

use crate::args::ModelArgs;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum BenchEngine {
    /// bedside's own model code.
    Bedside,
    /// candle-transformers' quantized_llama, driven like candle's `quantized` example
    /// (GGUF only), as a side-by-side baseline on the same machine.
    CandleExample,
}

#[derive(Args)]
#[command(
    about = "Measure prompt processing and decode tokens/s (median of several runs) and peak memory",
    after_help = "Examples:\n  bedside bench\n  bedside bench --prompt-tokens 512 --gen-tokens 128 --runs 5 --json\n  bedside bench --kv-cache f16               # keys and values in f16 (llama.cpp's default): half the cache memory\n  bedside bench --engine candle-example     # candle's quantized example, same machine\n  bedside bench --dequantize --batch 16 --prompt-tokens 160 --gen-tokens 160   # eval-style batched sampling\n  bedside bench -m path/to/model.gguf --device cuda"
)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Decode steps per run.
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Measured runs (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Unmeasured warm-up runs.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, value_enum, default_value_t = BenchEngine::Bedside)]
    pub engine: BenchEngine,
    /// Rows decoded together (bedside engine): batched prompt processing, then decode steps that
    /// sample every row with top-k 40 / top-p 0.95 / min-p 0.05 / repeat penalty 1.1, as `eval run`
    /// does. Tokens/s count all rows.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// A deterministic prompt of `n` tokens cycling through real text.
fn synthetic_prompt(tok: &bedside_tokenizer::ModelTokenizer, n: usize) -> Result<Vec<u32>> {
    let text = "A patient writes that her chest has felt tight for three days, worse on the stairs, and she is frightened it is her heart. \
                She takes a statin and her father had a heart attack at 58. What should she watch for, and when should she call emergency services? ";
    let piece = tok.encode(text, false)?;
    if piece.is_empty() {
        bail!("tokenizer produced no tokens");
    }
    Ok(piece.iter().copied().cycle().take(n).collect())
}

/// One engine under measurement. Runners keep their own last token(s).
trait Runner {
    /// Process the prompt and pick the first token(s).
    fn prefill(&mut self, ids: &[u32]) -> Result<()>;
    /// One decode step at absolute position `pos`.
    fn step(&mut self, pos: usize) -> Result<()>;
    /// Seconds spent sampling since the last call (batched runner only).
    fn take_sampling_secs(&mut self) -> f64 {
        0.0
    }
}

/// bedside's model, one row, greedy (llama-bench style).
struct BedsideRunner<'a> {
    model: &'a bedside_model::Model,
    cache: Option<bedside_model::Cache>,
    last: u32,
}

impl Runner for BedsideRunner<'_> {
    fn prefill(&mut self, ids: &[u32]) -> Result<()> {
        // The previous run's cache goes first, as llama-bench clears its one context: two alive
        // at once would count in the peak memory.
        self.cache = None;
        let mut cache = bedside_model::Cache::new(self.model);
        let t = Tensor::new(ids, self.model.device())?.unsqueeze(0)?;
        let logits = self.model.forward(&t, Some(&mut cache), bedside_model::Logits::Last)?;
        self.cache = Some(cache);
        self.last = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        Ok(())
    }
    fn step(&mut self, _pos: usize) -> Result<()> {
        let cache = self.cache.as_mut().ok_or_else(|| anyhow::anyhow!("no cache"))?;
        let t = Tensor::new(&[self.last], self.model.device())?.unsqueeze(0)?;
        let logits = self.model.forward(&t, Some(cache), bedside_model::Logits::Last)?;
        self.last = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        Ok(())
    }
}

/// `batch` copies of the prompt decoded together, each row with its own seeded sampler.
struct BatchRunner<'a> {
    model: &'a bedside_model::Model,
    batch: usize,
    cache: Option<bedside_model::Cache>,
    samplers: Vec<bedside_generate::Sampler>,
    history: Vec<Vec<u32>>,
    last: Vec<u32>,
    sampling_secs: f64,
}

impl BatchRunner<'_> {
    fn sample(&mut self, logits: &Tensor) -> Result<()> {
        let t0 = Instant::now();
        let mut rows = logits.to_vec2::<f32>()?;
        self.last.clear();
        for (i, row) in rows.iter_mut().enumerate() {
            let tok = self.samplers[i].sample(row, &self.history[i]);
            self.history[i].push(tok);
            self.last.push(tok);
        }
        self.sampling_secs += t0.elapsed().as_secs_f64();
        Ok(())
    }
}

impl Runner for BatchRunner<'_> {
    fn prefill(&mut self, ids: &[u32]) -> Result<()> {
        let params = |seed| bedside_generate::SamplingParams {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.1,
            seed,
            ..Default::default()
        };
        self.samplers = (0..self.batch as u64).map(|s| bedside_generate::Sampler::new(params(s))).collect();
        self.history = vec![ids.to_vec(); self.batch];
        self.cache = None;
        let mut cache = bedside_model::Cache::with_padding(self.model, vec![0; self.batch]);
        let flat: Vec<u32> = (0..self.batch).flat_map(|_| ids.iter().copied()).collect();
        let t = Tensor::from_vec(flat, (self.batch, ids.len()), self.model.device())?;
        let logits = self.model.forward(&t, Some(&mut cache), bedside_model::Logits::Last)?;
        self.cache = Some(cache);
        self.sample(&logits)
    }
    fn step(&mut self, _pos: usize) -> Result<()> {
        let cache = self.cache.as_mut().ok_or_else(|| anyhow::anyhow!("no cache"))?;
        let t = Tensor::from_vec(self.last.clone(), (self.batch, 1), self.model.device())?;
        let logits = self.model.forward(&t, Some(cache), bedside_model::Logits::Last)?;
        self.sample(&logits)
    }
    fn take_sampling_secs(&mut self) -> f64 {
        std::mem::take(&mut self.sampling_secs)
    }
}

struct CandleRunner {
    model: candle_transformers::models::quantized_llama::ModelWeights,
    device: Device,
    last: u32,
}

impl Runner for CandleRunner {
    fn prefill(&mut self, ids: &[u32]) -> Result<()> {
        let t = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let logits = self.model.forward(&t, 0)?;
        self.last = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        Ok(())
    }
    fn step(&mut self, pos: usize) -> Result<()> {
        let t = Tensor::new(&[self.last], &self.device)?.unsqueeze(0)?;
        let logits = self.model.forward(&t, pos)?;
        self.last = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        Ok(())
    }
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.runs == 0 || a.prompt_tokens == 0 || a.batch == 0 {
        bail!("--runs, --prompt-tokens and --batch must be at least 1");
    }
    if a.batch > 1 && a.engine != BenchEngine::Bedside {
        bail!("--batch is measured on the bedside engine only");
    }
    let engine = a.model.load()?;
    let prompt = synthetic_prompt(&engine.tokenizer, a.prompt_tokens)?;
    if a.prompt_tokens + a.gen_tokens > engine.model.context_length() {
        bail!(
            "--prompt-tokens + --gen-tokens = {} exceeds the model's context of {}",
            a.prompt_tokens + a.gen_tokens,
            engine.model.context_length()
        );
    }
    let load_rss = bedside_train::peak_rss_bytes();
    let mut runner: Box<dyn Runner + '_> = match a.engine {
        BenchEngine::Bedside if a.batch > 1 => Box::new(BatchRunner {
            model: &engine.model,
            batch: a.batch,
            cache: None,
            samplers: Vec::new(),
            history: Vec::new(),
            last: Vec::new(),
            sampling_secs: 0.0,
        }),
        BenchEngine::Bedside => Box::new(BedsideRunner { model: &engine.model, cache: None, last: 0 }),
        BenchEngine::CandleExample => {
            let bedside_model::ModelLocation::Gguf(path) = &engine.location else {
                bail!("--engine candle-example needs a GGUF model");
            };
            let device = engine.model.device().clone();
            let mut f = std::fs::File::open(path)?;
            let content = candle_core::quantized::gguf_file::Content::read(&mut f)?;
            let model = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(content, &mut f, &device)?;
            Box::new(CandleRunner { model, device, last: 0 })
        }
    };
    let (mut pp, mut tg, mut samp) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..a.warmup + a.runs {
        let t0 = Instant::now();
        runner.prefill(&prompt)?;
        let pp_secs = t0.elapsed().as_secs_f64();
        runner.take_sampling_secs();
        let t1 = Instant::now();
        for i in 0..a.gen_tokens {
            runner.step(a.prompt_tokens + i)?;
        }
        let tg_secs = t1.elapsed().as_secs_f64();
        if run >= a.warmup {
            pp.push((a.batch * a.prompt_tokens) as f64 / pp_secs);
            if a.gen_tokens > 0 {
                tg.push((a.batch * a.gen_tokens) as f64 / tg_secs);
                samp.push(runner.take_sampling_secs() / tg_secs);
            }
        }
    }
    let pp_med = median(&pp);
    let tg_med = if tg.is_empty() { 0.0 } else { median(&tg) };
    let samp_med = if samp.is_empty() { 0.0 } else { median(&samp) };
    let peak = bedside_train::peak_rss_bytes();
    let engine_name = match a.engine {
        BenchEngine::Bedside => "bedside",
        BenchEngine::CandleExample => "candle-quantized-example",
    };
    let rows = if a.batch > 1 { format!(" x {}", a.batch) } else { String::new() };
    // The type bedside keeps keys and values in (candle's example keeps its own, in f32).
    let kv_cache = match a.engine {
        BenchEngine::Bedside => engine.model.kv_cache_dtype().unwrap_or(engine.model.dtype()).as_str(),
        BenchEngine::CandleExample => "f32",
    };
    if a.json {
        let v = serde_json::json!({
            "engine": engine_name,
            "model": a.model.model,
            "device": bedside_model::device_name(engine.model.device()),
            "threads": candle_core::utils::get_num_threads(),
            "batch": a.batch,
            "kv_cache": kv_cache,
            "prompt_tokens": a.prompt_tokens,
            "gen_tokens": a.gen_tokens,
            "runs": a.runs,
            "prompt_tokens_per_sec": pp_med,
            "decode_tokens_per_sec": tg_med,
            "decode_sampling_share": samp_med,
            "prompt_runs": pp,
            "decode_runs": tg,
            "rss_after_load_bytes": load_rss,
            "peak_rss_bytes": peak,
        });
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!(
            "engine   {engine_name} on {} ({} threads, key/value cache {kv_cache})",
            bedside_model::device_name(engine.model.device()),
            candle_core::utils::get_num_threads()
        );
        println!("model    {}", a.model.model);
        println!("prompt   {:>8.1} tok/s  (pp{}{rows}, median of {})", pp_med, a.prompt_tokens, a.runs);
        let sampling = if a.batch > 1 { format!("; sampling {:.0}% of decode time", samp_med * 100.0) } else { String::new() };
        println!("decode   {:>8.1} tok/s  (tg{}{rows}, median of {}{sampling})", tg_med, a.gen_tokens, a.runs);
        if let Some(p) = peak {
            println!("peak RSS {:>8.1} MB", p as f64 / 1e6);
        }
    }
    Ok(())
}
