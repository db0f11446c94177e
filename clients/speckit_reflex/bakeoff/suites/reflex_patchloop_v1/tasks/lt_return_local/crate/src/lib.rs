/// Joins the words with '-' and lower-cases the result, e.g. ["Hello", "World"] -> "hello-world".
pub fn slug(words: &[&str]) -> &str {
    let joined = words.join("-").to_lowercase();
    &joined
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_slug() {
        assert_eq!(slug(&["Hello", "World"]), "hello-world");
        assert_eq!(slug(&["one"]), "one");
        assert_eq!(slug(&[]), "");
    }
}
