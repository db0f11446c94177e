/// Counts the vowels in `s`.
pub fn vowels(s: &str) -> usize {
    let count = 0;
    for c in s.chars() {
        if "aeiouAEIOU".contains(c) {
            count += 1;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_vowels() {
        assert_eq!(vowels("Hello World"), 3);
        assert_eq!(vowels("rhythm"), 0);
        assert_eq!(vowels(""), 0);
    }
}
