/// What a driver should do: "stop" at a red light, "wait" for a pedestrian
/// crossing on green, otherwise "go".
pub fn action(red_light: bool, pedestrian: bool) -> &'static str {
    match (red_light, pedestrian) {
        (true, _) => "stop",
        (false, true) => "wait",
        (false, false) => "go",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions() {
        assert_eq!(action(true, true), "stop");
        assert_eq!(action(true, false), "stop");
        assert_eq!(action(false, true), "wait");
        assert_eq!(action(false, false), "go");
    }
}
