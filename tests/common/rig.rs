//! The real programs for end-to-end tests: `netspeaker` playing into the
//! harness's PulseAudio null sink through a file plugin (a private PulseAudio null sink behind a file
//! plugin: real time, and a bit-exact recording), `netspeaker-send`
//! streaming a WAV file. Input: a test signal and the options. Output: the
//! receiver's log lines with their arrival times, its statistics lines
//! parsed into numbers ([`Stats`]), and the recording's gaps ([`gaps`]).
//! Use it next to `mod common;` with
//! `#[path = "common/rig.rs"] mod rig;`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netspeaker::audio::convert::i16_to_f32;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common::{AlsaConfig, JackServer, PulseServer, TestDir};

/// One statistics line, in numbers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub packets: u64,
    pub lost: u64,
    pub late: u64,
    pub reordered: u64,
    pub duplicates: u64,
    /// Packets from senders other than the one playing (the source lock).
    pub stray: u64,
    pub dropped: u64,
    pub overflow: u64,
    pub filtered: u64,
    pub malformed: u64,
    /// SRTP packets refused (authentication failed or replayed); 0 on a
    /// line from before SRTP.
    pub auth_failed: u64,
    pub concealed_ms: u64,
    /// Opus: lost packets rebuilt from the next one's in-band FEC; 0 on a
    /// line from before Opus.
    pub fec: u64,
    pub stretched_ms: u64,
    pub underruns: u64,
    /// The jitter buffer ran dry (concealed while it waited).
    pub starved: u64,
    pub jitter_ms: f64,
    pub depth_ms: f64,
    pub target_ms: f64,
    pub alsa_ms: f64,
    pub delay_ms: f64,
    pub drift_ppm: f64,
    /// The drift estimate's uncertainty, ppm; None while it is unknown.
    pub drift_uncertainty_ppm: Option<f64>,
}

impl Stats {
    /// What happened between `earlier` and `self`: counters are
    /// differences, gauges (jitter, buffer, target, delays, drift) are
    /// `self`'s.
    pub fn since(&self, earlier: &Stats) -> Stats {
        Stats {
            packets: self.packets.saturating_sub(earlier.packets),
            lost: self.lost.saturating_sub(earlier.lost),
            late: self.late.saturating_sub(earlier.late),
            reordered: self.reordered.saturating_sub(earlier.reordered),
            duplicates: self.duplicates.saturating_sub(earlier.duplicates),
            stray: self.stray.saturating_sub(earlier.stray),
            dropped: self.dropped.saturating_sub(earlier.dropped),
            overflow: self.overflow.saturating_sub(earlier.overflow),
            filtered: self.filtered.saturating_sub(earlier.filtered),
            malformed: self.malformed.saturating_sub(earlier.malformed),
            auth_failed: self.auth_failed.saturating_sub(earlier.auth_failed),
            concealed_ms: self.concealed_ms.saturating_sub(earlier.concealed_ms),
            fec: self.fec.saturating_sub(earlier.fec),
            stretched_ms: self.stretched_ms.saturating_sub(earlier.stretched_ms),
            underruns: self.underruns.saturating_sub(earlier.underruns),
            starved: self.starved.saturating_sub(earlier.starved),
            ..self.clone()
        }
    }

