#[derive(Debug, PartialEq, Clone, Copy)]
pub struct Rgb(pub u8, pub u8, pub u8);

/// A grey colour with every channel set to `level`.
pub fn grey(level: u8) -> Rgb {
    Rgb(level, level, level)
}

/// Inverts every channel.
pub fn invert(c: Rgb) -> Rgb {
    Rgb(255 - c.0, 255 - c.1, 255 - c.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greys() {
        assert_eq!(grey(7), Rgb(7, 7, 7));
        assert_eq!(invert(grey(5)), Rgb(250, 250, 250));
    }
}
