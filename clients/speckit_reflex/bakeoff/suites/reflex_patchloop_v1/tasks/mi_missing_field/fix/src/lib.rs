pub struct Counter {
    name: String,
    hits: u32,
}

impl Counter {
    pub fn new(name: &str) -> Self {
        Counter { name: name.to_string(), hits: 0 }
    }

    /// Records one hit and returns the new total.
    pub fn hit(&mut self) -> u32 {
        self.hits += 1;
        self.hits
    }

    pub fn describe(&self) -> String {
        format!("{}: {}", self.name, self.hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_hits() {
        let mut c = Counter::new("home");
        assert_eq!(c.describe(), "home: 0");
        assert_eq!(c.hit(), 1);
        assert_eq!(c.hit(), 2);
        assert_eq!(c.describe(), "home: 2");
    }
}
