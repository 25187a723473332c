//! Versioned prompt templates: a directory (e.g. `configs/prompts/rewrite-v1/`) holding
//! `meta.toml`, `patient.jinja` and `answer.jinja`.
//!
//! `meta.toml`:
//! ```toml
//! version = "rewrite-v1"          # recorded in every output record's provenance
//! description = "…"               # optional
//! [patient]
//! system = "…"                    # optional system message for the patient rewrite
//! [answer]
//! system = "…"                    # optional system message for the answer rewrite
//! ```
//! The templates (minijinja, strict: an undefined variable is an error) render the user message.
//! Variables: `emotion`, `emotion_words` (a few lexicon words for it), `patient_neutral`,
//! `answer_neutral`, `key_facts` (the record's, possibly empty), `red_flags`, `patient_numbers`,
//! `answer_numbers` (normalised numbers of each neutral text), `patient_questions` (the
//! question sentences of `patient_neutral`), `specialty`, `condition`; `answer.jinja` also gets
//! `patient` (the accepted-so-far rewritten patient turn).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use minijinja::{Environment, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize)]
struct TurnMeta {
    system: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    version: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    patient: TurnMeta,
    #[serde(default)]
    answer: TurnMeta,
}

/// The variables a template sees.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PromptContext {
    pub emotion: String,
    pub emotion_words: Vec<String>,
    pub patient_neutral: String,
    pub answer_neutral: String,
    pub key_facts: Vec<String>,
    pub red_flags: Vec<String>,
    pub patient_numbers: Vec<String>,
    pub answer_numbers: Vec<String>,
    pub patient_questions: Vec<String>,
    pub specialty: String,
    pub condition: String,
    /// The rewritten patient turn (set for `answer.jinja`).
    pub patient: String,
}

/// One rendered chat prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub system: Option<String>,
    pub user: String,
}

/// A loaded, validated prompt set.
#[derive(Debug)]
pub struct PromptSet {
    pub dir: PathBuf,
    pub version: String,
    patient_system: Option<String>,
    answer_system: Option<String>,
    env: Environment<'static>,
}

impl PromptSet {
    /// Loads `dir/meta.toml`, `dir/patient.jinja` and `dir/answer.jinja`; errors name the file.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            bail!("{}: not a prompt directory (expected meta.toml, patient.jinja and answer.jinja)", dir.display());
        }
        let meta_path = dir.join("meta.toml");
        let meta_text = std::fs::read_to_string(&meta_path).with_context(|| format!("{}: cannot read", meta_path.display()))?;
        let meta: Meta = toml::from_str(&meta_text).with_context(|| format!("{}: invalid", meta_path.display()))?;
        if meta.version.trim().is_empty() {
            bail!("{}: field `version` is empty", meta_path.display());
        }
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(false);
        for name in ["patient.jinja", "answer.jinja"] {
            let p = dir.join(name);
            let src = std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
            env.add_template_owned(name.to_string(), src).map_err(|e| anyhow::anyhow!("{}: template error: {e:#}", p.display()))?;
        }
        let set = PromptSet {
            dir: dir.to_path_buf(),
            version: meta.version.trim().to_string(),
            patient_system: meta.patient.system.filter(|s| !s.trim().is_empty()),
            answer_system: meta.answer.system.filter(|s| !s.trim().is_empty()),
            env,
        };
        // Render once with a full example so a template referring to an unknown variable fails
        // here, before any model is loaded.
        let probe = PromptContext {
            emotion: "afraid".into(),
            patient: "p".into(),
            patient_neutral: "p".into(),
            answer_neutral: "a".into(),
            ..PromptContext::default()
        };
        set.patient(&probe)?;
        set.answer(&probe)?;
        Ok(set)
    }

    fn render(&self, name: &str, ctx: &PromptContext) -> Result<String> {
        let t = self.env.get_template(name).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let text =
            t.render(Value::from_serialize(ctx)).map_err(|e| anyhow::anyhow!("{}: cannot render: {e:#}", self.dir.join(name).display()))?;
        Ok(text.trim().to_string())
    }

    /// The prompt that rewrites the patient turn.
    pub fn patient(&self, ctx: &PromptContext) -> Result<Prompt> {
        Ok(Prompt { system: self.patient_system.clone(), user: self.render("patient.jinja", ctx)? })
    }

    /// The prompt that rewrites the answer (`ctx.patient` holds the rewritten patient turn).
    pub fn answer(&self, ctx: &PromptContext) -> Result<Prompt> {
        Ok(Prompt { system: self.answer_system.clone(), user: self.render("answer.jinja", ctx)? })
    }
}
