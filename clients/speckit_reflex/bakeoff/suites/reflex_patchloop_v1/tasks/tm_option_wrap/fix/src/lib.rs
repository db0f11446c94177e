/// Index of the first negative value, if any.
pub fn first_negative(values: &[i32]) -> Option<usize> {
    for (i, v) in values.iter().enumerate() {
        if *v < 0 {
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_first_negative() {
        assert_eq!(first_negative(&[3, 1, -2, -5]), Some(2));
        assert_eq!(first_negative(&[1, 2]), None);
        assert_eq!(first_negative(&[]), None);
    }
}
