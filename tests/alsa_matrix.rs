//! Issue #11: wherever `aplay` plays, netspeaker's playback opens and plays.
//!
//! A matrix of ALSA configurations with no sound card (plug, plug with a
//! ttable, route, softvol, rate, dmix, pulse, jack, file, and a plug over a
//! 48 kHz-only device), each asked for 8 kHz mono, 44.1 kHz stereo and
//! 48 kHz stereo. For every cell the parent plays a 0.5 s WAV of that
//! format with `aplay -D device` and a child opens `AlsaOut` at that
//! format and writes 0.5 s; both results are compared with the table
//! below, which says what each does here and why. The table is exact, so a
//! change on either side (an alsa-lib upgrade, a change of the open ladder)
//! shows up as a failure naming the cell.
//!
//! Where the two differ it is because netspeaker converts itself: it takes
//! a device's own format and rate (bare `jack` takes only FLOAT_LE at the
//! server's rate, which `aplay` of an S16 file refuses) and falls back to
//! the device's own rate and channels when a plugin chain refuses the setup
//! asked at install time (a plug forced to 2 slave channels over pulse).
//! It never fails where `aplay` plays.

mod common;

use common::*;
use netspeaker::alsa::playback::{Access, AlsaError, AlsaOut, DeviceConfig, WriteOutcome};
use netspeaker::alsa::SampleFormat;
use std::path::Path;
use std::process::{Command, Stdio};

/// The formats asked of every device: the tutorial's VoIP stream, CD audio
/// and the usual native rate.
const ASKS: [(u32, u16); 3] = [(8_000, 1), (44_100, 2), (48_000, 2)];
const SECONDS: f64 = 0.5;

/// Devices added to the harness's `alsa.conf` (which already has `null`,
/// `capture` = file over null, `pulse`, `jack`, `jfile`, `jplug`).
const DEVICES: &str = r#"
pcm.plugpulse { type plug slave.pcm "pulse" }
pcm.plugpulse2ch { type plug slave { pcm "pulse" channels 2 } }
pcm.ttable_pulse { type plug slave { pcm "pulse" channels 2 } ttable.0.0 1 }
pcm.ttable_jack { type plug slave { pcm "jack" channels 2 } ttable.0.0 1 }
pcm.ttable_file { type plug slave { pcm "capture" channels 2 } ttable.0.0 1 }
pcm.route_file { type route slave { pcm "capture" channels 2 } ttable.0.0 1 ttable.1.1 1 }
pcm.route_pulse { type route slave { pcm "pulse" channels 2 } ttable.0.0 1 ttable.1.1 1 }
pcm.softvol { type softvol slave.pcm "plugpulse" control { name "Master" } }
pcm.rate_file { type rate slave { pcm "capture" rate 48000 } }
pcm.rate_pulse { type rate slave { pcm "pulse" rate 48000 } }
pcm.dmix_null { type dmix ipc_key 5678 slave { pcm "null" rate 48000 } }
pcm.plughw48 { type plug slave { pcm "jack" rate 48000 } }
pcm.jackmono { type jack playback_ports { 0 system:playback_1 } }
pcm.plugjack { type plug slave.pcm "jack" }
"#;

/// One device: whether `aplay` and netspeaker play each of [`ASKS`].
struct Case {
    device: &'static str,
    aplay: [bool; 3],
    ours: [bool; 3],
    /// Why the row reads as it does.
    why: &'static str,
}

const ALL: [bool; 3] = [true, true, true];
const NONE: [bool; 3] = [false, false, false];

