//! Opus in-band FEC end to end, the issue's loss matrix: the real
//! `netspeaker-send --codec opus` (96 kbit/s stereo, 20 ms packets) streams
//! speech through the seeded impairment relay
//! (tests/common/relay.rs) to the real `netspeaker` on its defaults
//! (`--latency auto`), which plays into a paced PulseAudio null sink.
//! Input per condition: a random loss (5, 10, 20 %) and the sender's FEC
//! (`--fec --expected-loss P`, or none). Output: one table row — the
//! relay's losses, the receiver's statistics line (SIGUSR1, before the
//! stream ends) over the settled window, the concealed share of that
//! window. The pair at one loss uses the same seed, so both lose the same
//! packets (the relay draws per datagram, in order).
//!
//! The bar (the issue's): with FEC the concealed share is at most a third
//! of the run without. What FEC cannot rebuild: a loss followed by
//! another loss (the next packet, whose FEC copy it needs, is gone too:
//! 5-20 % of losses here), and frames libopus judged not worth protecting
//! (quiet ones: about 5 % of this speech). And the recovery is the
//! receiver's doing: `fec` in the statistics line counts packets decoded
//! from the next packet's FEC, at least two thirds of the losses whose
//! next packet came (measured in two runs: 17 of 17 and 16 of 21 at 5 %, 29 of
//! 30 twice at 10 %, 58 of 60 at 20 %, and 47 of 64 in a run that came
//! after the sound server had stood still for 2 s).
//!
//! `cargo test --test opus_fec -- --nocapture` prints the table.

mod common;
#[path = "common/relay.rs"]
mod relay;
#[path = "common/rig.rs"]
mod rig;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use relay::{Impairment, Policy, Relay, RelayCounts};
use rig::{sender, Bench, Stats};

const RATE: u32 = 48_000;
/// The counters are judged over [SETTLE, READ_AT] of the stream.
const SETTLE: Duration = Duration::from_secs(3);
const READ_AT: Duration = Duration::from_millis(11_300);

/// Speech without long pauses, from espeak-ng, as 48 kHz stereo (sox).
const TEXT: &str = "the quick brown fox jumps over the lazy dog while seven loud \
    speakers played music in the garden all evening and the network carried \
    every word of it without a single pause between the sentences that the \
    speaker said to the crowd gathered on the lawn";

/// Writes the speech to `path` as 16-bit 48 kHz stereo WAV; its length.
/// Speech, because libopus protects only frames its voice detector finds
/// active: it learns any steady test signal (a tone, a buzz) as background
/// noise within half a second and stops protecting it (tried: 22 of 100
/// packets with FEC for a steady buzz, 29 for tones, 95 % for this).
fn speech_wav(dir: &common::TestDir, path: &std::path::Path) -> Duration {
    let raw = dir.file("espeak.wav");
    let status = std::process::Command::new("espeak-ng")
        .args(["-s", "190", "-w"])
        .arg(&raw)
        .arg(TEXT)
        .status()
        .expect("espeak-ng is needed: apt-get install espeak-ng");
    assert!(status.success(), "espeak-ng: {status}");
    let status = std::process::Command::new("sox")
        .arg(&raw)
        .args(["-b", "16", "-r", "48000", "-c", "2"])
        .arg(path)
        .status()
        .expect("sox is needed: apt-get install sox");
    assert!(status.success(), "sox: {status}");
    let bytes = std::fs::metadata(path).expect("speech wav").len();
    Duration::from_secs_f64((bytes - 44) as f64 / (f64::from(RATE) * 4.0))
}

/// What one run produced.
struct Outcome {
    relay: RelayCounts,
    /// The statistics line read at READ_AT (totals since start).
    total: Stats,
    /// Counters over [SETTLE, READ_AT]; gauges at READ_AT.
    window: Stats,
    /// Seconds of stream the window covers.
    window_s: f64,
    /// Packets the receiver had received or found lost when the window
    /// began: the relay's datagram index there.
    window_from: u64,
    device_stalled: Option<Duration>,
    log: String,
}

