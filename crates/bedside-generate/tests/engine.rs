//! Generation through the whole engine: GGUF tokenizer, chat template, model, sampler.

use bedside_generate::{Engine, EngineOptions, FinishReason, GenerateError, SamplingParams};
use bedside_model::LoadOptions;
use bedside_tokenizer::ChatMessage;

fn smollm2(dequantize: bool) -> Option<Engine> {
    let path = bedside_testutil::smollm2_gguf()?;
    let opts = EngineOptions { load: LoadOptions { dequantize, ..Default::default() }, ..Default::default() };
    Some(Engine::load(path.to_str().unwrap(), &opts).unwrap())
}

fn user(text: &str) -> Vec<ChatMessage> {
    vec![ChatMessage { role: "user".into(), content: text.into() }]
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams { temperature: 0.0, max_tokens, ..Default::default() }
}

const PARITY_IDS: [u32; 37] = [
    1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182, 2, 198, 1, 4093, 198, 1780,
    314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198,
];

/// offline-resources.md §3: the parity prompt's ids and, on the dequantized f32 path, its greedy
/// answer "The capital of France is Paris." exactly.
#[test]
fn smollm2_answers_the_parity_prompt() {
    let Some(engine) = smollm2(true) else { return };
    let ids = engine.encode_chat(&user("What is the capital of France?")).unwrap();
    assert_eq!(ids, PARITY_IDS);
    let mut streamed = String::new();
    let g = engine
        .generate(&ids, &greedy(32), &mut |s| {
            streamed.push_str(s);
            Ok(())
        })
        .unwrap();
    assert_eq!(g.tokens, vec![504, 3575, 282, 4649, 314, 7042, 30]);
    assert_eq!(g.text, "The capital of France is Paris.");
    assert_eq!(streamed, g.text);
    assert_eq!(g.finish_reason, FinishReason::Eos);
    assert_eq!(g.prompt_tokens, 37);
}

/// On the quantized path the first logits of 504 ("The") and 60 are 0.08 apart in f32, closer
/// than Q4_1×Q8_1 rounding, so the reference for the quantized engine is candle-transformers' own
/// quantized Llama (an implementation bedside does not share code with). Both round activations
/// to 8 bits before each quantized matmul, which turns any difference in f32 summation order
/// (attention shapes, SIMD width) into logit differences of a few tenths, so the comparison is
/// teacher-forced: bedside's cached decoding over the reference's greedy tokens must give close
/// logits at every step, the same greedy choice wherever the reference's choice is not a near tie,
/// and `generate` must follow the reference up to the first near tie.
#[test]
fn quantized_engine_matches_candle_transformers_quantized_llama() {
    let Some(mut engine) = smollm2(false) else { return };
    // The reference runs ggml's kernels for the prompt too.
    engine.model.set_dense_prefill(false);
    let path = bedside_testutil::smollm2_gguf().unwrap();
    let mut f = std::fs::File::open(&path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let dev = candle_core::Device::Cpu;
    let mut reference = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(content, &mut f, &dev).unwrap();
    let n = 16;
    let (mut expected, mut ref_logits) = (Vec::new(), Vec::new());
    let mut input = PARITY_IDS.to_vec();
    let mut pos = 0;
    for _ in 0..n {
        let t = candle_core::Tensor::new(input.as_slice(), &dev).unwrap().unsqueeze(0).unwrap();
        let logits = reference.forward(&t, pos).unwrap().squeeze(0).unwrap();
        let next = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        ref_logits.push(logits.to_vec1::<f32>().unwrap());
        pos += input.len();
        if engine.tokenizer.eog_ids().contains(&next) {
            break;
        }
        expected.push(next);
        input = vec![next];
    }
    assert!(expected.len() >= 8, "the reference answered in {} tokens", expected.len());

    // Teacher-forced: bedside's logits over the same tokens. Measured after gemm's AVX-512
    // kernels were enabled: max differences 0.57–1.26, mean 0.10–0.39 per step; a model error
    // (rope layout, norm, attention mask) moves the logits by whole units.
    let mut cache = bedside_model::Cache::new(&engine.model);
    let mut input = PARITY_IDS.to_vec();
    let (mut agree, mut first_disagreement) = (0, None);
    for (step, want) in ref_logits.iter().enumerate() {
        let t = candle_core::Tensor::new(input.as_slice(), &dev).unwrap().unsqueeze(0).unwrap();
        let got = engine.model.forward(&t, Some(&mut cache), bedside_model::Logits::Last).unwrap();
        let got = got.squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got.len(), want.len());
        let max = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let mean = got.iter().zip(want).map(|(a, b)| (a - b).abs()).sum::<f32>() / got.len() as f32;
        assert!(max < 2.0 && mean < 0.5, "step {step}: logits differ by up to {max} (mean {mean})");
        let ((top, margin), (mine, _)) = (top_and_margin(want), top_and_margin(&got));
        // With every logit within `max`, the greedy choice can only change when the reference's
        // top two are less than 2·max apart.
        if margin > 2.0 * max {
            assert_eq!(mine, top, "step {step}: greedy choice differs (reference margin {margin}, difference {max})");
        }
        if mine == top {
            agree += 1;
        } else {
            first_disagreement.get_or_insert(step);
        }
        if let Some(&next) = expected.get(step) {
            input = vec![next];
        }
    }
    assert!(4 * agree >= 3 * ref_logits.len(), "greedy choices agree at {agree} of {} steps", ref_logits.len());
    // `generate` computes what the cached forward does: it follows the reference until bedside's
    // own greedy choice first differs.
    let g = engine.generate(&PARITY_IDS, &greedy(n), &mut |_| Ok(())).unwrap();
    let upto = first_disagreement.unwrap_or(expected.len()).min(expected.len());
    assert!(g.tokens.len() >= upto && g.tokens[..upto] == expected[..upto], "{:?} vs {:?}", g.tokens, expected);
}