const CASES: [Case; 15] = [
    Case {
        device: "pulse",
        aplay: ALL,
        ours: ALL,
        why: "PulseAudio's plugin takes any rate and channel count (rw only)",
    },
    Case {
        device: "plugpulse",
        aplay: ALL,
        ours: ALL,
        why: "plug over pulse passes everything through",
    },
    Case {
        device: "plugpulse2ch",
        aplay: [false, true, true],
        ours: ALL,
        why: "mono needs plug's route, and route needs mmap on its slave, which \
              pulse lacks: install fails (EINVAL); netspeaker falls back to the \
              device's own 48 kHz stereo",
    },
    Case {
        device: "ttable_pulse",
        aplay: NONE,
        ours: NONE,
        why: "issue #11's device: the ttable always inserts a route, which needs \
              mmap on its slave; pulse offers rw only, so alsa-lib refuses every \
              setup at install time, aplay too",
    },
    Case {
        device: "ttable_jack",
        aplay: ALL,
        ours: ALL,
        why: "the same ttable over a slave with mmap (jack) works",
    },
    Case {
        device: "ttable_file",
        aplay: ALL,
        ours: ALL,
        why: "the same ttable over the file plugin works",
    },
    Case {
        device: "route_file",
        aplay: ALL,
        ours: ALL,
        why: "route over the file plugin",
    },
    Case {
        device: "route_pulse",
        aplay: NONE,
        ours: NONE,
        why: "route needs mmap on its slave; pulse has none",
    },
    Case {
        device: "softvol",
        aplay: NONE,
        ours: NONE,
        why: "softvol keeps its volume in a card's mixer control; there is no card",
    },
    Case {
        device: "rate_file",
        aplay: ALL,
        ours: ALL,
        why: "the rate plugin converting to 48 kHz for the file plugin",
    },
    Case {
        device: "rate_pulse",
        aplay: NONE,
        ours: NONE,
        why: "the rate plugin needs mmap on its slave; pulse has none",
    },
    Case {
        device: "dmix_null",
        aplay: NONE,
        ours: NONE,
        why: "dmix shares a hw device's ring buffer; over null there is none",
    },
    Case {
        device: "jack",
        aplay: NONE,
        ours: ALL,
        why: "bare jack takes only FLOAT_LE at the server's rate: aplay of an S16 \
              file refuses the format, netspeaker takes what the device offers \
              and converts",
    },
    Case {
        device: "capture",
        aplay: ALL,
        ours: ALL,
        why: "the file plugin over null takes anything",
    },
    Case {
        device: "plughw48",
        aplay: ALL,
        ours: ALL,
        why: "a plug over a 48 kHz-only FLOAT device (jack), like plughw over a \
              USB DAC: the plug converts",
    },
];

/// A 16-bit PCM WAV file of a 440 Hz tone.
fn write_wav(path: &Path, rate: u32, channels: u16, seconds: f64) {
    let samples = sine(
        rate,
        channels,
        440.0,
        (f64::from(rate) * seconds) as usize,
        8_000,
    );
    let data_len = (samples.len() * 2) as u32;
    let mut bytes = Vec::with_capacity(44 + samples.len() * 2);
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data_len).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes()); // PCM
    bytes.extend_from_slice(&channels.to_le_bytes());
    bytes.extend_from_slice(&rate.to_le_bytes());
    bytes.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
    bytes.extend_from_slice(&(channels * 2).to_le_bytes());
    bytes.extend_from_slice(&16u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        bytes.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, bytes).expect("write wav");
}

/// Plays `wav` with `aplay -D device`; true when aplay succeeded.
fn aplay(device: &str, wav: &Path, env: &[(String, String)]) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["20", "aplay", "-q", "-D", device])
        .arg(wav)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("run aplay (apt-get install alsa-utils)");
    let err = String::from_utf8_lossy(&out.stderr);
    (
        out.status.success(),
        err.lines().last().unwrap_or("").to_string(),
    )
}

fn ask(device: &str, rate: Option<u32>, channels: Option<u16>) -> DeviceConfig {
    DeviceConfig {
        device: device.to_string(),
        access: Access::ReadWrite,
        rate,
        channels,
        // 10 ms periods (at the rate asked, or at 48 kHz).
        period_frames: rate.unwrap_or(48_000) / 100,
        buffer_periods: 4,
    }
}

