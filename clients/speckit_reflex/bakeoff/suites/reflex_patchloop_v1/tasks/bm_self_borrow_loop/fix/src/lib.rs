pub struct Inventory {
    items: Vec<String>,
    log: Vec<String>,
}

impl Inventory {
    pub fn new() -> Self {
        Inventory { items: Vec::new(), log: Vec::new() }
    }

    pub fn add(&mut self, item: &str) {
        self.items.push(item.to_string());
    }

    fn record(&mut self, msg: &str) {
        self.log.push(format!("seen {}", msg));
    }

    /// Records every item in the log; returns the log length.
    pub fn audit(&mut self) -> usize {
        for item in self.items.clone() {
            self.record(&item);
        }
        self.log.len()
    }

    pub fn log(&self) -> &[String] {
        &self.log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audits_items() {
        let mut inv = Inventory::new();
        inv.add("bolt");
        inv.add("nut");
        assert_eq!(inv.audit(), 2);
        assert_eq!(inv.log(), ["seen bolt", "seen nut"]);
    }
}
