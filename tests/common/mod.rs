//! Shared harness for netspeaker's end-to-end tests: real ALSA devices with
//! no sound card, the sound servers behind them, signals and the comparison
//! of what was sent with what a device recorded. See ../../shared TESTING.md
//! for why each device exists. Use it with `mod common;` in a test file.
//!
//! - [`TestDir::new("name")`]: a private directory per test (removed on
//!   drop unless `NETSPEAKER_KEEP_TEST_DIRS` is set, for post-mortems).
//! - [`AlsaConfig::write(&dir)`]: writes `alsa.conf` into it with the devices
//!   `null`, `capture` (file over null, not paced), `pulse`, `paced` (file
//!   over pulse: paced and bit-exact), `jack`, `jfile` (file over jack),
//!   `jplug` (plug over jfile: paced, mmap). Recordings go to
//!   `config.capture`, `config.paced`, `config.jfile`. Give the process
//!   under test `ALSA_CONFIG_PATH=config.path` (see [`AlsaConfig::env`]);
//!   never /etc. Read a recording only after the device was closed.
//! - [`PulseServer::start(&dir)`]: a private PulseAudio with a null sink at
//!   48 kHz; `env()` gives `PULSE_SERVER` for children,
//!   `kill()`, `restart()`; killed on drop.
//! - [`JackServer::start(name, rate, period)`]: jackd with the dummy backend
//!   (paced by a timer); `env()` gives `JACK_DEFAULT_SERVER`; stopped with
//!   SIGTERM on drop (see [`JackServer::stop`]: never SIGKILL jackd).
//! - alsa-lib reads `ALSA_CONFIG_PATH` when it loads its configuration, and
//!   test threads share one environment, so device work runs in a child:
//!   [`in_child`] tells the re-executed test binary it is the child,
//!   [`run_child`] re-executes the current test with extra environment.
//! - Signals: [`sine`], [`noise`] (seeded, so a 64-frame window occurs once:
//!   alignment is unambiguous), [`to_f32`]; readers [`read_s16le`],
//!   [`read_f32le`], [`f32_to_s16`].
//! - [`receiver`]: the real `netspeaker` started and stopped with its
//!   final statistics parsed ([`receiver::RunningReceiver`],
//!   [`receiver::Stats`]), and a paced RTP / headerless test sender.
//! - [`align`] finds where the sent signal sits in a recording (start-up
//!   offset), [`compare`] compares the overlap exactly or with a tolerance.
//! - [`GrowthWatch`]: evidence from outside the receiver that the sound
//!   server stalled (the recording stopped growing in wall time). The only
//!   ground on which a paced test may run again: never the receiver's own
//!   statistics (every stream ends starved) nor its own log.
#![allow(dead_code)]

pub mod alloc;
pub mod paced_receiver;
pub mod receiver;

use netspeaker::audio::convert::{f32_to_i16, i16_to_f32};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shell lines for a network-namespace script, after `ip link set va up`
/// and `ip link set vb up` of a veth pair: wait (up to 10 s) until both
/// ends have their IPv6 link-local address and no address is still in
/// duplicate address detection. The kernel adds the link-local address a
/// moment after the link gets its carrier, so "nothing tentative" alone
/// can pass before there is an address at all, and a socket then fails
/// to connect from it (EADDRNOTAVAIL, seen under load).
pub const WAIT_VETH_IPV6: &str = "n=0
until ip -6 addr show dev va scope link | grep -q inet6 \\
  && ip -6 addr show dev vb scope link | grep -q inet6 \\
  && ! ip -6 addr show | grep -q tentative; do
  sleep 0.1; n=$((n+1)); [ $n -lt 100 ] || exit 1
done";

/// A private directory for one test.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("netspeaker-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        TestDir { path }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("NETSPEAKER_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A private ALSA configuration holding only the test devices.
pub struct AlsaConfig {
    pub path: PathBuf,
    /// Recording of `capture` (file over null).
    pub capture: PathBuf,
    /// Recording of `paced` (file over pulse).
    pub paced: PathBuf,
    /// Recording of `jfile` / `jplug` (FLOAT_LE at the JACK server's rate).
    pub jfile: PathBuf,
}

impl AlsaConfig {
    pub fn write(dir: &Path) -> AlsaConfig {
        let path = dir.join("alsa.conf");
        let capture = dir.join("capture.raw");
        let paced = dir.join("paced.raw");
        let jfile = dir.join("jfile.raw");
        // The pulse and jack types need no declaration: alsa-lib loads
        // libasound_module_pcm_<type>.so from its plugin directory.
        let text = format!(
            r#"pcm.null {{ type null }}
pcm.capture {{ type file slave.pcm "null" file "{capture}" format "raw" }}
pcm.pulse {{ type pulse }}
pcm.paced {{ type file slave.pcm "pulse" file "{paced}" format "raw" }}
pcm.jack {{ type jack playback_ports {{ 0 system:playback_1 1 system:playback_2 }} }}
pcm.jfile {{ type file slave.pcm "jack" file "{jfile}" format "raw" }}
pcm.jplug {{ type plug slave.pcm "jfile" }}
"#,
            capture = capture.display(),
            paced = paced.display(),
            jfile = jfile.display(),
        );
        std::fs::write(&path, text).expect("write alsa.conf");
        AlsaConfig {
            path,
            capture,
            paced,
            jfile,
        }
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![(
            "ALSA_CONFIG_PATH".to_string(),
            self.path.display().to_string(),
        )]
    }
}

fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A private PulseAudio server with a null sink (consumes audio at its
/// nominal rate: a paced device).
pub struct PulseServer {
    dir: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
}

impl PulseServer {
    pub fn start(dir: &Path) -> PulseServer {
        let pa = dir.join("pulse");
        std::fs::create_dir_all(pa.join("rt")).expect("pulse dir");
        let socket = pa.join("native");
        let script = format!(
            "load-module module-null-sink sink_name=speaker rate=48000\n\
             load-module module-native-protocol-unix auth-anonymous=1 socket={}\n\
             set-default-sink speaker\n",
            socket.display()
        );
        std::fs::write(pa.join("default.pa"), script).expect("default.pa");
        let mut server = PulseServer {
            dir: pa,
            socket,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::File::create(self.dir.join("pulseaudio.log")).expect("pulse log");
        let child = Command::new("pulseaudio")
            .args([
                "-n",
                "--daemonize=no",
                "--use-pid-file=no",
                "--exit-idle-time=-1",
                "--disallow-exit",
                "-F",
            ])
            .arg(self.dir.join("default.pa"))
            .env("PULSE_RUNTIME_PATH", self.dir.join("rt"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start pulseaudio (apt-get install pulseaudio)");
        self.child = Some(child);
        let env = self.env();
        let ready = wait_until(Duration::from_secs(10), || {
            Command::new("pactl")
                .arg("info")
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        });
        assert!(
            ready,
            "pulseaudio did not answer pactl info within 10 s; see {}",
            self.dir.display()
        );
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Environment for a child that should play into this server (the
    /// socket is enough; the runtime directory is the server's own).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(
            "PULSE_SERVER".to_string(),
            format!("unix:{}", self.socket.display()),
        )]
    }

    /// Kills the server (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Kills it if running, then starts it again and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for PulseServer {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// jackd with the dummy backend: a timer-paced server with no card.
pub struct JackServer {
    pub name: String,
    pub rate: u32,
    child: Option<Child>,
    /// What jackd printed (its xrun notes), removed at stop.
    log_path: PathBuf,
}

impl JackServer {
    /// `name` must be unique among running tests (e.g. include the pid).
    pub fn start(name: &str, rate: u32, period: u32) -> JackServer {
        let log_path = std::env::temp_dir().join(format!("netspeaker-jackd-{name}.log"));
        let log = std::fs::File::create(&log_path).expect("jackd log");
        // The server and its clients' cycles run above every thread the
        // tests put under test (a receiver's playout thread at SCHED_FIFO
        // 70, a sender's pacing at 60): the dummy stands in for a DAC,
        // whose clock waits for no CPU. At jackd's default (10, clients
        // 5) its timed driver ran 5.3 ms (a whole cycle) late here, the
        // recorder missed cycles and moved the recording under the
        // receivers; at 90 (clients 85) the driver was within 0.1 ms but
        // for the host's own stalls (once 5.4 ms).
        let child = Command::new("jackd")
            .args(["-n", name, "-R", "-P", "90", "-d", "dummy", "-r"])
            .arg(rate.to_string())
            .arg("-p")
            .arg(period.to_string())
            .env("JACK_NO_AUDIO_RESERVATION", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("jackd log"))
            .stderr(log)
            .spawn()
            .expect("start jackd (apt-get install jackd2)");
        let mut server = JackServer {
            name: name.to_string(),
            rate,
            child: Some(child),
            log_path: log_path.clone(),
        };
        let env = server.env();
        let ready = wait_until(Duration::from_secs(20), || {
            jack_ports(&env).is_some_and(|ports| ports.contains("system:playback_1"))
        });
        if !ready {
            // Read before stopping: stop removes the log.
            let log = server.log_text();
            server.stop();
            panic!("jackd '{name}' did not come up within 20 s:\n{log}");
        }
        server
    }

    /// jackd's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// jackd's own notes of cycles missed so far: the server running late
    /// (its timed driver) or a client not done in time.
    pub fn missed_cycle_notes(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains("xrun") || l.contains("not finished"))
            .map(str::to_string)
            .collect()
    }

    /// Environment for a child that should use this server (and never
    /// start one of its own).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("JACK_DEFAULT_SERVER".to_string(), self.name.clone()),
            ("JACK_NO_START_SERVER".to_string(), "1".to_string()),
        ]
    }
}

impl JackServer {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops jackd with SIGTERM so that it removes itself from JACK's
    /// machine-wide registry: that registry has 8 slots and never reclaims
    /// the slot of a SIGKILLed server with another name, so killed servers
    /// with unique names soon make every jackd on the machine fail ("Too
    /// many servers already active"). SIGKILL only if it does not exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let exited = wait_until(Duration::from_secs(5), || {
                matches!(c.try_wait(), Ok(Some(_)))
            });
            if !exited {
                let _ = c.kill();
                let _ = c.wait();
            }
            if std::env::var_os("NETSPEAKER_KEEP_TEST_DIRS").is_none() {
                let _ = std::fs::remove_file(&self.log_path);
            }
        }
    }
}

impl Drop for JackServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The variable that marks a re-executed test binary as the child.
pub const CHILD_ENV: &str = "NETSPEAKER_TEST_CHILD";

/// True in the child that [`run_child`] started for test `name`.
pub fn in_child(name: &str) -> bool {
    std::env::var(CHILD_ENV).as_deref() == Ok(name)
}