impl Outcome {
    fn concealed_pct(&self) -> f64 {
        self.window.concealed_ms as f64 / (self.window_s * 10.0)
    }
}

fn run(name: &str, loss: f64, seed: u64, fec: bool) -> Outcome {
    let bench = Bench::new(name);
    let wav = bench.dir.file("speech.wav");
    // Long enough for 20 % loss to hit ~100 packets in the window.
    let length = speech_wav(&bench.dir, &wav);
    assert!(length > READ_AT, "{length:?} of speech");
    let mut rx = bench.receiver(&["--rtp-format", "97=OPUS/48000/2"]);
    let watch = rig::Progress::start(&bench).0;
    let mut relay = Relay::start(
        bench.addr(),
        Impairment {
            seed,
            loss,
            ..Impairment::default()
        },
    );
    let pct = format!("{}", (loss * 100.0).round());
    let mut args = vec!["--codec", "opus", "--bitrate", "96k"];
    if fec {
        args.extend_from_slice(&["--fec", "--expected-loss", &pct]);
    }
    let t0 = Instant::now();
    let mut tx = sender(&wav, relay.addr, &args);

    std::thread::sleep(SETTLE.saturating_sub(t0.elapsed()));
    let _ = rx
        .log
        .wait_for("packets ", t0 + SETTLE, Duration::from_secs(2));
    std::thread::sleep(READ_AT.saturating_sub(t0.elapsed()));
    let asked = Instant::now();
    let device_stalled = watch.stall(name, t0, asked);
    rx.signal(Signal::SIGUSR1);
    let read = rx
        .log
        .wait_for("packets ", asked, Duration::from_secs(2))
        .expect("a statistics line on SIGUSR1");
    let all = rx.log.stats();
    let total = all
        .iter()
        .find(|(t, _)| *t == read)
        .map(|(_, s)| s.clone())
        .expect("the SIGUSR1 line parses");
    let (base_at, base) = all
        .iter()
        .find(|(t, _)| *t >= t0 + SETTLE)
        .map(|(t, s)| (*t, s.clone()))
        .expect("a statistics line after the settling time");
    let window = total.since(&base);
    let window_s = read.duration_since(base_at).as_secs_f64();

    let deadline = Instant::now() + Duration::from_secs(5);
    while !tx.exited() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    tx.terminate(Duration::from_secs(1));
    relay.stop();
    let clean_exit = rx.terminate(Duration::from_secs(3));
    let log = rx.log.text();
    assert!(clean_exit, "{name}: the receiver ignored SIGTERM:\n{log}");
    Outcome {
        relay: relay.counts(),
        total,
        window,
        window_s,
        window_from: base.packets + base.lost,
        device_stalled,
        log,
    }
}

/// Of the datagrams `from..to` the relay saw with this impairment, the
/// lost ones whose next datagram went through: the losses FEC can
/// rebuild. The relay's policy is replayed (its draws depend on nothing
/// but the seed and the order of datagrams).
fn recoverable_losses(imp: &Impairment, from: u64, to: u64) -> u64 {
    let mut policy = Policy::new(imp.clone());
    let now = Instant::now();
    let lost: Vec<bool> = (0..=to)
        .map(|_| policy.decide(now).release_after.is_empty())
        .collect();
    (from as usize..to as usize)
        .filter(|&k| lost[k] && !lost[k + 1])
        .count() as u64
}

/// A pair of runs at one loss: without and with FEC, at the same time.
fn pair(loss: f64, seed: u64) -> (Outcome, Outcome) {
    let tag = (loss * 100.0).round() as u32;
    let plain = std::thread::spawn(move || run(&format!("opusfec-{tag}-plain"), loss, seed, false));
    let fec = run(&format!("opusfec-{tag}-fec"), loss, seed, true);
    (plain.join().expect("the run without FEC"), fec)
}