/// The index of the largest value and how far it is above the second largest.
fn top_and_margin(v: &[f32]) -> (usize, f32) {
    let top = (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
    let second = (0..v.len()).filter(|&i| i != top).map(|i| v[i]).fold(f32::NEG_INFINITY, f32::max);
    (top, v[top] - second)
}

#[test]
fn same_seed_same_answer_and_batches_match_single_rows() {
    let Some(engine) = smollm2(true) else { return };
    let prompts: Vec<Vec<u32>> = [
        "I'm scared my fever won't go down. What should I do?",
        "Why do I feel dizzy when I stand up?",
        "My child has a rash. Should I worry?",
    ]
    .iter()
    .map(|q| engine.encode_chat(&user(q)).unwrap())
    .collect();
    let sampled = |seed| SamplingParams { temperature: 0.8, top_p: 0.95, seed, max_tokens: 24, ..Default::default() };
    let a = engine.generate(&prompts[0], &sampled(1), &mut |_| Ok(())).unwrap();
    let b = engine.generate(&prompts[0], &sampled(1), &mut |_| Ok(())).unwrap();
    let c = engine.generate(&prompts[0], &sampled(2), &mut |_| Ok(())).unwrap();
    assert_eq!(a.tokens, b.tokens, "same seed must reproduce");
    assert_ne!(a.tokens, c.tokens, "another seed should differ");

    let params: Vec<SamplingParams> = (0..3).map(|_| greedy(20)).collect();
    let batch = engine.generate_batch(&prompts, &params).unwrap();
    for (p, g) in prompts.iter().zip(&batch) {
        let single = engine.generate(p, &greedy(20), &mut |_| Ok(())).unwrap();
        assert_eq!(g.tokens, single.tokens, "batched greedy differs from single greedy");
        assert_eq!(g.prompt_tokens, p.len());
    }
}

#[test]
fn stop_strings_and_limits() {
    let Some(engine) = smollm2(true) else { return };
    let ids = engine.encode_chat(&user("What is the capital of France?")).unwrap();
    let p = SamplingParams { stop: vec![" is".into()], ..greedy(32) };
    let mut streamed = String::new();
    let g = engine
        .generate(&ids, &p, &mut |s| {
            streamed.push_str(s);
            Ok(())
        })
        .unwrap();
    assert_eq!(g.text, "The capital of France");
    assert_eq!(streamed, g.text);
    assert_eq!(g.finish_reason, FinishReason::Stop);
    let g = engine.generate(&ids, &greedy(3), &mut |_| Ok(())).unwrap();
    assert_eq!((g.tokens.len(), g.finish_reason), (3, FinishReason::Length));
}

#[test]
fn tiny_models_from_both_formats_generate_identically() {
    for name in ["tiny-llama", "tiny-mixtral"] {
        let Some(dir) = bedside_testutil::fixture(name) else { return };
        let hf = Engine::load(dir.to_str().unwrap(), &EngineOptions::default()).unwrap();
        let gg = Engine::load(dir.join("model-f32.gguf").to_str().unwrap(), &EngineOptions::default()).unwrap();
        let prompt = hf.encode_prompt("I have had a fever for 3 days").unwrap();
        assert_eq!(prompt, gg.encode_prompt("I have had a fever for 3 days").unwrap());
        assert_eq!(prompt[0], 1, "{name}: BOS expected for a SentencePiece model");
        let a = hf.generate(&prompt, &greedy(10), &mut |_| Ok(())).unwrap();
        let b = gg.generate(&prompt, &greedy(10), &mut |_| Ok(())).unwrap();
        assert_eq!(a.tokens, b.tokens, "{name}");
        // The chat template comes from the model files.
        let text = hf.render_chat(&user("Hi there"), true).unwrap();
        assert_eq!(text, "<s>[INST] Hi there [/INST]");
    }
}

#[test]
fn prompt_longer_than_context_is_a_clear_error() {
    let Some(dir) = bedside_testutil::fixture("tiny-llama") else { return };
    let engine = Engine::load(dir.to_str().unwrap(), &EngineOptions::default()).unwrap();
    let long = vec![5u32; 200];
    let e = engine.generate(&long, &greedy(4), &mut |_| Ok(())).unwrap_err();
    assert!(matches!(e, GenerateError::Model(bedside_model::ModelError::ContextOverflow { needed: 201, limit: 128 })), "{e}");
    assert!(e.to_string().contains("context is 128 tokens"), "{e}");
    // A prompt that fits but leaves little room ends at the context limit, not with an error.
    let near = vec![5u32; 125];
    let g = engine.generate(&near, &greedy(50), &mut |_| Ok(())).unwrap();
    // 125 prompt positions + 3 fed tokens fill 128; the 4th is sampled from the last logits.
    assert!(g.tokens.len() <= 4 && matches!(g.finish_reason, FinishReason::Context | FinishReason::Eos), "{:?}", g.finish_reason);
}

#[test]
fn missing_template_and_bad_params_are_errors() {
    let Some(dir) = bedside_testutil::fixture("tiny-llama") else { return };
    let engine = Engine::load(dir.to_str().unwrap(), &EngineOptions::default()).unwrap();
    let e = engine.generate(&[1, 2, 3], &SamplingParams { top_p: 1.5, ..greedy(2) }, &mut |_| Ok(())).unwrap_err();
    assert!(e.to_string().contains("top-p"), "{e}");
    // --chat-template overrides the model's own.
    let tmp = tempfile_path("{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}");
    let opts = EngineOptions { chat_template: Some(tmp.clone()), ..Default::default() };
    let engine = Engine::load(dir.to_str().unwrap(), &opts).unwrap();
    assert_eq!(engine.render_chat(&user("x"), true).unwrap(), "<<x>>");
    std::fs::remove_file(tmp).ok();
}

fn tempfile_path(content: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("bedside-template-{}.jinja", std::process::id()));
    std::fs::write(&p, content).unwrap();
    p
}