    /// Parses the line `packets N lost N … drift X ppm` wherever it sits in
    /// a log line; None if it is not one.
    pub fn parse(line: &str) -> Option<Stats> {
        let at = line.find("packets ")?;
        let words: Vec<&str> = line[at..]
            .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
            .filter(|w| !w.is_empty())
            .collect();
        let after = |key: &str| -> Option<&str> {
            let i = words.iter().position(|w| *w == key)?;
            words.get(i + 1).copied()
        };
        let int = |key: &str| -> Option<u64> { after(key)?.parse().ok() };
        let float = |key: &str| -> Option<f64> { after(key)?.parse().ok() };
        let (depth, target) = after("buffer")?.split_once('/')?;
        Some(Stats {
            packets: int("packets")?,
            lost: int("lost")?,
            late: int("late")?,
            reordered: int("reordered")?,
            duplicates: int("duplicates")?,
            stray: int("stray").unwrap_or(0),
            dropped: int("dropped")?,
            overflow: int("overflow")?,
            filtered: int("filtered")?,
            malformed: int("malformed")?,
            auth_failed: int("auth-failed").unwrap_or(0),
            concealed_ms: int("concealed")?,
            fec: int("fec").unwrap_or(0),
            stretched_ms: int("stretched")?,
            underruns: int("underruns")?,
            starved: int("starved").unwrap_or(0),
            jitter_ms: float("jitter")?,
            depth_ms: depth.parse().ok()?,
            target_ms: target.parse().ok()?,
            alsa_ms: float("alsa")?,
            delay_ms: float("delay")?,
            drift_ppm: float("drift")?,
            // "drift +6.5 ppm (±2.4)" or "drift +0.0 ppm (unknown)".
            drift_uncertainty_ppm: words
                .iter()
                .position(|w| *w == "drift")
                .and_then(|i| words.get(i + 3))
                .and_then(|w| w.strip_prefix('±'))
                .and_then(|u| u.parse().ok()),
        })
    }
}

/// Lines a child wrote to stderr, with the time each was read.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<(Instant, String)>>>);

impl Log {
    fn follow(&self, stream: impl std::io::Read + Send + 'static) {
        let lines = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                lines.lock().expect("log").push((Instant::now(), line));
            }
        });
    }

    pub fn lines(&self) -> Vec<(Instant, String)> {
        self.0.lock().expect("log").clone()
    }

    pub fn text(&self) -> String {
        self.lines()
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Lines containing `needle` (with their times).
    pub fn matching(&self, needle: &str) -> Vec<(Instant, String)> {
        self.lines()
            .into_iter()
            .filter(|(_, l)| l.contains(needle))
            .collect()
    }

    /// Waits until a line containing `needle` arrives at or after `from`.
    pub fn wait_for(&self, needle: &str, from: Instant, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((t, _)) = self
                .lines()
                .into_iter()
                .find(|(t, l)| *t >= from && l.contains(needle))
            {
                return Some(t);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every statistics line, in order, with its time.
    pub fn stats(&self) -> Vec<(Instant, Stats)> {
        self.lines()
            .into_iter()
            .filter_map(|(t, l)| Stats::parse(&l).map(|s| (t, s)))
            .collect()
    }
}

/// A child process stopped (SIGTERM, then SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub log: Log,
}

impl Proc {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(self.pid(), sig);
    }

    /// SIGTERM and wait up to `timeout` for the exit; SIGKILL after that.
    /// True if it exited by itself.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }

    /// How it ended, if it has: a crash shows as a signal.
    pub fn ended(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(2));
    }
}

/// A loopback UDP port that was free a moment ago.
pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port()
}

/// The rate the receiver opens the PulseAudio device at on the defaults.
pub const PULSE_DEVICE_RATE: u32 = 48_000;

/// The JACK dummy backend's period (5.3 ms at 48 kHz).
const JACK_PERIOD: u32 = 256;

/// One receiver set-up: a private directory, ALSA configuration and
/// PulseAudio server; the receiver plays into `recorded`.
pub struct Bench {
    pub dir: TestDir,
    pub alsa: AlsaConfig,
    pub pulse: PulseServer,
    pub port: u16,
    /// What the receiver played, across every reopen of the device, in
    /// the device's own format (the receiver's default: it opens the
    /// device once at the device's preference and converts every stream
    /// to it): s16le stereo at 48 kHz (PulseAudio), or FLOAT_LE stereo at
    /// the JACK server's rate (with [`Bench::with_jack`]).
    pub recording: PathBuf,
    /// With [`Bench::with_jack`]: the receiver plays into JACK's dummy
    /// backend instead (a timer-paced server that starts a stream at once).
    pub jack: Option<JackServer>,
}

