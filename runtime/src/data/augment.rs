//! Data augmentation (`augment:` in the train section): random flips,
//! shifts, rotations and zooms of each training image, drawn anew for every
//! batch from the run's seed and the step number (so a resumed run draws
//! what the uninterrupted one drew). As Keras's preprocessing layers do:
//! the transformations compose into one affine map about the image's
//! centre, the image is resampled bilinearly, and points that fall outside
//! it read its mirror image (`fill_mode="reflect"`). Validation and test
//! data are never augmented.

use crate::tensor::Tensor;
use netc_compiler::train::Augment;

/// SplitMix64: the run's other random streams use it too.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[-1, 1)`.
    fn signed(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    fn coin(&mut self) -> bool {
        self.next() >> 63 == 1
    }
}

/// Augments every image of the batch `x` (`[N, H, W, C]`) in place with
/// `ops`, drawn from `seed`. A batch whose examples are not images is an
/// error (the caller checked the model's input when the run started).
pub fn augment_batch(x: &mut Tensor, ops: &[Augment], seed: u64) -> Result<(), String> {
    if ops.is_empty() {
        return Ok(());
    }
    let &[n, h, w, c] = x.shape.as_slice() else {
        return Err(format!(
            "augment: transforms images [H, W, C]; the examples have shape {:?}",
            &x.shape[1..]
        ));
    };
    // The maps are drawn in order (so the images do not depend on how
    // the work is split), then the images are resampled on every core:
    // the step's workers are idle meanwhile.
    let mut rng = Rng(seed);
    let maps: Vec<Affine> = (0..n).map(|_| draw(ops, &mut rng, h, w)).collect();
    let per = h * w * c;
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let chunk = n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (imgs, ms) in x.data.chunks_mut(chunk * per).zip(maps.chunks(chunk)) {
            s.spawn(move || {
                let mut src = vec![0f32; per];
                for (img, m) in imgs.chunks_exact_mut(per).zip(ms) {
                    if *m != IDENTITY {
                        src.copy_from_slice(img);
                        resample(&src, img, [h, w, c], m);
                    }
                }
            });
        }
    });
    Ok(())
}

/// Output pixel (row, col) reads the input at
/// `(a·row + b·col + e, c·row + d·col + f)`.
type Affine = [f64; 6];
const IDENTITY: Affine = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0];

/// The inverse map (output → input) of one image's random transformation.
fn draw(ops: &[Augment], rng: &mut Rng, h: usize, w: usize) -> Affine {
    let (mut flip_h, mut flip_v, mut dy, mut dx, mut angle, mut scale) =
        (false, false, 0.0, 0.0, 0.0f64, 1.0);
    for op in ops {
        match *op {
            Augment::Flip {
                horizontal,
                vertical,
            } => {
                flip_h ^= horizontal && rng.coin();
                flip_v ^= vertical && rng.coin();
            }
            Augment::Shift(f) => {
                dy += rng.signed() * f * h as f64;
                dx += rng.signed() * f * w as f64;
            }
            Augment::Rotate(deg) => angle += rng.signed() * deg.to_radians(),
            Augment::Zoom(f) => scale *= 1.0 + rng.signed() * f,
        }
    }
    if !flip_h && !flip_v && dx == 0.0 && dy == 0.0 && angle == 0.0 && scale == 1.0 {
        return IDENTITY;
    }
    // Forward: p' = centre + S·R·F·(p − centre) + t; inverted here.
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let (sin, cos) = angle.sin_cos();
    let (fy, fx) = (
        if flip_v { -1.0 } else { 1.0 },
        if flip_h { -1.0 } else { 1.0 },
    );
    // Inverse of S·R·F is F·Rᵀ/S (F is its own inverse).
    let a = fy * cos / scale;
    let b = fy * sin / scale;
    let c = -fx * sin / scale;
    let d = fx * cos / scale;
    // p = centre + A·(p' − centre − t)
    let (oy, ox) = (-cy - dy, -cx - dx);
    [a, b, c, d, cy + a * oy + b * ox, cx + c * oy + d * ox]
}

