/// Counts how often each lower-cased word appears.
pub fn word_freq(text: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for w in text.split_whitespace() {
        *counts.entry(w.to_lowercase()).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words() {
        let f = word_freq("a B b c A a");
        assert_eq!(f.get("a"), Some(&3));
        assert_eq!(f.get("b"), Some(&2));
        assert_eq!(f.get("c"), Some(&1));
        assert_eq!(f.len(), 3);
    }
}