/// Re-executes this test binary running only test `name` (a top-level
/// `#[test] fn name` of the test file) with `env` added, and waits for it.
/// The child's stdout/stderr are returned; [`report`] hands values back.
pub fn run_child(name: &str, env: &[(String, String)]) -> Output {
    spawn_child(name, env)
        .wait_with_output()
        .expect("wait for test child")
}

/// Like [`run_child`] but returns at once (stdout and stderr piped).
pub fn spawn_child(name: &str, env: &[(String, String)]) -> Child {
    let exe = std::env::current_exe().expect("current test binary");
    Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("re-execute test binary")
}

/// Panics with the child's output unless it succeeded; returns its stdout.
pub fn child_ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "test child failed: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Hands a value from the child to the parent (see [`child_value`]). The
/// marker keeps it apart from libtest's own output on the same line.
pub fn report(key: &str, value: impl std::fmt::Display) {
    println!("\n@{key}={value}");
}

/// The value the child reported for `key`.
pub fn child_value(stdout: &str, key: &str) -> Option<String> {
    let marker = format!("@{key}=");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&marker).map(|v| v.trim().to_string()))
}

/// Interleaved 16-bit sine, the same on every channel.
pub fn sine(rate: u32, channels: u16, freq_hz: f64, frames: usize, amplitude: i16) -> Vec<i16> {
    let mut out = Vec::with_capacity(frames * usize::from(channels));
    for n in 0..frames {
        let v = (f64::from(amplitude)
            * (2.0 * std::f64::consts::PI * freq_hz * n as f64 / f64::from(rate)).sin())
        .round() as i16;
        out.extend(std::iter::repeat(v).take(usize::from(channels)));
    }
    out
}

/// Seeded white noise (xorshift64*), different on every channel, never
/// all-zero: any 64-frame window is unique, so alignment is unambiguous.
/// `amplitude` bounds |sample| (use < 32767 to leave headroom).
pub fn noise(seed: u64, channels: u16, frames: usize, amplitude: i16) -> Vec<i16> {
    let mut state = seed | 1;
    let span = i64::from(amplitude.max(1)) * 2 + 1;
    (0..frames * usize::from(channels))
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33;
            (r as i64 % span - i64::from(amplitude)) as i16
        })
        .collect()
}

/// Mono tone bursts: `burst_ms` of a `freq_hz` sine every `every_ms`,
/// the first `first_ms` in, exact silence between. Each burst starts at
/// phase 0, rising, so its onset in a recording is found the same way
/// every time ([`burst_onsets`]): the spacing of onsets is the receiver's
/// timing, to a fraction of a device frame.
pub fn tone_bursts(
    rate: u32,
    frames: usize,
    first_ms: u32,
    every_ms: u32,
    burst_ms: u32,
    freq_hz: f64,
    amplitude: i16,
) -> Vec<i16> {
    let ms = |m: u32| (u64::from(m) * u64::from(rate) / 1000) as usize;
    let (first, every, burst) = (ms(first_ms), ms(every_ms), ms(burst_ms));
    let mut out = vec![0i16; frames];
    let mut start = first;
    while start < frames {
        let tone = sine(rate, 1, freq_hz, burst.min(frames - start), amplitude);
        out[start..start + tone.len()].copy_from_slice(&tone);
        start += every;
    }
    out
}

/// How many bursts [`tone_bursts`] puts in `frames`.
pub fn burst_count(rate: u32, frames: usize, first_ms: u32, every_ms: u32) -> usize {
    let ms = |m: u32| (u64::from(m) * u64::from(rate) / 1000) as usize;
    let (first, every) = (ms(first_ms), ms(every_ms));
    if frames <= first {
        0
    } else {
        (frames - first).div_ceil(every)
    }
}

/// Onsets of tone bursts in a mono recording, in (fractional) frames: the
/// point where |sample| first crosses `threshold` after at least `quiet`
/// frames under it, interpolated between the two frames around it.
pub fn burst_onsets(mono: &[f32], threshold: f32, quiet: usize) -> Vec<f64> {
    let mut onsets = Vec::new();
    let mut since_loud = quiet;
    for (i, &v) in mono.iter().enumerate() {
        if v.abs() > threshold {
            if since_loud >= quiet {
                let prev = if i > 0 { mono[i - 1].abs() } else { 0.0 };
                let frac = f64::from((threshold - prev) / (v.abs() - prev));
                onsets.push(i as f64 - 1.0 + frac.clamp(0.0, 1.0));
            }
            since_loud = 0;
        } else {
            since_loud += 1;
        }
    }
    onsets
}

/// The first channel of interleaved frames, as f32.
pub fn first_channel_s16(samples: &[i16], channels: u16) -> Vec<f32> {
    samples
        .chunks_exact(usize::from(channels))
        .map(|f| i16_to_f32(f[0]))
        .collect()
}

/// The first channel of interleaved f32 frames.
pub fn first_channel_f32(samples: &[f32], channels: u16) -> Vec<f32> {
    samples
        .chunks_exact(usize::from(channels))
        .map(|f| f[0])
        .collect()
}

/// Mono sum of sines at `freqs_hz` (each `amplitude`, all from phase 0).
/// With frequencies that are multiples of 50 Hz, a 20 ms block holds whole
/// cycles of each, so [`tone_block_snr`] fits them exactly.
pub fn multitone(rate: u32, frames: usize, freqs_hz: &[f64], amplitude: i16) -> Vec<i16> {
    (0..frames)
        .map(|n| {
            let t = n as f64 / f64::from(rate);
            let v: f64 = freqs_hz
                .iter()
                .map(|f| (2.0 * std::f64::consts::PI * f * t).sin())
                .sum();
            (v * f64::from(amplitude)).round() as i16
        })
        .collect()
}

