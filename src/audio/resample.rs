//! Sample-rate conversion as ffmpeg's libswresample does it by default (the DLC's `ffmpeg_read`
//! runs `ffmpeg -ar 16000`): a Kaiser-windowed sinc (beta 9) of 32 taps at the lower of the two
//! rates, cut off at 0.97 of its Nyquist frequency, one filter per phase of the exact rational
//! ratio (`exact_rational`, when that needs at most 1024 phases; else 1024 phases and linear
//! interpolation between them), normalised to unit gain, f32 products; the input mirrored
//! around its first and last samples.

/// swresample's defaults: `filter_size`, `phase_shift`, `cutoff`, `kaiser_beta`.
const FILTER_SIZE: usize = 32;
const MAX_PHASES: usize = 1 << 10;
const CUTOFF: f64 = 0.97;
const KAISER_BETA: f64 = 9.0;

/// `input` (mono, at `from` Hz) at `to` Hz.
pub fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || input.is_empty() {
        return input.to_vec();
    }
    let divisor = gcd(from as u64, to as u64);
    let exact_phases = (to as u64 / divisor) as usize;
    let (phases, linear) = if exact_phases <= MAX_PHASES {
        (exact_phases, false)
    } else {
        (MAX_PHASES, true)
    };
    let factor = (to as f64 * CUTOFF / from as f64).min(1.0);
    // (swresample rounds the filter up to an even length)
    let mut taps = ((FILTER_SIZE as f64 / factor).ceil() as usize).max(1);
    if taps > 1 {
        taps += taps % 2;
    }
    let bank = filter_bank(factor, taps, phases);
    let center = (taps - 1) / 2;

    // The input with `center` samples mirrored before it (around its first sample) and, at the
    // flush, up to half a filter mirrored after it (around its end, the last sample repeated).
    let n = input.len();
    let mirror = |k: usize| -> f32 {
        // input index k of the endless mirrored signal (k counted from `center` before it)
        let k = k as i64 - center as i64;
        let period = 2 * n as i64;
        let mut k = if k < 0 { -k } else { k };
        k %= period.max(1);
        if k >= n as i64 {
            k = period - 1 - k;
        }
        input[k as usize]
    };
    let padded: Vec<f32> = (0..center + n + taps).map(mirror).collect();

    // Output sample j sits at input position j * from / to: `index` counts input samples in
    // units of 1/phases, `frac` the remainder in units of 1/(phases * to). Outputs run while
    // their window fits the input; then (the flush) while it fits the input plus `tail`
    // mirrored samples: half of what the input had left, at most half a filter.
    let step = from as u64 * phases as u64;
    let (step_div, step_mod) = (step / to as u64, step % to as u64);
    let mut output = Vec::with_capacity((n as u64 * to as u64 / from as u64 + 1) as usize);
    let (mut sample, mut phase, mut frac) = (0usize, 0usize, 0u64);
    let mut tail: Option<usize> = None;
    loop {
        if sample + taps > center + n {
            let left = (center + n).saturating_sub(sample);
            let tail = *tail.get_or_insert(left.min(taps).div_ceil(2));
            if sample + taps > center + n + tail {
                break;
            }
        }
        let window = &padded[sample..sample + taps];
        let mut value = dot(window, &bank[phase * taps..(phase + 1) * taps]);
        if linear && frac != 0 {
            let next = if phase + 1 < phases {
                dot(window, &bank[(phase + 1) * taps..(phase + 2) * taps])
            } else {
                // (the next phase of the next sample)
                padded
                    .get(sample + 1..sample + 1 + taps)
                    .map_or(value, |w| dot(w, &bank[..taps]))
            };
            value += (next - value) * (frac as f32 / to as f32);
        }
        output.push(value);
        frac += step_mod;
        phase += step_div as usize;
        if frac >= to as u64 {
            frac -= to as u64;
            phase += 1;
        }
        sample += phase / phases;
        phase %= phases;
    }
    output
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |acc, (x, y)| acc + x * y)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `phases` filters of `taps` coefficients each: phase p is the windowed sinc at offsets
/// (i - center) - p / phases, normalised by the sum of phase 0's coefficients.
fn filter_bank(factor: f64, taps: usize, phases: usize) -> Vec<f32> {
    let center = (taps - 1) / 2;
    let mut bank = vec![0f32; taps * phases];
    let mut norm = 0f64;
    let mut row = vec![0f64; taps];
    for phase in 0..phases {
        for (i, value) in row.iter_mut().enumerate() {
            let x = std::f64::consts::PI
                * ((i as f64 - center as f64) - phase as f64 / phases as f64)
                * factor;
            let sinc = if x == 0.0 { 1.0 } else { x.sin() / x };
            let w = 2.0 * x / (factor * taps as f64 * std::f64::consts::PI);
            *value = sinc * bessel_i0(KAISER_BETA * (1.0 - w * w).max(0.0).sqrt());
        }
        if phase == 0 {
            norm = row.iter().sum();
        }
        for (dst, value) in bank[phase * taps..(phase + 1) * taps].iter_mut().zip(&row) {
            *dst = (value / norm) as f32;
        }
    }
    bank
}

/// The modified Bessel function of the first kind, order 0 (its power series).
fn bessel_i0(x: f64) -> f64 {
    let quarter = x * x / 4.0;
    let (mut term, mut sum) = (1.0f64, 1.0f64);
    for k in 1..200 {
        term *= quarter / (k as f64 * k as f64);
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_stays_constant_and_lengths_follow_the_ratio() {
        for (from, to) in [
            (44100, 16000),
            (8000, 16000),
            (48000, 16000),
            (22050, 16000),
        ] {
            let input = vec![0.25f32; from as usize];
            let output = resample(&input, from, to);
            assert!(
                (output.len() as i64 - to as i64).abs() <= 1,
                "{from} -> {to}: {} samples",
                output.len()
            );
            for (i, v) in output.iter().enumerate() {
                assert!((v - 0.25).abs() < 1e-4, "{from} -> {to}: sample {i} is {v}");
            }
        }
    }

    #[test]
    fn a_tone_below_the_cutoff_keeps_its_amplitude() {
        let (from, to) = (44100u32, 16000u32);
        let tone = |rate: u32, n: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (2.0 * std::f64::consts::PI * 440.0 * i as f64 / rate as f64).sin() as f32)
                .collect()
        };
        let output = resample(&tone(from, 44100), from, to);
        let expected = tone(to, output.len());
        for i in 200..output.len() - 200 {
            assert!((output[i] - expected[i]).abs() < 2e-3, "sample {i}");
        }
    }
}
