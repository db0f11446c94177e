/// Appends a copy of the first element to the end and returns it.
pub fn repeat_first(v: &mut Vec<String>) -> Option<String> {
    let first = v.first()?;
    v.push(first.clone());
    Some(first.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_first() {
        let mut v = vec!["a".to_string(), "b".to_string()];
        assert_eq!(repeat_first(&mut v), Some("a".to_string()));
        assert_eq!(v, vec!["a", "b", "a"]);
        let mut empty: Vec<String> = Vec::new();
        assert_eq!(repeat_first(&mut empty), None);
        assert!(empty.is_empty());
    }
}
