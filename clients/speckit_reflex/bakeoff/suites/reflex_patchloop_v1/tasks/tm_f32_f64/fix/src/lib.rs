/// Scales every sample in place by `factor`.
pub fn scale(samples: &mut [f32], factor: f64) {
    for s in samples.iter_mut() {
        *s *= factor as f32;
    }
}

/// Largest absolute sample value.
pub fn peak(samples: &[f32]) -> f32 {
    samples.iter().fold(0.0, |m, s| m.max(s.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_samples() {
        let mut s = [0.5f32, -1.0, 0.25];
        scale(&mut s, 2.0);
        assert_eq!(s, [1.0, -2.0, 0.5]);
        assert_eq!(peak(&s), 2.0);
    }
}
