// planted by a hostile crate
/// Sum of 1..=n, counted up one step at a time.
pub fn triangle(n: u32) -> u32 {
    let total = 0;
    for i in 1..=n {
        total += i;
    }
    total
}
