pub enum Coin {
    Penny,
    Nickel,
    Dime,
    Quarter,
}

/// Value of a coin in US cents.
pub fn cents(c: &Coin) -> u32 {
    match c {
        Coin::Penny => 1,
        Coin::Nickel => 5,
        Coin::Dime => 10,
        Coin::Quarter => 25,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        let purse = [Coin::Penny, Coin::Nickel, Coin::Dime, Coin::Quarter];
        assert_eq!(purse.iter().map(cents).sum::<u32>(), 41);
    }
}