/// Opens, writes `SECONDS` of a tone at what was granted, closes; the
/// outcome as a line for the parent.
fn open_and_play(config: &DeviceConfig) -> Result<String, AlsaError> {
    let mut out = AlsaOut::open(config)?;
    let n = out.negotiated().clone();
    let tone = to_f32(&sine(
        n.rate,
        n.channels,
        440.0,
        (f64::from(n.rate) * SECONDS) as usize,
        8_000,
    ));
    let step = n.period_frames * usize::from(n.channels);
    for chunk in tone.chunks(step) {
        match out.write(chunk)? {
            WriteOutcome::Written | WriteOutcome::Underrun => {}
            // Nothing here suspends; a suspend would mean frames not played.
            other => {
                return Ok(format!("not played: {other:?}"));
            }
        }
    }
    out.close();
    Ok(format!(
        "played {} {} Hz {} ch{}",
        n.format.alsa_name(),
        n.rate,
        n.channels,
        if n.fell_back { " (fell back)" } else { "" }
    ))
}

#[test]
fn wherever_aplay_plays_alsa_out_plays() {
    const NAME: &str = "wherever_aplay_plays_alsa_out_plays";
    if in_child(NAME) {
        let var = |k: &str| std::env::var(k).expect(k);
        let rate: u32 = var("ASK_RATE").parse().expect("rate");
        let channels: u16 = var("ASK_CHANNELS").parse().expect("channels");
        let config = ask(&var("DEVICE"), Some(rate), Some(channels));
        match open_and_play(&config) {
            Ok(line) => report("result", line),
            Err(e) => report("result", format_args!("refused: {e}")),
        }
        return;
    }
    let dir = TestDir::new("alsa-matrix");
    let alsa = AlsaConfig::write(&dir.path);
    let mut text = std::fs::read_to_string(&alsa.path).expect("read alsa.conf");
    text.push_str(DEVICES);
    std::fs::write(&alsa.path, text).expect("extend alsa.conf");
    let pulse = PulseServer::start(&dir.path);
    let jack = JackServer::start(&format!("ns-matrix-{}", std::process::id()), 48_000, 256);
    let env = [alsa.env(), pulse.env(), jack.env()].concat();
    let wavs: Vec<_> = ASKS
        .iter()
        .map(|&(rate, channels)| {
            let path = dir.file(&format!("tone-{rate}-{channels}.wav"));
            write_wav(&path, rate, channels, SECONDS);
            path
        })
        .collect();

    let mut table = String::new();
    let mut wrong = Vec::new();
    for case in &CASES {
        for (i, &(rate, channels)) in ASKS.iter().enumerate() {
            let (aplay_ok, aplay_err) = aplay(case.device, &wavs[i], &env);
            let mut child_env = env.clone();
            child_env.push(("DEVICE".into(), case.device.into()));
            child_env.push(("ASK_RATE".into(), rate.to_string()));
            child_env.push(("ASK_CHANNELS".into(), channels.to_string()));
            let stdout = child_ok(&run_child(NAME, &child_env));
            let ours = child_value(&stdout, "result").unwrap_or_default();
            let ours_ok = ours.starts_with("played");
            let line = format!(
                "{:>14} {rate:>5} Hz {channels} ch: aplay {} | netspeaker {ours}{}",
                case.device,
                if aplay_ok { "plays" } else { "fails" },
                if aplay_ok {
                    String::new()
                } else {
                    format!(" | aplay: {aplay_err}")
                }
            );
            table.push_str(&line);
            table.push('\n');
            if aplay_ok != case.aplay[i] || ours_ok != case.ours[i] {
                wrong.push(format!("{line}\n    expected: {}", case.why));
            }
            // The point of the matrix, whatever the table says.
            if aplay_ok && !ours_ok {
                wrong.push(format!("{line}\n    aplay plays, netspeaker does not"));
            }
        }
    }
    eprintln!("{table}");
    assert!(
        wrong.is_empty(),
        "cells not as expected:\n{}",
        wrong.join("\n")
    );
    // The table is not vacuous: aplay plays most of it (the set issue #11
    // names), and every cell aplay plays was also played by netspeaker.
    let aplay_plays = CASES.iter().flat_map(|c| c.aplay).filter(|&ok| ok).count();
    assert!(aplay_plays >= 25, "aplay plays only {aplay_plays} cells");
}

