//! MobileSAM automatic mask generation on a real CamVid frame: the encoder and decoder through ONNX Runtime,
//! sam-core's post-processing, and SSA-vote fusion with the edge model. Skips loudly without CamVid.

use models::metrics::ConfusionMatrix;
use models::paths::{camvid_or_skip, edge_model_dir, models_dir};
use models::sam::{GeneratorConfig, PromptMode, SamModel};
use models::{EdgeModel, SessionConfig};
use sam_core::{FusionRule, fuse};

fn miou(truth: &[u8], predicted: &[u8], classes: usize) -> f64 {
    let mut matrix = ConfusionMatrix::new(classes);
    matrix.add(truth, predicted);
    matrix.scores().miou
}

#[test]
fn small_grid_on_a_real_frame_gives_sane_masks_and_fusion() -> anyhow::Result<()> {
    let Some(camvid) = camvid_or_skip("small_grid_on_a_real_frame_gives_sane_masks_and_fusion")
    else {
        return Ok(());
    };
    let sample = models::dataset::read_index(&camvid.join("index/dusk-eval.txt"), None)?.remove(0);
    let (image, truth) = sample.load_labelled()?;
    let (width, height) = image.dimensions();
    let sam = SamModel::load(&models_dir().join("mobilesam"), SessionConfig::default())?;
    let edge = EdgeModel::load(&edge_model_dir(), SessionConfig::default())?;

    let embedding = sam.embed(&image)?;
    let config = GeneratorConfig {
        points_per_side: 8,
        ..GeneratorConfig::default()
    };
    let generated = sam.generate(&embedding, &config, None)?;
    assert_eq!(generated.prompts_used, 64);
    assert_eq!(generated.decoder_calls, 1);
    assert!(!generated.masks.is_empty(), "no mask passed the filters");
    for mask in &generated.masks {
        assert!(mask.area > 0 && mask.area < width * height);
        assert_eq!(mask.area, mask.segmentation.area());
        assert_eq!(mask.bbox, mask.segmentation.bbox());
        assert!(
            mask.predicted_iou > 0.88 && mask.predicted_iou < 1.5,
            "{}",
            mask.predicted_iou
        );
        assert!((0.95..=1.0).contains(&mask.stability_score));
        let [x, y] = mask.point;
        assert!(x > 0.0 && x < width as f32 && y > 0.0 && y < height as f32);
    }

    let edge_output = edge.segment(&image)?;
    let scores = edge_output.class_scores().resized_nearest(width, height);
    let classes = edge.num_classes();
    let edge_miou = miou(truth.as_raw(), &edge_output.labels, classes);
    let fused_miou = miou(
        truth.as_raw(),
        &fuse(&FusionRule::SsaVote, &generated.masks, &scores),
        classes,
    );
    eprintln!(
        "{}: {} masks, edge mIoU {edge_miou:.3}, SSA vote {fused_miou:.3}, decoder {:.0} ms",
        sample.name(),
        generated.masks.len(),
        generated.decoder_ms
    );
    assert!(
        fused_miou >= edge_miou - 0.03,
        "fusion {fused_miou:.3} well below edge {edge_miou:.3}"
    );

    // Guided prompting spends no more than its budget and still finds masks.
    let guided = PromptMode::Guided {
        max_prompts: 16,
        batch_size: 8,
        min_uncertainty: 0.0,
    };
    let config = GeneratorConfig {
        prompting: guided,
        ..config
    };
    let generated = sam.generate(&embedding, &config, Some(&scores))?;
    assert!(generated.prompts_used <= 16 && generated.decoder_calls <= 2);
    assert!(!generated.masks.is_empty());
    Ok(())
}
