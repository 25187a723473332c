//! PEFT's `adapter_config.json` for LoRA: reading (tolerant of the many keys newer PEFT writes)
//! and writing (the long-standing key set, sorted, 2-space indent, as PEFT writes it).

use std::collections::BTreeMap;
use std::path::Path;

use regex::Regex;
use serde_json::{json, Value};

use crate::error::{LoraError, Result};

/// The LoRA hyperparameters PEFT keeps in `adapter_config.json`.
///
/// `target_modules` entries match a module when they equal its name or a whole dot-separated
/// suffix of it (`q_proj` matches `model.layers.0.self_attn.q_proj`; `gate` does not match
/// `gate_proj`). `"all-linear"` matches every projection (never the LM head). An entry starting
/// with `re:` is a regex that must match the whole module name: that is how a JSON *string*
/// `target_modules` (PEFT's regex form) is kept, and it is written back as that string.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub use_rslora: bool,
    pub lora_dropout: f32,
    /// A set in PEFT: kept sorted when read, written sorted.
    pub target_modules: Vec<String>,
    /// Regex key → rank, matched as PEFT does: `(.*\.)?(KEY)$` against the module name.
    pub rank_pattern: BTreeMap<String, usize>,
    /// Regex key → alpha, matched like `rank_pattern`.
    pub alpha_pattern: BTreeMap<String, f64>,
    pub base_model_name_or_path: Option<String>,
}

impl Default for LoraConfig {
    /// PEFT's defaults (r 8, alpha 8, no dropout) on bedside's usual targets, all seven Llama
    /// projections.
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 8.0,
            use_rslora: false,
            lora_dropout: 0.0,
            target_modules: ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"].map(String::from).to_vec(),
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            base_model_name_or_path: None,
        }
    }
}

/// PEFT's `get_pattern_key`: `re.match(rf"(.*\.)?({key})$", name)`.
fn pattern_matches(key: &str, module: &str) -> bool {
    match Regex::new(&format!(r"^(.*\.)?({key})$")) {
        Ok(re) => re.is_match(module),
        Err(_) => false,
    }
}

/// The pattern key that applies to `module`: the longest matching key (the most specific one).
fn pattern_key<'a, V>(pat: &'a BTreeMap<String, V>, module: &str) -> Option<&'a V> {
    pat.iter().filter(|(k, _)| pattern_matches(k, module)).max_by_key(|(k, _)| k.len()).map(|(_, v)| v)
}

impl LoraConfig {
    /// Whether a LoRA branch goes on this module (HF name such as
    /// `model.layers.0.self_attn.q_proj`). The LM head is never targeted.
    pub fn matches(&self, module: &str) -> bool {
        if module == "lm_head" || module.ends_with(".lm_head") {
            return false;
        }
        self.target_modules.iter().any(|t| {
            if t == "all-linear" {
                true
            } else if let Some(re) = t.strip_prefix("re:") {
                Regex::new(&format!("^(?:{re})$")).map(|r| r.is_match(module)).unwrap_or(false)
            } else {
                module == t || module.ends_with(&format!(".{t}"))
            }
        })
    }

    pub fn rank_for(&self, module: &str) -> usize {
        pattern_key(&self.rank_pattern, module).copied().unwrap_or(self.r)
    }

    pub fn alpha_for(&self, module: &str) -> f64 {
        pattern_key(&self.alpha_pattern, module).copied().unwrap_or(self.lora_alpha)
    }

