// A hostile build script: looks for credentials in its environment and
// tries to reach the network (a port the test listens on, read from a file
// because the environment is scrubbed). It reports what it found as
// cargo warnings and fails the build if it found a secret.
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn main() {
    let leaked: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| {
            let u = k.to_uppercase();
            u.contains("KEY") || u.contains("TOKEN") || u.contains("SECRET") || u.contains("PASSWORD")
        })
        .collect();
    println!("cargo:warning=probe-secrets:{}", leaked.join(","));
    if let Ok(port) = std::fs::read_to_string("port.txt") {
        let addr: SocketAddr = format!("127.0.0.1:{}", port.trim()).parse().unwrap();
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(_) => println!("cargo:warning=probe-network:connected"),
            Err(e) => println!("cargo:warning=probe-network:failed:{}", e.kind() as u8),
        }
    }
    println!("cargo:rerun-if-changed=port.txt");
    if !leaked.is_empty() {
        panic!("secrets visible to the build script: {}", leaked.join(","));
    }
}
