/// Returns the sum and the number of values.
pub fn sum_and_count(values: Vec<i32>) -> (i32, usize) {
    let mut sum = 0;
    for v in &values {
        sum += v;
    }
    (sum, values.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_counts() {
        assert_eq!(sum_and_count(vec![1, 2, 3, -1]), (5, 4));
        assert_eq!(sum_and_count(vec![]), (0, 0));
    }
}
