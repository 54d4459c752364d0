//! Faults and recovery, end to end: the real `netspeaker` plays a looping
//! tone from the real `netspeaker-send` into a paced device
//! (tests/common/rig.rs: PulseAudio's null sink, or JACK's dummy backend
//! where the sound server's own stream start-up would be timed as the
//! receiver's), and a fault is injected mid-stream — the sound server
//! stopped and restarted, the sender restarted (new SSRC and
//! timestamps), the receiver stopped with SIGSTOP for 2 s. Input: the
//! fault. Output: the recovery time, measured from the moment the cause
//! went away to the moment the device plays the tone steadily again (wall
//! time, from how the recording grows: a stalled device shows as well as a
//! silent one), printed with the dropout by the recording's own sample
//! clock, and asserted ≤ 1 s (issue 6).

mod common;
#[path = "common/rig.rs"]
mod rig;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rig::{sender, write_wav, Bench, Proc, Progress};

/// L16 16 kHz mono, a 440 Hz tone at amplitude 8000 (RMS ≈ 5657).
const RATE: u32 = 16_000;
const BLOCK_MS: usize = 10;
/// A 10 ms block "has the tone" above half its RMS: concealment's fade
/// and silence fall below within a few blocks, the tone never does.
const TONE_RMS: f64 = 8000.0 / 32768.0 / std::f64::consts::SQRT_2;
const PRESENT: f64 = TONE_RMS / 2.0;

/// The device's rate: the stream's on PulseAudio, the server's on JACK.
fn device_rate(bench: &Bench) -> u32 {
    bench.jack.as_ref().map_or(RATE, |j| j.rate)
}

/// Frames per 10 ms block at the device's rate.
fn block(bench: &Bench) -> usize {
    device_rate(bench) as usize * BLOCK_MS / 1000
}
/// The bar for every fault.
const RECOVERY: Duration = Duration::from_secs(1);
/// How long the tone runs after the fault.
const AFTER: Duration = Duration::from_secs(4);

fn tone_file(bench: &Bench) -> std::path::PathBuf {
    let wav = bench.dir.file("tone.wav");
    write_wav(
        &wav,
        RATE,
        1,
        &common::sine(RATE, 1, 440.0, RATE as usize * 2, 8000),
    );
    wav
}

/// One fault at a time: each test runs a sound server, the receiver and a
/// sender in real time, and on a 2-core machine three at once starve the
/// servers (a JACK server took over 5 s to take its client back).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next one may still run.
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn start(bench: &Bench) -> (Proc, Proc) {
    let rx = bench.receiver(&["--rtp-format", "96=L16/16000/1"]);
    let tx = sender(&tone_file(bench), bench.addr(), &["--loop"]);
    (rx, tx)
}

/// Stops the receiver (closing the device completes the recording) and
/// returns the recording as 10 ms blocks: true where the tone is present.
fn finish(bench: &Bench, mut rx: Proc, mut tx: Proc) -> (Vec<bool>, String) {
    tx.terminate(Duration::from_secs(1));
    assert!(
        rx.terminate(Duration::from_secs(3)),
        "the receiver ignored SIGTERM:\n{}",
        rx.log.text()
    );
    let (mono, _) = bench.recorded_mono(RATE);
    let present = mono
        .chunks(block(bench))
        .map(|c| {
            let e: f64 = c.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
            (e / c.len() as f64).sqrt() > PRESENT
        })
        .collect();
    (present, rx.log.text())
}

/// Where the recording is now, in blocks: the file plugin appends as the
/// device takes audio (in chunks of at most a buffer, 15 ms here).
fn position(bench: &Bench) -> usize {
    bench.recorded_frames() / block(bench)
}

