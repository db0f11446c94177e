/// Upper-case initials of each word, e.g. "ada lovelace" -> "AL".
pub fn initials(name: &str) -> String {
    name.split_whitespace()
        .filter_map(|w| w.chars().next())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_initials() {
        assert_eq!(initials("ada lovelace"), "AL");
        assert_eq!(initials("  grace  brewster hopper "), "GBH");
        assert_eq!(initials(""), "");
    }
}
