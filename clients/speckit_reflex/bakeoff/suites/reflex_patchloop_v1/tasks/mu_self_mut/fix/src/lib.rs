pub struct Ticker {
    n: u32,
}

impl Ticker {
    pub fn new() -> Self {
        Ticker { n: 0 }
    }

    /// Advances the ticker and returns the new value.
    pub fn tick(&mut self) -> u32 {
        self.n += 1;
        self.n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks() {
        let mut t = Ticker::new();
        assert_eq!(t.tick(), 1);
        assert_eq!(t.tick(), 2);
    }
}