impl Bench {
    pub fn new(name: &str) -> Bench {
        let dir = TestDir::new(name);
        let alsa = AlsaConfig::write(&dir.path);
        // The harness's `paced` device truncates its file whenever the
        // device is opened, so a reopen (server restart, a stall taken for
        // a lost device) would discard everything before it. `recorded` is
        // `paced` without truncation: alsa-lib then writes each opening to
        // a new file (recorded.raw, recorded.raw.0001, …), which
        // [`Bench::recorded`] joins into one recording on the device's
        // sample clock for the whole run.
        let recording = dir.file("recorded.raw");
        let extra = format!(
            "pcm.recorded {{ type file slave.pcm \"pulse\" file \"{}\" format \"raw\" truncate false }}\n",
            recording.display()
        );
        let mut conf = std::fs::read_to_string(&alsa.path).expect("read alsa.conf");
        conf.push_str(&extra);
        std::fs::write(&alsa.path, conf).expect("write alsa.conf");
        let pulse = PulseServer::start(&dir.path);
        Bench {
            dir,
            alsa,
            pulse,
            port: free_port(),
            recording,
            jack: None,
        }
    }

    /// As [`Bench::new`], but the receiver plays into `jrecorded`: JACK's
    /// dummy backend at 48 kHz through a plug (format and rate
    /// conversion) and a non-truncating file plugin. PulseAudio takes
    /// 0.5–1.8 s to (re)start a stream here, JACK none: where a test
    /// must time the receiver's own reaction to a device restart, this
    /// keeps the sound server's start-up out of the figure.
    pub fn with_jack(name: &str) -> Bench {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let mut bench = Bench::new(name);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let jack = JackServer::start(
            &format!("nsimp{}x{n}", std::process::id()),
            48_000,
            JACK_PERIOD,
        );
        bench.recording = bench.dir.file("jrecorded.raw");
        let extra = format!(
            "pcm.jrec {{ type file slave.pcm \"jack\" file \"{}\" format \"raw\" truncate false }}\n\
             pcm.jrecorded {{ type plug slave.pcm \"jrec\" }}\n",
            bench.recording.display()
        );
        let mut conf = std::fs::read_to_string(&bench.alsa.path).expect("read alsa.conf");
        conf.push_str(&extra);
        std::fs::write(&bench.alsa.path, conf).expect("write alsa.conf");
        bench.jack = Some(jack);
        bench
    }

    /// Stops the bench's jackd with SIGTERM (never SIGKILL: that leaks one
    /// of JACK's 8 machine-wide server slots); the receiver loses its
    /// device. No-op without JACK.
    pub fn stop_jack(&mut self) {
        if let Some(j) = self.jack.as_mut() {
            j.stop();
        }
    }

    /// Starts the bench's jackd again under the same name and rate, and
    /// returns once it answers (`jack_lsp` lists its playback ports): the
    /// moment the receiver can open its device again. No-op without JACK.
    pub fn restart_jack(&mut self) {
        if let Some(old) = self.jack.take() {
            let (name, rate) = (old.name.clone(), old.rate);
            drop(old);
            self.jack = Some(JackServer::start(&name, rate, JACK_PERIOD));
        }
    }