/// The longest run of blocks without the tone that starts at or after
/// `from` (less 300 ms for the plugin's chunking and the device buffer)
/// and ends before the last block with the tone: (its first block, its
/// length in blocks). Earlier dropouts (the start) are not this fault's.
fn dropout_after(present: &[bool], from: usize) -> (usize, usize) {
    let first = from.saturating_sub(blocks(Duration::from_millis(300)));
    let last = present.iter().rposition(|&p| p).unwrap_or(0);
    let mut best = (first, 0);
    let mut run_start = first;
    for (i, &p) in present.iter().enumerate().take(last + 1).skip(first) {
        if p {
            if i - run_start > best.1 {
                best = (run_start, i - run_start);
            }
            run_start = i + 1;
        }
    }
    best
}

/// The sound server's own delay in starting a newly opened stream (the receiver
/// logs it at debug level as "consuming after N ms"): part of every reopen
/// here, though not the receiver's doing; printed next to the recovery.
fn stream_start_stalls(log: &[(Instant, String)], since: Instant) -> Vec<String> {
    log.iter()
        .filter(|(t, l)| *t >= since && l.contains("consuming after"))
        .filter_map(|(_, l)| l.rsplit("after ").next().map(str::to_string))
        .collect()
}

/// The wall-clock recovery: the first moment at or after `cause_gone`
/// from which the device plays the tone steadily — over the next second
/// the recording grows by at least 0.9 s of frames (the device consumes:
/// no stall) and at least 95 % of those frames' blocks hold the tone (no
/// silence, no stale concealment). None if that never happens.
fn steady_from(
    samples: &[(Instant, usize)],
    present: &[bool],
    rate: u32,
    cause_gone: Instant,
) -> Option<Duration> {
    let block = rate as usize * BLOCK_MS / 1000;
    let second = Duration::from_secs(1);
    for (i, &(t, f)) in samples.iter().enumerate() {
        if t < cause_gone {
            continue;
        }
        let (_, g) = *samples[i..].iter().find(|(u, _)| *u >= t + second)?;
        if g.saturating_sub(f) < rate as usize * 9 / 10 {
            continue;
        }
        let window = present.get(f / block..g / block).unwrap_or(&[]);
        let on = window.iter().filter(|&&p| p).count();
        if !window.is_empty() && on * 100 >= window.len() * 95 {
            return Some(t.duration_since(cause_gone));
        }
    }
    None
}

fn blocks(d: Duration) -> usize {
    (d.as_millis() as usize).div_ceil(BLOCK_MS)
}

fn ms(n_blocks: usize) -> Duration {
    Duration::from_millis((n_blocks * BLOCK_MS) as u64)
}

/// Prints the fault's figures and asserts the wall-clock recovery.
#[allow(clippy::too_many_arguments)]
fn judge(
    fault: &str,
    bench: &Bench,
    progress: &Progress,
    present: &[bool],
    cause_gone: Instant,
    at_fault: usize,
    notes: String,
    log: &str,
) {
    let (at, dropout) = dropout_after(present, at_fault);
    let recovery = steady_from(&progress.samples(), present, device_rate(bench), cause_gone);
    println!(
        "\n{fault}: recovery {} after the cause went away (wall clock: the device \
         plays the tone steadily again); tone missing for {} ms of the recording \
         (its sample clock, at {} ms); {notes}",
        recovery.map_or("never".into(), |r| format!("{} ms", r.as_millis())),
        ms(dropout).as_millis(),
        ms(at).as_millis(),
    );
    let recovery =
        recovery.unwrap_or_else(|| panic!("{fault}: the tone never played steadily again:\n{log}"));
    assert!(
        recovery <= RECOVERY,
        "{fault}: recovery took {} ms (bar {} ms):\n{log}",
        recovery.as_millis(),
        RECOVERY.as_millis()
    );
}

