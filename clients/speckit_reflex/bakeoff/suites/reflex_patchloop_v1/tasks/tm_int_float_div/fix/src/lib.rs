/// Arithmetic mean of the values, or 0.0 for an empty slice.
pub fn mean(values: &[i64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let total: i64 = values.iter().sum();
    total as f64 / values.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_mean() {
        assert_eq!(mean(&[]), 0.0);
        assert_eq!(mean(&[2, 4]), 3.0);
        assert!((mean(&[1, 2]) - 1.5).abs() < 1e-12);
        assert_eq!(mean(&[-3, 3, 6]), 2.0);
    }
}
