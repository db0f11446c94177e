pub struct Point {
    pub x: i32,
    pub y: i32,
}

/// Formats a point for a log line.
pub fn describe(p: &Point) -> String {
    format!("at {:?}", p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_point() {
        assert_eq!(describe(&Point { x: 1, y: -2 }), "at Point { x: 1, y: -2 }");
    }
}
