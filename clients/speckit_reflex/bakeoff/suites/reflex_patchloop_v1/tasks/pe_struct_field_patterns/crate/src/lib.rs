pub enum Cmd {
    Move { dx: i32, dy: i32 },
    Say(String),
    Quit,
}

/// Runs the commands from (0, 0): Move shifts the position by (dx, dy), Say
/// records the text, Quit stops. Returns the final position and what was said.
pub fn run(cmds: &[Cmd]) -> (i32, i32, Vec<String>) {
    let (mut x, mut y, mut said) = (0, 0, Vec::new());
    for c in cmds {
        match c {
            Cmd::Move { dx, dy: 0 } => x += dx,
            Cmd::Move { dx: 0, dy } => y += dy,
            Cmd::Say(s) => said.push(s.clone()),
            Cmd::Quit => break,
        }
    }
    (x, y, said)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_commands() {
        let cmds = vec![
            Cmd::Move { dx: 2, dy: 0 },
            Cmd::Move { dx: 0, dy: -1 },
            Cmd::Move { dx: 3, dy: 4 },
            Cmd::Say("hi".to_string()),
            Cmd::Quit,
            Cmd::Move { dx: 100, dy: 100 },
        ];
        assert_eq!(run(&cmds), (5, 3, vec!["hi".to_string()]));
    }
}
