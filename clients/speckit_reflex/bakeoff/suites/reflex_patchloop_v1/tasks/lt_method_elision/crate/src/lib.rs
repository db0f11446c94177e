pub struct Dictionary {
    words: Vec<String>,
}

impl Dictionary {
    pub fn new(words: &[&str]) -> Self {
        Dictionary { words: words.iter().map(|w| w.to_string()).collect() }
    }

    /// The stored spelling of `query` (ignoring ASCII case), or `query` itself if unknown.
    pub fn canonical(&self, query: &str) -> &str {
        for w in &self.words {
            if w.eq_ignore_ascii_case(query) {
                return w;
            }
        }
        query
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_spelling() {
        let d = Dictionary::new(&["Rust", "GitHub"]);
        assert_eq!(d.canonical("rust"), "Rust");
        assert_eq!(d.canonical("GITHUB"), "GitHub");
        assert_eq!(d.canonical("zig"), "zig");
    }
}
