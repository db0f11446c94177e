/// Doubles the integer written in `input`.
fn double(input: &str) -> Result<i64, std::num::ParseIntError> {
    let n: i64 = input.trim().parse()?;
    Ok(n * 2)
}

fn main() {
    match double("21") {
        Ok(v) => println!("{}", v),
        Err(e) => eprintln!("error: {}", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles() {
        assert_eq!(double(" 21 "), Ok(42));
        assert!(double("x").is_err());
    }
}
