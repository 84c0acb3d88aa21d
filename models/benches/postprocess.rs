//! The edge's post-processing on a realistic-size model output: 11 classes, 360x480 logits, turned into full-size
//! labels and the class scores at every second row and column (`models::edge::SCORE_STEP`).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use models::edge::SCORE_STEP;
use models::image_ops::{class_counts, encode_label_png, labels_and_subsampled_softmax};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CLASSES: usize = 11;
const HEIGHT: usize = 360;
const WIDTH: usize = 480;

/// Deterministic CHW logits shaped like a road scene: horizontal bands of one dominant class with noisy logits and
/// occasional pixels won by another class, so the argmax and the exponentials see realistic values.
fn synthetic_logits() -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(7);
    let plane = HEIGHT * WIDTH;
    let mut logits = vec![0.0_f32; CLASSES * plane];
    for row in 0..HEIGHT {
        let band_class = row * CLASSES / HEIGHT;
        for column in 0..WIDTH {
            let pixel = row * WIDTH + column;
            let dominant = if rng.random::<f32>() < 0.1 {
                rng.random_range(0..CLASSES)
            } else {
                band_class
            };
            for class in 0..CLASSES {
                let boost = if class == dominant { 8.0 } else { 0.0 };
                logits[class * plane + pixel] = rng.random::<f32>() * 4.0 - 2.0 + boost;
            }
        }
    }
    logits
}

fn postprocess(c: &mut Criterion) {
    let logits = synthetic_logits();
    let mut group = c.benchmark_group("postprocess_480x360x11");
    group.throughput(Throughput::Elements((HEIGHT * WIDTH) as u64));
    group.bench_function("labels_and_subsampled_softmax", |b| {
        b.iter(|| {
            labels_and_subsampled_softmax(black_box(&logits), CLASSES, HEIGHT, WIDTH, SCORE_STEP)
        })
    });
    // What the edge does with the labels for every answer (its `render` stage without an overlay).
    let labels = labels_and_subsampled_softmax(&logits, CLASSES, HEIGHT, WIDTH, SCORE_STEP).labels;
    group.bench_function("class_counts", |b| {
        b.iter(|| class_counts(black_box(&labels), CLASSES))
    });
    group.bench_function("encode_label_png", |b| {
        b.iter(|| encode_label_png(black_box(&labels), WIDTH as u32, HEIGHT as u32))
    });
    group.finish();
}

criterion_group!(benches, postprocess);
criterion_main!(benches);
