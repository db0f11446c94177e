use std::sync::Arc;
use std::sync::Mutex;
use std::thread;

/// Increments a shared counter once from each of `n` threads.
pub fn count_in_threads(n: usize) -> usize {
    let counter = Arc::new(Mutex::new(0usize));
    let mut handles = Vec::new();
    for _ in 0..n {
        let c = Arc::clone(&counter);
        handles.push(thread::spawn(move || {
            *c.lock().unwrap() += 1;
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    let total = *counter.lock().unwrap();
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_across_threads() {
        assert_eq!(count_in_threads(8), 8);
        assert_eq!(count_in_threads(0), 0);
    }
}
