//! The publishing gate's decision, one case per reason to publish or refuse.

use trainer::gate::{GatePolicy, NEW_TASK_BUFFER, NEW_TASK_LABELLED, Refusal, TaskScores, decide};

fn scores(old: f64, buffer: f64, labelled: Option<f64>) -> TaskScores {
    TaskScores {
        old_task_miou: old,
        new_task_buffer_miou: buffer,
        new_task_labelled_miou: labelled,
    }
}

const PARENT: TaskScores = TaskScores {
    old_task_miou: 0.60,
    new_task_buffer_miou: 0.40,
    new_task_labelled_miou: Some(0.35),
};

#[test]
fn publishes_when_the_new_task_improves_and_the_old_task_holds() {
    let decision = decide(
        &PARENT,
        &scores(0.60, 0.45, Some(0.38)),
        None,
        &GatePolicy::default(),
    );
    assert!(decision.publish, "{:?}", decision.refusals);
    assert!(decision.refusals.is_empty());
}

#[test]
fn an_old_task_drop_within_the_margin_is_accepted() {
    // 0.8 points lost, 1 allowed by default.
    let decision = decide(
        &PARENT,
        &scores(0.592, 0.45, Some(0.38)),
        None,
        &GatePolicy::default(),
    );
    assert!(decision.publish, "{:?}", decision.refusals);
}

#[test]
fn refuses_when_the_old_task_drops_beyond_the_margin() {
    let decision = decide(
        &PARENT,
        &scores(0.585, 0.45, Some(0.38)),
        None,
        &GatePolicy::default(),
    );
    assert!(!decision.publish);
    match decision.refusals.as_slice() {
        [
            Refusal::OldTaskDropped {
                parent_points,
                candidate_points,
                allowed_drop_points,
            },
        ] => {
            assert!((parent_points - 60.0).abs() < 1e-9);
            assert!((candidate_points - 58.5).abs() < 1e-9);
            assert_eq!(*allowed_drop_points, 1.0);
        }
        other => panic!("unexpected refusals {other:?}"),
    }
    let looser = GatePolicy {
        max_old_task_drop: 2.0,
        ..GatePolicy::default()
    };
    assert!(decide(&PARENT, &scores(0.585, 0.45, Some(0.38)), None, &looser).publish);
}

#[test]
fn with_labels_the_buffer_holdout_is_reported_and_gates_only_when_asked() {
    let candidate = scores(0.60, 0.40, Some(0.38));
    let decision = decide(&PARENT, &candidate, None, &GatePolicy::default());
    assert!(decision.publish, "{:?}", decision.refusals);
    assert_eq!(decision.candidate.new_task_buffer_miou, 0.40);
    let strict = GatePolicy {
        buffer_gates_with_labels: true,
        ..GatePolicy::default()
    };
    let decision = decide(&PARENT, &candidate, None, &strict);
    assert!(!decision.publish);
    assert!(matches!(
        decision.refusals.as_slice(),
        [Refusal::NewTaskNotImproved { split, .. }] if split == NEW_TASK_BUFFER
    ));
}

#[test]
fn refuses_when_the_labelled_new_task_gets_worse() {
    let decision = decide(
        &PARENT,
        &scores(0.60, 0.45, Some(0.34)),
        None,
        &GatePolicy::default(),
    );
    assert!(!decision.publish);
    assert!(matches!(
        decision.refusals.as_slice(),
        [Refusal::NewTaskNotImproved { split, .. }] if split == NEW_TASK_LABELLED
    ));
}

#[test]
fn a_required_gain_must_be_exceeded() {
    let policy = GatePolicy {
        min_new_task_gain: 2.0,
        ..GatePolicy::default()
    };
    let small_gain = decide(&PARENT, &scores(0.60, 0.43, Some(0.365)), None, &policy);
    assert!(!small_gain.publish);
    assert!(decide(&PARENT, &scores(0.60, 0.43, Some(0.38)), None, &policy).publish);
}

#[test]
fn without_a_labelled_split_the_buffer_holdout_decides() {
    let parent = scores(0.60, 0.40, None);
    assert!(
        decide(
            &parent,
            &scores(0.60, 0.41, None),
            None,
            &GatePolicy::default()
        )
        .publish
    );
    // A labelled score on one side only means the splits differ: not comparable.
    let decision = decide(
        &parent,
        &scores(0.60, 0.41, Some(0.5)),
        None,
        &GatePolicy::default(),
    );
    assert!(!decision.publish);
    assert!(matches!(
        decision.refusals.as_slice(),
        [Refusal::ScoreNotANumber { .. }]
    ));
}

#[test]
fn forgetting_is_bounded_against_the_first_version_across_rounds() {
    // A second round: the parent already lost 0.8 points of the first version's 0.60; the candidate loses another
    // 0.5 against the parent (within the margin) but 1.3 since the first version (beyond it).
    let parent = scores(0.592, 0.45, Some(0.40));
    let candidate = scores(0.587, 0.47, Some(0.42));
    let decision = decide(&parent, &candidate, Some(0.60), &GatePolicy::default());
    assert!(!decision.publish);
    match decision.refusals.as_slice() {
        [
            Refusal::OldTaskDroppedSinceFirstVersion {
                first_version_points,
                candidate_points,
                allowed_drop_points,
            },
        ] => {
            assert!((first_version_points - 60.0).abs() < 1e-9);
            assert!((candidate_points - 58.7).abs() < 1e-9);
            assert_eq!(*allowed_drop_points, 1.0);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(decision.first_version_old_task_miou, Some(0.60));
    // Within a point of the first version, the same round publishes.
    let held = scores(0.591, 0.47, Some(0.42));
    assert!(decide(&parent, &held, Some(0.60), &GatePolicy::default()).publish);
}

#[test]
fn refuses_on_a_score_that_is_not_a_number() {
    let decision = decide(
        &PARENT,
        &scores(f64::NAN, 0.45, Some(0.38)),
        None,
        &GatePolicy::default(),
    );
    assert!(!decision.publish);
    assert!(matches!(
        decision.refusals.as_slice(),
        [Refusal::ScoreNotANumber { .. }]
    ));
}

#[test]
fn every_failed_condition_is_reported_and_serialised() {
    let strict = GatePolicy {
        buffer_gates_with_labels: true,
        ..GatePolicy::default()
    };
    let decision = decide(&PARENT, &scores(0.50, 0.30, Some(0.30)), None, &strict);
    assert!(!decision.publish);
    assert_eq!(decision.refusals.len(), 3);
    let json = serde_json::to_value(&decision).unwrap();
    assert_eq!(json["refusals"][2]["reason"], "old_task_dropped");
    assert_eq!(json["parent"]["old_task_miou"], 0.60);
}
