//! Scoring speed on a realistic-size frame: 11 classes, 360x480, CHW softmax.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hard_example::{
    CrossEntropy, Dims, IanvsConfidence, LeastConfidence, Margin, MinerConfig, RareClassWeighted,
    Scorer,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIMS: Dims = Dims::new(11, 360, 480);

/// A deterministic softmax map shaped like a road scene: horizontal bands of one
/// dominant class (sky, building, road...) with a confident-but-noisy dominant logit and
/// occasional ambiguous pixels, so the top-k and entropy code sees realistic values.
fn synthetic_frame() -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(7);
    let pixels = DIMS.height * DIMS.width;
    let mut probs = vec![0.0_f32; DIMS.classes * pixels];
    let mut logits = vec![0.0_f32; DIMS.classes];
    for row in 0..DIMS.height {
        let band_class = row * DIMS.classes / DIMS.height;
        for column in 0..DIMS.width {
            let pixel = row * DIMS.width + column;
            for logit in &mut logits {
                *logit = rng.random::<f32>() * 2.0 - 1.0;
            }
            let dominant = if rng.random::<f32>() < 0.1 {
                rng.random_range(0..DIMS.classes)
            } else {
                band_class
            };
            logits[dominant] += rng.random::<f32>() * 8.0;
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let total: f32 = logits.iter().map(|l| (l - max).exp()).sum();
            for (class, logit) in logits.iter().enumerate() {
                probs[class * pixels + pixel] = (logit - max).exp() / total;
            }
        }
    }
    probs
}

fn scorers(c: &mut Criterion) {
    let probs = synthetic_frame();
    let mut group = c.benchmark_group("score_480x360x11");
    group.throughput(Throughput::Elements((DIMS.height * DIMS.width) as u64));
    let scorers: [(&str, Box<dyn Scorer>); 5] = [
        ("ianvs_confidence", Box::new(IanvsConfidence::default())),
        ("cross_entropy", Box::new(CrossEntropy)),
        ("margin", Box::new(Margin)),
        ("least_confidence", Box::new(LeastConfidence)),
        ("rare_class_weighted", Box::new(RareClassWeighted::camvid())),
    ];
    for (name, scorer) in &scorers {
        group.bench_function(*name, |b| {
            b.iter(|| scorer.score(black_box(&probs), black_box(DIMS)))
        });
    }
    group.finish();
}

fn miner(c: &mut Criterion) {
    let probs = synthetic_frame();
    let config = MinerConfig::from_json(
        r#"{"scorer": {"name": "cross-entropy"},
            "policy": {"name": "all", "policies": [
                {"name": "budget", "target_ratio": 0.15, "window": 200},
                {"name": "rate-cap", "max_per_second": 2}]}}"#,
    )
    .expect("benchmark config is valid");
    let mut miner = config.build().expect("benchmark config builds");
    let mut now_ms = 0;
    c.bench_function("miner_decide_cross_entropy_budget_rate_cap", |b| {
        b.iter(|| {
            now_ms += 33;
            miner.decide(black_box(&probs), DIMS, now_ms)
        })
    });
}

criterion_group!(benches, scorers, miner);
criterion_main!(benches);
