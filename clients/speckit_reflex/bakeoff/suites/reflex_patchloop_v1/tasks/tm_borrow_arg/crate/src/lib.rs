/// Total number of bytes in all words.
pub fn total_len(words: &[String]) -> usize {
    words.iter().map(|w| w.len()).sum()
}

/// Summarises a list of words.
pub fn summary(words: Vec<String>) -> String {
    let n = total_len(words);
    format!("{} words, {} bytes", words.len(), n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises() {
        let words = vec!["ab".to_string(), "cde".to_string()];
        assert_eq!(summary(words), "2 words, 5 bytes");
        assert_eq!(summary(Vec::new()), "0 words, 0 bytes");
    }
}
