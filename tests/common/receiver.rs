//! The real programs under test: start `netspeaker` with a private ALSA
//! configuration and sound server, wait until its device is open, stop it
//! with SIGTERM and read its final statistics line; and a paced RTP /
//! headerless test sender written here (so a test controls every header
//! field). Use as `common::receiver::…` after `mod common;`.

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `netspeaker`; stderr goes to a file in the test's directory.
pub struct RunningReceiver {
    pub child: Option<Child>,
    pub log: PathBuf,
}

/// A free UDP port on loopback (bound and released; good enough for tests
/// that start their receiver right after).
pub fn free_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind probe socket");
    s.local_addr().expect("local addr").port()
}

impl RunningReceiver {
    /// Starts `netspeaker ARGS` with `env`, logging to `log`; waits (up to
    /// 10 s) until it has opened its device.
    pub fn start(args: &[&str], env: &[(String, String)], log: PathBuf) -> RunningReceiver {
        RunningReceiver::start_until("open:", args, env, log)
    }

    /// As [`RunningReceiver::start`], but returns as soon as the log says
    /// `needle` (e.g. "listening on": the socket is bound, the device may
    /// still be opening).
    pub fn start_until(
        needle: &str,
        args: &[&str],
        env: &[(String, String)],
        log: PathBuf,
    ) -> RunningReceiver {
        Self::start_program_until(env!("CARGO_BIN_EXE_netspeaker"), needle, args, env, log)
    }

    /// As [`RunningReceiver::start`], through a program that execs
    /// netspeaker in place (same pid), such as `nsenter ... -- netspeaker`.
    pub fn start_program(
        program: &str,
        args: &[&str],
        env: &[(String, String)],
        log: PathBuf,
    ) -> RunningReceiver {
        Self::start_program_until(program, "open:", args, env, log)
    }

    fn start_program_until(
        program: &str,
        needle: &str,
        args: &[&str],
        env: &[(String, String)],
        log: PathBuf,
    ) -> RunningReceiver {
        let file = std::fs::File::create(&log).expect("receiver log");
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("INVOCATION_ID")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start netspeaker");
        let rx = RunningReceiver {
            child: Some(child),
            log,
        };
        assert!(
            rx.wait_for_log(needle, Duration::from_secs(10)),
            "netspeaker did not log '{needle}' within 10 s:\n{}",
            rx.log_text()
        );
        rx
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits until the log contains `needle` (true) or `timeout` (false).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        let _ = nix::sys::signal::kill(pid, sig);
    }

