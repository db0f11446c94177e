/// Area of a w x h rectangle.
pub fn rect_area(w: u32, h: u32) -> u32 {
    w * h
}

/// Area of a square with the given side.
pub fn square_area(side: u32) -> u32 {
    rect_area(side, side)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn areas() {
        assert_eq!(rect_area(2, 5), 10);
        assert_eq!(square_area(4), 16);
        assert_eq!(square_area(0), 0);
    }
}
