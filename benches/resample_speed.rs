//! How fast the resampler runs when it only follows clock drift (equal
//! rates, +100 ppm) and when it converts 44.1 → 48 kHz, stereo: prints
//! frames per second of CPU. `cargo bench --bench resample_speed`.
use netspeaker::audio::resample::Resampler;
use std::time::Instant;

fn run(name: &str, in_rate: u32, out_rate: u32, ppm: f64) {
    let mut r = Resampler::new(2, in_rate, out_rate, 480).expect("resampler");
    r.set_drift_ppm(ppm);
    let input: Vec<f32> = (0..4096 * 2)
        .map(|i| ((i as f32) * 0.01).sin() * 0.5)
        .collect();
    let mut out = vec![0.0f32; 480 * 2];
    let seconds = 20u64;
    let total = out_rate as u64 * seconds;
    let start = Instant::now();
    let mut produced_total = 0u64;
    while produced_total < total {
        let need = r.input_needed(480);
        let (_, p) = r.process(&input[..need * 2], &mut out);
        produced_total += p as u64;
        std::hint::black_box(&out);
    }
    let cpu = start.elapsed().as_secs_f64();
    println!(
        "{name}: {seconds} s of stereo audio in {:.3} s ({:.0}x real time, {:.2} % of one core)",
        cpu,
        seconds as f64 / cpu,
        cpu / seconds as f64 * 100.0
    );
}

fn main() {
    run("drift only, 48000 Hz +100 ppm", 48_000, 48_000, 100.0);
    run("44100 -> 48000 Hz", 44_100, 48_000, 0.0);
}