    /// Peak resident memory (VmHWM) in KiB, while it runs.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// SIGTERM; waits for the exit; returns (exit code, time to exit,
    /// final statistics). Panics if it does not exit within 2 s.
    pub fn stop(&mut self) -> (Option<i32>, Duration, Stats) {
        let t0 = Instant::now();
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let mut child = self.child.take().expect("receiver running");
        loop {
            if let Some(status) = child.try_wait().expect("wait netspeaker") {
                let text = self.log_text();
                let stats = Stats::last_in(&text)
                    .unwrap_or_else(|| panic!("no statistics line in the receiver's log:\n{text}"));
                return (status.code(), t0.elapsed(), stats);
            }
            if t0.elapsed() > Duration::from_secs(2) {
                let _ = child.kill();
                panic!(
                    "netspeaker did not exit within 2 s of SIGTERM:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for RunningReceiver {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The figures of one statistics line, by name: `packets`, `lost`, `late`,
/// `reordered`, `duplicates`, `stray`, `dropped`, `overflow`, `filtered`,
/// `malformed`, `auth-failed`, `concealed` (ms), `stretched` (ms), `underruns`, `jitter`,
/// `buffer` (depth ms), `target` (ms), `alsa`, `delay`, `drift`,
/// `drift-uncertainty` (absent while unknown), `bit-exact` (1, or 0 for
/// resampled), `starved`, `rt-allocs`.
#[derive(Debug, Clone, Default)]
pub struct Stats(pub HashMap<String, f64>);

impl Stats {
    /// Parses the last statistics line in a log.
    pub fn last_in(log: &str) -> Option<Stats> {
        log.lines().rev().find_map(Stats::parse)
    }

    pub fn parse(line: &str) -> Option<Stats> {
        let start = line.find("packets ")?;
        let words: Vec<&str> = line[start..]
            .split_whitespace()
            .map(|w| w.trim_matches(|c| c == '(' || c == ')'))
            .collect();
        let mut map = HashMap::new();
        let mut i = 0;
        while i + 1 < words.len() {
            let key = words[i];
            let value = words[i + 1];
            if key == "buffer" {
                if let Some((depth, target)) = value.split_once('/') {
                    map.insert("buffer".into(), depth.parse().ok()?);
                    map.insert("target".into(), target.parse().ok()?);
                }
                i += 2;
                continue;
            }
            // "drift +1000.3 ppm (±4.2) resampled": the estimate's
            // uncertainty, and whether the samples pass through untouched.
            // Only after "ppm": "clock synced ±120 us" is not the drift's.
            if let Some(u) = value.strip_prefix('±').filter(|_| key == "ppm") {
                if let Ok(u) = u.parse::<f64>() {
                    map.insert("drift-uncertainty".into(), u);
                }
            }
            if key == "bit-exact" || key == "resampled" {
                map.insert("bit-exact".into(), f64::from(u8::from(key == "bit-exact")));
            }
            if let Ok(v) = value.trim_start_matches('+').parse::<f64>() {
                map.insert(key.to_string(), v);
                i += 2;
            } else {
                i += 1;
            }
        }
        map.contains_key("underruns").then_some(Stats(map))
    }

    pub fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(f64::NAN)
    }
}

/// What an RTP test stream looks like.
#[derive(Clone, Copy, Debug)]
pub struct RtpStream {
    pub payload_type: u8,
    pub ssrc: u32,
    pub first_seq: u16,
    pub first_timestamp: u32,
    pub rate: u32,
    pub channels: u16,
    pub ptime_ms: u32,
    /// Encodes interleaved samples into the payload.
    pub encoding: netspeaker::audio::format::Encoding,
}

/// Sends `samples` as RTP to `dest`, one packet per ptime, paced against
/// absolute deadlines (a late wake-up sends the due packets at once).
/// Returns the number of packets sent.
pub fn send_rtp(dest: SocketAddr, stream: &RtpStream, samples: &[i16]) -> usize {
    send_rtp_reported(dest, stream, samples).sent
}

/// As [`send_rtp`], with the sender's own lateness ([`SendReport`]).
pub fn send_rtp_reported(dest: SocketAddr, stream: &RtpStream, samples: &[i16]) -> SendReport {
    let ptime = Duration::from_millis(u64::from(stream.ptime_ms));
    send_rtp_timed(dest, stream, samples, ptime)
}

/// As [`send_rtp`], but packet k leaves at `k × interval` of real time
/// while its timestamp still advances by one ptime: a sender whose clock
/// runs fast by `ptime / interval − 1` (e.g. `ptime / 1.001`: +1000 ppm),
/// as a sound card's crystal off by that much would make it.
pub fn send_rtp_every(
    dest: SocketAddr,
    stream: &RtpStream,
    samples: &[i16],
    interval: Duration,
) -> usize {
    send_rtp_timed(dest, stream, samples, interval).sent
}

/// What a paced send did: packets sent, and how late the latest one left
/// against its deadline (the test sender is a plain thread: on a loaded
/// machine it is the link's jitter, which a "clean link" test must show).
#[derive(Clone, Copy, Debug)]
pub struct SendReport {
    pub sent: usize,
    pub max_late: Duration,
}

/// As [`send_rtp_every`], with the sender's own lateness.
pub fn send_rtp_timed(
    dest: SocketAddr,
    stream: &RtpStream,
    samples: &[i16],
    interval: Duration,
) -> SendReport {
    let mut max_late = Duration::ZERO;
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    let ch = usize::from(stream.channels);
    let frames_per_packet = (stream.rate * stream.ptime_ms / 1000) as usize;
    let start = Instant::now();
    let mut buf = vec![0u8; 12 + frames_per_packet * ch * 2];
    let mut sent = 0;
    for (k, chunk) in samples.chunks(frames_per_packet * ch).enumerate() {
        if chunk.len() < frames_per_packet * ch {
            break;
        }
        let due = start + Duration::from_nanos((interval.as_nanos() * k as u128) as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        max_late = max_late.max(Instant::now().saturating_duration_since(due));
        let seq = stream.first_seq.wrapping_add(k as u16);
        let ts = stream
            .first_timestamp
            .wrapping_add((k * frames_per_packet) as u32);
        buf[0] = 0x80;
        buf[1] = stream.payload_type | if k == 0 { 0x80 } else { 0 };
        buf[2..4].copy_from_slice(&seq.to_be_bytes());
        buf[4..8].copy_from_slice(&ts.to_be_bytes());
        buf[8..12].copy_from_slice(&stream.ssrc.to_be_bytes());
        let n = netspeaker::audio::codec::encode(stream.encoding, chunk, &mut buf[12..]);
        sock.send_to(&buf[..12 + n], dest).expect("send RTP");
        sent += 1;
    }
    SendReport { sent, max_late }
}

/// Sends headerless s16le PCM in `bytes_per_packet` datagrams every
/// `interval`, paced against absolute deadlines. Returns packets sent.
pub fn send_raw(
    dest: SocketAddr,
    samples: &[i16],
    bytes_per_packet: usize,
    interval: Duration,
) -> usize {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let start = Instant::now();
    let mut sent = 0;
    for (k, chunk) in bytes.chunks_exact(bytes_per_packet).enumerate() {
        let due = start + interval * k as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        sock.send_to(chunk, dest).expect("send raw");
        sent += 1;
    }
    sent
}
