//! Issue 6, "Quality": concealment and time-stretching measured on speech
//! against the clean reference, and compared with the naive ways of doing
//! the same job (silence insertion, packet repetition, dropping or
//! repeating blocks of samples). The speech comes from espeak-ng, run at
//! test time. Figures are printed (`cargo test --test quality -- --nocapture`).

use netspeaker::audio::convert::i16_to_f32;
use netspeaker::receive::conceal::Concealer;
use netspeaker::receive::stretch::Stretcher;
use netspeaker::send::wav::read_header;
use std::path::PathBuf;
use std::process::Command;

const TEXT: &str = "The quick brown fox jumps over the lazy dog. \
    Please hold the line, your call is important to us. \
    Seven loud speakers played music in the garden all evening.";

/// Speech as f32 mono at espeak-ng's rate (22050 Hz). `tag` keeps the
/// files of tests running in parallel apart.
fn speech(tag: &str) -> (Vec<f32>, u32) {
    let dir = std::env::temp_dir().join(format!("netspeaker-quality-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let wav: PathBuf = dir.join("speech.wav");
    let status = Command::new("espeak-ng")
        .arg("-w")
        .arg(&wav)
        .arg(TEXT)
        .status()
        .expect("espeak-ng is needed for the quality tests: apt-get install espeak-ng");
    assert!(status.success(), "espeak-ng failed: {status}");
    let bytes = std::fs::read(&wav).expect("read espeak-ng output");
    let _ = std::fs::remove_dir_all(&dir);
    parse_wav(&bytes)
}

/// Reads espeak-ng's 16-bit mono WAV with the sender's own header parser.
fn parse_wav(b: &[u8]) -> (Vec<f32>, u32) {
    let mut rest = b;
    let info = read_header(&mut rest).unwrap_or_else(|e| panic!("espeak-ng output: {e}"));
    assert_eq!(info.format.channels, 1, "expected mono from espeak-ng");
    // espeak-ng writing to a file may leave the size unset (None) or, as
    // the file is cut, too large.
    let len = info
        .data_len
        .map_or(rest.len(), |n| rest.len().min(n as usize));
    let s = rest[..len]
        .chunks_exact(2)
        .map(|c| i16_to_f32(i16::from_le_bytes([c[0], c[1]])))
        .collect();
    (s, info.format.rate)
}

struct Lcg(u64);
impl Lcg {
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Lost packets: single losses with probability `p`, or bursts of `burst`
/// packets starting with probability `p`. Never the first 5 packets (the
/// concealer needs history like any real stream has).
fn loss_pattern(packets: usize, p: f64, burst: usize, seed: u64) -> Vec<bool> {
    let mut rng = Lcg(seed);
    let mut lost = vec![false; packets];
    let mut i = 5;
    while i < packets {
        if rng.unit() < p {
            for l in lost.iter_mut().skip(i).take(burst) {
                *l = true;
            }
            i += burst + 1;
        } else {
            i += 1;
        }
    }
    lost
}

// ---- Spectra ----

const N: usize = 512;
const HOP: usize = 256;

/// In-place radix-2 FFT of length N.
fn fft(re: &mut [f32], im: &mut [f32]) {
    let n = re.len();
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            re.swap(i, j);
            im.swap(i, j);
        }
    }
    let mut len = 2;
    while len <= n {
        let ang = -2.0 * std::f32::consts::PI / len as f32;
        for start in (0..n).step_by(len) {
            for k in 0..len / 2 {
                let (s, c) = (ang * k as f32).sin_cos();
                let (a, b) = (start + k, start + k + len / 2);
                let tr = re[b] * c - im[b] * s;
                let ti = re[b] * s + im[b] * c;
                re[b] = re[a] - tr;
                im[b] = im[a] - ti;
                re[a] += tr;
                im[a] += ti;
            }
        }
        len <<= 1;
    }
}

/// Hann-windowed power spectrum (N/2+1 bins) of x[at..at+N] (zero-padded).
fn power(x: &[f32], at: usize) -> Vec<f32> {
    let mut re = vec![0f32; N];
    let mut im = vec![0f32; N];
    for (k, r) in re.iter_mut().enumerate() {
        let w = 0.5 - 0.5 * (2.0 * std::f32::consts::PI * k as f32 / N as f32).cos();
        *r = x.get(at + k).copied().unwrap_or(0.0) * w;
    }
    fft(&mut re, &mut im);
    (0..=N / 2).map(|k| re[k] * re[k] + im[k] * im[k]).collect()
}

/// Log-spectral distance in dB between two power spectra, with a floor
/// (bins quieter than the floor count as the floor).
fn lsd(a: &[f32], b: &[f32], floor: f32) -> f32 {
    let s: f32 = a
        .iter()
        .zip(b)
        .map(|(&p, &q)| {
            let d = 10.0 * ((p + floor) / (q + floor)).log10();
            d * d
        })
        .sum();
    (s / a.len() as f32).sqrt()
}

/// A floor 70 dB under the loudest bin of the reference.
fn spectral_floor(x: &[f32]) -> f32 {
    let mut peak = 0f32;
    let mut at = 0;
    while at + N <= x.len() {
        peak = power(x, at).into_iter().fold(peak, f32::max);
        at += HOP;
    }
    peak * 1e-7
}

fn energy(x: &[f32], at: usize) -> f32 {
    x.iter().skip(at).take(N).map(|v| v * v).sum()
}

fn snr_db(reference: &[f32], out: &[f32]) -> f32 {
    let s: f64 = reference.iter().map(|&v| (v as f64).powi(2)).sum();
    let e: f64 = reference
        .iter()
        .zip(out)
        .map(|(&r, &o)| ((r - o) as f64).powi(2))
        .sum();
    (10.0 * (s / e.max(1e-20)).log10()) as f32
}

/// Mean LSD over the frames touching a lost packet (or the 5 ms after it)
/// where the reference is not silence (within 50 dB of its loudest frame).
fn lsd_at_losses(reference: &[f32], out: &[f32], lost: &[bool], packet: usize, rate: u32) -> f32 {
    let floor = spectral_floor(reference);
    let mut loudest = 0f32;
    let mut at = 0;
    while at + N <= reference.len() {
        loudest = loudest.max(energy(reference, at));
        at += HOP;
    }
    let tail = rate as usize / 200;
    let (mut sum, mut count) = (0f32, 0);
    let mut at = 0;
    while at + N <= reference.len() {
        let touched = lost
            .iter()
            .enumerate()
            .any(|(i, &l)| l && i * packet < at + N && (i + 1) * packet + tail > at);
        if touched && energy(reference, at) > loudest * 1e-5 {
            sum += lsd(&power(reference, at), &power(out, at), floor);
            count += 1;
        }
        at += HOP;
    }
    assert!(count > 0, "no lost frames measured");
    sum / count as f32
}

// ---- Concealment ----

fn conceal_silence(x: &[f32], lost: &[bool], packet: usize) -> Vec<f32> {
    let mut out = x.to_vec();
    for (i, _) in lost.iter().enumerate().filter(|(_, &l)| l) {
        let end = ((i + 1) * packet).min(out.len());
        out[i * packet..end].fill(0.0);
    }
    out
}

fn conceal_repeat(x: &[f32], lost: &[bool], packet: usize) -> Vec<f32> {
    let mut out = x.to_vec();
    for (i, _) in lost.iter().enumerate().filter(|(_, &l)| l) {
        let end = ((i + 1) * packet).min(out.len());
        for k in i * packet..end {
            out[k] = out[k - packet];
        }
    }
    out
}

fn conceal_ours(x: &[f32], lost: &[bool], packet: usize, rate: u32) -> Vec<f32> {
    let mut c = Concealer::new(1, rate).expect("concealer");
    c.set_format(1, rate);
    let mut out = x.to_vec();
    for (i, chunk) in out.chunks_mut(packet).enumerate() {
        if lost[i] {
            c.conceal(chunk);
        } else {
            c.audio(chunk);
        }
    }
    out
}

#[test]
fn concealment_beats_silence_and_repetition_on_speech() {
    let (x, rate) = speech("conceal");
    assert!(
        x.len() > rate as usize * 3,
        "espeak-ng gave too little speech"
    );
    let packet = rate as usize / 50;
    let packets = x.len().div_ceil(packet);
    let cases = [
        ("single 20 ms losses, 5 %", 0.05, 1, 1),
        ("single 20 ms losses, 10 %", 0.10, 1, 2),
        ("bursts of 3 packets, 5 %", 0.05 / 3.0, 3, 3),
    ];
    for (name, p, burst, seed) in cases {
        let lost = loss_pattern(packets, p, burst, seed);
        let n_lost = lost.iter().filter(|&&l| l).count();
        let figures: Vec<(&str, f32, f32)> = [
            ("silence", conceal_silence(&x, &lost, packet)),
            ("repetition", conceal_repeat(&x, &lost, packet)),
            ("concealer", conceal_ours(&x, &lost, packet, rate)),
        ]
        .into_iter()
        .map(|(m, out)| {
            (
                m,
                snr_db(&x, &out),
                lsd_at_losses(&x, &out, &lost, packet, rate),
            )
        })
        .collect();
        println!("{name} ({n_lost} of {packets} packets lost, {rate} Hz speech):");
        for (m, snr, d) in &figures {
            println!("  {m:<11} SNR {snr:6.2} dB   log-spectral distance {d:6.2} dB");
        }
        let (silence, repeat, ours) = (figures[0], figures[1], figures[2]);
        assert!(ours.2 < silence.2, "{name}: LSD not better than silence");
        assert!(ours.2 < repeat.2, "{name}: LSD not better than repetition");
        assert!(ours.1 > silence.1, "{name}: SNR not better than silence");
    }
}

// ---- Stretching ----

/// Removes (`frames` > 0) or adds `frames` the naive way: every `every`
/// frames, drop the next block of `block` frames or play the last block
/// again, until done.
fn stretch_naive(x: &[f32], frames: isize, block: usize, every: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len() + frames.unsigned_abs());
    let mut left = frames.unsigned_abs();
    let mut pos = 0;
    while pos < x.len() {
        let end = (pos + every).min(x.len());
        out.extend_from_slice(&x[pos..end]);
        pos = end;
        if left > 0 && pos < x.len() {
            let b = block.min(left);
            if frames > 0 {
                pos = (pos + b).min(x.len());
            } else {
                let from = out.len() - b;
                out.extend_from_within(from..);
            }
            left -= b;
        }
    }
    out
}

