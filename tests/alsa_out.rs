//! The ALSA output stage against real ALSA devices with no sound card:
//! PulseAudio's null sink (paced, rw only), JACK's dummy backend (paced,
//! mmap through plug, FLOAT_LE only when bare), each behind alsa-lib's file
//! plugin so that what reached the device can be compared with what was
//! written.
//!
//! Every test runs its device work in a child (the test binary re-executed
//! for that one test, see `common::run_child`): alsa-lib takes its
//! configuration from `ALSA_CONFIG_PATH` and the sound servers from
//! `PULSE_SERVER`/`JACK_DEFAULT_SERVER`, which are per process, so each
//! test gets its own servers and recordings while the tests still run in
//! parallel. The parent starts and kills the servers and checks results.

mod common;

use common::*;
use netspeaker::alsa::playback::{
    Access, AlsaError, AlsaOut, DeviceConfig, DeviceStatus, SampleFormat, WriteOutcome,
};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: common::alloc::Counting = common::alloc::Counting;

const RATE: u32 = 48_000;
const PERIOD: u32 = 480;

fn config(device: &str, access: Access) -> DeviceConfig {
    DeviceConfig {
        device: device.to_string(),
        access,
        rate: Some(RATE),
        channels: Some(2),
        period_frames: PERIOD,
        buffer_periods: 4,
    }
}

/// The test signal: 2 s of seeded stereo noise (unambiguous alignment).
fn signal(seconds: f64) -> Vec<i16> {
    noise(0x5eed_a15a, 2, (f64::from(RATE) * seconds) as usize, 20_000)
}

/// Writes `samples` one period at a time; returns the outcomes that were
/// not `Written` with the period index where they happened.
fn play(out: &mut AlsaOut, samples: &[f32]) -> Vec<(usize, WriteOutcome)> {
    let step = out.negotiated().period_frames * usize::from(out.negotiated().channels);
    let mut odd = Vec::new();
    let mut slowest = (0, Duration::ZERO);
    for (i, chunk) in samples.chunks(step).enumerate() {
        let t = Instant::now();
        let result = out.write(chunk);
        if t.elapsed() > slowest.1 {
            slowest = (i, t.elapsed());
        }
        match result {
            Ok(WriteOutcome::Written) => {}
            Ok(other) => odd.push((i, other)),
            Err(e) => panic!("write {i}: {e}"),
        }
    }
    // For the record (a device's start-up stall shows here), not asserted.
    report(
        "slowest_write",
        format_args!("period {} took {} ms", slowest.0, slowest.1.as_millis()),
    );
    odd
}

/// Hands the parent the counts of non-`Written` outcomes.
fn report_outcome_counts(odd: &[(usize, WriteOutcome)]) {
    let underruns = odd
        .iter()
        .filter(|(_, o)| *o == WriteOutcome::Underrun)
        .count();
    report("underruns", underruns);
    report("other_outcomes", odd.len() - underruns);
}

/// Only underruns, and at most two in the 2 s stream (see the callers).
fn assert_few_underruns(stdout: &str) {
    let count = |key: &str| -> usize {
        child_value(stdout, key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} not reported: {stdout}"))
    };
    let odd = child_value(stdout, "not_written").unwrap_or_default();
    assert_eq!(count("other_outcomes"), 0, "not Written/Underrun: {odd}");
    assert!(count("underruns") <= 2, "too many underruns in 2 s: {odd}");
}

/// In the child, right after the last write: the device's status for the
/// parent (see [`assert_status_while_playing`]).
fn report_status(out: &mut AlsaOut) {
    let now = netspeaker::service::clock::monotonic_ns();
    let status: Option<DeviceStatus> = out.status();
    let Some(s) = status else {
        report("status", "none");
        return;
    };
    report(
        "status",
        format_args!(
            "{} {} {} {} {}",
            s.delay_frames,
            s.avail_frames,
            now.abs_diff(s.htstamp_ns) / 1_000_000,
            now.saturating_sub(s.trigger_ns) / 1_000_000,
            out.negotiated().buffer_frames
        ),
    );
}

