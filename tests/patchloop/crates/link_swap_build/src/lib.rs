#[path = "payload/victim.rs"]
mod victim;
pub use victim::triangle;
