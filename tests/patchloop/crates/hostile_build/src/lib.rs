include!(concat!(env!("OUT_DIR"), "/report.rs"));