/// One block's fit of the known tones: the signal-to-residual ratio in dB
/// and the fitted amplitude of each tone (full scale 1.0).
#[derive(Clone, Debug)]
pub struct ToneFit {
    pub snr_db: f64,
    pub amplitudes: Vec<f64>,
    /// The playback rate's offset the fit took (ppm; 0 for the fixed fit).
    pub ppm: f64,
}

/// Fits the tones `freqs_hz` (any phase, any amplitude: the ideal signal
/// after whatever delay and conversion) to each 20 ms block of a mono
/// signal at `rate`, and measures what is left: noise, distortion, images,
/// clicks. The frequencies must be multiples of 50 Hz (whole cycles per
/// block: the sines and cosines are orthogonal, the projections are the
/// least-squares fit). Compare a recording's figures with the same fit of
/// the stream at its own rate (what the codec alone leaves).
pub fn tone_block_snr(mono: &[f32], rate: u32, freqs_hz: &[f64]) -> Vec<ToneFit> {
    let block = rate as usize / 50;
    mono.chunks_exact(block)
        .map(|b| {
            let n = b.len() as f64;
            let mut fit = vec![0.0f64; b.len()];
            let mut amplitudes = Vec::new();
            for f in freqs_hz {
                let w = 2.0 * std::f64::consts::PI * f / f64::from(rate);
                let (mut sc, mut cc) = (0.0, 0.0);
                for (i, v) in b.iter().enumerate() {
                    sc += f64::from(*v) * (w * i as f64).sin();
                    cc += f64::from(*v) * (w * i as f64).cos();
                }
                let (a, c) = (2.0 * sc / n, 2.0 * cc / n);
                amplitudes.push(a.hypot(c));
                for (i, x) in fit.iter_mut().enumerate() {
                    *x += a * (w * i as f64).sin() + c * (w * i as f64).cos();
                }
            }
            let (mut noise, mut power) = (0.0f64, 0.0f64);
            for (v, x) in b.iter().zip(&fit) {
                noise += (f64::from(*v) - x).powi(2);
                power += x * x;
            }
            ToneFit {
                snr_db: 10.0 * (power / noise.max(1e-30)).log10(),
                amplitudes,
                ppm: 0.0,
            }
        })
        .collect()
}

/// The widest playback-rate offset [`rate_free_fit`] looks at: the delay
/// controller's own bound is ±2500 ppm, its resampler's ±5000.
const FIT_MAX_PPM: f64 = 5000.0;

/// One block's least-squares fit of the tones at `freqs_hz` scaled by
/// `1 + ppm/1e6`: any phase and amplitude, the sines and cosines solved
/// together (scaled, they are not whole cycles per block, so not
/// orthogonal).
fn scaled_fit(block: &[f32], rate: u32, freqs_hz: &[f64], ppm: f64) -> ToneFit {
    let k = 2 * freqs_hz.len();
    let w: Vec<f64> = freqs_hz
        .iter()
        .map(|f| 2.0 * std::f64::consts::PI * f * (1.0 + ppm * 1e-6) / f64::from(rate))
        .collect();
    let basis = |i: usize, j: usize| {
        let (s, c) = (w[j / 2] * i as f64).sin_cos();
        if j % 2 == 0 {
            s
        } else {
            c
        }
    };
    // Normal equations G x = r, then Gaussian elimination with pivoting.
    let mut g = vec![vec![0.0f64; k + 1]; k];
    let mut row = vec![0.0f64; k];
    for (i, v) in block.iter().enumerate() {
        for (j, b) in row.iter_mut().enumerate() {
            *b = basis(i, j);
        }
        for (ga, ra) in g.iter_mut().zip(&row) {
            for (gab, rb) in ga.iter_mut().zip(&row) {
                *gab += ra * rb;
            }
            ga[k] += ra * f64::from(*v);
        }
    }
    for col in 0..k {
        let pivot = (col..k)
            .max_by(|&a, &b| g[a][col].abs().total_cmp(&g[b][col].abs()))
            .unwrap_or(col);
        g.swap(col, pivot);
        let p = g[col][col];
        if p.abs() < 1e-12 {
            continue;
        }
        let pivot_row = g[col].clone();
        for (r, other) in g.iter_mut().enumerate() {
            if r != col {
                let f = other[col] / p;
                for (x, y) in other.iter_mut().zip(&pivot_row).skip(col) {
                    *x -= f * y;
                }
            }
        }
    }
    let x: Vec<f64> = (0..k)
        .map(|j| {
            if g[j][j].abs() < 1e-12 {
                0.0
            } else {
                g[j][k] / g[j][j]
            }
        })
        .collect();
    let (mut noise, mut power) = (0.0f64, 0.0f64);
    for (i, v) in block.iter().enumerate() {
        let fit: f64 = (0..k).map(|j| x[j] * basis(i, j)).sum();
        noise += (f64::from(*v) - fit).powi(2);
        power += fit * fit;
    }
    ToneFit {
        snr_db: 10.0 * (power / noise.max(1e-30)).log10(),
        amplitudes: (0..freqs_hz.len())
            .map(|t| x[2 * t].hypot(x[2 * t + 1]))
            .collect(),
        ppm,
    }
}