/// The bar's misses for one pair.
fn misses(loss: f64, seed: u64, plain: &Outcome, fec: &Outcome) -> Vec<String> {
    let mut m = Vec::new();
    let (p, f) = (plain.concealed_pct(), fec.concealed_pct());
    // Without FEC every loss is concealed: the share is about the loss.
    if p < loss * 100.0 * 0.5 {
        m.push(format!(
            "without FEC only {p:.1} % concealed at {:.0} % loss: the loss did not happen",
            loss * 100.0
        ));
    }
    if f * 3.0 > p {
        m.push(format!(
            "with FEC {f:.2} % concealed, more than a third of {p:.2} % without"
        ));
    }
    let imp = Impairment {
        seed,
        loss,
        ..Impairment::default()
    };
    let to = fec.window_from + fec.window.packets + fec.window.lost;
    let can = recoverable_losses(&imp, fec.window_from, to);
    if fec.window.fec * 3 < can * 2 {
        m.push(format!(
            "{} packets rebuilt from FEC, of {can} losses whose next packet came",
            fec.window.fec
        ));
    }
    if fec.total.fec > fec.total.lost {
        m.push(format!(
            "{} rebuilt from FEC but only {} lost",
            fec.total.fec, fec.total.lost
        ));
    }
    // Decoding, FEC and concealment allocate nothing on the realtime
    // threads (the statistics line's own count).
    for (o, what) in [(plain, "without FEC"), (fec, "with FEC")] {
        let allocs = o
            .log
            .rsplit("rt-allocs ")
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok());
        if allocs != Some(0) {
            m.push(format!("{what}: rt-allocs {allocs:?}"));
        }
    }
    if plain.total.fec != 0 {
        m.push(format!(
            "{} rebuilt from FEC without FEC sent",
            plain.total.fec
        ));
    }
    m
}

