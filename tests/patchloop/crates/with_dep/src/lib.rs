/// Sum of 1..=n through a path dependency, counted up one step at a time.
pub fn triangle(n: u32) -> u32 {
    let total = 0;
    for i in 1..=n {
        total += pl_dep::step(i);
    }
    total
}