/// A block's tone fit with the playback rate free as well: the best of
/// offsets up to ±[`FIT_MAX_PPM`], coarse then fine (to 10 ppm). A
/// receiver that holds its delay by resampling a little plays the tones
/// that much off their frequencies: against fixed frequencies 1000 ppm
/// leaves 31 dB in a 20 ms block (the phase walks 0.13 rad over it at
/// 1 kHz), which is neither noise nor a click and is not heard. Lost or
/// repeated pieces, clicks and noise are still what is left over.
pub fn rate_free_fit(block: &[f32], rate: u32, freqs_hz: &[f64]) -> ToneFit {
    let best = |from: f64, to: f64, step: f64| {
        let n = ((to - from) / step).round() as i64;
        (0..=n)
            .map(|i| scaled_fit(block, rate, freqs_hz, from + i as f64 * step))
            .max_by(|a, b| a.snr_db.total_cmp(&b.snr_db))
            .expect("at least one offset")
    };
    let coarse = best(-FIT_MAX_PPM, FIT_MAX_PPM, 250.0);
    let mid = best(coarse.ppm - 250.0, coarse.ppm + 250.0, 50.0);
    best(mid.ppm - 50.0, mid.ppm + 50.0, 10.0)
}

/// A played signal of tones against the same fit of a reference (the
/// stream at its own rate, e.g. the G.711 codes the sender made): see
/// [`compare_tones`].
#[derive(Clone, Debug)]
pub struct ToneComparison {
    /// Median over the judged 20 ms blocks, in dB.
    pub played_snr_db: f64,
    pub reference_snr_db: f64,
    /// The played block with the most left over.
    pub worst_db: f64,
    /// The largest change of a tone's level, in dB.
    pub level_error_db: f64,
    /// Judged blocks of the played signal.
    pub blocks: usize,
    /// The median and the widest playback-rate offset the played blocks'
    /// fits took (ppm): the receiver's resampled delay corrections.
    pub median_ppm: f64,
    pub widest_ppm: f64,
}

/// The 20 ms tone fits of the last `seconds` before a signal's end: the
/// blocks before the last one with every tone at 90 % of `amplitude` or
/// more, less 100 ms (past the end a receiver's concealment fades out).
/// Each judged block is fitted with the playback rate free
/// ([`rate_free_fit`]).
pub fn tail_fits(
    mono: &[f32],
    rate: u32,
    tones: &[f64],
    amplitude: i16,
    seconds: usize,
) -> Vec<ToneFit> {
    let fits = tone_block_snr(mono, rate, tones);
    let full = f64::from(amplitude) / 32768.0 * 0.9;
    let last = fits
        .iter()
        .rposition(|f| f.amplitudes.iter().all(|a| *a > full))
        .unwrap_or(0);
    let end = last.saturating_sub(5);
    let block = rate as usize / 50;
    (end.saturating_sub(seconds * 50)..end)
        .filter_map(|b| mono.get(b * block..(b + 1) * block))
        .map(|b| rate_free_fit(b, rate, tones))
        .collect()
}

/// Compares the last `seconds` of a played signal of `tones` with the
/// same stretch of the reference: the residual after fitting the tones
/// (noise, distortion, images, clicks, a lost or repeated piece) and the
/// tones' levels.
pub fn compare_tones(
    played: &[f32],
    played_rate: u32,
    reference: &[f32],
    reference_rate: u32,
    tones: &[f64],
    amplitude: i16,
    seconds: usize,
) -> ToneComparison {
    let p = tail_fits(played, played_rate, tones, amplitude, seconds);
    let r = tail_fits(reference, reference_rate, tones, amplitude, seconds);
    let snr = |f: &[ToneFit]| median(&f.iter().map(|f| f.snr_db).collect::<Vec<_>>());
    let level_db = |f: &[ToneFit], k: usize| {
        20.0 * median(&f.iter().map(|f| f.amplitudes[k]).collect::<Vec<_>>()).log10()
    };
    ToneComparison {
        played_snr_db: snr(&p),
        reference_snr_db: snr(&r),
        worst_db: p.iter().map(|f| f.snr_db).fold(f64::INFINITY, f64::min),
        level_error_db: (0..tones.len())
            .map(|k| (level_db(&p, k) - level_db(&r, k)).abs())
            .fold(0.0, f64::max),
        blocks: p.len(),
        median_ppm: median(&p.iter().map(|f| f.ppm).collect::<Vec<_>>()),
        widest_ppm: p
            .iter()
            .map(|f| f.ppm)
            .fold(0.0, |w, x| if x.abs() > w.abs() { x } else { w }),
    }
}

/// The median of some figures (NaN if none).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Exact f32 form of 16-bit samples (k / 32768), as the playout stage
/// hands them to the device stage.
pub fn to_f32(samples: &[i16]) -> Vec<f32> {
    samples.iter().map(|&s| i16_to_f32(s)).collect()
}

/// Back from f32 (as the jack device records) to 16 bits; exact for
/// values that came from 16 bits.
pub fn f32_to_s16(samples: &[f32]) -> Vec<i16> {
    samples.iter().map(|&s| f32_to_i16(s)).collect()
}

pub fn read_s16le(path: &Path) -> Vec<i16> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

pub fn read_f32le(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Where the two signals line up: `recording[recording_frame..]` plays
/// `sent[sent_frame..]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alignment {
    pub recording_frame: usize,
    pub sent_frame: usize,
}

const PROBE_FRAMES: usize = 64;

