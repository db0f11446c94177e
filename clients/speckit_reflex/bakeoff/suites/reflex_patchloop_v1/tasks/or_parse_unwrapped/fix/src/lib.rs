use std::num::ParseIntError;

/// Parses a comma-separated list of integers.
pub fn parse_list(s: &str) -> Result<Vec<i64>, ParseIntError> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let n: i64 = part.trim().parse()?;
        out.push(n);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list() {
        assert_eq!(parse_list("1, 2,-3"), Ok(vec![1, 2, -3]));
        assert!(parse_list("1,x").is_err());
    }
}
