//! The real receiver playing into the `paced` device of a private
//! PulseAudio server (file over pulse: paced and bit-exact), for the tests
//! that stream into it from other programs (tests/interop.rs,
//! tests/opus_interop.rs): one stream at a time, the final statistics
//! line's counters, and the signal file a sender reads. Use as
//! `common::paced_receiver::…` after `mod common;`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{read_s16le, AlsaConfig, GrowthWatch, PulseServer, TestDir};

const RECEIVER: &str = env!("CARGO_BIN_EXE_netspeaker");

/// One stream at a time: each test runs a sound server, the receiver and
/// a sender in real time, and on a 2-core machine three at once starve the
/// sound servers (a stalled sink shows up as late packets and overflow).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next one may still run.
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The signal as a raw s16le file, what ffmpeg and GStreamer read.
pub fn write_s16le(path: &Path, samples: &[i16]) {
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("write signal");
}

/// Polls `ok` every 20 ms for up to `timeout`.
pub fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A counter from the receiver's final statistics line ("stopping: packets
/// N ... (overflow O ...").
pub fn final_stat(log: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("stopping: packets"))
        .unwrap_or_else(|| panic!("no final statistics line in:\n{log}"));
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w.trim_start_matches('(') == name {
            if let Some(v) = words.next().and_then(|v| v.parse().ok()) {
                return v;
            }
        }
    }
    panic!("no '{name}' in the statistics line: {line}")
}

/// `netspeaker` on the `paced` device, its log in a file of the test
/// directory.
pub struct PacedReceiver {
    child: Child,
    log: PathBuf,
    /// The paced device's recording (s16le at the device's format).
    pub recording: PathBuf,
    /// How the recording grows from the moment the device consumes.
    watch: GrowthWatch,
    consuming_since: Instant,
    // Dropped after the child: the server must outlive the receiver.
    _pulse: PulseServer,
}

impl PacedReceiver {
    /// Starts `netspeaker -v --device paced --stats-interval 0 ARGS` and
    /// waits up to 15 s until `consuming` says the device takes audio
    /// (each test file judges that its own way); panics with the log if
    /// it never does.
    pub fn start(
        dir: &TestDir,
        args: &[&str],
        mut consuming: impl FnMut(&PacedReceiver) -> bool,
    ) -> PacedReceiver {
        let pulse = PulseServer::start(&dir.path);
        let config = AlsaConfig::write(&dir.path);
        let log = dir.file("receiver.log");
        let child = Command::new(RECEIVER)
            .args(["-v", "--device", "paced", "--stats-interval", "0"])
            .args(args)
            .envs(config.env())
            .envs(pulse.env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("receiver log"))
            .spawn()
            .expect("start netspeaker");
        let mut receiver = PacedReceiver {
            child,
            log,
            watch: GrowthWatch::file(&config.paced),
            recording: config.paced,
            consuming_since: Instant::now(),
            _pulse: pulse,
        };
        let ok = wait_until(Duration::from_secs(15), || consuming(&receiver));
        receiver.consuming_since = Instant::now();
        if !ok {
            let _ = receiver.child.kill();
            let _ = receiver.child.wait();
            panic!(
                "the paced device never started consuming:\n{}",
                receiver.log_text()
            );
        }
        receiver
    }

    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// High-water mark of the receiver's resident memory, in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("receiver's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc status")
    }

    /// Stops it as systemd does (SIGTERM), expects exit status 0 within a
    /// few seconds, and returns its log, the recording, and whether the
    /// sound server stalled while it played ([`GrowthWatch::stall`]).
    pub fn stop(mut self) -> (String, Vec<i16>, Option<Duration>) {
        let stalled = self.watch.stall(
            &self.log.display().to_string(),
            self.consuming_since,
            Instant::now(),
        );
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let mut status = None;
        let exited = wait_until(Duration::from_secs(5), || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let log = self.log_text();
        assert!(
            status.is_some_and(|s| s.success()),
            "netspeaker did not exit 0 after SIGTERM ({status:?}):\n{log}"
        );
        let recording = read_s16le(&self.recording);
        (log, recording, stalled)
    }
}