    /// PEFT's scaling: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scale_for(&self, module: &str) -> f64 {
        let r = self.rank_for(module) as f64;
        let a = self.alpha_for(module);
        if self.use_rslora {
            a / r.sqrt()
        } else {
            a / r
        }
    }

    /// Check values a user may have typed wrong (rank 0, bad regexes, dropout out of range).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.r == 0 {
            return Err("'r' must be a positive integer".into());
        }
        if !self.lora_alpha.is_finite() {
            return Err(format!("'lora_alpha' must be a finite number, found {}", self.lora_alpha));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(format!("'lora_dropout' must be in [0, 1), found {}", self.lora_dropout));
        }
        for (k, r) in &self.rank_pattern {
            Regex::new(&format!(r"^(.*\.)?({k})$")).map_err(|e| format!("rank_pattern key '{k}' is not a valid regex: {e}"))?;
            if *r == 0 {
                return Err(format!("rank_pattern '{k}': rank must be positive"));
            }
        }
        for (k, a) in &self.alpha_pattern {
            Regex::new(&format!(r"^(.*\.)?({k})$")).map_err(|e| format!("alpha_pattern key '{k}' is not a valid regex: {e}"))?;
            if !a.is_finite() {
                return Err(format!("alpha_pattern '{k}': alpha must be a finite number"));
            }
        }
        for t in &self.target_modules {
            if let Some(re) = t.strip_prefix("re:") {
                Regex::new(re).map_err(|e| format!("target_modules regex '{re}' is invalid: {e}"))?;
            }
        }
        Ok(())
    }

    /// Parse `adapter_config.json` text; `path` is only used to name the file in errors.
    pub fn from_json_str(path: &Path, text: &str) -> Result<Self> {
        let err = |msg: String| LoraError::Invalid { path: path.into(), msg };
        let v: Value = serde_json::from_str(text).map_err(|e| err(format!("malformed JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| err("expected a JSON object".into()))?;
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        match get("peft_type").map(|p| p.as_str()) {
            None => return Err(err("field 'peft_type' is missing (is this a PEFT adapter directory?)".into())),
            Some(Some("LORA")) => {}
            Some(other) => {
                return Err(err(format!(
                    "field 'peft_type' is {}, but bedside reads only LORA adapters",
                    other.map(String::from).unwrap_or_else(|| get("peft_type").map(|x| x.to_string()).unwrap_or_default())
                )))
            }
        }
        let pos_int = |k: &str, x: &Value| -> Result<usize> {
            x.as_u64()
                .filter(|n| *n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| err(format!("field '{k}' must be a positive integer, found {x}")))
        };
        let number = |k: &str, x: &Value| -> Result<f64> {
            x.as_f64().filter(|f| f.is_finite()).ok_or_else(|| err(format!("field '{k}' must be a number, found {x}")))
        };
        let flag = |k: &str| -> Result<bool> {
            match get(k) {
                None => Ok(false),
                Some(x) => x.as_bool().ok_or_else(|| err(format!("field '{k}' must be true or false, found {x}"))),
            }
        };
        let r = match get("r") {
            Some(x) => pos_int("r", x)?,
            None => 8,
        };
        let lora_alpha = match get("lora_alpha") {
            Some(x) => number("lora_alpha", x)?,
            None => 8.0,
        };
        let lora_dropout = match get("lora_dropout") {
            Some(x) => number("lora_dropout", x)? as f32,
            None => 0.0,
        };
        let use_rslora = flag("use_rslora")?;
        // Variants bedside does not implement: refuse rather than silently compute something else.
        if flag("use_dora")? {
            return Err(err("DoRA adapters ('use_dora': true) are not supported".into()));
        }
        if flag("fan_in_fan_out")? {
            return Err(err("'fan_in_fan_out': true is for GPT-2 style Conv1D layers; Llama and Mixtral use false".into()));
        }
        if flag("lora_bias")? {
            return Err(err("'lora_bias': true (a bias on lora_B) is not supported".into()));
        }
        if let Some(b) = get("bias") {
            if b.as_str() != Some("none") {
                return Err(err(format!("field 'bias' is {b}; only \"none\" is supported")));
            }
        }
        if let Some(m) = get("modules_to_save") {
            if m.as_array().is_some_and(|a| !a.is_empty()) {
                return Err(err(format!("'modules_to_save' ({m}) stores full weights, which bedside does not load")));
            }
        }
        let target_modules = match get("target_modules") {
            None => Vec::new(),
            Some(Value::String(s)) if s == "all-linear" => vec![s.clone()],
            Some(Value::String(s)) => vec![format!("re:{s}")],
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_str().map(String::from).ok_or_else(|| err(format!("'target_modules' entries must be strings, found {x}"))))
                .collect::<Result<std::collections::BTreeSet<_>>>()?
                .into_iter()
                .collect(),
            Some(x) => return Err(err(format!("'target_modules' must be a list of names or a regex string, found {x}"))),
        };
        let object = |k: &str| -> Result<Option<&serde_json::Map<String, Value>>> {
            match get(k) {
                None => Ok(None),
                Some(Value::Object(m)) => Ok(Some(m)),
                Some(x) => Err(err(format!("field '{k}' must be an object, found {x}"))),
            }
        };
        let mut rank_pattern = BTreeMap::new();
        if let Some(m) = object("rank_pattern")? {
            for (k, x) in m {
                rank_pattern.insert(k.clone(), pos_int(&format!("rank_pattern.{k}"), x)?);
            }
        }
        let mut alpha_pattern = BTreeMap::new();
        if let Some(m) = object("alpha_pattern")? {
            for (k, x) in m {
                alpha_pattern.insert(k.clone(), number(&format!("alpha_pattern.{k}"), x)?);
            }
        }
        let base_model_name_or_path = match get("base_model_name_or_path") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(x) => return Err(err(format!("field 'base_model_name_or_path' must be a string, found {x}"))),
        };
        let cfg =
            LoraConfig { r, lora_alpha, use_rslora, lora_dropout, target_modules, rank_pattern, alpha_pattern, base_model_name_or_path };
        cfg.validate().map_err(err)?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LoraError::Io { path: path.into(), err: e })?;
        Self::from_json_str(path, &text)
    }

    /// The JSON PEFT writes: every long-standing key, sorted, integral alphas as integers
    /// (Ollama's converter parses `lora_alpha` as an integer).
    pub fn to_json_value(&self) -> Value {
        let num = |a: f64| -> Value {
            if a.fract() == 0.0 && a.abs() < 9.0e15 {
                json!(a as i64)
            } else {
                json!(a)
            }
        };
        let target = match self.target_modules.as_slice() {
            [one] if one == "all-linear" => json!(one),
            [one] if one.starts_with("re:") => json!(&one[3..]),
            list => {
                let mut l = list.to_vec();
                l.sort();
                l.dedup();
                json!(l)
            }
        };
        let alpha_pattern: BTreeMap<&String, Value> = self.alpha_pattern.iter().map(|(k, v)| (k, num(*v))).collect();
        // A BTreeMap serializes with sorted keys whatever serde_json's map features are.
        let mut m: BTreeMap<&str, Value> = BTreeMap::new();
        m.insert("alpha_pattern", json!(alpha_pattern));
        m.insert("base_model_name_or_path", json!(self.base_model_name_or_path));
        m.insert("bias", json!("none"));
        m.insert("fan_in_fan_out", json!(false));
        m.insert("inference_mode", json!(true));
        m.insert("init_lora_weights", json!(true));
        m.insert("layers_pattern", Value::Null);
        m.insert("layers_to_transform", Value::Null);
        m.insert("lora_alpha", num(self.lora_alpha));
        m.insert("lora_dropout", json!(round_f32(self.lora_dropout as f64)));
        m.insert("modules_to_save", Value::Null);
        m.insert("peft_type", json!("LORA"));
        m.insert("r", json!(self.r));
        m.insert("rank_pattern", json!(self.rank_pattern));
        m.insert("revision", Value::Null);
        m.insert("target_modules", target);
        m.insert("task_type", json!("CAUSAL_LM"));
        m.insert("use_dora", json!(false));
        m.insert("use_rslora", json!(self.use_rslora));
        json!(m)
    }

    /// `adapter_config.json` text (2-space indent, sorted keys, trailing newline-free like PEFT).
    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(&self.to_json_value()).unwrap_or_default()
    }
}