fn window_matches(a: &[i16], b: &[i16], tolerance: i32) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (i32::from(*x) - i32::from(*y)).abs() <= tolerance)
}

/// Finds the start-up offset: first where the start of `sent` appears in
/// `recording` (the device got everything after some silence), else where
/// the recording's first non-silent window appears in `sent` (the start was
/// missed). Samples may differ by `tolerance` (0 = bit-exact).
pub fn align(recording: &[i16], sent: &[i16], channels: u16, tolerance: i32) -> Option<Alignment> {
    let ch = usize::from(channels);
    let probe_len = PROBE_FRAMES * ch;
    let rec_frames = recording.len() / ch;
    let sent_frames = sent.len() / ch;
    if sent_frames < PROBE_FRAMES || rec_frames < PROBE_FRAMES {
        return None;
    }
    let probe = &sent[..probe_len];
    for f in 0..=rec_frames - PROBE_FRAMES {
        if window_matches(&recording[f * ch..f * ch + probe_len], probe, tolerance) {
            return Some(Alignment {
                recording_frame: f,
                sent_frame: 0,
            });
        }
    }
    let first_loud = recording
        .chunks_exact(ch)
        .position(|fr| fr.iter().any(|&s| i32::from(s).abs() > tolerance))?;
    if first_loud + PROBE_FRAMES > rec_frames {
        return None;
    }
    let probe = &recording[first_loud * ch..first_loud * ch + probe_len];
    (0..=sent_frames - PROBE_FRAMES)
        .find(|&f| window_matches(&sent[f * ch..f * ch + probe_len], probe, tolerance))
        .map(|f| Alignment {
            recording_frame: first_loud,
            sent_frame: f,
        })
}

/// Of the last `seconds` the device played before the stream's end, the
/// share of whole seconds that are the signal bit for bit, each aligned on
/// its own (a correction of the delay moves the alignment by whole
/// frames, and the audio during it is resampled, hence not exact).
pub fn exact_share_of_tail(
    recording: &[i16],
    sent: &[i16],
    channels: u16,
    rate: u32,
    seconds: usize,
    log: &str,
) -> f64 {
    let (exact, judged) = exact_seconds(recording, sent, channels, rate, Some(seconds), log);
    exact as f64 / judged as f64
}

/// Whole seconds the device played bit for bit, counted back from the
/// stream's end (its last sound less the fade-out): of the last `seconds`,
/// or of all it played when `None`. Returns (exact, judged).
pub fn exact_seconds(
    recording: &[i16],
    sent: &[i16],
    channels: u16,
    rate: u32,
    seconds: Option<usize>,
    log: &str,
) -> (usize, usize) {
    let ch = usize::from(channels);
    let rate = rate as usize;
    let sounding = |f: &[i16]| f.iter().any(|&v| v != 0);
    let last_sound = recording
        .chunks_exact(ch)
        .rposition(sounding)
        .unwrap_or_else(|| panic!("nothing was played\n{log}"));
    let first_sound = recording.chunks_exact(ch).position(sounding).unwrap_or(0);
    // Skip the fade-out after the stream's end.
    let end = last_sound.saturating_sub(rate / 10);
    let played = (end - first_sound.min(end)) / rate;
    let judged = seconds.unwrap_or(played);
    assert!(
        judged > 0 && end > judged * rate,
        "less than {judged} s played\n{log}"
    );
    let exact = (0..judged)
        .filter(|k| {
            let from = end - (k + 1) * rate;
            let second = &recording[from * ch..(from + rate) * ch];
            align(second, sent, channels, 0).is_some_and(|al| {
                let cmp = compare(second, sent, channels, al, 0);
                cmp.mismatched_frames == 0 && cmp.frames == rate - al.recording_frame
            })
        })
        .count();
    (exact, judged)
}

/// The result of comparing the aligned overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Comparison {
    /// Frames compared (the overlap).
    pub frames: usize,
    /// Frames with at least one sample off by more than the tolerance.
    pub mismatched_frames: usize,
    pub first_mismatch: Option<usize>,
    pub max_abs_diff: i32,
}

/// Compares `recording` with `sent` over their overlap after `al`.
pub fn compare(
    recording: &[i16],
    sent: &[i16],
    channels: u16,
    al: Alignment,
    tolerance: i32,
) -> Comparison {
    let ch = usize::from(channels);
    let rec = recording.get(al.recording_frame * ch..).unwrap_or(&[]);
    let snt = sent.get(al.sent_frame * ch..).unwrap_or(&[]);
    let mut cmp = Comparison {
        frames: 0,
        mismatched_frames: 0,
        first_mismatch: None,
        max_abs_diff: 0,
    };
    for (i, (r, s)) in rec.chunks_exact(ch).zip(snt.chunks_exact(ch)).enumerate() {
        cmp.frames += 1;
        let diff = r
            .iter()
            .zip(s)
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .max()
            .unwrap_or(0);
        cmp.max_abs_diff = cmp.max_abs_diff.max(diff);
        if diff > tolerance {
            cmp.mismatched_frames += 1;
            cmp.first_mismatch.get_or_insert(i);
        }
    }
    cmp
}

/// A device that consumed nothing for at least this long stalled: the
/// receivers under test write a period every 10 ms or less and the file
/// plugin appends whatever exceeds one device buffer (40-120 ms in these
/// tests) at every write, so a healthy device grows its recording many
/// times in this span.
pub const STALL_BAR: Duration = Duration::from_millis(250);

