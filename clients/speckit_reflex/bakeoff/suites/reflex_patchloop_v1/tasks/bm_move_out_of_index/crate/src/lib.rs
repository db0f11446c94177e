pub struct Person {
    pub name: String,
    pub age: u32,
}

/// Name of the oldest person (first one on ties), or "" if there is nobody.
pub fn oldest_name(people: &[Person]) -> String {
    if people.is_empty() {
        return String::new();
    }
    let mut best = 0;
    for (i, p) in people.iter().enumerate() {
        if p.age > people[best].age {
            best = i;
        }
    }
    people[best].name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, age: u32) -> Person {
        Person { name: name.to_string(), age }
    }

    #[test]
    fn finds_oldest() {
        assert_eq!(oldest_name(&[p("ann", 30), p("bob", 41), p("cy", 41)]), "bob");
        assert_eq!(oldest_name(&[]), "");
    }
}