fn stretch_ours(x: &[f32], frames: isize, rate: u32) -> (Vec<f32>, isize) {
    let period = rate as usize / 100;
    let mut st = Stretcher::new(1, rate, period).expect("stretcher");
    st.request(frames);
    let mut out = Vec::new();
    let mut buf = vec![0.0; period];
    let mut pos = 0;
    loop {
        let need = st.input_needed(period);
        let end = (pos + need).min(x.len());
        let (used, made) = st.process(&x[pos..end], &mut buf);
        pos += used;
        out.extend_from_slice(&buf[..made]);
        if pos >= x.len() && made == 0 {
            return (out, st.pending());
        }
    }
}

/// Clicks: samples whose second difference exceeds 8 times the RMS second
/// difference of the 5 ms around them (the sample itself left out). Speech
/// has a few of its own (plosives); the reference's count is printed.
fn clicks(x: &[f32], rate: u32) -> usize {
    let d2: Vec<f32> = x.windows(3).map(|w| w[2] - 2.0 * w[1] + w[0]).collect();
    let half = rate as usize / 400;
    let mut prefix = vec![0f64; d2.len() + 1];
    for (i, v) in d2.iter().enumerate() {
        prefix[i + 1] = prefix[i] + (*v as f64).powi(2);
    }
    (0..d2.len())
        .filter(|&i| {
            let (a, b) = (i.saturating_sub(half), (i + half + 1).min(d2.len()));
            let around = prefix[b] - prefix[a] - (d2[i] as f64).powi(2);
            let rms = (around / (b - a - 1).max(1) as f64).sqrt();
            (d2[i] as f64).abs() > 8.0 * rms && d2[i].abs() > 1e-3
        })
        .count()
}

