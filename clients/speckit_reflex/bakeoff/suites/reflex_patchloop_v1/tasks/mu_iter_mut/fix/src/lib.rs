/// Doubles every value in place and returns the new total.
pub fn double_all(values: &mut Vec<i32>) -> i32 {
    for v in values.iter_mut() {
        *v *= 2;
    }
    values.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles() {
        let mut v = vec![1, -2, 5];
        assert_eq!(double_all(&mut v), 8);
        assert_eq!(v, vec![2, -4, 10]);
    }
}
