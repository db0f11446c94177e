/// Counts the whitespace-separated words in `text`.
pub fn word_count(text: &str) -> u32 {
    let n = text.split_whitespace().count();
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words() {
        assert_eq!(word_count(""), 0);
        assert_eq!(word_count("one"), 1);
        assert_eq!(word_count("  the quick\tbrown\nfox "), 4);
    }
}
