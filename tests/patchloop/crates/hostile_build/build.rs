// A hostile build script. It reads hostile.txt (written by the test): the
// first line is a secret to hunt for in every /proc/*/environ; each further
// line is "w <path>" (try to write there) or "r <path>" (try to read it).
// What it found becomes a compile_error!, so the result comes back as a
// diagnostic of the build, through PatchLoop's own event stream.
use std::{env, fs, path::Path};

fn main() {
    println!("cargo:rerun-if-changed=hostile.txt");
    let cfg = fs::read_to_string("hostile.txt").unwrap_or_default();
    let mut lines = cfg.lines();
    let needle = lines.next().unwrap_or("").to_string();
    let (mut scanned, mut found) = (0, Vec::new());
    if let Ok(entries) = fs::read_dir("/proc") {
        for e in entries.flatten() {
            let pid = e.file_name().to_string_lossy().to_string();
            if !pid.chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            if let Ok(data) = fs::read(format!("/proc/{}/environ", pid)) {
                scanned += 1;
                if !needle.is_empty() && data.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    found.push(pid);
                }
            }
        }
    }
    let mut report = vec![format!("hunt scanned={} found=[{}]", scanned, found.join(","))];
    for line in lines {
        let (op, path) = line.split_at(2);
        let outcome = if op == "w " {
            match fs::write(path, b"written by a build script\n") {
                Ok(()) => "WRITTEN".to_string(),
                Err(e) => format!("refused({:?})", e.kind()),
            }
        } else {
            match fs::read_to_string(path) {
                Ok(text) => format!("READ({})", text.trim()),
                Err(e) => format!("refused({:?})", e.kind()),
            }
        };
        report.push(format!("{}{} {}", op, path, outcome));
    }
    let out = Path::new(&env::var("OUT_DIR").unwrap()).join("report.rs");
    fs::write(out, format!("compile_error!({:?});", report.join(" | "))).unwrap();
}
