//! When to retrain, like Sedna's lifelong-learning trigger: enough new samples in the buffer, inside an allowed
//! time-of-day window, checked every period. The watcher remembers which buffer entries the last run saw.

use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// A daily window in UTC, `HH:MM-HH:MM`; it wraps past midnight when the end is before the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    start_minute: u32,
    end_minute: u32,
}

impl TimeWindow {
    pub fn contains(&self, minute_of_day: u32) -> bool {
        if self.start_minute <= self.end_minute {
            (self.start_minute..self.end_minute).contains(&minute_of_day)
        } else {
            minute_of_day >= self.start_minute || minute_of_day < self.end_minute
        }
    }
}

impl FromStr for TimeWindow {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        let minute = |hhmm: &str| -> Result<u32> {
            let (h, m) = hhmm.trim().split_once(':').context("expected HH:MM")?;
            let (h, m): (u32, u32) = (h.parse()?, m.parse()?);
            if h > 23 || m > 59 {
                bail!("{hhmm} is not a time of day");
            }
            Ok(h * 60 + m)
        };
        let (start, end) = text.split_once('-').context("expected HH:MM-HH:MM")?;
        Ok(Self {
            start_minute: minute(start)?,
            end_minute: minute(end)?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TriggerPolicy {
    pub min_new_samples: usize,
    pub window: Option<TimeWindow>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerCheck {
    Retrain { new_samples: usize },
    NotEnoughSamples { new_samples: usize, needed: usize },
    OutsideWindow { new_samples: usize },
}

pub fn check(new_samples: usize, minute_of_day: u32, policy: &TriggerPolicy) -> TriggerCheck {
    if new_samples < policy.min_new_samples.max(1) {
        TriggerCheck::NotEnoughSamples {
            new_samples,
            needed: policy.min_new_samples.max(1),
        }
    } else if policy.window.is_some_and(|w| !w.contains(minute_of_day)) {
        TriggerCheck::OutsideWindow { new_samples }
    } else {
        TriggerCheck::Retrain { new_samples }
    }
}

/// Buffer entries the last retraining run looked at (trained on or held back), by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WatchState {
    pub seen: HashSet<String>,
    pub last_snapshot_id: Option<String>,
}

impl WatchState {
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Ok(Self::default());
        }
        serde_json::from_str(&std::fs::read_to_string(path)?)
            .with_context(|| format!("reading {}", path.display()))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let temp = path.with_extension("json.tmp");
        std::fs::write(&temp, serde_json::to_string(self)?)?;
        std::fs::rename(&temp, path)?;
        Ok(())
    }

    pub fn new_samples<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> usize {
        names
            .into_iter()
            .filter(|n| !self.seen.contains(*n))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_wrap_past_midnight() {
        let night: TimeWindow = "22:30-04:00".parse().unwrap();
        assert!(night.contains(23 * 60) && night.contains(60) && !night.contains(12 * 60));
        let day: TimeWindow = "08:00-09:00".parse().unwrap();
        assert!(day.contains(8 * 60) && !day.contains(9 * 60));
        assert!("25:00-01:00".parse::<TimeWindow>().is_err());
        assert!("8-9".parse::<TimeWindow>().is_err());
    }

    #[test]
    fn retrains_only_with_enough_new_samples_inside_the_window() {
        let policy = TriggerPolicy {
            min_new_samples: 10,
            window: Some("02:00-04:00".parse().unwrap()),
        };
        assert_eq!(
            check(9, 3 * 60, &policy),
            TriggerCheck::NotEnoughSamples {
                new_samples: 9,
                needed: 10
            }
        );
        assert_eq!(
            check(10, 12 * 60, &policy),
            TriggerCheck::OutsideWindow { new_samples: 10 }
        );
        assert_eq!(
            check(10, 3 * 60, &policy),
            TriggerCheck::Retrain { new_samples: 10 }
        );
        let anytime = TriggerPolicy {
            min_new_samples: 0,
            window: None,
        };
        assert!(matches!(
            check(0, 0, &anytime),
            TriggerCheck::NotEnoughSamples { .. }
        ));
    }
}
