/// The element `offset` places from the end (offset 1 = last), if it exists.
pub fn from_end(v: &[char], offset: i32) -> Option<char> {
    let idx = v.len() as i32 - offset;
    if offset < 1 || idx < 0 {
        return None;
    }
    Some(v[idx])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_from_end() {
        let v = ['a', 'b', 'c'];
        assert_eq!(from_end(&v, 1), Some('c'));
        assert_eq!(from_end(&v, 3), Some('a'));
        assert_eq!(from_end(&v, 4), None);
        assert_eq!(from_end(&v, 0), None);
    }
}
