/// Doubles the integer written in `input`.
fn double(input: &str) -> i64 {
    let n: i64 = input.trim().parse()?;
    n * 2
}

fn main() {
    println!("{}", double("21"));
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