/// The sound server is stopped mid-stream and started again 2 s later. The
/// receiver keeps running, reopens the device and plays again; the cause
/// is gone when the new server answers. On JACK's dummy backend, stopped
/// with SIGTERM: PulseAudio takes 1.5–1.9 s to start a newly opened stream
/// on this loaded machine (its "consuming after N ms"), which would be
/// timed here as the receiver's recovery (see `Bench::with_jack`).
#[test]
fn sound_server_stopped_and_restarted() {
    let _serial = serial();
    let mut bench = Bench::with_jack("fault-server");
    let (mut rx, tx) = start(&bench);
    let progress = Progress::start(&bench);
    std::thread::sleep(Duration::from_secs(3));
    let stopped = Instant::now();
    let at_fault = position(&bench);
    bench.stop_jack();
    assert!(
        rx.log
            .wait_for("reopening", stopped, Duration::from_secs(5))
            .is_some(),
        "the receiver did not notice the server was gone:\n{}",
        rx.log.text()
    );
    std::thread::sleep(Duration::from_secs(2).saturating_sub(stopped.elapsed()));
    bench.restart_jack();
    // restart_jack() returns once the server answers: the cause is gone.
    let restarted = Instant::now();
    // Searched from the stop, not from `restarted`: the receiver's retry can
    // reach the new server before jack_lsp (polled to decide it answers)
    // does; a CI run logged the reopen before `restarted` was taken.
    let opened = format!("device '{}' open", bench.device());
    let reopened = rx.log.wait_for(&opened, stopped, Duration::from_secs(5));
    // Losing the device must never end the receiver: a crash (seen: SIGSEGV
    // in libjack's jack_client_close, called from the detached close of the
    // lost device) is the product's failure, not a slow recovery.
    if let Some(status) = rx.ended() {
        panic!(
            "the receiver ended while its sound server restarted ({status}):\n{}",
            rx.log.text()
        );
    }
    std::thread::sleep(AFTER);
    let stalls = stream_start_stalls(&rx.log.lines(), restarted);
    let (present, log) = finish(&bench, rx, tx);
    let reopened =
        reopened.unwrap_or_else(|| panic!("the device was not reopened within 5 s:\n{log}"));
    judge(
        "sound server restart",
        &bench,
        &progress,
        &present,
        restarted,
        at_fault,
        format!(
            "the receiver reopened the device {} ms after the server answered \
             (0: before jack_lsp saw it; JACK; stream starts {stalls:?})",
            reopened.saturating_duration_since(restarted).as_millis()
        ),
        &log,
    );
}

/// The sender is stopped and another one started at once (a new process:
/// new SSRC, new sequence numbers and timestamps); the cause is gone when
/// the new sender starts. "new sender" is logged exactly once.
#[test]
fn sender_restarted_with_new_ssrc() {
    let _serial = serial();
    let bench = Bench::new("fault-sender");
    let (rx, mut tx) = start(&bench);
    let progress = Progress::start(&bench);
    std::thread::sleep(Duration::from_secs(3));
    let stopped = Instant::now();
    let at_fault = position(&bench);
    tx.terminate(Duration::from_secs(1));
    let tx2 = sender(&tone_file(&bench), bench.addr(), &["--loop"]);
    let started = Instant::now();
    std::thread::sleep(AFTER);
    let noticed = rx
        .log
        .matching("new sender")
        .first()
        .map(|(t, _)| t.saturating_duration_since(started));
    let stalls = stream_start_stalls(&rx.log.lines(), stopped);
    let (present, log) = finish(&bench, rx, tx2);
    let new_sender = log.matches("new sender").count();
    judge(
        "sender restart",
        &bench,
        &progress,
        &present,
        started,
        at_fault,
        format!(
            "senders switched in {} ms; \"new sender\" logged {new_sender}x, \
             {noticed:?} after the new sender started; PulseAudio stream starts {stalls:?}",
            started.duration_since(stopped).as_millis()
        ),
        &log,
    );
    assert_eq!(
        new_sender, 1,
        "\"new sender\" should be logged once:\n{log}"
    );
}

