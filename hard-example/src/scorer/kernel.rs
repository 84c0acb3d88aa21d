//! Allocation-free passes over a CHW probability map.
//!
//! CHW stores each class as its own plane, so a pixel's probabilities are `pixels` floats
//! apart. Walking pixel by pixel would stride across all planes for every pixel; instead
//! the map is processed in runs of [`CHUNK`] consecutive pixels: each class plane's run is
//! folded into small stack arrays (top-1, top-2, class weight), which the compiler
//! vectorises, and the finished run is handed to the scorer's accumulator.
//!
//! The passes are compiled for AVX-512 and AVX2 too and pick the widest the CPU has at run time (`multiversion`):
//! the same operations in the same order per lane, so every version gives the same result bit for bit.

use multiversion::multiversion;

/// Pixels per run: large enough to vectorise well, small enough to stay in L1 cache.
const CHUNK: usize = 256;

/// Per-pixel statistics of a run of consecutive pixels. Only the fields requested via
/// [`Needs`] are filled; the others hold zeros.
pub(crate) struct PixelRun<'a> {
    pub top1: &'a [f32],
    pub top2: &'a [f32],
    /// Expected class weight `sum_c p_c * w_c` of each pixel.
    pub weight: &'a [f32],
}

/// Which per-pixel statistics a scorer needs; computing less makes the pass cheaper.
#[derive(Clone, Copy)]
pub(crate) enum Needs<'w> {
    Top1,
    TopTwo,
    TopTwoAndWeight(&'w [f32]),
}

