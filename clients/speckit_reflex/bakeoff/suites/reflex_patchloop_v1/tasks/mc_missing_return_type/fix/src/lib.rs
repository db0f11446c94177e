/// Cube of `x`.
pub fn cube(x: i64) -> i64 {
    x * x * x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubes() {
        assert_eq!(cube(3), 27);
        assert_eq!(cube(-2), -8);
    }
}
