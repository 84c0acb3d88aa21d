//! Which entries a full buffer keeps. Pure decisions over entry summaries, shared by every backend.

use std::collections::BTreeMap;

use rand::Rng;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum CapacityPolicy {
    /// Drop the oldest entries.
    Fifo,
    /// Keep a uniform sample of every frame ever offered (Algorithm R).
    Reservoir,
    /// Drop the oldest entry of the class that dominates the most entries, so rare classes survive.
    ClassBalanced,
}

impl CapacityPolicy {
    pub fn name(self) -> &'static str {
        match self {
            CapacityPolicy::Fifo => "fifo",
            CapacityPolicy::Reservoir => "reservoir",
            CapacityPolicy::ClassBalanced => "class-balanced",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub policy: CapacityPolicy,
    /// `None` keeps everything.
    pub max_entries: Option<u64>,
}

impl Capacity {
    pub fn unbounded() -> Self {
        Self {
            policy: CapacityPolicy::Fifo,
            max_entries: None,
        }
    }
}

/// What a policy needs to know about an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySummary {
    pub id: String,
    pub received_unix_ms: u64,
    /// The class with the most cloud-label pixels.
    pub dominant_class: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Admit { evict: Vec<String> },
    Reject,
}

impl Capacity {
    /// Decides whether `new` enters a buffer holding `existing` (oldest first), and what leaves to make room.
    /// `offered_before` counts the distinct frames offered before this one (the reservoir's stream position).
    pub fn admit(
        &self,
        existing: &[EntrySummary],
        new: &EntrySummary,
        offered_before: u64,
        rng: &mut impl Rng,
    ) -> Admission {
        let Some(max) = self.max_entries else {
            return Admission::Admit { evict: Vec::new() };
        };
        let max = max.max(1) as usize;
        if existing.len() < max {
            return Admission::Admit { evict: Vec::new() };
        }
        let excess = existing.len() + 1 - max;
        match self.policy {
            CapacityPolicy::Fifo => Admission::Admit {
                evict: oldest_first(existing)
                    .into_iter()
                    .take(excess)
                    .map(|e| e.id.clone())
                    .collect(),
            },
            CapacityPolicy::Reservoir => {
                // Keep the new frame with probability max / (frames offered so far).
                let position = offered_before.max(existing.len() as u64);
                if rng.random_range(0..=position) >= max as u64 {
                    return Admission::Reject;
                }
                let mut candidates: Vec<&EntrySummary> = existing.iter().collect();
                let mut evict = Vec::with_capacity(excess);
                for _ in 0..excess {
                    let victim = candidates.swap_remove(rng.random_range(0..candidates.len()));
                    evict.push(victim.id.clone());
                }
                Admission::Admit { evict }
            }
            CapacityPolicy::ClassBalanced => class_balanced(existing, new, excess),
        }
    }
}

fn oldest_first(entries: &[EntrySummary]) -> Vec<&EntrySummary> {
    let mut sorted: Vec<&EntrySummary> = entries.iter().collect();
    sorted.sort_by(|a, b| {
        a.received_unix_ms
            .cmp(&b.received_unix_ms)
            .then(a.id.cmp(&b.id))
    });
    sorted
}

fn class_balanced(existing: &[EntrySummary], new: &EntrySummary, excess: usize) -> Admission {
    let mut by_class: BTreeMap<Option<u32>, Vec<&EntrySummary>> = BTreeMap::new();
    for entry in oldest_first(existing)
        .into_iter()
        .chain(std::iter::once(new))
    {
        by_class
            .entry(entry.dominant_class)
            .or_default()
            .push(entry);
    }
    let mut evict = Vec::with_capacity(excess);
    for _ in 0..excess {
        // The largest class loses its oldest entry; ties go to the class whose oldest entry is older.
        let Some(largest) = by_class
            .values_mut()
            .filter(|entries| !entries.is_empty())
            .max_by(|a, b| {
                a.len()
                    .cmp(&b.len())
                    .then(b[0].received_unix_ms.cmp(&a[0].received_unix_ms))
            })
        else {
            break;
        };
        let victim = largest.remove(0);
        if victim.id == new.id {
            return Admission::Reject;
        }
        evict.push(victim.id.clone());
    }
    Admission::Admit { evict }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(id: &str, time: u64, class: u32) -> EntrySummary {
        EntrySummary {
            id: id.to_string(),
            received_unix_ms: time,
            dominant_class: Some(class),
        }
    }

    fn bounded(policy: CapacityPolicy, max: u64) -> Capacity {
        Capacity {
            policy,
            max_entries: Some(max),
        }
    }

    #[test]
    fn fifo_evicts_the_oldest() {
        let existing = [summary("b", 2, 0), summary("a", 1, 0)];
        let admission = bounded(CapacityPolicy::Fifo, 2).admit(
            &existing,
            &summary("c", 3, 0),
            2,
            &mut rand::rng(),
        );
        assert_eq!(
            admission,
            Admission::Admit {
                evict: vec!["a".into()]
            }
        );
    }

    #[test]
    fn class_balanced_evicts_from_the_most_common_class_and_protects_rare_ones() {
        let existing = [
            summary("road1", 1, 3),
            summary("road2", 2, 3),
            summary("sign", 0, 6),
        ];
        let capacity = bounded(CapacityPolicy::ClassBalanced, 3);
        let admission = capacity.admit(&existing, &summary("pole", 4, 2), 3, &mut rand::rng());
        assert_eq!(
            admission,
            Admission::Admit {
                evict: vec!["road1".into()]
            }
        );
        // A new frame of the over-represented class is evicted from the old ones, not the rare sign.
        let admission = capacity.admit(&existing, &summary("road3", 4, 3), 3, &mut rand::rng());
        assert_eq!(
            admission,
            Admission::Admit {
                evict: vec!["road1".into()]
            }
        );
    }

    #[test]
    fn reservoir_keeps_about_max_over_offered_of_late_frames() {
        let existing: Vec<EntrySummary> = (0..10).map(|i| summary(&i.to_string(), i, 0)).collect();
        let capacity = bounded(CapacityPolicy::Reservoir, 10);
        let mut rng = rand::rng();
        let admitted = (0..2000)
            .filter(|_| {
                matches!(
                    capacity.admit(&existing, &summary("new", 99, 0), 99, &mut rng),
                    Admission::Admit { .. }
                )
            })
            .count();
        // Expected 2000 * 10 / 100 = 200.
        assert!((120..280).contains(&admitted), "admitted {admitted}");
    }

    #[test]
    fn unbounded_admits_everything() {
        let admission = Capacity::unbounded().admit(
            &[summary("a", 1, 0)],
            &summary("b", 2, 0),
            1,
            &mut rand::rng(),
        );
        assert_eq!(admission, Admission::Admit { evict: vec![] });
    }
}