/// Visits every pixel of a validated CHW map once, in runs of up to [`CHUNK`] pixels.
/// `probs.len()` must be a multiple of `pixels` (guaranteed by [`crate::Dims::validate`]).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma"))]
pub(crate) fn scan_pixels(
    probs: &[f32],
    pixels: usize,
    needs: Needs<'_>,
    mut visit: impl FnMut(PixelRun<'_>),
) {
    let mut top1 = [0.0_f32; CHUNK];
    let mut top2 = [0.0_f32; CHUNK];
    let mut weight = [0.0_f32; CHUNK];
    let mut start = 0;
    while start < pixels {
        let len = CHUNK.min(pixels - start);
        let (top1, top2, weight) = (&mut top1[..len], &mut top2[..len], &mut weight[..len]);
        top1.fill(0.0);
        top2.fill(0.0);
        weight.fill(0.0);
        for (class, plane) in probs.chunks_exact(pixels).enumerate() {
            let run = &plane[start..start + len];
            match needs {
                Needs::Top1 => fold_top1(top1, run),
                Needs::TopTwo => fold_top_two(top1, top2, run),
                Needs::TopTwoAndWeight(class_weights) => {
                    fold_top_two_and_weight(top1, top2, weight, run, class_weights[class]);
                }
            }
        }
        visit(PixelRun { top1, top2, weight });
        start += len;
    }
}

// Plain comparisons rather than `f32::max`/`min`: those must ignore NaN, which costs
// several extra vector instructions per element; a NaN probability is garbage either way.

#[inline(always)]
fn fold_top1(top1: &mut [f32], run: &[f32]) {
    for (first, &p) in top1.iter_mut().zip(run) {
        *first = if p > *first { p } else { *first };
    }
}

#[inline(always)]
fn fold_top_two(top1: &mut [f32], top2: &mut [f32], run: &[f32]) {
    for ((first, second), &p) in top1.iter_mut().zip(top2.iter_mut()).zip(run) {
        update_top_two(first, second, p);
    }
}

#[inline(always)]
fn fold_top_two_and_weight(
    top1: &mut [f32],
    top2: &mut [f32],
    weight: &mut [f32],
    run: &[f32],
    class_weight: f32,
) {
    let pixels = top1.iter_mut().zip(top2.iter_mut()).zip(weight.iter_mut());
    for (((first, second), w), &p) in pixels.zip(run) {
        update_top_two(first, second, p);
        *w += p * class_weight;
    }
}

#[inline(always)]
fn update_top_two(first: &mut f32, second: &mut f32, p: f32) {
    let runner_up = if p < *first { p } else { *first };
    *second = if runner_up > *second {
        runner_up
    } else {
        *second
    };
    *first = if p > *first { p } else { *first };
}

/// Largest absolute error of `log2_approx` on normal inputs; the mean normalised
/// entropy is off by at most this divided by `log2(classes)`.
#[cfg(test)]
pub(crate) const LOG2_MAX_ERROR: f32 = 1.1e-4;

/// Sum of `p * log2(p)` over all values, with `0 * log2(0)` taken as 0: the negated total
/// entropy in bits. A single flat pass, because entropy needs no per-pixel structure.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma"))]
pub(crate) fn sum_p_log2_p(probs: &[f32]) -> f64 {
    // Independent lanes break the floating-point add dependency chain so the loop
    // vectorises; each block is flushed to f64 to keep the long sum accurate.
    const LANES: usize = 16;
    const BLOCK: usize = 4096;
    let mut total = 0.0_f64;
    for block in probs.chunks(BLOCK) {
        let mut lanes = [0.0_f32; LANES];
        let mut groups = block.chunks_exact(LANES);
        for group in &mut groups {
            for (lane, &p) in lanes.iter_mut().zip(group) {
                *lane += p_log2_p(p);
            }
        }
        let tail: f32 = groups.remainder().iter().map(|&p| p_log2_p(p)).sum();
        total += f64::from(lanes.iter().sum::<f32>() + tail);
    }
    total
}

#[inline(always)]
fn p_log2_p(p: f32) -> f32 {
    // For p = 0 (and subnormals) the bit trick yields about -127 instead of -inf, so the
    // product is 0 (or negligible) as entropy requires, with no special case.
    p * log2_approx(p)
}

/// `log2(x)` for positive normal `x` (and about -127 for 0 and subnormals), accurate to
/// 1.1e-4 absolute and exact for powers of two.
///
/// `f32::log2` does not vectorise and would dominate the scoring time. This splits
/// `x = m * 2^e` with `m` in `[1, 2)` and evaluates `log2(m)` as `t * q(t)`, `t = m - 1`,
/// with `q` a cubic fitted for least maximum error on `[0, 1)`. A higher degree buys
/// accuracy nobody needs for a frame score at about 15% more time per degree.
#[inline(always)]
fn log2_approx(x: f32) -> f32 {
    const MANTISSA_BITS: u32 = 23;
    const MANTISSA_MASK: u32 = (1 << MANTISSA_BITS) - 1;
    const EXPONENT_BIAS: i32 = 127;
    const ONE_BITS: u32 = 0x3f80_0000;
    let bits = x.to_bits();
    let exponent = (bits >> MANTISSA_BITS) as i32 - EXPONENT_BIAS;
    let t = f32::from_bits((bits & MANTISSA_MASK) | ONE_BITS) - 1.0;
    let q = 1.439_015_5 + t * (-0.679_950_95 + t * (0.325_610_22 + t * -0.084_777_57));
    exponent as f32 + t * q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_approx_is_close_to_std() {
        let mut x = 1.0e-30_f32;
        while x < 4.0 {
            let exact = x.log2();
            // Polynomial error plus the rounding of adding the exponent.
            let tolerance = LOG2_MAX_ERROR + exact.abs() * f32::EPSILON;
            let error = (log2_approx(x) - exact).abs();
            assert!(error < tolerance, "log2({x}): error {error}");
            x *= 1.001;
        }
    }

    #[test]
    fn log2_approx_is_exact_on_powers_of_two() {
        for exponent in -126..=10 {
            let x = 2.0_f32.powi(exponent);
            assert_eq!(log2_approx(x), exponent as f32);
        }
    }

    #[test]
    fn sum_p_log2_p_treats_zero_as_zero() {
        assert_eq!(sum_p_log2_p(&[0.0, 1.0, 0.5, 0.5]), -1.0);
    }

    #[test]
    fn scan_covers_partial_last_run() {
        // 2 classes, CHUNK + 3 pixels: class 1 wins on every pixel with probability 0.75.
        let pixels = CHUNK + 3;
        let mut probs = vec![0.25_f32; pixels];
        probs.extend(std::iter::repeat_n(0.75_f32, pixels));
        let weights = [2.0, 4.0];
        let (mut count, mut top1_sum, mut top2_sum, mut weight_sum) = (0, 0.0, 0.0, 0.0);
        scan_pixels(&probs, pixels, Needs::TopTwoAndWeight(&weights), |run| {
            count += run.top1.len();
            top1_sum += run.top1.iter().sum::<f32>();
            top2_sum += run.top2.iter().sum::<f32>();
            weight_sum += run.weight.iter().sum::<f32>();
        });
        assert_eq!(count, pixels);
        assert_eq!(top1_sum, 0.75 * pixels as f32);
        assert_eq!(top2_sum, 0.25 * pixels as f32);
        assert_eq!(weight_sum, 3.5 * pixels as f32);
    }
}