/// How a recording grew in wall time, sampled by a thread every 10 ms
/// until dropped: the evidence, from outside the receiver, that the sound
/// server stalled. A paced device (PulseAudio null sink, JACK dummy) takes
/// frames at its own pace and the file plugin in front of it records them
/// as the writes it blocks return, so a wall-clock span in which the
/// recording did not grow is a span in which the device took nothing.
///
/// Only spans with a sample at both ends count ([`GrowthWatch::longest_flat`]),
/// so a watcher thread that was itself descheduled never reports a stall
/// it did not see. A receiver whose playout thread stopped writing would
/// look the same; that is why a stall earns at most one more run, and the
/// figures are printed so that a run that stalls twice can be looked into.
pub struct GrowthWatch {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
}

impl GrowthWatch {
    /// Watches `size()` (bytes recorded so far).
    pub fn start(size: impl Fn() -> u64 + Send + 'static) -> GrowthWatch {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let n = size();
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((Instant::now(), n));
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        GrowthWatch { samples, stop }
    }

    /// Watches one recording file (0 bytes while it does not exist; a
    /// truncation on reopen counts as a change).
    pub fn file(path: &Path) -> GrowthWatch {
        let path = path.to_path_buf();
        GrowthWatch::start(move || std::fs::metadata(&path).map_or(0, |m| m.len()))
    }

    /// (when, bytes) so far.
    pub fn samples(&self) -> Vec<(Instant, u64)> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The longest span inside [from, to] between two samples that saw the
    /// same size (the recording did not grow in between).
    pub fn longest_flat(&self, from: Instant, to: Instant) -> Duration {
        longest_flat(&self.samples(), from, to)
    }

    /// `Some(span)` if the device took nothing for [`STALL_BAR`] or more
    /// inside [from, to]. `what` names the run in the line printed either
    /// way, so the figure is in every test's output.
    pub fn stall(&self, what: &str, from: Instant, to: Instant) -> Option<Duration> {
        let flat = self.longest_flat(from, to);
        let stalled = flat >= STALL_BAR;
        eprintln!(
            "{what}: the recording's longest standstill while streaming: {} ms{}",
            flat.as_millis(),
            if stalled {
                " (the sound server stalled)"
            } else {
                ""
            }
        );
        stalled.then_some(flat)
    }
}

impl Drop for GrowthWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// See [`GrowthWatch::longest_flat`].
pub fn longest_flat(samples: &[(Instant, u64)], from: Instant, to: Instant) -> Duration {
    let mut longest = Duration::ZERO;
    let mut run: Option<(Instant, u64)> = None;
    for &(t, n) in samples.iter().filter(|(t, _)| *t >= from && *t <= to) {
        match run {
            Some((start, size)) if size == n => longest = longest.max(t - start),
            _ => run = Some((t, n)),
        }
    }
    longest
}

/// Runs a paced scenario once; once more only if it failed while the host
/// was disturbed, by outside evidence: `body` says so through the cell it
/// is given (before it judges anything), in words — the sound server
/// stood still ([`stood_still`]), or a test sender was held up
/// ([`sender_held_up`]). The second run is judged whatever happens in it.
pub fn once_more_if_stalled(name: &str, body: impl Fn(&std::cell::Cell<Option<String>>)) {
    let disturbed = std::cell::Cell::new(None);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&disturbed))) {
        Ok(()) => {}
        Err(e) => match disturbed.take() {
            Some(why) => {
                eprintln!(
                    "{name}: the first run failed while {why}; running it again \
                     (judged whatever happens)"
                );
                body(&std::cell::Cell::new(None));
            }
            None => std::panic::resume_unwind(e),
        },
    }
}

/// [`GrowthWatch::stall`]'s finding, in words for [`once_more_if_stalled`].
pub fn stood_still(stall: Option<Duration>) -> Option<String> {
    stall.map(|d| format!("the sound server stood still for {} ms", d.as_millis()))
}

/// Either outside evidence for [`once_more_if_stalled`]: the sound server
/// stood still ([`stood_still`]) or the test's sender was held up
/// ([`sender_held_up`]).
pub fn stood_still_or_held_up(stall: Option<Duration>, max_late: Duration) -> Option<String> {
    stood_still(stall).or_else(|| sender_held_up(max_late))
}

/// A datagram held up this much by the host (a test sender or relay
/// scheduled late) is a network condition of its own: on a clean link the
/// buffer's low point, just before a 20 ms packet lands, is the target
/// less half a packet, about 8 ms. Runs here with nothing else running
/// showed 0.5-8.7 ms, most under 5 (`tests/impair`'s relay).
pub const HOST_HELD_UP: Duration = Duration::from_millis(6);

/// A test sender's worst lateness, when it is [`HOST_HELD_UP`] or more,
/// in words for [`once_more_if_stalled`].
pub fn sender_held_up(max_late: Duration) -> Option<String> {
    (max_late >= HOST_HELD_UP).then(|| {
        format!(
            "the host held the test sender up {:.1} ms",
            max_late.as_secs_f64() * 1000.0
        )
    })
}