/// The sound server freezes (SIGSTOP) for 0.7 s mid-stream, then goes on:
/// the device takes nothing meanwhile, and afterwards PulseAudio may
/// restart the plugin's stream after an underrun, which its null sink
/// begins up to 2 s later. The audio that arrives while the device stands
/// still is kept (issue 11: "if the device is not ready (being opened,
/// recovering), keep the audio") and played out faster afterwards: no
/// overflow drop, the standstill logged, the tone back within 1 s. The
/// device is the one it was, on its clock: the clock estimate, known
/// before the freeze, stays known through it (it was unknown for 5-6 s
/// after every standstill or underrun while its device side started
/// over).
#[test]
fn sound_server_frozen_keeps_the_audio() {
    let _serial = serial();
    let bench = Bench::with_jack("fault-freeze");
    let (rx, tx) = start(&bench);
    let progress = Progress::start(&bench);
    // The estimate is known from about 6.5 s in.
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        rx.log
            .stats()
            .last()
            .is_some_and(|(_, s)| s.drift_uncertainty_ppm.is_some()),
        "the clock estimate is not known 8 s in:\n{}",
        rx.log.text()
    );
    let jackd = bench
        .jack
        .as_ref()
        .and_then(|j| j.pid())
        .expect("jackd runs");
    let pid = nix::unistd::Pid::from_raw(jackd as i32);
    let at_fault = position(&bench);
    let frozen = Instant::now();
    nix::sys::signal::kill(pid, Signal::SIGSTOP).expect("SIGSTOP jackd");
    std::thread::sleep(Duration::from_millis(700));
    nix::sys::signal::kill(pid, Signal::SIGCONT).expect("SIGCONT jackd");
    let continued = Instant::now();
    std::thread::sleep(AFTER);
    let stats = rx.log.stats();
    let last = stats.last().map(|(_, s)| s.clone());
    let unknown_after: Vec<Duration> = stats
        .iter()
        .filter(|(t, s)| *t >= frozen && s.drift_uncertainty_ppm.is_none())
        .map(|(t, _)| t.duration_since(frozen))
        .collect();
    let (present, log) = finish(&bench, rx, tx);
    let last = last.unwrap_or_else(|| panic!("no statistics line:\n{log}"));
    let stood = log
        .lines()
        .filter(|l| l.contains("the device took nothing for"))
        .count();
    judge(
        "sound server frozen 0.7 s",
        &bench,
        &progress,
        &present,
        continued,
        at_fault,
        format!(
            "standstills logged {stood}, overflow drops {}, underruns {}, stretched {} ms",
            last.overflow, last.underruns, last.stretched_ms
        ),
        &log,
    );
    assert!(
        stood >= 1,
        "the standstill of {} ms was not logged:\n{log}",
        (continued - frozen).as_millis()
    );
    assert_eq!(
        last.overflow, 0,
        "audio that arrived while the device stood still was dropped:\n{log}"
    );
    assert!(
        unknown_after.is_empty(),
        "the clock estimate was lost with the standstill: unknown on the lines \
         {unknown_after:?} after the freeze began\n{log}"
    );
}

/// The receiver is frozen with SIGSTOP for 2 s, then continued; the cause
/// is gone at SIGCONT. The packets that queued in the socket meanwhile are
/// stale: playing or dropping them is the receiver's choice, but the live
/// stream must play steadily within 1 s.
#[test]
fn receiver_stopped_and_continued() {
    let _serial = serial();
    // On JACK: PulseAudio takes 0.5–1.8 s to restart a stream here, which
    // would swamp the receiver's own recovery (see `Bench::with_jack`).
    let bench = Bench::with_jack("fault-sigstop");
    let (rx, tx) = start(&bench);
    let progress = Progress::start(&bench);
    std::thread::sleep(Duration::from_secs(3));
    rx.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(2));
    let at_fault = position(&bench);
    rx.signal(Signal::SIGCONT);
    let continued = Instant::now();
    std::thread::sleep(AFTER);
    let stalls = stream_start_stalls(&rx.log.lines(), continued);
    let (present, log) = finish(&bench, rx, tx);
    judge(
        "SIGSTOP 2 s",
        &bench,
        &progress,
        &present,
        continued,
        at_fault,
        format!("device stream starts after SIGCONT (JACK) {stalls:?}"),
        &log,
    );
}
