/// The first even number, or an error message if there is none.
pub fn first_even(v: &[i32]) -> Result<i32, String> {
    let x = v.iter().find(|x| *x % 2 == 0)?;
    Ok(*x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_even() {
        assert_eq!(first_even(&[3, 8, 4]), Ok(8));
        assert!(first_even(&[1, 3]).is_err());
        assert!(first_even(&[]).is_err());
    }
}
