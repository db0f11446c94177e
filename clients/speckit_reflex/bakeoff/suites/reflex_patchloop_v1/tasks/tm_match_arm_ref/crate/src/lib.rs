pub enum Token {
    Num(i64),
    Word(String),
    Comma,
}

/// Renders tokens back into text, separated by single spaces.
pub fn render(tokens: &[Token]) -> String {
    let parts: Vec<String> = tokens
        .iter()
        .map(|t| match t {
            Token::Num(n) => n.to_string(),
            Token::Word(w) => w,
            Token::Comma => ",".to_string(),
        })
        .collect();
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_tokens() {
        let toks = vec![Token::Word("x".into()), Token::Comma, Token::Num(-4)];
        assert_eq!(render(&toks), "x , -4");
        assert_eq!(render(&[]), "");
    }
}
