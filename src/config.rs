//! Reading a process's configuration so that one run reports every problem in it, not only the
//! first.

use std::fmt;

/// The exit code of a process whose configuration is wrong (`EX_USAGE` of sysexits.h).
pub const EXIT_USAGE: u8 = 64;

/// Every problem found in a configuration, in the order found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems(Vec<String>);

impl Problems {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes a problem: what is wrong and what to set instead.
    pub fn push(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    /// The value of `result`, or `None` with its error noted.
    pub fn take<T, E: fmt::Display>(&mut self, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.push(e.to_string());
                None
            }
        }
    }

    /// Whether nothing was noted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems, in the order found.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// `value` when nothing was noted, else every problem.
    pub fn or_value<T>(self, value: T) -> Result<T, Problems> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

/// "the configuration has 2 problems:" and one indented line each.
impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "the configuration has a problem: {one}"),
            all => {
                write!(f, "the configuration has {} problems:", all.len())?;
                for problem in all {
                    write!(f, "\n  {problem}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Problems {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_kept_and_told() {
        let mut problems = Problems::new();
        assert_eq!(problems.take(Ok::<u8, String>(3)), Some(3));
        assert!(problems.is_empty());
        assert_eq!(problems.take("x".parse::<u8>()), None);
        problems.push("TASKWIRE_REPLICAS=\"9\" must be from 1 to 5");
        assert_eq!(problems.iter().count(), 2);
        let told = problems
            .clone()
            .or_value(())
            .expect_err("two problems")
            .to_string();
        assert!(
            told.starts_with("the configuration has 2 problems:"),
            "{told}"
        );
        assert!(told.contains("\n  TASKWIRE_REPLICAS"), "{told}");
        let mut one = Problems::new();
        one.push("A=1 is wrong");
        assert_eq!(
            one.to_string(),
            "the configuration has a problem: A=1 is wrong"
        );
        assert_eq!(Problems::new().or_value(7), Ok(7));
    }
}
