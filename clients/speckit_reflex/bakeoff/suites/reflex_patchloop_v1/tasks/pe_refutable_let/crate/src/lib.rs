/// The first word of `s` in upper case, or an empty string if there is none.
pub fn shout_first(s: &str) -> String {
    let Some(w) = s.split_whitespace().next();
    w.to_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shouts() {
        assert_eq!(shout_first("hello there"), "HELLO");
        assert_eq!(shout_first("   "), "");
    }
}
