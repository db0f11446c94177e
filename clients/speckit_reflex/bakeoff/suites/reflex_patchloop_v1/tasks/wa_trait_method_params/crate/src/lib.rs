pub trait Shape {
    fn area(&self) -> f64;
}

pub struct Rect {
    pub w: f64,
    pub h: f64,
}

impl Shape for Rect {
    fn area(&self, scale: f64) -> f64 {
        self.w * self.h * scale
    }
}

/// Area of the largest shape, or 0.0 if there are none.
pub fn max_area(shapes: &[Rect]) -> f64 {
    shapes.iter().map(|s| s.area()).fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_area() {
        let rs = [Rect { w: 2.0, h: 3.0 }, Rect { w: 1.0, h: 10.0 }];
        assert_eq!(rs[0].area(), 6.0);
        assert_eq!(max_area(&rs), 10.0);
        assert_eq!(max_area(&[]), 0.0);
    }
}
