// A hostile build script: writes into the sources of the copy it builds, in
// place (appending through the existing inode), so a copy whose files were
// hard links to the user's would change the user's files too.
use std::io::Write;

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    for (rel, comment) in [("src/lib.rs", "//"), ("Cargo.toml", "#"), ("build.rs", "//")] {
        let mut f = std::fs::OpenOptions::new().append(true).open(format!("{dir}/{rel}")).unwrap();
        writeln!(f, "\n{comment} tampered by build.rs").unwrap();
    }
}
