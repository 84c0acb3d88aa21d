//! The evaluation gate: a retrained model is published only when it is better on the new task and not more than
//! a set margin worse on the old one, both than its parent and than the registry's first version (so forgetting
//! cannot build up a margin at a time over rounds). Pure: figures in, decision out.

use serde::{Deserialize, Serialize};

/// Thresholds in mIoU points (0..100).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GatePolicy {
    /// The old task (day validation) may lose at most this much.
    pub max_old_task_drop: f64,
    /// Every new-task split that gates must gain more than this.
    pub min_new_task_gain: f64,
    /// Whether the held-back buffer frames gate even when a labelled new-task split is scored. They are scored
    /// against the cloud's labels, which were fused from the parent's own class scores, so the parent agrees with
    /// them by construction: in the CamVid lifelong run the parent scored 0.92 on them and a candidate 0.79 while
    /// that candidate gained 1.2 points on labelled dusk-eval. By default ground truth decides when there is some,
    /// and the buffer figure is only reported; without a labelled split the buffer decides.
    #[serde(default)]
    pub buffer_gates_with_labels: bool,
}

impl Default for GatePolicy {
    fn default() -> Self {
        Self {
            max_old_task_drop: 1.0,
            min_new_task_gain: 0.0,
            buffer_gates_with_labels: false,
        }
    }
}

/// One model's mIoU (0..1) on the gate's splits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TaskScores {
    /// Old task: the original validation split, against its ground truth.
    pub old_task_miou: f64,
    /// New task: frames held back from the buffer snapshot, against the cloud's labels.
    pub new_task_buffer_miou: f64,
    /// New task: a labelled split of the new domain (e.g. dusk-eval), when one exists.
    pub new_task_labelled_miou: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Refusal {
    /// A new-task split did not gain more than the policy asks.
    NewTaskNotImproved {
        split: String,
        parent_points: f64,
        candidate_points: f64,
        required_gain_points: f64,
    },
    /// The old task lost more than the policy allows.
    OldTaskDropped {
        parent_points: f64,
        candidate_points: f64,
        allowed_drop_points: f64,
    },
    /// The old task lost more than the policy allows since the registry's first version (over several rounds).
    OldTaskDroppedSinceFirstVersion {
        first_version_points: f64,
        candidate_points: f64,
        allowed_drop_points: f64,
    },
    /// A score is missing or not a number (e.g. an evaluation split without any labelled pixel).
    ScoreNotANumber { split: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateDecision {
    pub publish: bool,
    pub policy: GatePolicy,
    pub parent: TaskScores,
    pub candidate: TaskScores,
    /// The old-task mIoU of the registry's first version, when the parent is a later one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_version_old_task_miou: Option<f64>,
    /// Why not, when not published; every failed condition is listed.
    pub refusals: Vec<Refusal>,
}

pub const OLD_TASK: &str = "old-task";
pub const NEW_TASK_BUFFER: &str = "new-task-buffer";
pub const NEW_TASK_LABELLED: &str = "new-task-labelled";

/// `first_version_old_task_miou`: the old-task mIoU of the registry's first version when the parent is a later
/// one (the drop from it is bounded too).
pub fn decide(
    parent: &TaskScores,
    candidate: &TaskScores,
    first_version_old_task_miou: Option<f64>,
    policy: &GatePolicy,
) -> GateDecision {
    let mut refusals = Vec::new();
    let labelled =
        parent.new_task_labelled_miou.is_some() || candidate.new_task_labelled_miou.is_some();
    let mut new_task = Vec::new();
    if !labelled || policy.buffer_gates_with_labels {
        new_task.push((
            NEW_TASK_BUFFER,
            parent.new_task_buffer_miou,
            candidate.new_task_buffer_miou,
        ));
    }
    match (
        parent.new_task_labelled_miou,
        candidate.new_task_labelled_miou,
    ) {
        (Some(before), Some(after)) => new_task.push((NEW_TASK_LABELLED, before, after)),
        (None, None) => {}
        _ => refusals.push(Refusal::ScoreNotANumber {
            split: NEW_TASK_LABELLED.into(),
        }),
    }
    for (split, before, after) in new_task {
        if !before.is_finite() || !after.is_finite() {
            refusals.push(Refusal::ScoreNotANumber {
                split: split.into(),
            });
        } else if points(after) - points(before) <= policy.min_new_task_gain {
            refusals.push(Refusal::NewTaskNotImproved {
                split: split.into(),
                parent_points: points(before),
                candidate_points: points(after),
                required_gain_points: policy.min_new_task_gain,
            });
        }
    }
    let (before, after) = (parent.old_task_miou, candidate.old_task_miou);
    if !before.is_finite() || !after.is_finite() {
        refusals.push(Refusal::ScoreNotANumber {
            split: OLD_TASK.into(),
        });
    } else if points(before) - points(after) > policy.max_old_task_drop {
        refusals.push(Refusal::OldTaskDropped {
            parent_points: points(before),
            candidate_points: points(after),
            allowed_drop_points: policy.max_old_task_drop,
        });
    }
    match first_version_old_task_miou {
        Some(first) if !first.is_finite() => refusals.push(Refusal::ScoreNotANumber {
            split: format!("{OLD_TASK} (first version)"),
        }),
        Some(first)
            if after.is_finite() && points(first) - points(after) > policy.max_old_task_drop =>
        {
            refusals.push(Refusal::OldTaskDroppedSinceFirstVersion {
                first_version_points: points(first),
                candidate_points: points(after),
                allowed_drop_points: policy.max_old_task_drop,
            })
        }
        _ => {}
    }
    GateDecision {
        publish: refusals.is_empty(),
        policy: *policy,
        parent: *parent,
        candidate: *candidate,
        first_version_old_task_miou,
        refusals,
    }
}

fn points(miou: f64) -> f64 {
    miou * 100.0
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NewTaskNotImproved {
                split,
                parent_points,
                candidate_points,
                required_gain_points,
            } => write!(
                f,
                "{split}: {candidate_points:.2} vs parent {parent_points:.2} mIoU, needs a gain above {required_gain_points:.2}"
            ),
            Refusal::OldTaskDropped {
                parent_points,
                candidate_points,
                allowed_drop_points,
            } => write!(
                f,
                "{OLD_TASK}: {candidate_points:.2} vs parent {parent_points:.2} mIoU, drop above the allowed {allowed_drop_points:.2}"
            ),
            Refusal::OldTaskDroppedSinceFirstVersion {
                first_version_points,
                candidate_points,
                allowed_drop_points,
            } => write!(
                f,
                "{OLD_TASK}: {candidate_points:.2} vs the first version's {first_version_points:.2} mIoU, drop above the allowed {allowed_drop_points:.2}"
            ),
            Refusal::ScoreNotANumber { split } => write!(f, "{split}: no valid score"),
        }
    }
}