    /// The ALSA device the receiver plays into.
    pub fn device(&self) -> &'static str {
        if self.jack.is_some() {
            "jrecorded"
        } else {
            "recorded"
        }
    }

    /// Bytes per recorded frame: s16 stereo, or f32 stereo from JACK.
    pub fn frame_bytes(&self) -> usize {
        if self.jack.is_some() {
            8
        } else {
            4
        }
    }

    /// The device's rate, as the receiver opens it on the defaults: the
    /// PulseAudio plugin offers every rate and the receiver prefers
    /// 48 kHz; JACK offers only its server's.
    pub fn device_rate(&self) -> u32 {
        self.jack.as_ref().map_or(PULSE_DEVICE_RATE, |j| j.rate)
    }

    /// The recording as mono f32 (the first channel) and its rate (the
    /// device's: see [`Bench::device_rate`]; `_stream_rate` is no longer
    /// the recording's, since the device stays at its own format).
    pub fn recorded_mono(&self, _stream_rate: u32) -> (Vec<f32>, u32) {
        let bytes: Vec<u8> = recording_parts(&self.recording)
            .iter()
            .filter(|p| p.exists())
            .flat_map(|p| std::fs::read(p).unwrap_or_default())
            .collect();
        match &self.jack {
            Some(j) => (
                bytes
                    .chunks_exact(8)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                j.rate,
            ),
            None => (
                bytes
                    .chunks_exact(4)
                    .map(|b| i16_to_f32(i16::from_le_bytes([b[0], b[1]])))
                    .collect(),
                PULSE_DEVICE_RATE,
            ),
        }
    }

    /// Frames recorded so far (the plugin appends in chunks of at most a
    /// device buffer).
    pub fn recorded_frames(&self) -> usize {
        recorded_frames(&self.recording, self.frame_bytes())
    }

    /// The whole recording's first channel (s16; PulseAudio only): read
    /// it after the receiver closed the device.
    pub fn recorded(&self) -> Vec<i16> {
        recording_parts(&self.recording)
            .iter()
            .filter(|p| p.exists())
            .flat_map(|p| crate::common::read_s16le(p))
            .step_by(2)
            .collect()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts `netspeaker` on the bench's port, playing into `recorded`, with
    /// a statistics line every second, debug logging and `extra` options;
    /// waits until it listens, then until it reports the device open
    /// (which it does once the device consumes audio: a fresh PulseAudio
    /// stream can take a second or more to start; the test stream starts
    /// after it).
    pub fn receiver(&self, extra: &[&str]) -> Proc {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_netspeaker"))
            .args([
                "-v",
                "--device",
                self.device(),
                "--stats-interval",
                "1",
                "--listen",
            ])
            .arg(self.addr().to_string())
            .args(extra)
            .envs(self.alsa.env())
            .envs(self.pulse.env())
            .envs(self.jack.iter().flat_map(|j| j.env()))
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("netspeaker binary");
        let log = Log::default();
        log.follow(child.stderr.take().expect("receiver stderr"));
        let proc = Proc { child, log };
        assert!(
            proc.log
                .wait_for("listening on", started, Duration::from_secs(10))
                .is_some(),
            "the receiver did not start:\n{}",
            proc.log.text()
        );
        // The receiver reports the device open once it has seen it consume
        // (a PulseAudio stream takes a second or more to start). Best
        // effort: a device that never says so still gets its 5 s.
        let _ = proc
            .log
            .wait_for(" open: ", started, Duration::from_secs(5));
        proc
    }
}

/// The parts of a `recorded` device's recording, in order.
fn recording_parts(recording: &Path) -> Vec<PathBuf> {
    let mut parts = vec![recording.to_path_buf()];
    for n in 1.. {
        let part = PathBuf::from(format!("{}.{n:04}", recording.display()));
        if !part.exists() {
            break;
        }
        parts.push(part);
    }
    parts
}

/// Frames recorded so far into a `recorded` device's recording.
pub fn recorded_frames(recording: &Path, frame_bytes: usize) -> usize {
    recording_parts(recording)
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len() as usize / frame_bytes))
        .sum()
}

/// How the recording grew in wall time: (when, frames so far), sampled
/// every 10 ms until dropped (`common::GrowthWatch` over the recording's
/// parts). It ties the recording's sample clock to wall time, so that time
/// the device spent stalled (nothing written, nothing recorded) is seen
/// too.
pub struct Progress(pub crate::common::GrowthWatch);

impl Progress {
    pub fn start(bench: &Bench) -> Progress {
        let (path, frame_bytes) = (bench.recording.clone(), bench.frame_bytes());
        Progress(crate::common::GrowthWatch::start(move || {
            recorded_frames(&path, frame_bytes) as u64
        }))
    }

    pub fn samples(&self) -> Vec<(Instant, usize)> {
        self.0
            .samples()
            .into_iter()
            .map(|(t, n)| (t, n as usize))
            .collect()
    }
}

