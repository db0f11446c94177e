use std::collections::HashMap;

/// Stock level of `item` after adding `n`; unknown items start at 0.
pub fn restock(stock: &HashMap<String, u32>, item: &str, n: u32) -> u32 {
    stock.get(item).copied().unwrap_or(0) + n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restocks() {
        let mut s = HashMap::new();
        s.insert("pen".to_string(), 4);
        assert_eq!(restock(&s, "pen", 3), 7);
        assert_eq!(restock(&s, "ink", 2), 2);
    }
}
