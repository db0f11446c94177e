pub struct Celsius(pub f64);

impl fmt::Display for Celsius {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{:.1} C", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays() {
        assert_eq!(Celsius(21.456).to_string(), "21.5 C");
        assert_eq!(format!("{}", Celsius(-3.0)), "-3.0 C");
    }
}
