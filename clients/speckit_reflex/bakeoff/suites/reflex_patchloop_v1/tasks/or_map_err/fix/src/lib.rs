#[derive(Debug, PartialEq)]
pub struct Addr {
    pub host: String,
    pub port: u16,
}

/// Parses "host:port".
pub fn parse_addr(s: &str) -> Result<Addr, String> {
    let (host, port) = s.split_once(':').ok_or("missing ':'")?;
    let port: u16 = port.parse().map_err(|e: std::num::ParseIntError| e.to_string())?;
    Ok(Addr { host: host.to_string(), port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addr() {
        let a = parse_addr("localhost:8080").unwrap();
        assert_eq!(a, Addr { host: "localhost".to_string(), port: 8080 });
        assert_eq!(parse_addr("nocolon"), Err("missing ':'".to_string()));
        assert!(parse_addr("h:99999").is_err());
        assert!(parse_addr("h:abc").is_err());
    }
}
