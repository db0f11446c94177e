//! Word statistics. Shipped with one compile error (a binding that must be
//! mutable) for `speckit demo` to fix.

/// Counts of each distinct word, in first-seen order.
pub fn word_counts(text: &str) -> Vec<(String, usize)> {
    let counts: Vec<(String, usize)> = Vec::new();
    for word in text.split_whitespace() {
        let word = word.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
        if word.is_empty() {
            continue;
        }
        match counts.iter_mut().find(|(w, _)| *w == word) {
            Some((_, n)) => *n += 1,
            None => counts.push((word, 1)),
        }
    }
    counts
}

/// The most frequent word and its count (the first seen wins a tie).
pub fn most_common(text: &str) -> Option<(String, usize)> {
    word_counts(text).into_iter().fold(None, |best, (w, n)| match best {
        Some((_, m)) if m >= n => best,
        _ => Some((w, n)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words_case_insensitively() {
        let counts = word_counts("The cat saw the dog. THE END");
        assert_eq!(counts[0], ("the".to_string(), 3));
        assert_eq!(counts.len(), 5);
    }

    #[test]
    fn finds_the_most_common_word() {
        assert_eq!(most_common("a b b c c"), Some(("b".to_string(), 2)));
        assert_eq!(most_common("  "), None);
    }
}
