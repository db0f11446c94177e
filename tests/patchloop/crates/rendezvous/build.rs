// A build that proves it overlaps another: it says it has arrived (a file in
// its own OUT_DIR, the one place a sandboxed build surely may write) and waits
// for the test to answer "go", which the test does only once two builds have
// arrived. Builds run one after another would never both arrive.
use std::{env, fs, path::Path, thread, time::{Duration, Instant}};

fn main() {
    let out = env::var("OUT_DIR").unwrap();
    fs::write(Path::new(&out).join("arrived"), b"").unwrap();
    let start = Instant::now();
    while !Path::new(&out).join("go").exists() {
        if start.elapsed() > Duration::from_secs(60) {
            panic!("no other build ran at the same time");
        }
        thread::sleep(Duration::from_millis(10));
    }
    println!("cargo:rerun-if-changed=build.rs");
}