/// Mean over the non-silent frames of `out` of the smallest LSD to any
/// reference frame near the proportional position (±150 ms), searched
/// with a 64-frame hop: lengths differ, so frames are matched by content.
fn lsd_nearest(reference: &[f32], out: &[f32], rate: u32) -> f32 {
    let floor = spectral_floor(reference);
    let fine = 64;
    let ref_spectra: Vec<Vec<f32>> = (0..reference.len().saturating_sub(N) / fine)
        .map(|i| power(reference, i * fine))
        .collect();
    let mut loudest = 0f32;
    let mut at = 0;
    while at + N <= out.len() {
        loudest = loudest.max(energy(out, at));
        at += HOP;
    }
    let range = rate as usize * 150 / 1000 / fine;
    let scale = reference.len() as f32 / out.len() as f32;
    let (mut sum, mut count) = (0f32, 0);
    let mut at = 0;
    while at + N <= out.len() {
        if energy(out, at) > loudest * 1e-4 {
            let p = power(out, at);
            let centre = (at as f32 * scale) as usize / fine;
            let best = ref_spectra
                .iter()
                .skip(centre.saturating_sub(range))
                .take(2 * range + 1)
                .map(|r| lsd(r, &p, floor))
                .fold(f32::MAX, f32::min);
            sum += best;
            count += 1;
        }
        at += HOP;
    }
    sum / count.max(1) as f32
}

#[test]
fn stretching_beats_dropping_and_repeating_blocks_on_speech() {
    let (x, rate) = speech("stretch");
    let change = x.len() as isize / 20;
    let ref_clicks = clicks(&x, rate);
    println!(
        "reference: {} Hz speech, {} frames, {ref_clicks} clicks of its own",
        rate,
        x.len()
    );
    for frames in [change, -change] {
        let (ours, left) = stretch_ours(&x, frames, rate);
        assert_eq!(left, 0, "stretch of {frames} frames not finished");
        assert_eq!(ours.len() as isize, x.len() as isize - frames);
        // The naive way at about the stretcher's rate: a 10 ms block per 120 ms.
        let naive = stretch_naive(&x, frames, rate as usize / 100, rate as usize * 12 / 100);
        assert_eq!(naive.len(), ours.len());
        let (c_ours, c_naive) = (clicks(&ours, rate), clicks(&naive, rate));
        let (d_ours, d_naive) = (lsd_nearest(&x, &ours, rate), lsd_nearest(&x, &naive, rate));
        let sign = if frames > 0 {
            "shortened"
        } else {
            "lengthened"
        };
        println!("{sign} by {} frames (5 %):", frames.abs());
        println!("  stretcher    clicks {c_ours:4}   nearest-frame LSD {d_ours:6.2} dB");
        println!("  naive blocks clicks {c_naive:4}   nearest-frame LSD {d_naive:6.2} dB");
        assert!(c_ours < c_naive, "{sign}: stretcher clicks more than naive");
        assert!(d_ours < d_naive, "{sign}: stretcher LSD not below naive");
    }
}
