use std::collections::HashMap;

pub struct Bank {
    accounts: HashMap<String, i64>,
}

impl Bank {
    pub fn new() -> Self {
        Bank { accounts: HashMap::new() }
    }

    pub fn open(&mut self, name: &str) {
        self.accounts.insert(name.to_string(), 0);
    }

    /// Adds `amount` to the account; returns false if the account does not exist.
    pub fn deposit(&mut self, name: &str, amount: i64) -> bool {
        match self.accounts.get(name) {
            Some(balance) => {
                *balance += amount;
                true
            }
            None => false,
        }
    }

    pub fn balance(&self, name: &str) -> Option<i64> {
        self.accounts.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deposits() {
        let mut b = Bank::new();
        b.open("ann");
        assert!(b.deposit("ann", 50));
        assert!(b.deposit("ann", -20));
        assert!(!b.deposit("bob", 10));
        assert_eq!(b.balance("ann"), Some(30));
        assert_eq!(b.balance("bob"), None);
    }
}