/// Starts `netspeaker-send` streaming `wav` to `to` with `extra` options.
pub fn sender(wav: &Path, to: SocketAddr, extra: &[&str]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_netspeaker-send"))
        .args(extra)
        .arg(wav)
        .arg(to.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("netspeaker-send binary");
    let log = Log::default();
    log.follow(child.stderr.take().expect("sender stderr"));
    Proc { child, log }
}

/// Writes a 16-bit PCM WAV file (the sender's own writer).
pub fn write_wav(path: &Path, rate: u32, channels: u16, samples: &[i16]) {
    let wav = netspeaker::send::wav::write_wav(rate, channels, samples);
    std::fs::write(path, wav).expect("write wav");
}

/// Runs of silence inside the played span of a mono recording.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gaps {
    /// Runs of at least `min_run` exact zeros between the first and the
    /// last non-zero sample.
    pub count: usize,
    /// Their total length, in frames.
    pub frames: usize,
    pub longest: usize,
    /// The played span (first to last non-zero sample), in frames.
    pub span: usize,
}

/// Finds the gaps of `min_run` frames or more (a test tone never holds
/// exact zero for more than a sample or two; concealment fades to exact
/// zero only after a long loss).
pub fn gaps(mono: &[i16], min_run: usize) -> Gaps {
    let (Some(first), Some(last)) = (
        mono.iter().position(|&s| s != 0),
        mono.iter().rposition(|&s| s != 0),
    ) else {
        return Gaps::default();
    };
    let mut g = Gaps {
        span: last - first + 1,
        ..Gaps::default()
    };
    let mut run = 0;
    for &s in &mono[first..=last] {
        if s == 0 {
            run += 1;
        } else {
            if run >= min_run {
                g.count += 1;
                g.frames += run;
                g.longest = g.longest.max(run);
            }
            run = 0;
        }
    }
    g
}

/// RMS of each block of `block` frames (mono).
pub fn block_rms(mono: &[i16], block: usize) -> Vec<f64> {
    mono.chunks(block)
        .map(|c| {
            let e: f64 = c.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
            (e / c.len().max(1) as f64).sqrt()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_line_parses() {
        let l = "[INFO netspeaker] packets 500 lost 3 late 1 reordered 2 duplicates 4 stray 6 \
                 dropped 10 (overflow 7 filtered 2 malformed 1) auth-failed 3 concealed 60 ms \
                 stretched 5 ms underruns 0 jitter 1.5 ms buffer 12.5/10.0 ms alsa 10.0 ms \
                 delay 22.5 ms drift -1234.0 ppm";
        let s = Stats::parse(l).expect("a stats line");
        assert_eq!(s.auth_failed, 3);
        assert_eq!((s.packets, s.lost, s.late, s.reordered), (500, 3, 1, 2));
        assert_eq!((s.duplicates, s.dropped, s.overflow), (4, 10, 7));
        assert_eq!(s.stray, 6);
        assert_eq!((s.filtered, s.malformed, s.concealed_ms), (2, 1, 60));
        assert_eq!((s.stretched_ms, s.underruns), (5, 0));
        assert_eq!((s.depth_ms, s.target_ms, s.delay_ms), (12.5, 10.0, 22.5));
        assert_eq!((s.jitter_ms, s.alsa_ms, s.drift_ppm), (1.5, 10.0, -1234.0));
        assert_eq!(Stats::parse("listening on 0.0.0.0:5004 for RTP"), None);
    }

    #[test]
    fn gaps_inside_span_only() {
        let mut x = vec![0i16; 100];
        x.extend(std::iter::repeat(5).take(50));
        x.extend(std::iter::repeat(0).take(40));
        x.extend(std::iter::repeat(-5).take(50));
        x.extend([0, 0, 7]);
        x.extend(std::iter::repeat(0).take(100));
        let g = gaps(&x, 10);
        assert_eq!(g.count, 1);
        assert_eq!((g.frames, g.longest), (40, 40));
        assert_eq!(g.span, 50 + 40 + 50 + 3);
    }
}
