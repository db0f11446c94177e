use std::fmt::Write;

/// Renders an n x n multiplication table, one row per line.
pub fn table(n: u32) -> String {
    let mut out = String::new();
    for i in 1..=n {
        for j in 1..=n {
            write!(out, "{:4}", i * j).unwrap();
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_table() {
        assert_eq!(table(2), "   1   2\n   2   4\n");
        assert_eq!(table(0), "");
    }
}
