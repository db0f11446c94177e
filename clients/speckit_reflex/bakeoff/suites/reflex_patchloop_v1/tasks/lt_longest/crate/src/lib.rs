/// Returns the longer of two strings (the first one on ties).
pub fn longer(a: &str, b: &str) -> &str {
    if b.len() > a.len() {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_longer() {
        assert_eq!(longer("abc", "de"), "abc");
        assert_eq!(longer("ab", "cde"), "cde");
        assert_eq!(longer("xy", "zw"), "xy");
    }
}
