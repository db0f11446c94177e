/// Length of the name, or 0 if there is no name.
pub fn name_len(name: Option<&str>) -> usize {
    match name {
        Some(n) => n.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(name_len(Some("ada")), 3);
        assert_eq!(name_len(None), 0);
    }
}
