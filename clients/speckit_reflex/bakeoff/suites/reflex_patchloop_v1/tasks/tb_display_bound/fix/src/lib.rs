/// Joins the items into a comma-separated list.
pub fn join_all<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| format!("{}", i))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins() {
        assert_eq!(join_all(&[1, 2, 3]), "1, 2, 3");
        assert_eq!(join_all(&["a"]), "a");
        assert_eq!(join_all::<f64>(&[]), "");
    }
}
