mod shapes;

pub use shapes::Square;

/// Anything with an area.
pub trait Shape {
    fn area(&self) -> f64;
}

/// Sum of the areas of all shapes.
pub fn total_area(shapes: &[&dyn Shape]) -> f64 {
    shapes.iter().map(|s| s.area()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_squares() {
        let a = Square { side: 2.0 };
        let b = Square { side: 3.0 };
        assert_eq!(total_area(&[&a, &b]), 13.0);
    }
}
