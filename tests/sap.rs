//! SAP (issue 12) end to end against PulseAudio, both ways, inside a
//! private network namespace with multicast on its loopback (TESTING.md):
//!
//! - PulseAudio's `module-rtp-send` announces its stream (SAP on
//!   224.0.0.56:9875) and streams a test tone; `netspeaker --sap` with no
//!   format option finds it, takes group, port and format from the SDP and
//!   plays it on the paced device (recorded, tone frequency checked); junk
//!   on the SAP port (encrypted, compressed, garbage) is counted and
//!   logged, never fatal; unloading the module (its SAP deletion) stops
//!   the stream with a line naming the session.
//! - `netspeaker-send --sap` → PulseAudio's `module-rtp-recv`, which plays
//!   it into its null sink, recorded from the sink's monitor.
//! - `netspeaker-send --sap` → `netspeaker --sap NAME`: deletion, return,
//!   and a move to another port, which the receiver follows by restarting
//!   its receive side in place.

mod common;

use common::{read_s16le, AlsaConfig, TestDir};
use netspeaker::send::wav::write_wav;
use std::path::Path;
use std::process::{Command, Stdio};

const RX: &str = env!("CARGO_BIN_EXE_netspeaker");
const TX: &str = env!("CARGO_BIN_EXE_netspeaker-send");

/// The paced tests run one at a time (one sound server each).
static PACED: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn paced_slot() -> std::sync::MutexGuard<'static, ()> {
    PACED.lock().unwrap_or_else(|e| e.into_inner())
}

const NETNS_SETUP: &str =
    "ip link set lo up; ip link set lo multicast on; ip route add 224.0.0.0/4 dev lo";

/// Every script starts with this: `wait_log PATTERN FILE TENTHS` waits
/// until FILE holds PATTERN, for at most TENTHS tenths of a second.
const WAIT_LOG: &str = "wait_log() {
  n=0
  while ! grep -q \"$1\" \"$2\"; do sleep 0.1; n=$((n+1)); [ $n -lt \"$3\" ] || return 1; done
}";

/// Starts a private PulseAudio inside the namespace with `modules`; the
/// script then has PULSE_SERVER set and `$pa` holds its pid.
fn pulse_script(dir: &Path, modules: &str) -> String {
    let pa = dir.join("pulse");
    std::fs::create_dir_all(pa.join("rt")).unwrap();
    let socket = pa.join("native");
    std::fs::write(
        pa.join("default.pa"),
        format!(
            "load-module module-native-protocol-unix auth-anonymous=1 socket={}\n{modules}",
            socket.display()
        ),
    )
    .unwrap();
    format!(
        "export PULSE_RUNTIME_PATH={rt} PULSE_SERVER=unix:{socket}
pulseaudio -v -n --daemonize=no --use-pid-file=no --exit-idle-time=-1 --disallow-exit \
  -F {pa}/default.pa 2>{pa}/pulseaudio.log &
pa=$!
trap 'kill $pa 2>/dev/null || true' EXIT
n=0
while ! pactl info >/dev/null 2>&1; do sleep 0.1; n=$((n+1)); [ $n -lt 100 ] || exit 1; done",
        rt = pa.join("rt").display(),
        socket = socket.display(),
        pa = pa.display(),
    )
}

fn run_in_namespace(script: &str) -> std::process::Output {
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", &format!("{WAIT_LOG}\n{script}")])
        .env_remove("INVOCATION_ID")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run unshare (util-linux)");
    out
}