/// Dropout is an f32; print it as the short decimal a user typed (0.05, not 0.05000000074505806).
fn round_f32(d: f64) -> f64 {
    let s = format!("{}", d as f32);
    s.parse().unwrap_or(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LoraConfig {
        LoraConfig::default()
    }

    #[test]
    fn suffix_matching_is_on_whole_segments() {
        let mut c = cfg();
        c.target_modules = vec!["gate".into(), "w1".into()];
        assert!(c.matches("model.layers.0.block_sparse_moe.gate"));
        assert!(!c.matches("model.layers.0.mlp.gate_proj"));
        assert!(c.matches("model.layers.1.block_sparse_moe.experts.3.w1"));
        assert!(!c.matches("model.layers.1.block_sparse_moe.experts.3.w2"));
        let mut all = cfg();
        all.target_modules = vec!["all-linear".into()];
        assert!(all.matches("model.layers.0.mlp.down_proj"));
        assert!(!all.matches("lm_head"));
    }

    #[test]
    fn patterns_follow_peft_get_pattern_key() {
        let mut c = cfg();
        c.r = 8;
        c.lora_alpha = 16.0;
        c.rank_pattern.insert(r"layers\.3\.self_attn\.q_proj".into(), 4);
        c.alpha_pattern.insert("v_proj".into(), 32.0);
        assert_eq!(c.rank_for("model.layers.3.self_attn.q_proj"), 4);
        assert_eq!(c.rank_for("model.layers.13.self_attn.q_proj"), 8);
        assert_eq!(c.rank_for("model.layers.2.self_attn.q_proj"), 8);
        assert_eq!(c.alpha_for("model.layers.2.self_attn.v_proj"), 32.0);
        assert_eq!(c.scale_for("model.layers.3.self_attn.q_proj"), 4.0);
        assert_eq!(c.scale_for("model.layers.0.self_attn.v_proj"), 4.0);
        c.use_rslora = true;
        assert!((c.scale_for("model.layers.0.self_attn.k_proj") - 16.0 / 8f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn json_round_trip_and_integral_alpha() {
        let mut c = cfg();
        c.lora_alpha = 16.0;
        c.lora_dropout = 0.05;
        c.base_model_name_or_path = Some("HuggingFaceTB/SmolLM2-135M-Instruct".into());
        let s = c.to_json_string();
        assert!(s.contains("\"lora_alpha\": 16,"), "{s}");
        assert!(s.contains("\"lora_dropout\": 0.05,"), "{s}");
        assert!(s.starts_with("{\n  \"alpha_pattern\": {},"), "{s}");
        let back = LoraConfig::from_json_str(Path::new("x.json"), &s).unwrap();
        assert_eq!(back, c);
        let mut rx = cfg();
        rx.target_modules = vec![r"re:.*\.(q|v)_proj".into()];
        let back = LoraConfig::from_json_str(Path::new("x.json"), &rx.to_json_string()).unwrap();
        assert_eq!(back.target_modules, rx.target_modules);
        assert!(back.matches("model.layers.0.self_attn.q_proj"));
        assert!(!back.matches("model.layers.0.self_attn.k_proj"));
    }

    #[test]
    fn bad_configs_are_named() {
        let p = Path::new("dir/adapter_config.json");
        let e = LoraConfig::from_json_str(p, "{\"peft_type\": \"IA3\"}").unwrap_err().to_string();
        assert!(e.contains("adapter_config.json") && e.contains("LORA"), "{e}");
        let e = LoraConfig::from_json_str(p, "{\"peft_type\": \"LORA\", \"r\": 0}").unwrap_err().to_string();
        assert!(e.contains("'r'"), "{e}");
        let e = LoraConfig::from_json_str(p, "{\"peft_type\": \"LORA\", \"use_dora\": true}").unwrap_err().to_string();
        assert!(e.contains("DoRA"), "{e}");
        let e = LoraConfig::from_json_str(p, "{\"peft_type\": \"LORA\", \"rank_pattern\": {\"(\": 4}}").unwrap_err().to_string();
        assert!(e.contains("rank_pattern"), "{e}");
        let e = LoraConfig::from_json_str(p, "{\"peft_type\": ").unwrap_err().to_string();
        assert!(e.contains("malformed JSON"), "{e}");
    }
}
