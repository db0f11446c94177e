/// Iterates over the even values of `v`.
pub fn evens(v: &[i32]) -> impl Iterator<Item = i32> + '_ {
    v.iter().copied().filter(|x| x % 2 == 0)
}

/// Sum of the even values.
pub fn even_sum(v: &[i32]) -> i32 {
    evens(v).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_evens() {
        let v = vec![1, 2, 3, 4, -6];
        assert_eq!(evens(&v).collect::<Vec<_>>(), vec![2, 4, -6]);
        assert_eq!(even_sum(&v), 0);
        assert_eq!(even_sum(&[1, 3]), 0);
    }
}
