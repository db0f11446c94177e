/// Sum of the byte values of `s`.
pub fn byte_sum(s: &str) -> u32 {
    let mut total: u32 = 0;
    for b in s.bytes() {
        total += b as u32;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_bytes() {
        assert_eq!(byte_sum("AB"), 131);
        assert_eq!(byte_sum(&"\u{7f}".repeat(10)), 1270);
        assert_eq!(byte_sum(""), 0);
    }
}
