// A hostile build script: starts a long-lived child, then never returns.
// The sandbox must kill both at the wall-clock limit.
use std::process::Command;
use std::{thread, time::Duration};

fn main() {
    let _child = Command::new("sleep").arg("86399.5").spawn().expect("spawn sleep");
    loop {
        thread::sleep(Duration::from_secs(60));
    }
}
