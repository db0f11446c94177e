/// Formats a price in cents as dollars, e.g. 1234 -> "$12.34".
pub fn dollars(cents: u64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}

/// Formats the total of all prices.
pub fn total_label(prices: &[u64]) -> String {
    let total: u64 = prices.iter().sum();
    format!("total {}", dollars(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_total() {
        assert_eq!(dollars(1234), "$12.34");
        assert_eq!(total_label(&[100, 5]), "total $1.05");
        assert_eq!(total_label(&[]), "total $0.00");
    }
}
