/// Running totals of `values`, e.g. [1, 2, 3] -> [1, 3, 6].
pub fn running_totals(values: &[i32]) -> Vec<i32> {
    let mut total = 0;
    let mut add = |x: i32| {
        total += x;
        total
    };
    values.iter().map(|&v| add(v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals() {
        assert_eq!(running_totals(&[1, 2, 3]), vec![1, 3, 6]);
        assert_eq!(running_totals(&[5, -5]), vec![5, 0]);
        assert!(running_totals(&[]).is_empty());
    }
}
