/// The step the crate above counts with.
pub fn step(i: u32) -> u32 {
    i
}
