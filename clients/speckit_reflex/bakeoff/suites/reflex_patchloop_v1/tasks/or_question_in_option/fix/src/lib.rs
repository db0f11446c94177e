/// Parses "WxH" (e.g. "3x4") and returns the area, or None if malformed.
pub fn area(spec: &str) -> Option<u32> {
    let (w, h) = spec.split_once('x')?;
    let w: u32 = w.trim().parse().ok()?;
    let h: u32 = h.trim().parse().ok()?;
    Some(w * h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_area() {
        assert_eq!(area("3x4"), Some(12));
        assert_eq!(area(" 10 x 2"), Some(20));
        assert_eq!(area("3by4"), None);
        assert_eq!(area("ax4"), None);
    }
}
