use std::ops::Add;

/// Sums the items, starting from `zero`.
pub fn sum_all<T: Copy + Add<Output = T>>(items: &[T], zero: T) -> T {
    let mut acc = zero;
    for &x in items {
        acc = acc + x;
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_generic() {
        assert_eq!(sum_all(&[1, 2, 3], 0), 6);
        assert_eq!(sum_all(&[0.5, 0.25], 1.0), 1.75);
        assert_eq!(sum_all::<u8>(&[], 7), 7);
    }
}
