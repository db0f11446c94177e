const LIMIT: usize = 3;

/// At most LIMIT leading items of `v`.
pub fn head(v: &[u32]) -> Vec<u32> {
    v.iter().take(LIMIT).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_head() {
        assert_eq!(head(&[9, 8, 7, 6]), vec![9, 8, 7]);
        assert_eq!(head(&[1]), vec![1]);
    }
}
