#[derive(Debug, PartialEq)]
pub struct Report {
    pub title: String,
    pub lines: Vec<String>,
}

/// Builds a report and also returns the title that was used.
pub fn make_report(title: String, lines: Vec<String>) -> (Report, String) {
    let report = Report { title, lines };
    (report, title)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_report_and_title() {
        let (r, t) = make_report("Q3".to_string(), vec!["ok".to_string()]);
        assert_eq!(t, "Q3");
        assert_eq!(r.title, "Q3");
        assert_eq!(r.lines, vec!["ok".to_string()]);
    }
}
