use std::collections::HashMap;

#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub row: i32,
    pub col: i32,
}

/// Counts how many times each cell is visited along the path.
pub fn visits(path: &[Cell]) -> HashMap<Cell, u32> {
    let mut m = HashMap::new();
    for c in path {
        *m.entry(*c).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_visits() {
        let a = Cell { row: 0, col: 0 };
        let b = Cell { row: 0, col: 1 };
        let m = visits(&[a, b, a]);
        assert_eq!(m[&a], 2);
        assert_eq!(m[&b], 1);
        assert_eq!(m.len(), 2);
    }
}
