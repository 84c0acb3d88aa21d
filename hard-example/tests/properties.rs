//! Property tests: budget tracking, rate-cap safety and score range.

use hard_example::{
    CrossEntropy, Dims, IanvsConfidence, LeastConfidence, Margin, Policy, RareClassWeighted,
    RateCap, Scorer, UploadBudget,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const STREAM_LEN: usize = 6_000;
/// On i.i.d. streams the budget should also be statistically tight: allowed gap between
/// realised and target ratio over the whole stream, and over each block of frames.
const IID_WHOLE_STREAM_TOLERANCE: f64 = 0.01;
const IID_BLOCK_LEN: usize = 1_000;
const IID_BLOCK_TOLERANCE: f64 = 0.04;

/// How the scores of a synthetic stream are distributed around their (moving) mean.
#[derive(Debug, Clone, Copy)]
enum Noise {
    Uniform,
    /// Squaring a uniform skews mass toward low scores.
    Skewed,
    /// Sum of uniforms, roughly normal.
    Bell,
}

fn noise_strategy() -> impl Strategy<Value = Noise> {
    prop_oneof![Just(Noise::Uniform), Just(Noise::Skewed), Just(Noise::Bell)]
}

fn sample(noise: Noise, rng: &mut StdRng) -> f64 {
    match noise {
        Noise::Uniform => rng.random::<f64>() - 0.5,
        Noise::Skewed => rng.random::<f64>().powi(2) - 0.33,
        Noise::Bell => (0..4).map(|_| rng.random::<f64>()).sum::<f64>() / 4.0 - 0.5,
    }
}

/// Runs a budget with its default correction horizon over `scores` and checks the
/// guarantee that holds for any stream: the running deficit `target * frames - uploads`
/// stays in a band of width `horizon + 1`, so any span of `n` frames uploads within
/// `(horizon + 1) / n` of the target ratio. Returns the upload decisions.
fn run_budget(
    target_ratio: f32,
    window: usize,
    scores: impl Iterator<Item = f32>,
) -> Result<Vec<bool>, TestCaseError> {
    let mut budget = UploadBudget::new(target_ratio, window).unwrap();
    let uploads: Vec<bool> = scores
        .enumerate()
        .map(|(frame, score)| budget.decide(score, frame as u64 * 33).upload)
        .collect();
    let horizon = (window / 4).max(1) as f64;
    let target = f64::from(target_ratio);
    let (mut deficit, mut lowest, mut highest) = (0.0_f64, 0.0_f64, 0.0_f64);
    for &uploaded in &uploads {
        deficit += target - if uploaded { 1.0 } else { 0.0 };
        lowest = lowest.min(deficit);
        highest = highest.max(deficit);
    }
    prop_assert!(
        highest - lowest <= horizon + 1.0 + 1e-9,
        "deficit ranged over [{lowest:.2}, {highest:.2}], wider than horizon {horizon} + 1"
    );
    Ok(uploads)
}

fn upload_ratio(uploads: &[bool]) -> f64 {
    uploads.iter().filter(|&&uploaded| uploaded).count() as f64 / uploads.len() as f64
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn budget_holds_ratio_on_iid_streams(
        seed: u64,
        target_ratio in 0.05_f32..0.3,
        window in 50_usize..400,
        mean in 0.2_f64..0.8,
        spread in 0.01_f64..1.0,
        noise in noise_strategy(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let scores = (0..STREAM_LEN)
            .map(|_| (mean + spread * sample(noise, &mut rng)).clamp(0.0, 1.0) as f32);
        let uploads = run_budget(target_ratio, window, scores)?;
        let target = f64::from(target_ratio);
        let whole = upload_ratio(&uploads);
        prop_assert!(
            (whole - target).abs() <= IID_WHOLE_STREAM_TOLERANCE,
            "whole stream: realised {whole:.4}, target {target}"
        );
        // The first block includes warm-up.
        for (index, block) in uploads.chunks(IID_BLOCK_LEN).enumerate().skip(1) {
            let realised = upload_ratio(block);
            prop_assert!(
                (realised - target).abs() <= IID_BLOCK_TOLERANCE,
                "block {index}: realised {realised:.4}, target {target}"
            );
        }
    }

    #[test]
    fn budget_holds_ratio_on_drifting_streams(
        seed: u64,
        target_ratio in 0.05_f32..0.3,
        window in 50_usize..400,
        start_mean in 0.1_f64..0.9,
        end_mean in 0.1_f64..0.9,
        swing in 0.0_f64..0.3,
        swing_period in 300.0_f64..3_000.0,
        spread in 0.01_f64..0.5,
        noise in noise_strategy(),
    ) {
        // The mean moves linearly from start to end, with a periodic swing on top (a
        // robot driving through alternating easy and hard areas).
        let mut rng = StdRng::seed_from_u64(seed);
        let scores = (0..STREAM_LEN).map(|frame| {
            let progress = frame as f64 / STREAM_LEN as f64;
            let phase = std::f64::consts::TAU * frame as f64 / swing_period;
            let mean = start_mean + (end_mean - start_mean) * progress + swing * phase.sin();
            (mean + spread * sample(noise, &mut rng)).clamp(0.0, 1.0) as f32
        });
        // Drift defeats the window quantile alone; the deficit band (checked inside)
        // is what holds the ratio. Over the whole stream that is within 2% for the
        // largest window (horizon 100): (100 + 1) / 6000.
        let uploads = run_budget(target_ratio, window, scores)?;
        let target = f64::from(target_ratio);
        let whole = upload_ratio(&uploads);
        let horizon = (window / 4) as f64;
        prop_assert!(
            (whole - target).abs() <= (horizon + 1.0) / STREAM_LEN as f64,
            "whole stream: realised {whole:.4}, target {target}"
        );
    }

    #[test]
    fn rate_cap_never_exceeds_its_rate(
        max_per_second in 0.2_f64..20.0,
        burst in 1.0_f64..4.0,
        gaps_ms in prop::collection::vec(0_u64..400, 1..400),
    ) {
        let mut cap = RateCap::new(max_per_second, burst).unwrap();
        let mut now_ms = 0;
        let mut upload_times = Vec::new();
        for gap in gaps_ms {
            now_ms += gap;
            if cap.decide(0.0, now_ms).upload {
                upload_times.push(now_ms);
            }
        }
        // Any run of consecutive uploads must fit the bucket: burst + rate * span.
        for (first, &start) in upload_times.iter().enumerate() {
            for (last, &end) in upload_times.iter().enumerate().skip(first) {
                let uploads = (last - first + 1) as f64;
                let allowed = burst + max_per_second * (end - start) as f64 / 1000.0;
                prop_assert!(
                    uploads <= allowed + 1e-6,
                    "{uploads} uploads in {} ms, allowed {allowed}", end - start
                );
            }
        }
    }

    #[test]
    fn scores_stay_in_unit_interval_for_any_softmax(
        classes in 2_usize..14,
        height in 1_usize..9,
        width in 1_usize..9,
        logit_scale in 0.0_f32..80.0,
        seed: u64,
    ) {
        // Large logit scales drive probabilities to exact 0 and 1 (and subnormals).
        let mut rng = StdRng::seed_from_u64(seed);
        let pixels = height * width;
        let mut probs = vec![0.0_f32; classes * pixels];
        for pixel in 0..pixels {
            let logits: Vec<f32> = (0..classes)
                .map(|_| logit_scale * (rng.random::<f32>() * 2.0 - 1.0))
                .collect();
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
            let total: f32 = exps.iter().sum();
            for (class, e) in exps.iter().enumerate() {
                probs[class * pixels + pixel] = e / total;
            }
        }
        let dims = Dims::new(classes, height, width);
        let weights = (0..classes).map(|class| class as f32).collect();
        let scorers: [Box<dyn Scorer>; 5] = [
            Box::new(IanvsConfidence::default()),
            Box::new(CrossEntropy),
            Box::new(Margin),
            Box::new(LeastConfidence),
            Box::new(RareClassWeighted::new(weights).unwrap()),
        ];
        for scorer in &scorers {
            let score = scorer.score(&probs, dims).unwrap();
            prop_assert!((0.0..=1.0).contains(&score), "{scorer:?} scored {score}");
        }
    }
}
