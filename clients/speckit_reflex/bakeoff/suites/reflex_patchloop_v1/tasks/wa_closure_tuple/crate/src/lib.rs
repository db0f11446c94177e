/// Multiplies each pair and returns the products.
pub fn products(pairs: &[(i32, i32)]) -> Vec<i32> {
    pairs.iter().map(|a, b| a * b).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiplies_pairs() {
        assert_eq!(products(&[(2, 3), (-1, 4), (0, 9)]), vec![6, -4, 0]);
        assert!(products(&[]).is_empty());
    }
}
