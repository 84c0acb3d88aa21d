//! Training the cloud's semantic head end to end on real frames: MobileSAM embeddings of two labelled day-train
//! frames and their low-light copies, a small MLP fitted with libtorch, written as safetensors plus a checksummed
//! manifest, and loaded back by the models crate exactly as the cloud loads it; then the exponents of the cloud's
//! product of the edge's and the head's scores, fitted on real day-val frames. Skips loudly without CamVid.

use models::paths::{camvid_or_skip, edge_model_dir, models_dir};
use models::sam::SamModel;
use models::{EdgeModel, Manifest, SemanticHead, SessionConfig};
use sam_core::ExpertExponents;
use trainer::cloud_head::{
    EXPONENT_GRID, HeadInfo, HeadTrainConfig, LowLight, collect_evidence, embed_cells,
    evaluate_head, record_evidence_exponents, train_head, write_head,
};

#[test]
fn a_head_trained_on_two_frames_learns_them_and_loads_back() -> anyhow::Result<()> {
    let Some(camvid) = camvid_or_skip("a_head_trained_on_two_frames_learns_them_and_loads_back")
    else {
        return Ok(());
    };
    let samples: Vec<_> = models::dataset::read_index(&camvid.join("index/day-train.txt"), None)?
        .into_iter()
        .step_by(100)
        .take(2)
        .collect();
    let sam = SamModel::load(&models_dir().join("mobilesam"), SessionConfig::default())?;
    let edge: Manifest =
        models::manifest::LoadedManifest::load_unverified(&edge_model_dir())?.manifest;
    let classes = edge.classes.len();
    // Each frame and one low-light copy of it, with the same labels.
    let data = embed_cells(&sam, &samples, classes, &LowLight::default(), |_| {})?;
    assert_eq!(data.channels, 256);
    // 480x360 frames cover 64x48 cells; CamVid labels nearly every one.
    assert!(
        data.cells() > 4 * 3000 && data.cells() <= 4 * 64 * 48,
        "{} cells",
        data.cells()
    );

    let config = HeadTrainConfig {
        hidden: 32,
        epochs: 6,
        batch_size: 512,
        ..HeadTrainConfig::default()
    };
    let mut losses = Vec::new();
    let weights = train_head(&data, &config, |_, loss| losses.push(loss))?;
    assert_eq!(losses.len(), 6);
    assert!(losses[5] < 0.7 * losses[0], "loss did not fall: {losses:?}");
    assert_eq!(
        (weights.channels(), weights.w1.ncols(), weights.classes()),
        (256, 32, classes)
    );

    let dir = tempfile::tempdir()?;
    let info = HeadInfo {
        name: "test-head".into(),
        version: "0.0.1".into(),
        sam: sam.manifest(),
        classes: edge.classes.clone(),
        produced_by: "trainer/tests/cloud_head.rs".into(),
        training_data: "two day-train frames".into(),
    };
    write_head(&weights, dir.path(), info)?;
    let head = SemanticHead::load(dir.path())?;
    assert_eq!(
        head.weights(),
        &weights,
        "the weights changed on the way through the file"
    );
    assert_eq!(head.manifest().class_names(), edge.class_names());

    let scores = evaluate_head(&head, &sam, &samples, |_| {})?;
    assert!(
        scores.pixel_accuracy > 0.8,
        "pixel accuracy on its own training frames: {:.3}",
        scores.pixel_accuracy
    );

    // A corrupted weights file is refused by its checksum.
    std::fs::write(
        dir.path().join(trainer::cloud_head::WEIGHTS_FILE),
        b"garbage",
    )?;
    assert!(SemanticHead::load(dir.path()).is_err());
    Ok(())
}

#[test]
fn exponents_fitted_on_day_frames_trust_the_overconfident_edge_less_and_reach_the_cloud()
-> anyhow::Result<()> {
    let Some(camvid) = camvid_or_skip(
        "exponents_fitted_on_day_frames_trust_the_overconfident_edge_less_and_reach_the_cloud",
    ) else {
        return Ok(());
    };
    // Every 25th day-val frame (5 of 101).
    let samples: Vec<_> = models::dataset::read_index(&camvid.join("index/day-val.txt"), None)?
        .into_iter()
        .step_by(25)
        .collect();
    let sam = SamModel::load(&models_dir().join("mobilesam"), SessionConfig::default())?;
    let edge = EdgeModel::load(&edge_model_dir(), SessionConfig::default())?;
    let shipped = models_dir().join("cloud-head");
    let head = SemanticHead::load(&shipped)?;
    let collected = collect_evidence(&head, &sam, &edge, &samples, 8, |_| {})?;
    // 60x45 sampled pixels a frame, nearly all labelled; both experts give a log-probability per class.
    assert!(collected.labels.len() > samples.len() * 2500);
    assert_eq!(collected.edge.len(), collected.labels.len() * 11);
    let evidence = collected.evidence();
    let (fitted, nll) = evidence.fit_exponents(&EXPONENT_GRID);
    let equal = evidence.negative_log_likelihood(ExpertExponents::EQUAL);
    eprintln!("day-val/25: fitted {fitted:?}, NLL {equal:.4} -> {nll:.4}");
    // The edge model is more overconfident than the head on its own domain already (all of day-val: 0.4 vs 0.6,
    // NLL 0.218 -> 0.162).
    assert!(fitted.first < fitted.second, "{fitted:?}");
    assert!(nll < 0.9 * equal, "NLL {equal:.4} -> {nll:.4}");

    // Recorded into a copy of the head, the exponents are what the cloud's product uses; the weights are the same.
    let dir = tempfile::tempdir()?;
    for file in ["manifest.json", trainer::cloud_head::WEIGHTS_FILE] {
        std::fs::copy(shipped.join(file), dir.path().join(file))?;
    }
    record_evidence_exponents(dir.path(), fitted, "9.9.9", "trainer/tests/cloud_head.rs")?;
    let refitted = SemanticHead::load(dir.path())?;
    assert_eq!(refitted.evidence_exponents(), fitted);
    assert_eq!(refitted.manifest().version, "9.9.9");
    assert_eq!(
        refitted.manifest().provenance.parent_version.as_deref(),
        Some(head.manifest().version.as_str())
    );
    assert_eq!(refitted.weights(), head.weights());
    Ok(())
}
