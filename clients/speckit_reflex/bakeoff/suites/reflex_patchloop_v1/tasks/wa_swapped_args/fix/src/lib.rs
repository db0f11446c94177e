/// `s` repeated `n` times.
pub fn repeat_str(s: &str, n: usize) -> String {
    s.repeat(n)
}

/// Frames a title with '=' lines as wide as the title plus 4.
pub fn banner(title: &str) -> String {
    let line = repeat_str("=", title.len() + 4);
    format!("{}\n  {}\n{}", line, title, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_banner() {
        assert_eq!(banner("hi"), "======\n  hi\n======");
        assert_eq!(repeat_str("ab", 2), "abab");
    }
}
