//! The project's empathy scorer (EPITOME levels, `bedside-empathy`) as a [`ComfortScorer`]: an
//! answer's comfort is the sum of its expected emotional-reaction, interpretation and exploration
//! levels (0–6, continuous) for the patient turn it replies to.

use anyhow::Result;
use bedside_empathy::EmpathyScorer;

use crate::checks::ComfortScorer;

pub struct EmpathyComfort {
    pub scorer: EmpathyScorer,
}

impl EmpathyComfort {
    /// The shipped heads and the default MiniLM directory (see `bedside_empathy::default_heads_path`).
    pub fn load_default() -> Result<Self> {
        Ok(EmpathyComfort { scorer: EmpathyScorer::load_default()? })
    }
}

impl ComfortScorer for EmpathyComfort {
    fn name(&self) -> &str {
        "epitome-expected-total"
    }
    fn score(&self, pairs: &[(&str, &str)]) -> Result<Vec<f64>> {
        Ok(self.scorer.score(pairs)?.iter().map(|s| f64::from(s.expected_total())).collect())
    }
}