/// `status()` right after a blocking write: frames queued, timestamps on
/// the monotonic clock, the stream started during the writes.
fn assert_status_while_playing(stdout: &str) {
    let line = child_value(stdout, "status").expect("status reported");
    let v: Vec<i64> = line
        .split(' ')
        .map(|x| x.parse().unwrap_or_else(|_| panic!("status: {line}")))
        .collect();
    let [delay, avail, stamp_age_ms, since_trigger_ms, buffer] = v[..] else {
        panic!("status: {line}");
    };
    // The delay counts every frame not yet at the "DAC", a sound server's
    // own queue too (pulse: ~470 frames over the 1920 of the buffer were
    // seen), so it may exceed the ALSA buffer, by well under 100 ms here.
    let server_queue = i64::from(RATE) / 10;
    assert!(delay > 0 && delay <= buffer + server_queue, "delay: {line}");
    assert!(avail <= buffer, "avail: {line}");
    // Taken just now, and the stream was started during the 2 s of writes
    // before (a sound server may take a second or two to start one).
    assert!(stamp_age_ms < 200, "status stamp: {line}");
    assert!((200..10_000).contains(&since_trigger_ms), "trigger: {line}");
}

fn env_of(parts: &[Vec<(String, String)>]) -> Vec<(String, String)> {
    parts.concat()
}

fn assert_recording_equals(recorded: &[i16], sent: &[i16]) {
    let al = align(recorded, sent, 2, 0).expect("sent signal not found in the recording");
    let cmp = compare(recorded, sent, 2, al, 0);
    assert_eq!(
        al,
        Alignment {
            recording_frame: 0,
            sent_frame: 0
        },
        "the device recorded something before or instead of the signal's start"
    );
    assert_eq!(
        cmp.frames,
        sent.len() / 2,
        "not all frames recorded: {cmp:?}"
    );
    assert_eq!(cmp.mismatched_frames, 0, "{cmp:?}");
}

#[test]
fn rw_on_paced_pulse_device_records_bit_exact() {
    const NAME: &str = "rw_on_paced_pulse_device_records_bit_exact";
    if in_child(NAME) {
        let mut out = AlsaOut::open(&config("paced", Access::ReadWrite)).expect("open paced");
        let n = out.negotiated().clone();
        assert_eq!(
            (n.format, n.rate, n.channels, n.access),
            (SampleFormat::S16, RATE, 2, Access::ReadWrite)
        );
        let start = Instant::now();
        let odd = play(&mut out, &to_f32(&signal(2.0)));
        report("elapsed_ms", start.elapsed().as_millis());
        report_status(&mut out);
        report("not_written", format_args!("{odd:?}"));
        report_outcome_counts(&odd);
        out.close();
        return;
    }
    let dir = TestDir::new("rw-paced");
    let alsa = AlsaConfig::write(&dir.path);
    let pulse = PulseServer::start(&dir.path);
    let stdout = child_ok(&run_child(NAME, &env_of(&[alsa.env(), pulse.env()])));
    eprintln!("{stdout}");
    // Paced: 2 s of audio cannot be accepted much faster than real time
    // (the device buffer holds 40 ms).
    let elapsed: u64 = child_value(&stdout, "elapsed_ms")
        .and_then(|v| v.parse().ok())
        .expect("elapsed");
    assert!(
        elapsed >= 1900,
        "2 s written in {elapsed} ms: device not paced"
    );
    // Writes that were not plainly `Written`. Nothing suspends here, so
    // only underruns may appear, and only from the writer being starved
    // longer than the device's 40 ms buffer: the paced device itself does
    // not stall. A loaded 2-core machine can starve an ordinary-priority
    // child that long now and then; more than two in 2 s means the write
    // path, not the scheduler, is slow.
    assert_few_underruns(&stdout);
    assert_status_while_playing(&stdout);
    assert_recording_equals(&read_s16le(&alsa.paced), &signal(2.0));
}

