mod geometry {
    pub struct Circle {
        pub r: f64,
    }

    pub fn area(c: &Circle) -> f64 {
        std::f64::consts::PI * c.r * c.r
    }
}

pub use geometry::Circle;

/// Total area of all circles.
pub fn total_area(circles: &[Circle]) -> f64 {
    circles.iter().map(geometry::area).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_areas() {
        let a = total_area(&[Circle { r: 1.0 }, Circle { r: 2.0 }]);
        assert!((a - 5.0 * std::f64::consts::PI).abs() < 1e-9);
        assert_eq!(total_area(&[]), 0.0);
    }
}
