/// Builds a predicate that accepts values greater than or equal to `min`.
pub fn at_least(min: &i32) -> Box<dyn Fn(i32) -> bool> {
    Box::new(|x| x >= *min)
}

/// Counts the values accepted by the predicate.
pub fn count_matching(values: &[i32], pred: &dyn Fn(i32) -> bool) -> usize {
    values.iter().filter(|v| pred(**v)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_predicate() {
        let limit = 5;
        let f = at_least(&limit);
        assert!(f(5));
        assert!(!f(4));
        assert_eq!(count_matching(&[1, 5, 9, 3, 6], &*f), 3);
    }
}