/// Runs a script that starts the receiver with its log in `log`; the
/// script must succeed. Returns the receiver's log.
fn run_receiver_script(script: &str, log: &Path) -> String {
    let out = run_in_namespace(script);
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\n{}\nreceiver log:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn tone_wav(path: &Path, freq: f64, seconds: f64) {
    let frames = (48_000.0 * seconds) as usize;
    let samples: Vec<i16> = (0..frames)
        .flat_map(|i| {
            let v = (2.0 * std::f64::consts::PI * freq * i as f64 / 48_000.0).sin();
            let s = (v * 12_000.0) as i16;
            [s, s]
        })
        .collect();
    std::fs::write(path, write_wav(48_000, 2, &samples)).unwrap();
}

/// The share of `block`'s energy at `freq` Hz (Goertzel over the block):
/// 1 for a pure tone of that frequency, small for anything else.
fn tone_share(block: &[f32], freq: f64, rate: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / rate;
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in block {
        let s0 = v as f64 + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
    let energy: f64 = block.iter().map(|&v| (v as f64) * (v as f64)).sum();
    if energy < 1e-6 {
        return 0.0;
    }
    (2.0 * power / (energy * block.len() as f64)).min(1.0)
}

/// Seconds of 10 ms blocks that are the tone, and seconds with any sound.
fn seconds_of_tone(mono: &[f32], rate: f64, freq: f64) -> (f64, f64) {
    let block = (rate / 100.0) as usize;
    let (mut tone, mut sound) = (0usize, 0usize);
    for b in mono.chunks_exact(block) {
        if b.iter().any(|v| v.abs() > 0.05) {
            sound += 1;
            if tone_share(b, freq, rate) > 0.9 {
                tone += 1;
            }
        }
    }
    (tone as f64 / 100.0, sound as f64 / 100.0)
}

/// The recording of `paced` as mono f32 and its rate, from the format the
/// receiver's log says it opened the device at.
fn recording(alsa: &AlsaConfig, log: &str) -> (Vec<f32>, f64) {
    let line = log
        .lines()
        .find(|l| l.contains("device 'paced' open:"))
        .unwrap_or_else(|| panic!("no device line\n{log}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let before = |unit: &str| -> usize {
        let i = words.iter().position(|w| w.trim_end_matches(',') == unit);
        i.and_then(|i| words.get(i.checked_sub(1)?)?.parse().ok())
            .unwrap_or_else(|| panic!("no {unit} in {line}"))
    };
    let (rate, channels) = (before("Hz"), before("ch"));
    let mono: Vec<f32> = if line.contains("Float") {
        common::read_f32le(&alsa.paced)
            .into_iter()
            .step_by(channels)
            .collect()
    } else {
        read_s16le(&alsa.paced)
            .into_iter()
            .step_by(channels)
            .map(|s| s as f32 / 32768.0)
            .collect()
    };
    (mono, rate as f64)
}

/// Sends junk to the SAP group from inside the namespace: an encrypted
/// and a compressed announcement (flags E and C), a truncated header and
/// an RTP packet.
const JUNK: &str = "python3 -c \"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton('127.0.0.1'))
sdp = b'application/sdp\\x00v=0\\no=- 9 9 IN IP4 10.9.9.9\\ns=junk\\nc=IN IP4 239.9.9.9\\nt=0 0\\nm=audio 9 RTP/AVP 0\\n'
for d in [bytes([0x22, 0, 0, 1, 10, 9, 9, 9]) + sdp, bytes([0x21, 0, 0, 1, 10, 9, 9, 9]) + b'x\\x9c junk', bytes([0x20, 0]), bytes([0x80, 0, 0, 1] + [0] * 8)]:
    s.sendto(d, ('224.0.0.56', 9875))
\"";

#[test]
fn pulseaudio_rtp_send_found_by_sap_and_played_without_format_options() {
    let _slot = paced_slot();
    let dir = TestDir::new("sap-pa-send");
    let alsa = AlsaConfig::write(&dir.path);
    let wav = dir.file("tone.wav");
    tone_wav(&wav, 660.0, 3.0);
    let log = dir.file("rx.log");
    let pulse = pulse_script(
        &dir.path,
        "load-module module-null-sink sink_name=desk rate=48000\n\
         load-module module-null-sink sink_name=speaker rate=48000\n\
         set-default-sink speaker\n\
         load-module module-rtp-send source=desk.monitor destination_ip=224.0.0.56 port=46000 loop=1\n",
    );
    let script = format!(
        "set -e
{NETNS_SETUP}
{pulse}
ALSA_CONFIG_PATH={conf} {RX} --sap 'PulseAudio*' --device paced --period-ms 10 --buffer-periods 4 \
  --no-mlock --rt-priority 0 --stats-interval 0 2>{log} >/dev/null &
r=$!
trap 'kill $r $pa 2>/dev/null || true' EXIT
wait_log 'open:' {log} 150 || exit 1
{JUNK}
sleep 0.7
paplay -d desk {wav}
sleep 0.5
pactl unload-module module-rtp-send
wait_log 'deleted by its sender' {log} 50 || exit 1
sleep 1
kill -TERM $r
wait $r",
        conf = alsa.path.display(),
        log = log.display(),
        wav = wav.display(),
    );
    let text = run_receiver_script(&script, &log);
    // The format came from the announcement: no --rtp-format was given.
    assert!(
        text.lines()
            .any(|l| l.contains("sap: playing 'PulseAudio RTP Stream on")
                && l.contains("224.0.0.56:46000 PT 127 L16/48000/2")),
        "{text}"
    );
    assert!(
        text.contains("encrypted SAP announcement: refused"),
        "{text}"
    );
    assert!(
        text.contains("compressed SAP announcement: refused"),
        "{text}"
    );
    assert!(
        text.contains("sap: announcements refused: 2 malformed, 1 encrypted, 1 compressed"),
        "{text}"
    );
    let stats = common::receiver::Stats::last_in(&text)
        .unwrap_or_else(|| panic!("no statistics line:\n{text}"));
    assert_eq!(stats.get("rt-allocs"), 0.0, "{text}");
    let (mono, rate) = recording(&alsa, &text);
    let (tone, sound) = seconds_of_tone(&mono, rate, 660.0);
    common::report("sap_pa_send_tone_s", format!("{tone:.2}"));
    common::report("sap_pa_send_sound_s", format!("{sound:.2}"));
    // Of the 3 s paplay plays into the sender's own null sink, 2.63 s
    // were heard once on a loaded machine (where the shortfall came from,
    // the sending PulseAudio or the receiver's start, was not measured);
    // what this test proves is that the announced stream plays, in its
    // announced format, and nothing but the tone.
    assert!(
        tone >= 2.5,
        "{tone} s of 660 Hz tone in {sound} s of sound\n{text}"
    );
    assert!(
        tone >= sound - 0.1,
        "{tone} s of tone in {sound} s of sound\n{text}"
    );
}

#[test]
fn netspeaker_send_announced_to_pulseaudio_rtp_recv() {
    let _slot = paced_slot();
    let dir = TestDir::new("sap-pa-recv");
    let wav = dir.file("tone.wav");
    tone_wav(&wav, 880.0, 2.0);
    let rec = dir.file("rec.raw");
    let txlog = dir.file("tx.log");
    let pulse = pulse_script(
        &dir.path,
        "load-module module-null-sink sink_name=out rate=48000\n\
         set-default-sink out\n\
         load-module module-rtp-recv sap_address=224.0.0.56\n",
    );
    let script = format!(
        "set -e
{NETNS_SETUP}
{pulse}
parec -d out.monitor --format=s16le --rate=48000 --channels=2 --latency-msec=20 {rec} &
c=$!
trap 'kill $c $pa 2>/dev/null || true' EXIT
timeout -s INT 6 {TX} --sap 'hall speaker' --loop --rt-priority 0 --no-mlock \
  --dest 239.255.77.1:5004 {wav} 2>{txlog} || [ $? -eq 124 ]
sleep 1
kill -TERM $c
wait $c || true",
        rec = rec.display(),
        wav = wav.display(),
        txlog = txlog.display(),
    );
    let out = run_in_namespace(&script);
    let palog = std::fs::read_to_string(dir.path.join("pulse/pulseaudio.log")).unwrap_or_default();
    let txtext = std::fs::read_to_string(&txlog).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\n{}\nsender:\n{txtext}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let pa_lines: String = palog
        .lines()
        .filter(|l| l.contains("rtp") || l.contains("sdp") || l.contains("sap"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        palog.contains("New session 'hall speaker'"),
        "{pa_lines}\n{txtext}"
    );
    // Our deletion at exit ends PulseAudio's session at once.
    assert!(
        palog.contains("Freeing session 'hall speaker'"),
        "{pa_lines}"
    );
    let mono: Vec<f32> = read_s16le(&rec)
        .into_iter()
        .step_by(2)
        .map(|s| s as f32 / 32768.0)
        .collect();
    let (tone, sound) = seconds_of_tone(&mono, 48_000.0, 880.0);
    common::report("sap_pa_recv_tone_s", format!("{tone:.2}"));
    common::report("sap_pa_recv_sound_s", format!("{sound:.2}"));
    // 6 s sent; PulseAudio's receiver starts late (its jitter buffer and
    // rate adjustment) and drops what it holds at our deletion: ~4.2 s of
    // it reach the sink (tried), all of it the tone.
    assert!(
        tone >= 3.5,
        "{tone} s of 880 Hz in {sound} s of sound\n{pa_lines}"
    );
    assert!(
        tone >= sound - 0.1,
        "{tone} s of tone in {sound} s of sound\n{pa_lines}"
    );
}

/// Our own pair: deletion stops the stream, the sender's return is
/// played again, and a move to another port is followed by a restart of
/// the receive side (same process, same pid).
#[test]
fn netspeaker_follows_deletion_return_and_move() {
    let dir = TestDir::new("sap-own");
    let alsa = AlsaConfig::write(&dir.path);
    let wav = dir.file("tone.wav");
    tone_wav(&wav, 440.0, 1.0);
    let log = dir.file("rx.log");
    let script = format!(
        "set -e
{NETNS_SETUP}
ALSA_CONFIG_PATH={conf} {RX} --sap 'ha?l' --device null --no-mlock --rt-priority 0 \
  --stats-interval 0 2>{log} >/dev/null &
r=$!
trap 'kill $r 2>/dev/null || true' EXIT
sleep 0.3
{TX} -q --sap hall --codec pcmu --rt-priority 0 --no-mlock --dest 239.255.77.1:5004 {wav} &
t=$!
wait_log 'sap: playing' {log} 100 || exit 1
wait $t
wait_log 'deleted by its sender' {log} 50 || exit 1
{TX} -q --sap hall --codec pcmu --rt-priority 0 --no-mlock --dest 239.255.77.1:5004 {wav}
{TX} -q --sap hall --codec pcmu --rt-priority 0 --no-mlock --dest 239.255.77.1:5006 {wav}
sleep 0.5
kill -TERM $r
wait $r",
        conf = alsa.path.display(),
        log = log.display(),
        wav = wav.display(),
    );
    let text = run_receiver_script(&script, &log);
    assert!(
        text.contains("sap: playing 'hall' at 239.255.77.1:5004 PT 0 PCMU/8000/1"),
        "{text}"
    );
    assert!(
        text.contains("sap: session 'hall' deleted by its sender"),
        "{text}"
    );
    assert!(
        text.contains("sap: session 'hall' at 239.255.77.1:5004 PT 0 PCMU/8000/1 announced again"),
        "{text}"
    );
    assert!(
        text.contains("moved from 'hall' at 239.255.77.1:5004")
            && text.contains("to 'hall' at 239.255.77.1:5006"),
        "{text}"
    );
    assert!(
        text.contains("sap: restarted on session 'hall' at 239.255.77.1:5006"),
        "{text}"
    );
    // The restarted receive side played the second port's packets: its
    // final statistics count 50 packets (1 s at 20 ms), minus what came
    // before its socket was bound.
    let stats = common::receiver::Stats::last_in(&text)
        .unwrap_or_else(|| panic!("no statistics line:\n{text}"));
    common::report("sap_move_packets_after_restart", stats.get("packets"));
    assert_eq!(stats.get("rt-allocs"), 0.0, "{text}");
    assert!(stats.get("packets") >= 30.0, "{text}");
}

/// Waiting for a sender is a normal state: under systemd (Type=notify,
/// TimeoutStartSec, WatchdogSec) the receiver says READY with a status
/// naming what it waits for, and keeps the watchdog fed meanwhile; a stop
/// while waiting ends it at once, with status 0.
#[test]
fn waiting_for_an_announcement_is_ready_and_alive_under_systemd() {
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};
    let dir = TestDir::new("sap-notify");
    let alsa = AlsaConfig::write(&dir.path);
    let sock_path = dir.file("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let script = format!(
        "{NETNS_SETUP}
export WATCHDOG_PID=$$ WATCHDOG_USEC=1000000 NOTIFY_SOCKET={sock}
exec {RX} --sap kitchen --device null --no-mlock --rt-priority 0 2>/dev/null",
        sock = sock_path.display(),
    );
    let mut child = Command::new("unshare")
        .args(["-n", "sh", "-c", &script])
        .env("ALSA_CONFIG_PATH", &alsa.path)
        .env_remove("INVOCATION_ID")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .spawn()
        .expect("run unshare (util-linux)");
    let start = Instant::now();
    let mut messages = Vec::new();
    let mut buf = [0u8; 512];
    while start.elapsed() < Duration::from_millis(2500) {
        if let Ok(n) = sock.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?} {messages:?}");
    assert_eq!(
        messages.first().map(String::as_str),
        Some("READY=1\nSTATUS=waiting for the SAP announcement of a session matching 'kitchen'"),
        "{messages:?}"
    );
    let pets = messages.iter().filter(|m| *m == "WATCHDOG=1").count();
    common::report("sap_waiting_watchdog_pets_in_2_5_s", pets);
    // WatchdogSec=1s: petted every quarter, checked at every 200 ms
    // receive timeout, so ~every 400 ms (6 in 2.5 s, tried).
    assert!(pets >= 3, "{messages:?}");
}

/// IPv6: the announcement goes to the link-local SAP group ff02::2:7ffe
/// across a veth pair, the stream to a site-scope group; the receiver
/// joins both on its interface (RFC 2974's FF0X::2:7FFE).
#[test]
fn ipv6_announcement_on_ff02_2_7ffe_across_a_veth_pair() {
    let dir = TestDir::new("sap-v6");
    let alsa = AlsaConfig::write(&dir.path);
    let wav = dir.file("tone.wav");
    tone_wav(&wav, 440.0, 1.0);
    let log = dir.file("rx.log");
    let script = format!(
        "set -e
ip link set lo up
ip link add va type veth peer name vb
ip link set va up
ip link set vb up
{wait}
ALSA_CONFIG_PATH={conf} {RX} --sap hall --interface vb --device null --no-mlock --rt-priority 0 \
  --stats-interval 0 2>{log} >/dev/null &
r=$!
trap 'kill $r 2>/dev/null || true' EXIT
sleep 0.3
{TX} -q --sap hall --sap-address '[ff02::2:7ffe]' --interface va --ttl 2 --codec pcma \
  --rt-priority 0 --no-mlock --dest '[ff15::77]:5004' {wav}
sleep 0.3
kill -TERM $r
wait $r",
        conf = alsa.path.display(),
        log = log.display(),
        wav = wav.display(),
        wait = common::WAIT_VETH_IPV6,
    );
    let text = run_receiver_script(&script, &log);
    assert!(text.contains("ff02::2:7ffe"), "{text}");
    assert!(
        text.contains("sap: playing 'hall' at [ff15::77]:5004 PT 8 PCMA/8000/1"),
        "{text}"
    );
    assert!(text.contains("deleted by its sender"), "{text}");
    let stats = common::receiver::Stats::last_in(&text)
        .unwrap_or_else(|| panic!("no statistics line:\n{text}"));
    common::report("sap_v6_packets", stats.get("packets"));
    assert!(stats.get("packets") >= 45.0, "{text}");
}

/// `--sap` takes its NAME as `--sap NAME`, `--sap=NAME`, or none when an
/// option follows.
#[test]
fn sap_name_forms() {
    let dir = TestDir::new("sap-forms");
    let alsa = AlsaConfig::write(&dir.path);
    for (i, (args, expect)) in [
        ("--sap 'hall*'", "a session matching 'hall*' on"),
        ("--sap=hall", "a session matching 'hall' on"),
        ("--sap --device null", "a session on"),
        ("--device null --sap", "a session on"),
    ]
    .into_iter()
    .enumerate()
    {
        // A log of its own per form: the shell's child truncates the file
        // only when it gets to run, and `wait_log` starts at once, so with
        // one file it could find the previous form's line and stop the
        // new receiver before it logged anything (a CI run: an empty log
        // and a clean exit).
        let log = dir.file(&format!("rx{i}.log"));
        let script = format!(
            "{NETNS_SETUP}
ALSA_CONFIG_PATH={conf} {RX} --device null --no-mlock --rt-priority 0 {args} 2>{log} &
r=$!
wait_log 'waiting for' {log} 50 || true
kill -TERM $r
wait $r",
            conf = alsa.path.display(),
            log = log.display(),
        );
        let started = std::time::Instant::now();
        let out = run_in_namespace(&script);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let context = format!(
            "{args} ({} ms): log {text:?}; script stderr {:?}",
            started.elapsed().as_millis(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{context}");
        assert!(text.contains(expect), "{context}");
    }
}

/// No NAME and two sessions: both are named and the receiver waits; when
/// one sender leaves (its deletion), the other is played.
#[test]
fn two_sessions_without_name_are_listed_until_one_is_left() {
    let dir = TestDir::new("sap-two");
    let alsa = AlsaConfig::write(&dir.path);
    let wav = dir.file("tone.wav");
    tone_wav(&wav, 440.0, 1.0);
    let log = dir.file("rx.log");
    let script = format!(
        "set -e
{NETNS_SETUP}
ALSA_CONFIG_PATH={conf} {RX} --sap --device null --no-mlock --rt-priority 0 \
  --stats-interval 0 2>{log} >/dev/null &
r=$!
trap 'kill $r 2>/dev/null || true' EXIT
sleep 0.3
{TX} -q --sap attic --loop --codec pcmu --rt-priority 0 --no-mlock --dest 239.255.77.2:5004 {wav} &
a=$!
{TX} -q --sap desk --loop --codec pcma --rt-priority 0 --no-mlock --dest 239.255.77.1:5004 {wav} &
d=$!
wait_log 'sessions match' {log} 50 || exit 1
kill -INT $a
wait $a
wait_log 'sap: playing' {log} 50 || exit 1
sleep 0.5
kill -INT $d
wait $d
sleep 0.3
kill -TERM $r
wait $r",
        conf = alsa.path.display(),
        log = log.display(),
        wav = wav.display(),
    );
    let text = run_receiver_script(&script, &log);
    assert!(
        text.contains("2 sessions match, waiting until one is left or name one with --sap NAME: 'attic', 'desk'"),
        "{text}"
    );
    assert!(
        text.contains("sap: playing 'desk' at 239.255.77.1:5004 PT 8 PCMA/8000/1"),
        "{text}"
    );
    let stats = common::receiver::Stats::last_in(&text)
        .unwrap_or_else(|| panic!("no statistics line:\n{text}"));
    assert!(stats.get("packets") >= 20.0, "{text}");
}

/// A legal announcement of static payload type 0 without `a=rtpmap`
/// (PipeWire 0.3.65's daemon crashed on one): taken as PCMU/8000 and
/// played.
#[test]
fn static_payload_type_announced_without_rtpmap_is_played() {
    let dir = TestDir::new("sap-pt0");
    let alsa = AlsaConfig::write(&dir.path);
    let wav = dir.file("tone.wav");
    tone_wav(&wav, 440.0, 1.0);
    let log = dir.file("rx.log");
    let announce = "python3 -c \"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton('127.0.0.1'))
sdp = b'v=0\\r\\no=- 77 1 IN IP4 127.0.0.1\\r\\ns=door\\r\\nc=IN IP4 239.255.77.1/1\\r\\nt=0 0\\r\\nm=audio 5004 RTP/AVP 0\\r\\n'
s.sendto(bytes([0x20, 0, 0x12, 0x34, 127, 0, 0, 1]) + sdp, ('224.0.0.56', 9875))
\"";
    let script = format!(
        "set -e
{NETNS_SETUP}
ALSA_CONFIG_PATH={conf} {RX} --sap door --device null --no-mlock --rt-priority 0 \
  --stats-interval 0 2>{log} >/dev/null &
r=$!
trap 'kill $r 2>/dev/null || true' EXIT
sleep 0.3
{announce}
wait_log 'open:' {log} 100 || exit 1
{TX} -q --codec pcmu --rt-priority 0 --no-mlock --dest 239.255.77.1:5004 {wav}
sleep 0.3
kill -TERM $r
wait $r",
        conf = alsa.path.display(),
        log = log.display(),
        wav = wav.display(),
    );
    let text = run_receiver_script(&script, &log);
    assert!(
        text.contains("sap: playing 'door' at 239.255.77.1:5004 PT 0 PCMU/8000/1"),
        "{text}"
    );
    let stats = common::receiver::Stats::last_in(&text)
        .unwrap_or_else(|| panic!("no statistics line:\n{text}"));
    assert_eq!(stats.get("packets"), 50.0, "{text}");
}