#[test]
fn mmap_on_jack_plug_device_records_exact() {
    const NAME: &str = "mmap_on_jack_plug_device_records_exact";
    if in_child(NAME) {
        let mut out = AlsaOut::open(&config("jplug", Access::Mmap)).expect("open jplug mmap");
        let n = out.negotiated().clone();
        assert_eq!(
            (n.format, n.rate, n.channels, n.access),
            (SampleFormat::S16, RATE, 2, Access::Mmap)
        );
        let start = Instant::now();
        let odd = play(&mut out, &to_f32(&signal(2.0)));
        report("elapsed_ms", start.elapsed().as_millis());
        report_status(&mut out);
        report("not_written", format_args!("{odd:?}"));
        report_outcome_counts(&odd);
        out.close();
        return;
    }
    let dir = TestDir::new("mmap-jack");
    let alsa = AlsaConfig::write(&dir.path);
    let jack = JackServer::start(&format!("ns-mmap-{}", std::process::id()), RATE, 256);
    let stdout = child_ok(&run_child(NAME, &env_of(&[alsa.env(), jack.env()])));
    eprintln!("{stdout}");
    let elapsed: u64 = child_value(&stdout, "elapsed_ms")
        .and_then(|v| v.parse().ok())
        .expect("elapsed");
    assert!(
        elapsed >= 1900,
        "2 s written in {elapsed} ms: device not paced"
    );
    // jfile records the plug's FLOAT_LE output, plus up to a period of
    // padding at the end: compare the signal's length.
    let recorded = f32_to_s16(&read_f32le(&alsa.jfile));
    let sent = signal(2.0);
    assert!(
        recorded.len() >= sent.len(),
        "recording shorter ({}) than sent ({})",
        recorded.len(),
        sent.len()
    );
    // As for pulse above: JACK's dummy backend is timer-paced and never
    // suspends; only a starved writer can underrun its 40 ms buffer.
    assert_few_underruns(&stdout);
    assert_status_while_playing(&stdout);
    assert_recording_equals(&recorded[..sent.len()], &sent);
}

#[test]
fn bare_jack_device_negotiates_float_at_server_rate() {
    const NAME: &str = "bare_jack_device_negotiates_float_at_server_rate";
    const SERVER_RATE: u32 = 44_100;
    if in_child(NAME) {
        // Ask for the tutorial's stream: 8 kHz mono; the device offers
        // neither, so open() must settle for what it has.
        let asked = DeviceConfig {
            rate: Some(8_000),
            channels: Some(1),
            period_frames: 160,
            ..config("jack", Access::ReadWrite)
        };
        let out = AlsaOut::open(&asked).expect("open bare jack");
        let n = out.negotiated().clone();
        report(
            "negotiated",
            format_args!("{:?} {} {}", n.format, n.rate, n.channels),
        );
        drop(out);
        // The same through a file plugin, to show the caller's converted
        // frames reach the device as written.
        let mut out = AlsaOut::open(&DeviceConfig {
            device: "jfile".into(),
            ..asked
        })
        .expect("open jfile");
        let rate = out.negotiated().rate;
        let tone = to_f32(&sine(rate, 2, 1000.0, rate as usize / 2, 16_000));
        play(&mut out, &tone);
        out.close();
        return;
    }
    let dir = TestDir::new("bare-jack");
    let alsa = AlsaConfig::write(&dir.path);
    let jack = JackServer::start(&format!("ns-bare-{}", std::process::id()), SERVER_RATE, 256);
    let stdout = child_ok(&run_child(NAME, &env_of(&[alsa.env(), jack.env()])));
    assert_eq!(
        child_value(&stdout, "negotiated").as_deref(),
        Some(format!("F32 {SERVER_RATE} 2").as_str()),
        "the bare jack device takes FLOAT_LE at the server's rate, 2 ports"
    );
    let recorded = read_f32le(&alsa.jfile);
    let sent = to_f32(&sine(
        SERVER_RATE,
        2,
        1000.0,
        SERVER_RATE as usize / 2,
        16_000,
    ));
    assert!(
        recorded.len() >= sent.len(),
        "recording shorter ({}) than sent ({})",
        recorded.len(),
        sent.len()
    );
    assert_eq!(
        &recorded[..sent.len()],
        &sent[..],
        "float frames changed on the way to the device"
    );
}

