/// Converts degrees Celsius to Fahrenheit.
pub fn to_fahrenheit(c: f64) -> f64 {
    c * 9.0 / 5.0 + 32.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts() {
        assert_eq!(to_fahrenheit(100.0), 212.0);
        assert_eq!(to_fahrenheit(-40.0), -40.0);
    }
}
