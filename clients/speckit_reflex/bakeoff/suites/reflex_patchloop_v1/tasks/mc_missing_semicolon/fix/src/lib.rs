/// Length of the hypotenuse of a right triangle.
pub fn hypot(a: f64, b: f64) -> f64 {
    let sq = a * a + b * b;
    sq.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypotenuse() {
        assert_eq!(hypot(3.0, 4.0), 5.0);
        assert_eq!(hypot(0.0, 2.0), 2.0);
    }
}