#[test]
fn underrun_on_paced_device_recovers_in_place() {
    const NAME: &str = "underrun_on_paced_device_recovers_in_place";
    if in_child(NAME) {
        let mut out = AlsaOut::open(&config("paced", Access::ReadWrite)).expect("open paced");
        let sent = to_f32(&signal(1.0));
        let (first, second) = sent.split_at(sent.len() / 2);
        let before = play(&mut out, first);
        let delay = out.delay_frames();
        // The device buffer holds 40 ms: 300 ms without writes runs it dry.
        std::thread::sleep(Duration::from_millis(300));
        let after = play(&mut out, second);
        report("before", format_args!("{before:?}"));
        report("delay_while_playing", format_args!("{delay:?}"));
        report("after", format_args!("{after:?}"));
        out.close();
        return;
    }
    let dir = TestDir::new("underrun");
    let alsa = AlsaConfig::write(&dir.path);
    let pulse = PulseServer::start(&dir.path);
    let stdout = child_ok(&run_child(NAME, &env_of(&[alsa.env(), pulse.env()])));
    // The first write after the pause reports the underrun and queues its
    // frames; the rest of the stream is written normally.
    let after = child_value(&stdout, "after").expect("after");
    assert!(
        after.starts_with("[(0, Underrun)"),
        "first write after the pause: {after}"
    );
    let delay = child_value(&stdout, "delay_while_playing").expect("delay");
    assert!(delay.starts_with("Some("), "delay while playing: {delay}");
    // Nothing written was lost or duplicated by the recovery.
    assert_recording_equals(&read_s16le(&alsa.paced), &signal(1.0));
}

#[test]
fn pulse_server_killed_gives_device_lost_then_reopen_works() {
    const NAME: &str = "pulse_server_killed_gives_device_lost_then_reopen_works";
    if in_child(NAME) {
        if std::env::var("PHASE").as_deref() == Ok("reopen") {
            let mut out =
                AlsaOut::open(&config("pulse", Access::ReadWrite)).expect("reopen after restart");
            let odd = play(&mut out, &to_f32(&signal(0.3)));
            report("reopened", format_args!("{odd:?}"));
            out.close();
            return;
        }
        let pid: i32 = std::env::var("PULSE_PID")
            .ok()
            .and_then(|v| v.parse().ok())
            .expect("PULSE_PID");
        let mut out = AlsaOut::open(&config("pulse", Access::ReadWrite)).expect("open pulse");
        let sent = to_f32(&signal(0.5));
        play(&mut out, &sent);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill pulseaudio");
        let killed = Instant::now();
        let step = PERIOD as usize * 2;
        // The loss is met on the playout thread: reporting it must not
        // allocate (Rust-side; alsa-lib's C malloc is not counted).
        common::alloc::count_this_thread(true);
        // Bounded: 10 s of periods; a hang would end in the parent's view.
        for _ in 0..1000 {
            let result = out.write(&sent[..step]);
            if result.is_err() {
                common::alloc::count_this_thread(false);
                report("loss_allocations", common::alloc::take());
            }
            match result {
                Ok(_) => {}
                Err(e @ AlsaError::DeviceLost { .. }) => {
                    report("lost_after_ms", killed.elapsed().as_millis());
                    report("error", format_args!("{e}"));
                    return;
                }
                Err(e) => panic!("not DeviceLost: {e:?}"),
            }
        }
        panic!("10 s of writes after the server was killed and no error");
    }
    let dir = TestDir::new("pulse-kill");
    let alsa = AlsaConfig::write(&dir.path);
    let mut pulse = PulseServer::start(&dir.path);
    let mut env = env_of(&[alsa.env(), pulse.env()]);
    env.push((
        "PULSE_PID".into(),
        pulse.pid().expect("pulse pid").to_string(),
    ));
    let stdout = child_ok(&run_child(NAME, &env));
    eprintln!("{stdout}");
    pulse.kill(); // reap it
    let lost_ms: u64 = child_value(&stdout, "lost_after_ms")
        .and_then(|v| v.parse().ok())
        .expect("lost");
    // About a second is the design bound; the slack is for a loaded machine.
    assert!(lost_ms <= 3000, "device loss took {lost_ms} ms to report");
    assert_eq!(
        child_value(&stdout, "loss_allocations").as_deref(),
        Some("0"),
        "writing into a lost device allocated"
    );
    assert!(
        child_value(&stdout, "error").is_some_and(|e| e.contains("'pulse' was lost")),
        "{stdout}"
    );

    pulse.restart();
    let mut env = env_of(&[alsa.env(), pulse.env()]);
    env.push(("PHASE".into(), "reopen".into()));
    let stdout = child_ok(&run_child(NAME, &env));
    assert!(child_value(&stdout, "reopened").is_some(), "{stdout}");
}