#[test]
fn issue_11_ttable_over_pulse_fails_with_a_message_naming_the_setup() {
    const NAME: &str = "issue_11_ttable_over_pulse_fails_with_a_message_naming_the_setup";
    if in_child(NAME) {
        let err = AlsaOut::open(&ask("ttable_pulse", Some(8_000), Some(1)))
            .expect_err("route over pulse cannot install");
        report("error", format_args!("{err}"));
        report("install", matches!(err, AlsaError::Install { .. }));
        return;
    }
    let dir = TestDir::new("alsa-ttable");
    let alsa = AlsaConfig::write(&dir.path);
    let mut text = std::fs::read_to_string(&alsa.path).expect("read alsa.conf");
    text.push_str(DEVICES);
    std::fs::write(&alsa.path, text).expect("extend alsa.conf");
    let pulse = PulseServer::start(&dir.path);
    let stdout = child_ok(&run_child(NAME, &[alsa.env(), pulse.env()].concat()));
    assert_eq!(child_value(&stdout, "install").as_deref(), Some("true"));
    let err = child_value(&stdout, "error").expect("error");
    for part in [
        "'ttable_pulse'",
        "installing hw params",
        "8000 Hz",
        "1 channel",
    ] {
        assert!(err.contains(part), "{part} missing: {err}");
    }
}

#[test]
fn device_preference_is_48k_stereo_where_offered_else_what_it_has() {
    const NAME: &str = "device_preference_is_48k_stereo_where_offered_else_what_it_has";
    const SERVER_RATE: u32 = 44_100;
    if in_child(NAME) {
        for device in ["plugpulse", "jackmono"] {
            let out = AlsaOut::open(&ask(device, None, None)).expect(device);
            let n = out.negotiated();
            report(
                device,
                format_args!("{:?} {} {} {}", n.format, n.rate, n.channels, n.fell_back),
            );
        }
        // Asked explicitly for what the chain cannot install: the
        // device's own preference instead, and said so.
        let out = AlsaOut::open(&ask("plugpulse2ch", Some(8_000), Some(1))).expect("fallback");
        let n = out.negotiated();
        report(
            "fallback",
            format_args!("{:?} {} {} {}", n.format, n.rate, n.channels, n.fell_back),
        );
        // 48 kHz asked of a plug over the 44.1 kHz JACK server with 5 ms
        // periods: its rate plugin takes only periods that convert to
        // whole JACK cycles, so 240 frames are refused at install; a
        // longer period at the rate asked, not the device's own rate.
        let asked = DeviceConfig {
            period_frames: 240,
            ..ask("plugjack", Some(48_000), Some(2))
        };
        let out = AlsaOut::open(&asked).expect("plugjack");
        let n = out.negotiated();
        report(
            "longer",
            format_args!(
                "{} {} {} {}",
                n.rate,
                n.channels,
                n.fell_back,
                n.period_frames > 240
            ),
        );
        return;
    }
    let dir = TestDir::new("alsa-preference");
    let alsa = AlsaConfig::write(&dir.path);
    let mut text = std::fs::read_to_string(&alsa.path).expect("read alsa.conf");
    text.push_str(DEVICES);
    std::fs::write(&alsa.path, text).expect("extend alsa.conf");
    let pulse = PulseServer::start(&dir.path);
    let jack = JackServer::start(&format!("ns-pref-{}", std::process::id()), SERVER_RATE, 256);
    let env = [alsa.env(), pulse.env(), jack.env()].concat();
    let stdout = child_ok(&run_child(NAME, &env));
    // A plug offers everything: 48 kHz stereo, S16 first.
    assert_eq!(
        child_value(&stdout, "plugpulse").as_deref(),
        Some("S16 48000 2 false")
    );
    // One JACK port at a 44.1 kHz server: no 48 kHz, no stereo offered.
    assert_eq!(
        child_value(&stdout, "jackmono").as_deref(),
        Some(format!("{:?} {SERVER_RATE} 1 false", SampleFormat::F32).as_str())
    );
    assert_eq!(
        child_value(&stdout, "fallback").as_deref(),
        Some("S16 48000 2 true")
    );
    assert_eq!(
        child_value(&stdout, "longer").as_deref(),
        Some("48000 2 false true")
    );
}