#[test]
fn fec_conceals_a_third_or_less_of_what_plain_opus_conceals() {
    let rows = [(0.05, 51u64), (0.10, 52), (0.20, 53)];
    let mut table = Vec::new();
    let mut failed = Vec::new();
    for (loss, seed) in rows {
        let (mut plain, mut fec) = pair(loss, seed);
        let mut m = misses(loss, seed, &plain, &fec);
        let stalled = plain.device_stalled.or(fec.device_stalled);
        if !m.is_empty() && stalled.is_some() {
            // The sound server (by the recording's growth, not the
            // receiver's word) stood still: the run says nothing certain
            // about the network. Once more, judged whatever happens.
            println!(
                "{:.0} %: missed {m:?} while the sound server stood still {} ms; again",
                loss * 100.0,
                stalled.unwrap_or_default().as_millis()
            );
            (plain, fec) = pair(loss, seed);
            m = misses(loss, seed, &plain, &fec);
        }
        table.push((loss, plain, fec));
        if !m.is_empty() {
            failed.push(format!("{:.0} % loss: {m:?}", loss * 100.0));
        }
    }
    println!(
        "\nOpus 96k stereo 20 ms through random loss; counters over [{}, {}] s\n\
         {:<6} {:<5} {:>5} {:>6} {:>5} {:>5} {:>6} {:>5} {:>7} {:>8} {:>6} {:>7}",
        SETTLE.as_secs_f64(),
        READ_AT.as_secs_f64(),
        "loss",
        "fec",
        "sent",
        "r.lost",
        "lost",
        "late",
        "conc",
        "fec",
        "conc%",
        "target",
        "xrun",
        "starved"
    );
    for (loss, plain, fec) in &table {
        for (o, on) in [(plain, "no"), (fec, "yes")] {
            println!(
                "{:<6} {:<5} {:>5} {:>6} {:>5} {:>5} {:>6} {:>5} {:>7.2} {:>8.1} {:>6} {:>7}",
                format!("{:.0} %", loss * 100.0),
                on,
                o.relay.received,
                o.relay.lost(),
                o.window.lost,
                o.window.late,
                o.window.concealed_ms,
                o.window.fec,
                o.concealed_pct(),
                o.window.target_ms,
                o.window.underruns,
                o.window.starved
            );
        }
    }
    for ((loss, plain, fec), (_, seed)) in table.iter().zip(rows) {
        let imp = Impairment {
            seed,
            loss: *loss,
            ..Impairment::default()
        };
        let to = fec.window_from + fec.window.packets + fec.window.lost;
        println!(
            "{:.0} %: concealed {:.2} % with FEC against {:.2} % without (ratio {:.2}); \
             {} rebuilt from FEC of {} losses whose next packet came",
            loss * 100.0,
            fec.concealed_pct(),
            plain.concealed_pct(),
            fec.concealed_pct() / plain.concealed_pct().max(1e-9),
            fec.window.fec,
            recoverable_losses(&imp, fec.window_from, to)
        );
    }
    if !failed.is_empty() {
        for (_, plain, fec) in &table {
            println!(
                "--- without FEC:\n{}\n--- with FEC:\n{}",
                plain.log, fec.log
            );
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

/// What the sender puts on the wire with `--fec --expected-loss P` for the
/// matrix's speech: at least 90 % of the packets carry FEC (their LBRR
/// flag, read as libopus's decoder reads it; the rest are quiet frames
/// and the stream's silent end), at each loss the matrix uses; none
/// without `--fec`. Catches an encoder asked for FEC that codes in CELT
/// (no FEC there) or gives it no bits.
#[test]
fn sender_with_fec_protects_the_packets_of_speech() {
    let dir = common::TestDir::new("opusfec-wire");
    let wav = dir.file("speech.wav");
    let length = speech_wav(&dir, &wav);
    let runs: Vec<(&str, Vec<&str>)> = vec![
        ("none", vec![]),
        ("5", vec!["--fec", "--expected-loss", "5"]),
        ("10", vec!["--fec", "--expected-loss", "10"]),
        ("20", vec!["--fec", "--expected-loss", "20"]),
    ];
    let handles: Vec<_> = runs
        .into_iter()
        .map(|(name, extra)| {
            let wav = wav.clone();
            std::thread::spawn(move || {
                let sink = UdpSocket::bind("127.0.0.1:0").expect("bind");
                sink.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                let mut args = vec!["--codec", "opus", "--bitrate", "96k"];
                args.extend_from_slice(&extra);
                let mut tx = sender(&wav, sink.local_addr().expect("addr"), &args);
                let mut buf = [0u8; 2048];
                let mut payloads = Vec::new();
                let mut from_sender = None;
                while let Ok((n, from)) = sink.recv_from(&mut buf) {
                    // Only the sender's RTP counts: its first datagram
                    // names its address, and anything else reaching this
                    // ephemeral port (another test's stream) is not its.
                    if n < 12 || buf[0] >> 6 != 2 || *from_sender.get_or_insert(from) != from {
                        continue;
                    }
                    payloads.push(buf[12..n].to_vec());
                }
                tx.terminate(Duration::from_secs(1));
                (name, payloads)
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("sender run"))
        .collect();
    for (name, payloads) in &results {
        let flagged = payloads
            .iter()
            .filter(|p| netspeaker::audio::opus::carries_fec(p))
            .count();
        println!(
            "--expected-loss {name}: FEC in {flagged} of {} packets",
            payloads.len()
        );
    }
    for (name, payloads) in &results {
        let flagged = payloads
            .iter()
            .filter(|p| netspeaker::audio::opus::carries_fec(p))
            .count();
        let expected = (length.as_secs_f64() / 0.020).ceil() as usize;
        assert_eq!(payloads.len(), expected, "{name}: 20 ms packets");
        if *name == "none" {
            assert_eq!(flagged, 0, "FEC without --fec");
        } else {
            assert!(flagged * 10 >= payloads.len() * 9, "{name}: {flagged}");
        }
    }
}