#[test]
fn missing_device_is_reported_by_name() {
    const NAME: &str = "missing_device_is_reported_by_name";
    if in_child(NAME) {
        let err = AlsaOut::open(&config("hw:5", Access::ReadWrite))
            .expect_err("hw:5 does not exist here");
        report("error", format_args!("{err}"));
        return;
    }
    let dir = TestDir::new("missing");
    let alsa = AlsaConfig::write(&dir.path);
    let stdout = child_ok(&run_child(NAME, &alsa.env()));
    let err = child_value(&stdout, "error").expect("error line");
    assert!(err.contains("'hw:5'"), "{err}");
}

#[test]
fn pulse_server_hung_gives_device_lost_not_a_hang() {
    const NAME: &str = "pulse_server_hung_gives_device_lost_not_a_hang";
    if in_child(NAME) {
        let pid: i32 = std::env::var("PULSE_PID")
            .ok()
            .and_then(|v| v.parse().ok())
            .expect("PULSE_PID");
        let mut out = AlsaOut::open(&config("pulse", Access::ReadWrite)).expect("open pulse");
        let sent = to_f32(&signal(0.5));
        play(&mut out, &sent);
        // A stopped server keeps its socket open: a blocking write would
        // wait forever (tried with aplay); ours must give up.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .expect("stop pulseaudio");
        let stopped = Instant::now();
        let step = PERIOD as usize * 2;
        for _ in 0..1000 {
            match out.write(&sent[..step]) {
                Ok(_) => {}
                Err(e @ AlsaError::DeviceLost { .. }) => {
                    report("lost_after_ms", stopped.elapsed().as_millis());
                    report("error", format_args!("{e}"));
                    // Closing a PCM whose server hangs blocks in the pulse
                    // plugin until its 30 s timeout: the device is Send, so
                    // the opener thread can close it while the playout
                    // thread goes on. The process exits without waiting.
                    let closing = Instant::now();
                    let _closer = std::thread::spawn(move || out.close());
                    report("close_ms", closing.elapsed().as_millis());
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                    std::process::exit(0);
                }
                Err(e) => panic!("not DeviceLost: {e:?}"),
            }
        }
        panic!("10 s of writes into a stopped server and no error");
    }
    let dir = TestDir::new("pulse-hang");
    let alsa = AlsaConfig::write(&dir.path);
    let mut pulse = PulseServer::start(&dir.path);
    let mut env = env_of(&[alsa.env(), pulse.env()]);
    env.push((
        "PULSE_PID".into(),
        pulse.pid().expect("pulse pid").to_string(),
    ));
    let out = run_child(NAME, &env);
    pulse.kill(); // SIGKILL ends a stopped process too
    let stdout = child_ok(&out);
    eprintln!("{stdout}");
    let lost_ms: u64 = child_value(&stdout, "lost_after_ms")
        .and_then(|v| v.parse().ok())
        .expect("lost");
    // The stall bound is 1 s once the device was seen consuming; the slack
    // is for a loaded machine.
    assert!(lost_ms <= 3000, "a hung server took {lost_ms} ms to report");
    assert!(
        child_value(&stdout, "error").is_some_and(|e| e.contains("no progress")),
        "{stdout}"
    );
}

