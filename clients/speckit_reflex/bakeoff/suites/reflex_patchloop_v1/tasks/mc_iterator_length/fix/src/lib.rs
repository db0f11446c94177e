/// Number of characters (not bytes) in `s`.
pub fn char_len(s: &str) -> usize {
    s.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_chars() {
        assert_eq!(char_len("abc"), 3);
        assert_eq!(char_len("h\u{e9}llo"), 5);
        assert_eq!(char_len(""), 0);
    }
}
