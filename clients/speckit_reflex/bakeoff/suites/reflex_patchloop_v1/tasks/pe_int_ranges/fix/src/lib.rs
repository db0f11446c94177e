/// Letter grade for a percentage score; scores above 100 are invalid and give '?'.
pub fn grade(score: u8) -> char {
    match score {
        90..=100 => 'A',
        80..=89 => 'B',
        70..=79 => 'C',
        0..=69 => 'F',
        _ => '?',
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grades() {
        assert_eq!(grade(100), 'A');
        assert_eq!(grade(85), 'B');
        assert_eq!(grade(70), 'C');
        assert_eq!(grade(3), 'F');
        assert_eq!(grade(101), '?');
        assert_eq!(grade(255), '?');
    }
}
