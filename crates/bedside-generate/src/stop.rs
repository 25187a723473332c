//! Stop strings over streamed text: text that could still become a stop string is held back.

/// Tracks generated text and decides how much of it is safe to show.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    text: String,
    emitted: usize,
    stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), ..Default::default() }
    }

    /// Add decoded text; returns what can be shown now. After a stop string is seen,
    /// [`Self::stopped`] is true and nothing after it is ever returned.
    pub fn push(&mut self, chunk: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.text.push_str(chunk);
        // Earliest full match anywhere in the not-yet-final region.
        let search_from = self.emitted.saturating_sub(self.stops.iter().map(|s| s.len()).max().unwrap_or(0));
        let search_from = floor_char_boundary(&self.text, search_from);
        if let Some(pos) = self.stops.iter().filter_map(|s| self.text[search_from..].find(s.as_str()).map(|p| p + search_from)).min() {
            self.stopped = true;
            let cut = pos.max(self.emitted);
            self.text.truncate(cut);
            return self.take_to(cut);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut safe = self.text.len();
        for s in &self.stops {
            for (k, _) in s.char_indices().skip(1) {
                if self.text.ends_with(&s[..k]) {
                    safe = safe.min(self.text.len() - k);
                }
            }
        }
        self.take_to(safe.max(self.emitted))
    }

    /// Everything not yet shown (at the end of generation).
    pub fn finish(&mut self) -> String {
        let end = self.text.len();
        self.take_to(end)
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }
    /// The full output so far, without any stop string.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn take_to(&mut self, end: usize) -> String {
        let out = self.text[self.emitted..end].to_string();
        self.emitted = end;
        out
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], chunks: &[&str]) -> (String, String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut shown = String::new();
        for c in chunks {
            shown.push_str(&m.push(c));
        }
        shown.push_str(&m.finish());
        (shown, m.text().to_string(), m.stopped())
    }

    #[test]
    fn stop_across_chunks_is_never_shown() {
        let (shown, text, stopped) = run(&["\nUser:"], &["Hello", " there\n", "Us", "er: more"]);
        assert_eq!(shown, "Hello there");
        assert_eq!(text, "Hello there");
        assert!(stopped);
    }

    #[test]
    fn near_miss_is_released() {
        let (shown, _, stopped) = run(&["STOP"], &["ST", "OCK is fine"]);
        assert_eq!(shown, "STOCK is fine");
        assert!(!stopped);
    }

    #[test]
    fn no_stops_passes_everything() {
        let (shown, _, stopped) = run(&[], &["a", "é", "🙂"]);
        assert_eq!(shown, "aé🙂");
        assert!(!stopped);
    }

    #[test]
    fn multibyte_stop() {
        let (shown, _, stopped) = run(&["🙂!"], &["ok 🙂", "! tail"]);
        assert_eq!(shown, "ok ");
        assert!(stopped);
    }
}
