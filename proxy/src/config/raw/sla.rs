//! `[sla]`: the downtime the SLA allows per year and what makes a minute bad,
//! with the small duration syntax `allowed_downtime` is written in.

use std::time::Duration;

use serde::Deserialize;

use super::problems::Problems;
use crate::config::{SlaCfg, defaults as d};

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawSla {
    allowed_downtime: Option<String>,
    bad_minute_ratio: Option<f64>,
}

impl RawSla {
    pub(super) fn validate(self, p: &mut Problems) -> SlaCfg {
        let text = self
            .allowed_downtime
            .unwrap_or_else(|| d::SLA_ALLOWED.to_string());
        let allowed_downtime = parse_duration(&text).unwrap_or_else(|| {
            p.push(
                "sla.allowed_downtime",
                format!("{text:?} is not a duration like \"20m\", \"1h\" or \"90s\""),
            );
            parse_duration(d::SLA_ALLOWED).expect("the default is a duration")
        });
        SlaCfg {
            allowed_downtime,
            bad_minute_ratio: p.ratio(
                "sla.bad_minute_ratio",
                self.bad_minute_ratio,
                d::SLA_BAD_MINUTE_RATIO,
            ),
        }
    }
}

/// "20m", "1h", "90s", "1h30m", "500ms": a small, strict duration syntax.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            "d" => Duration::from_secs(n.checked_mul(86_400)?),
            _ => return None,
        };
        total = total.checked_add(unit)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}