/// `jack_lsp`'s list of ports on the server `env` names, or `None` if it
/// failed or did not answer within 3 s: once a client of a JACK server
/// died mid-run (jack_rec, seen once in CI), jack_lsp waited on that
/// server for good and the test with it, for 10 minutes until killed.
pub fn jack_ports(env: &[(String, String)]) -> Option<String> {
    use std::io::Read;
    let mut child = Command::new("jack_lsp")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let exited = wait_until(Duration::from_secs(3), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    // A list of a few ports: far less than a pipe holds, so it waited
    // there whole while jack_lsp exited.
    let mut ports = String::new();
    child.stdout.take()?.read_to_string(&mut ports).ok()?;
    Some(ports)
}

#[cfg(test)]
mod growth_tests {
    use super::*;

    #[test]
    fn tone_fit_finds_the_tones_and_the_noise() {
        let freqs = [250.0, 650.0, 1000.0];
        let clean = multitone(48_000, 48_000, &freqs, 5000);
        let mono: Vec<f32> = clean.iter().map(|&s| i16_to_f32(s)).collect();
        // Delayed by a fraction of a cycle: the fit takes any phase.
        let fits = tone_block_snr(&mono[7..], 48_000, &freqs);
        assert!(fits.iter().all(|f| f.snr_db > 80.0), "{:?}", fits[0]);
        let level = 5000.0 / 32768.0;
        assert!(fits[0].amplitudes.iter().all(|a| (a - level).abs() < 1e-4));
        // Noise at -40 dB of the tones' power is measured as 40 dB.
        let n = noise(3, 1, 48_000, 32_000);
        let rms_tones = level * (1.5f64).sqrt();
        let rms_noise = 32_000.0 / 32768.0 / 3f64.sqrt();
        let k = rms_tones / rms_noise / 100.0;
        let noisy: Vec<f32> = mono
            .iter()
            .zip(&n)
            .map(|(v, e)| v + (k * f64::from(i16_to_f32(*e))) as f32)
            .collect();
        let snr = median(
            &tone_block_snr(&noisy, 48_000, &freqs)
                .iter()
                .map(|f| f.snr_db)
                .collect::<Vec<_>>(),
        );
        assert!((snr - 40.0).abs() < 1.0, "{snr}");
    }

    #[test]
    fn rate_free_fit_takes_a_resampled_delay_correction_but_not_a_click() {
        let freqs = [250.0, 650.0, 1000.0];
        let level = 5000.0 / 32768.0;
        // The tones played 1000 ppm fast, at an odd phase: what a receiver
        // correcting its delay by resampling plays.
        let played = |ppm: f64, i: usize| -> f32 {
            freqs
                .iter()
                .map(|f| {
                    let w = 2.0 * std::f64::consts::PI * f * (1.0 + ppm * 1e-6) / 48_000.0;
                    level * (w * (i as f64 + 0.3)).sin()
                })
                .sum::<f64>() as f32
        };
        let block: Vec<f32> = (0..960).map(|i| played(1000.0, i)).collect();
        let fixed = tone_block_snr(&block, 48_000, &freqs)[0].snr_db;
        let free = rate_free_fit(&block, 48_000, &freqs);
        assert!(fixed < 36.0, "fixed frequencies: {fixed:.1} dB");
        assert!(free.snr_db > 80.0, "{free:?}");
        assert!((free.ppm - 1000.0).abs() <= 10.0, "{free:?}");
        assert!(free.amplitudes.iter().all(|a| (a - level).abs() < 1e-4));
        // The same block with one sample's click still leaves little.
        let mut clicked = block.clone();
        clicked[480] += 0.5;
        let c = rate_free_fit(&clicked, 48_000, &freqs);
        assert!(c.snr_db < 25.0, "{c:?}");
        // A piece lost mid-block (a splice 24 samples on).
        let spliced: Vec<f32> = (0..960)
            .map(|i| played(0.0, if i < 480 { i } else { i + 24 }))
            .collect();
        let s = rate_free_fit(&spliced, 48_000, &freqs);
        assert!(s.snr_db < 20.0, "{s:?}");
    }

    #[test]
    fn burst_onsets_found_where_they_were_put() {
        let bursts = tone_bursts(48_000, 48_000 * 3, 60, 500, 50, 1000.0, 12_000);
        assert_eq!(burst_count(48_000, bursts.len(), 60, 500), 6);
        let mono: Vec<f32> = bursts.iter().map(|&s| i16_to_f32(s)).collect();
        let onsets = burst_onsets(&mono, 0.1, 480);
        assert_eq!(onsets.len(), 6, "{onsets:?}");
        // The threshold is crossed a little after the burst's first frame,
        // by the same amount for every burst.
        assert!((2880.0..2884.0).contains(&onsets[0]), "{onsets:?}");
        for (k, o) in onsets.iter().enumerate() {
            let want = onsets[0] + 24_000.0 * k as f64;
            assert!((o - want).abs() < 0.01, "burst {k} at {o}, not {want}");
        }
    }

    #[test]
    fn flat_spans_need_a_sample_at_both_ends() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Grows every 10 ms, stands still from 100 to 400 ms, and the
        // watcher itself was away from 500 to 900 ms (no samples).
        let mut s: Vec<(Instant, u64)> = (0..=10).map(|i| (at(i * 10), i * 100)).collect();
        s.extend((11..=40).map(|i| (at(i * 10), 1000)));
        s.push((at(410), 1100));
        s.push((at(500), 1200));
        s.push((at(900), 5200));
        assert_eq!(
            longest_flat(&s, at(0), at(1000)),
            Duration::from_millis(300)
        );
        // Only the part inside the window counts.
        assert_eq!(
            longest_flat(&s, at(200), at(1000)),
            Duration::from_millis(200)
        );
        assert_eq!(longest_flat(&s, at(450), at(1000)), Duration::ZERO);
    }
}
