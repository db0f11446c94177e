/// A cursor that walks over the words of a borrowed string.
pub struct Cursor {
    input: &str,
    pos: usize,
}

impl Cursor<'_> {
    pub fn new(input: &str) -> Cursor<'_> {
        Cursor { input, pos: 0 }
    }

    /// Returns the next whitespace-separated word, if any.
    pub fn next_word(&mut self) -> Option<&str> {
        let rest = &self.input[self.pos..];
        let start = rest.find(|c: char| !c.is_whitespace())?;
        let len = rest[start..].find(char::is_whitespace).unwrap_or(rest.len() - start);
        self.pos += start + len;
        Some(&rest[start..start + len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_words() {
        let mut c = Cursor::new("  alpha beta\tgamma ");
        assert_eq!(c.next_word(), Some("alpha"));
        assert_eq!(c.next_word(), Some("beta"));
        assert_eq!(c.next_word(), Some("gamma"));
        assert_eq!(c.next_word(), None);
    }
}
