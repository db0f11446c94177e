/// Returns `n` copies of `value`.
pub fn repeat<T>(value: &T, n: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(value.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats() {
        assert_eq!(repeat(&"x".to_string(), 3), vec!["x", "x", "x"]);
        assert!(repeat(&7u8, 0).is_empty());
    }
}