#[test]
fn rw_and_mmap_on_capture_device_record_s16_bit_exact() {
    const NAME: &str = "rw_and_mmap_on_capture_device_record_s16_bit_exact";
    if in_child(NAME) {
        let access = match std::env::var("ACCESS").as_deref() {
            Ok("mmap") => Access::Mmap,
            _ => Access::ReadWrite,
        };
        let mut out = AlsaOut::open(&config("capture", access)).expect("open capture");
        assert_eq!(out.negotiated().format, SampleFormat::S16);
        // Not a whole number of periods: the last write is short.
        let sent = signal(0.505);
        play(&mut out, &to_f32(&sent));
        out.close();
        return;
    }
    for access in ["rw", "mmap"] {
        let dir = TestDir::new(&format!("capture-{access}"));
        let alsa = AlsaConfig::write(&dir.path);
        let mut env = alsa.env();
        env.push(("ACCESS".into(), access.into()));
        child_ok(&run_child(NAME, &env));
        let recorded = read_s16le(&alsa.capture);
        let sent = signal(0.505);
        assert_eq!(recorded.len(), sent.len(), "{access}: frames recorded");
        assert!(
            recorded == sent,
            "{access}: recording differs from what was written"
        );
    }
}

/// The harness itself: alignment must find a start-up offset in either
/// direction and the comparison must see a changed sample.
#[test]
fn harness_aligns_and_compares() {
    let sent = noise(7, 2, 4800, 10_000);
    // Device started late: 300 frames of silence first.
    let mut late = vec![0i16; 600];
    late.extend_from_slice(&sent);
    let al = align(&late, &sent, 2, 0).expect("aligned");
    assert_eq!(
        al,
        Alignment {
            recording_frame: 300,
            sent_frame: 0
        }
    );
    assert_eq!(compare(&late, &sent, 2, al, 0).mismatched_frames, 0);
    // Receiver joined late: the recording starts 1000 frames into the signal.
    let joined = sent[2000..].to_vec();
    let al = align(&joined, &sent, 2, 0).expect("aligned");
    assert_eq!(
        al,
        Alignment {
            recording_frame: 0,
            sent_frame: 1000
        }
    );
    // One changed sample is one mismatched frame, within tolerance or not.
    let mut bad = late.clone();
    bad[600 + 2 * 4000 + 1] = bad[600 + 2 * 4000 + 1].wrapping_add(3);
    let cmp = compare(
        &bad,
        &sent,
        2,
        Alignment {
            recording_frame: 300,
            sent_frame: 0,
        },
        0,
    );
    assert_eq!(
        (cmp.mismatched_frames, cmp.first_mismatch, cmp.max_abs_diff),
        (1, Some(4000), 3)
    );
    let cmp = compare(
        &bad,
        &sent,
        2,
        Alignment {
            recording_frame: 300,
            sent_frame: 0,
        },
        3,
    );
    assert_eq!(cmp.mismatched_frames, 0);
}

#[test]
fn write_does_not_allocate() {
    const NAME: &str = "write_does_not_allocate";
    if in_child(NAME) {
        let sent = to_f32(&signal(1.0));
        let period = PERIOD as usize * 2;
        for access in [Access::ReadWrite, Access::Mmap] {
            let mut out = AlsaOut::open(&config("capture", access)).expect("open capture");
            // The first write may let alsa-lib settle; ours is Rust-side
            // allocation in the steady state (alsa-lib's C malloc is not
            // seen by a Rust allocator).
            out.write(&sent[..period]).expect("first write");
            common::alloc::count_this_thread(true);
            let mut results = 0usize;
            for chunk in sent.chunks(period).skip(1) {
                results += usize::from(out.write(chunk).is_ok());
            }
            let _ = out.delay_frames();
            let _ = out.status();
            common::alloc::count_this_thread(false);
            report(
                &format!("allocations_{}", access.name()),
                common::alloc::take(),
            );
            report(&format!("ok_writes_{}", access.name()), results);
            out.close();
        }
        return;
    }
    let dir = TestDir::new("no-alloc");
    let alsa = AlsaConfig::write(&dir.path);
    let stdout = child_ok(&run_child(NAME, &alsa.env()));
    for access in ["rw", "mmap"] {
        let value = |key: &str| {
            child_value(&stdout, &format!("{key}_{access}")).and_then(|v| v.parse::<usize>().ok())
        };
        assert_eq!(value("ok_writes"), Some(99), "{access}: {stdout}");
        assert_eq!(value("allocations"), Some(0), "{access}: write allocated");
    }
}
