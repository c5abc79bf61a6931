//! The problems of one file, collected while each section validates, and the
//! value checks the sections share (addresses, durations, counts, ratios).
//! A failed check records its problem and yields a usable stand-in, so the
//! validation goes on and reports every problem at once.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Problem;

#[derive(Default)]
pub(super) struct Problems(Vec<Problem>);

impl Problems {
    pub(super) fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            line: None,
            message: message.into(),
        });
    }

    /// The list itself, for a section validated outside this module (`config::tls`).
    pub(super) fn list(&mut self) -> &mut Vec<Problem> {
        &mut self.0
    }

    /// Every problem found, or nothing when the file is valid.
    pub(super) fn finish(self) -> Result<(), Vec<Problem>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }

    pub(super) fn addr(&mut self, key: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let text = value.unwrap_or(default);
        match text.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                self.push(
                    key,
                    format!("{text:?} is not an IP address with a port, like \"127.0.0.1:8080\""),
                );
                default.parse().expect("defaults are valid addresses")
            }
        }
    }

    pub(super) fn millis(&mut self, key: &str, value: Option<u64>, default: u64) -> Duration {
        let ms = value.unwrap_or(default);
        if ms == 0 {
            self.push(key, "must be at least 1 millisecond");
        }
        Duration::from_millis(ms.max(1))
    }

    pub(super) fn at_least_one<T: Copy + PartialOrd + From<u8>>(
        &mut self,
        key: &str,
        value: Option<T>,
        default: T,
    ) -> T {
        let v = value.unwrap_or(default);
        if v < T::from(1) {
            self.push(key, "must be at least 1");
            return default;
        }
        v
    }

    pub(super) fn ratio(&mut self, key: &str, value: Option<f64>, default: f64) -> f64 {
        let r = value.unwrap_or(default);
        if !(0.0..=1.0).contains(&r) {
            self.push(key, "a ratio between 0 and 1, like 0.02 for 2%");
            return default;
        }
        r
    }
}
