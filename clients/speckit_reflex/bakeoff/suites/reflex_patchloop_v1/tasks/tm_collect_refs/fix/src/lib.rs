use std::collections::BTreeMap;

/// The map's entries in key order, as owned pairs.
pub fn entries(map: &BTreeMap<String, u32>) -> Vec<(String, u32)> {
    map.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_entries() {
        let mut m = BTreeMap::new();
        m.insert("b".to_string(), 2);
        m.insert("a".to_string(), 1);
        assert_eq!(entries(&m), vec![("a".to_string(), 1), ("b".to_string(), 2)]);
        assert!(entries(&BTreeMap::new()).is_empty());
    }
}
