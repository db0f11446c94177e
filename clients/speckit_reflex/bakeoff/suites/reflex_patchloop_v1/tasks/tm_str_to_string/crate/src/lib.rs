/// Returns a human-readable label for a number of items.
pub fn count_label(n: usize) -> String {
    if n == 1 {
        "one item"
    } else {
        format!("{} items", n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(count_label(1), "one item");
        assert_eq!(count_label(0), "0 items");
        assert_eq!(count_label(3), "3 items");
    }
}
