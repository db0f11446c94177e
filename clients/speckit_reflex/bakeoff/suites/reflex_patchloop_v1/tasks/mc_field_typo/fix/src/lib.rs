pub struct Rect {
    pub width: u32,
    pub height: u32,
}

impl Rect {
    /// Perimeter of the rectangle.
    pub fn perimeter(&self) -> u32 {
        2 * (self.width + self.height)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perimeter() {
        assert_eq!(Rect { width: 2, height: 5 }.perimeter(), 14);
    }
}
