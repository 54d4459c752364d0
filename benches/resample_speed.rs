//! How fast the resampler runs, stereo, in 480-frame periods as the playout
//! thread calls it: equal rates at 0 ppm (pass-through), equal rates
//! following clock drift (+100 ppm), and 44.1 → 48 kHz. Prints, per case,
//! the median CPU time of 5 runs (min–max) and what that is in real time.
//!
//!     cargo bench --bench resample_speed            # 20 s of audio per run
//!     target/.../resample_speed 1                   # 1 s per run, 1 run
//!
//! A number argument sets the audio seconds per run and makes it a single
//! run (for instruction counts under valgrind or an emulator, where time
//! means nothing); a word runs only the cases whose name contains it
//! (`pass`, `drift`, `convert`).
use netspeaker::audio::resample::Resampler;
use std::time::Instant;

const PERIOD: usize = 480;

/// One run: `seconds` of stereo output; returns the CPU seconds it took.
fn once(in_rate: u32, out_rate: u32, ppm: f64, seconds: f64) -> f64 {
    let mut r = Resampler::new(2, in_rate, out_rate, PERIOD).expect("resampler");
    r.set_drift_ppm(ppm);
    let input: Vec<f32> = (0..4096 * 2)
        .map(|i| ((i as f32) * 0.01).sin() * 0.5)
        .collect();
    let mut out = vec![0.0f32; PERIOD * 2];
    let total = (out_rate as f64 * seconds) as u64;
    let start = Instant::now();
    let mut produced_total = 0u64;
    while produced_total < total {
        let need = r.input_needed(PERIOD);
        let (_, p) = r.process(std::hint::black_box(&input[..need * 2]), &mut out);
        produced_total += p as u64;
        std::hint::black_box(&out);
    }
    start.elapsed().as_secs_f64()
}

struct Plan {
    seconds: f64,
    reps: usize,
    only: Option<String>,
}

fn run(plan: &Plan, name: &str, in_rate: u32, out_rate: u32, ppm: f64) {
    if plan
        .only
        .as_ref()
        .is_some_and(|w| !name.contains(w.as_str()))
    {
        return;
    }
    let (seconds, reps) = (plan.seconds, plan.reps);
    let mut cpu: Vec<f64> = (0..reps)
        .map(|_| once(in_rate, out_rate, ppm, seconds))
        .collect();
    cpu.sort_by(f64::total_cmp);
    let median = cpu[reps / 2];
    println!(
        "{name:<32} {seconds} s of stereo in {median:.4} s (median of {reps}, {:.4}-{:.4}): {:.0}x real time, {:.3} % of one core",
        cpu[0],
        cpu[reps - 1],
        seconds / median,
        median / seconds * 100.0
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a bare number is the seconds per run,
    // another word picks the cases.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds = args.iter().find_map(|a| a.parse::<f64>().ok());
    let plan = Plan {
        seconds: seconds.unwrap_or(20.0),
        reps: if seconds.is_some() { 1 } else { 5 },
        only: args
            .iter()
            .find(|a| !a.starts_with('-') && a.parse::<f64>().is_err())
            .cloned(),
    };
    run(&plan, "pass-through, 48000 Hz 0 ppm", 48_000, 48_000, 0.0);
    run(
        &plan,
        "drift only, 48000 Hz +100 ppm",
        48_000,
        48_000,
        100.0,
    );
    run(&plan, "convert 44100 -> 48000 Hz", 44_100, 48_000, 0.0);
}
