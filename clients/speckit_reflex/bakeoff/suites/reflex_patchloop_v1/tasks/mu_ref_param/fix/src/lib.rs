/// Removes all negative numbers in place; returns how many were removed.
pub fn drop_negatives(v: &mut Vec<i32>) -> usize {
    let before = v.len();
    v.retain(|x| *x >= 0);
    before - v.len()
}
