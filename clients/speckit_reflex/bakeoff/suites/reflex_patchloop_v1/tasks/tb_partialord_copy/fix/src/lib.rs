/// Returns the largest element of a non-empty slice.
pub fn largest<T: PartialOrd + Copy>(items: &[T]) -> T {
    let mut best = items[0];
    for &item in items {
        if item > best {
            best = item;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_largest() {
        assert_eq!(largest(&[3, 9, -2, 9, 4]), 9);
        assert_eq!(largest(&[1.5, -0.5]), 1.5);
        assert_eq!(largest(&['q', 'z', 'a']), 'z');
    }
}
