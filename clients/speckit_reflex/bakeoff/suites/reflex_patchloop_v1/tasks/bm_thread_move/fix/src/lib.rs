use std::thread;

/// Sums the data, one thread per chunk of `chunk` elements.
pub fn parallel_sum(data: &[u64], chunk: usize) -> u64 {
    let mut handles = Vec::new();
    for part in data.chunks(chunk.max(1)) {
        let part = part.to_vec();
        handles.push(thread::spawn(move || part.iter().sum::<u64>()));
    }
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_in_parallel() {
        let data: Vec<u64> = (1..=100).collect();
        assert_eq!(parallel_sum(&data, 7), 5050);
        assert_eq!(parallel_sum(&data, 0), 5050);
        assert_eq!(parallel_sum(&[], 3), 0);
    }
}
