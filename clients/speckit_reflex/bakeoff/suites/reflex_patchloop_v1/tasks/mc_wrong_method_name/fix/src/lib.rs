/// Describes how many names there are.
pub fn headcount(names: &Vec<String>) -> String {
    match names.len() {
        0 => "nobody".to_string(),
        1 => "one person".to_string(),
        n => format!("{} people", n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_heads() {
        assert_eq!(headcount(&vec![]), "nobody");
        assert_eq!(headcount(&vec!["a".to_string()]), "one person");
        assert_eq!(headcount(&vec!["a".to_string(), "b".to_string()]), "2 people");
    }
}