/// Mirrors a coordinate into `[0, n − 1]` (reflect padding).
fn reflect(mut v: f64, n: usize) -> f64 {
    let max = (n - 1) as f64;
    if (0.0..=max).contains(&v) {
        return v;
    }
    if max <= 0.0 {
        return 0.0;
    }
    let period = 2.0 * max;
    v = v.rem_euclid(period);
    if v > max {
        period - v
    } else {
        v
    }
}

fn resample(src: &[f32], dst: &mut [f32], [h, w, c]: [usize; 3], m: &Affine) {
    let (hm, wm) = ((h - 1) as f32, (w - 1) as f32);
    let [a, b, cc, d, e, f] = m.map(|v| v as f32);
    let inside = |v: f32, max: f32| (0.0..=max).contains(&v);
    for r in 0..h {
        let rf = r as f32;
        for q in 0..w {
            let qf = q as f32;
            let (mut y, mut x) = (a * rf + b * qf + e, cc * rf + d * qf + f);
            // Most points land inside; only the others pay for the mirror.
            if !inside(y, hm) {
                y = reflect(f64::from(y), h) as f32;
            }
            if !inside(x, wm) {
                x = reflect(f64::from(x), w) as f32;
            }
            let (y0, x0) = (y as usize, x as usize);
            let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
            let (ty, tx) = (y - y0 as f32, x - x0 as f32);
            let (r0, r1) = (y0 * w, y1 * w);
            let out = (r * w + q) * c;
            for k in 0..c {
                let at = |row: usize, col: usize| src[(row + col) * c + k];
                let top = at(r0, x0) + (at(r0, x1) - at(r0, x0)) * tx;
                let bottom = at(r1, x0) + (at(r1, x1) - at(r1, x0)) * tx;
                dst[out + k] = top + (bottom - top) * ty;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(h: usize, w: usize) -> Tensor {
        Tensor::new(vec![1, h, w, 1], (0..h * w).map(|i| i as f32).collect()).unwrap()
    }

    #[test]
    fn a_horizontal_flip_mirrors_the_columns() {
        // Find a seed whose coin says flip, then check the image.
        let ops = [Augment::Flip {
            horizontal: true,
            vertical: false,
        }];
        let (mut flipped, mut kept) = (false, false);
        for seed in 0..16 {
            let mut x = ramp(2, 3);
            augment_batch(&mut x, &ops, seed).unwrap();
            if x.data == [2., 1., 0., 5., 4., 3.] {
                flipped = true;
            } else {
                assert_eq!(x.data, ramp(2, 3).data, "seed {seed}");
                kept = true;
            }
        }
        assert!(flipped && kept, "both outcomes among 16 seeds");
    }

    #[test]
    fn shifts_stay_in_range_and_follow_the_seed() {
        let mut x = ramp(8, 8);
        augment_batch(&mut x, &[Augment::Shift(0.25)], 3).unwrap();
        assert!(x.data.iter().all(|v| (0.0..=63.0).contains(v)));
        assert_ne!(x.data, ramp(8, 8).data);
        // The same seed, the same images; another seed, others.
        let mut y = ramp(8, 8);
        augment_batch(&mut y, &[Augment::Shift(0.25)], 3).unwrap();
        assert_eq!(x.data, y.data);
        let mut z = ramp(8, 8);
        augment_batch(&mut z, &[Augment::Shift(0.25)], 4).unwrap();
        assert_ne!(x.data, z.data);
    }

    #[test]
    fn a_half_turn_is_a_point_reflection() {
        let m = {
            let (cy, cx) = (1.0, 1.0);
            let (a, b, c, d) = (-1.0, 0.0, 0.0, -1.0);
            [a, b, c, d, cy - a * cy - b * cx, cx - c * cy - d * cx]
        };
        let src: Vec<f32> = (0..9).map(|i| i as f32).collect();
        let mut dst = vec![0f32; 9];
        resample(&src, &mut dst, [3, 3, 1], &m);
        assert_eq!(dst, [8., 7., 6., 5., 4., 3., 2., 1., 0.]);
        assert_eq!(reflect(-1.0, 3), 1.0);
        assert_eq!(reflect(3.0, 3), 1.0);
    }

    #[test]
    fn non_images_are_refused() {
        let mut x = Tensor::new(vec![2, 3], vec![0.0; 6]).unwrap();
        assert!(augment_batch(&mut x, &[Augment::Zoom(0.1)], 0).is_err());
    }
}
