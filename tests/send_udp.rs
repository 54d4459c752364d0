//! The real `netspeaker-send` binary streaming to UDP sockets this test
//! owns on loopback: packet count, sizes, RTP headers, payload equal to the
//! encoded file, pacing close to real time; the tutorial's `--raw` stream;
//! standard input; signals; option and file errors.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netspeaker::audio::codec;
use netspeaker::send::wav::write_wav;

const BIN: &str = env!("CARGO_BIN_EXE_netspeaker-send");

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ns-send-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A deterministic signal in which no two neighbouring frames are equal.
fn signal(samples: usize) -> Vec<i16> {
    let mut x: u32 = 12345;
    (0..samples)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as i16
        })
        .collect()
}

struct Received {
    datagrams: Vec<Vec<u8>>,
    /// Arrival of the first and the last datagram.
    span: Duration,
}

/// Receives until `quiet` passes without a datagram (after the first).
fn receive(sock: &UdpSocket, quiet: Duration) -> Received {
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut datagrams = Vec::new();
    let mut buf = [0u8; 65536];
    let mut first = None;
    let mut last = Instant::now();
    let mut errors = 0;
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => {
                last = Instant::now();
                first.get_or_insert(last);
                datagrams.push(buf[..n].to_vec());
                sock.set_read_timeout(Some(quiet)).unwrap();
            }
            // The timeout ends the stream.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            // A queued ICMP error (another test's sender hitting a closed
            // port on this loopback) is not the end of this stream.
            Err(_) if errors < 100 => errors += 1,
            Err(e) => panic!("recv: {e}"),
        }
    }
    Received {
        datagrams,
        span: first.map(|f| last - f).unwrap_or_default(),
    }
}

struct Rtp<'a> {
    marker: bool,
    pt: u8,
    seq: u16,
    ts: u32,
    ssrc: u32,
    payload: &'a [u8],
}

fn rtp(d: &[u8]) -> Rtp<'_> {
    assert!(d.len() >= 12, "datagram of {} bytes", d.len());
    assert_eq!(d[0], 0x80, "version 2, no padding, extension or CSRC");
    Rtp {
        marker: d[1] & 0x80 != 0,
        pt: d[1] & 0x7F,
        seq: u16::from_be_bytes([d[2], d[3]]),
        ts: u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
        ssrc: u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
        payload: &d[12..],
    }
}

/// Checks the RTP stream's headers and returns the concatenated payload.
fn check_rtp(
    datagrams: &[Vec<u8>],
    pt: u8,
    frames_per_packet: u32,
    bytes_per_frame: usize,
) -> Vec<u8> {
    let first = rtp(&datagrams[0]);
    let mut payload = Vec::new();
    for (k, d) in datagrams.iter().enumerate() {
        let p = rtp(d);
        assert_eq!(p.marker, k == 0, "marker bit on packet {k}");
        assert_eq!(p.pt, pt);
        assert_eq!(p.ssrc, first.ssrc);
        assert_eq!(p.seq, first.seq.wrapping_add(k as u16), "seq of packet {k}");
        assert_eq!(
            p.ts,
            first.ts.wrapping_add(k as u32 * frames_per_packet),
            "timestamp of packet {k}"
        );
        if k + 1 < datagrams.len() {
            assert_eq!(
                p.payload.len(),
                frames_per_packet as usize * bytes_per_frame
            );
        }
        payload.extend_from_slice(p.payload);
    }
    payload
}

/// Waits up to `limit` for `child`; a child still running then is killed
/// and the test fails (rather than hanging).
fn wait_within(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("netspeaker-send still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run_sender(args: &[&str]) -> std::process::Child {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .expect("start netspeaker-send")
}

#[test]
fn wav_stereo_l16_packets_and_pacing() {
    let dir = temp_dir("l16");
    let rate = 16_000;
    let frames = rate as usize; // 1 s
    let samples = signal(frames * 2);
    let wav = dir.join("in.wav");
    std::fs::write(&wav, write_wav(rate, 2, &samples)).unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dest = sock.local_addr().unwrap().to_string();
    let start = Instant::now();
    let mut child = run_sender(&[wav.to_str().unwrap(), &dest, "--payload-type", "101", "-q"]);
    let got = receive(&sock, Duration::from_millis(500));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    // 20 ms at 16 kHz: 320 frames, 50 packets for one second.
    assert_eq!(got.datagrams.len(), 50);
    assert!(got.datagrams.iter().all(|d| d.len() == 12 + 320 * 4));
    let payload = check_rtp(&got.datagrams, 101, 320, 4);
    let mut expected = vec![0u8; samples.len() * 2];
    codec::encode(
        netspeaker::audio::format::Encoding::L16,
        &samples,
        &mut expected,
    );
    assert_eq!(
        payload, expected,
        "payload is the file in network byte order"
    );
    // Paced: 49 intervals of 20 ms = 0.98 s; never early (absolute
    // deadlines), generous above for a loaded machine.
    assert!(got.span >= Duration::from_millis(950), "{:?}", got.span);
    assert!(got.span < Duration::from_secs(3), "{:?}", got.span);
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn stereo_wav_as_pcmu_mixes_to_mono() {
    let dir = temp_dir("pcmu");
    let samples = signal(8000 / 2 * 2); // 0.5 s of stereo at 8 kHz
    let wav = dir.join("in.wav");
    std::fs::write(&wav, write_wav(8000, 2, &samples)).unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dest = sock.local_addr().unwrap().to_string();
    let mut child = run_sender(&[
        "--codec",
        "pcmu",
        "--ptime",
        "40",
        "--dest",
        &dest,
        wav.to_str().unwrap(),
        "-q",
    ]);
    let got = receive(&sock, Duration::from_millis(500));
    assert!(child.wait().unwrap().success());
    // 4000 frames in 320-frame packets: 12 full and one of 160.
    assert_eq!(got.datagrams.len(), 13);
    assert_eq!(got.datagrams[12].len(), 12 + 160);
    let payload = check_rtp(&got.datagrams, 0, 320, 1);
    let expected: Vec<u8> = samples
        .chunks(2)
        // (L + R) / 2, rounded half away from zero (audio::channels).
        .map(|lr| {
            let mean = (f64::from(lr[0]) + f64::from(lr[1])) / 2.0;
            codec::linear_to_ulaw(mean.round() as i16)
        })
        .collect();
    assert_eq!(payload, expected);
}

#[test]
fn raw_tutorial_stream_320_byte_datagrams() {
    let dir = temp_dir("raw");
    let samples = signal(8000 * 6 / 10); // 0.6 s mono
    let wav = dir.join("in.wav");
    std::fs::write(&wav, write_wav(8000, 1, &samples)).unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port().to_string();
    let mut child = run_sender(&[
        "--raw",
        wav.to_str().unwrap(),
        &format!("127.0.0.1:{port}"),
        "-q",
    ]);
    let got = receive(&sock, Duration::from_millis(500));
    assert!(child.wait().unwrap().success());
    assert_eq!(got.datagrams.len(), 30);
    assert!(got.datagrams.iter().all(|d| d.len() == 320));
    let bytes: Vec<u8> = got.datagrams.concat();
    let expected: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    assert_eq!(bytes, expected);
}

#[test]
fn stdin_raw_format_to_raw_stream() {
    let samples = signal(1600); // 0.2 s at 8 kHz mono
    let input: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dest = sock.local_addr().unwrap().to_string();
    let mut child = Command::new(BIN)
        .args(["--raw", "--format", "s16le:8000:1", "-", &dest, "-q"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&input).unwrap();
    }
    let got = receive(&sock, Duration::from_millis(500));
    assert!(child.wait().unwrap().success());
    assert_eq!(got.datagrams.len(), 10);
    assert_eq!(got.datagrams.concat(), input);
}

#[test]
fn sigterm_stops_a_looping_stream_cleanly() {
    let dir = temp_dir("loop");
    let wav = dir.join("in.wav");
    std::fs::write(&wav, write_wav(8000, 1, &signal(800))).unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dest = sock.local_addr().unwrap().to_string();
    let mut child = run_sender(&["--loop", "--rtcp-mux", wav.to_str().unwrap(), &dest, "-q"]);
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 2048];
    // 0.1 s file, looped: well past its end, packets still come.
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed() < Duration::from_millis(400) {
        sock.recv(&mut buf).unwrap();
        n += 1;
    }
    assert!(n >= 15, "{n} packets in 0.4 s");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_within(&mut child, Duration::from_secs(1));
    assert_eq!(status.code(), Some(0));
    // The last datagram says goodbye (RFC 3550 6.6): SR, SDES, BYE.
    let rest = receive(&sock, Duration::from_millis(200));
    let last = rest.datagrams.last().expect("datagrams after SIGTERM");
    assert!(check_report(last).bye);
}

#[test]
fn bad_option_is_one_line_and_status_2() {
    for args in [
        &["--ptime", "0", "x.wav"][..],
        &["--codec", "vorbis", "x.wav"],
        &["--codec", "opus", "--bitrate", "5k", "x.wav"],
        &["--codec", "opus", "--expected-loss", "101", "x.wav"],
        &["--fec", "x.wav"],
        &["--payload-type", "12", "x.wav"],
        &["--rate", "100", "x.wav"],
        &["--rt-priority", "100", "x.wav"],
        &["--format", "s16le:8000", "x.wav"],
        &["--rtcp-mux", "--no-rtcp", "x.wav"],
        &["--raw", "--rtcp-mux", "x.wav"],
        &["--frobnicate"],
        &[],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn help_lists_every_option_with_defaults() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--format",
        "--loop",
        "--capture",
        "--codec",
        "--payload-type",
        "--bitrate",
        "--fec",
        "--expected-loss",
        "--raw",
        "--rate",
        "--channels",
        "--ptime",
        "--dest",
        "--ttl",
        "--interface",
        "--sdp",
        "--sap",
        "--sap-address",
        "--rtcp-mux",
        "--no-rtcp",
        "--rt-priority",
        "--no-mlock",
        "--verbose",
        "--quiet",
        "--help",
    ] {
        assert!(help.contains(opt), "{opt} missing from --help");
    }
    for default in [
        "[default: 20]",
        "[default: 96]",
        "127.0.0.1:5004",
        "[default: l16]",
        "[default: 96k]",
        "[default: 60]",
        "[default: 224.0.0.56:9875]",
    ] {
        assert!(help.contains(default), "{default} missing from --help");
    }
}

#[test]
fn float_wav_is_a_clear_error() {
    let dir = temp_dir("float");
    let mut w = write_wav(48_000, 1, &[0, 0]);
    w[20] = 3; // WAVE_FORMAT_IEEE_FLOAT
    w[34] = 32;
    let wav = dir.join("float.wav");
    std::fs::write(&wav, w).unwrap();
    let out = Command::new(BIN)
        .arg(&wav)
        .arg("127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("floating-point") && err.contains("16-bit"),
        "{err}"
    );
}

#[test]
fn cd_rate_stereo_wav_resampled_to_pcma_8k_mono() {
    let dir = temp_dir("resample");
    let tone = |rate: f64, k: usize| (2.0 * std::f64::consts::PI * 500.0 * k as f64 / rate).sin();
    let samples: Vec<i16> = (0..44_100)
        .flat_map(|k| {
            let v = (tone(44_100.0, k) * 12_000.0) as i16;
            [v, v]
        })
        .collect();
    let wav = dir.join("in.wav");
    std::fs::write(&wav, write_wav(44_100, 2, &samples)).unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dest = sock.local_addr().unwrap().to_string();
    let mut child = run_sender(&[wav.to_str().unwrap(), &dest, "--codec", "pcma", "-q"]);
    let got = receive(&sock, Duration::from_millis(500));
    assert!(child.wait().unwrap().success());
    // One second at 8 kHz: 8000 frames, 50 packets of 160.
    assert_eq!(got.datagrams.len(), 50);
    assert!(got.datagrams.iter().all(|d| d.len() == 12 + 160));
    let payload = check_rtp(&got.datagrams, 8, 160, 1);
    // The 500 Hz tone survives resampling and A-law within a few percent.
    for (k, &a) in payload.iter().enumerate().skip(100).take(7800) {
        let want = tone(8000.0, k) * 12_000.0;
        let got = f64::from(codec::alaw_to_linear(a));
        assert!(
            (got - want).abs() < 12_000.0 * 0.05,
            "frame {k}: {got} vs {want}"
        );
    }
}

#[test]
fn sigterm_stops_while_stdin_is_silent() {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dest = sock.local_addr().unwrap().to_string();
    let mut child = Command::new(BIN)
        .args(["--format", "s16le:8000:1", "-", &dest, "-q"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    // Keep the pipe open and silent, as an idle producer would.
    let _stdin = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_within(&mut child, Duration::from_secs(1));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn stdin_wav_with_open_length_as_pipes_write_it() {
    // sox and ffmpeg writing WAV to a pipe cannot seek back to fill in the
    // sizes; they leave 0xFFFFFFFF (or 0).
    let samples = signal(2 * 1600); // 0.2 s stereo at 8 kHz
    let mut wav = write_wav(8000, 2, &samples);
    wav[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    wav[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dest = sock.local_addr().unwrap().to_string();
    let mut child = Command::new(BIN)
        .args(["-", &dest, "-q"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&wav).unwrap();
    }
    let got = receive(&sock, Duration::from_millis(500));
    assert!(wait_within(&mut child, Duration::from_secs(5)).success());
    assert_eq!(got.datagrams.len(), 10);
    let payload = check_rtp(&got.datagrams, 96, 160, 4);
    let mut expected = vec![0u8; samples.len() * 2];
    codec::encode(
        netspeaker::audio::format::Encoding::L16,
        &samples,
        &mut expected,
    );
    assert_eq!(payload, expected);
}

/// Two sockets on loopback ports P (even) and P + 1: RTP and RTCP.
fn port_pair() -> (UdpSocket, UdpSocket) {
    for _ in 0..200 {
        let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = rtp.local_addr().unwrap().port();
        if port % 2 != 0 || port == u16::MAX {
            continue;
        }
        if let Ok(rtcp) = UdpSocket::bind(("127.0.0.1", port + 1)) {
            return (rtp, rtcp);
        }
    }
    panic!("no free port pair on loopback");
}

fn be32(d: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

/// A compound RTCP packet read by RFC 3550's layout, independently of
/// the crate's own reader: SR (no report blocks) then SDES with one CNAME
/// chunk, then optionally BYE, nothing else, every length exact.
struct Report {
    ssrc: u32,
    ntp: u64,
    rtp_ts: u32,
    packets: u32,
    octets: u32,
    cname: String,
    bye: bool,
}

fn check_report(d: &[u8]) -> Report {
    assert!(d.len() >= 28 + 12, "compound of {} bytes", d.len());
    // SR: V=2, P=0, RC=0; PT 200; length 6 (28 bytes).
    assert_eq!(d[..4], [0x80, 200, 0, 6], "SR header");
    let ssrc = be32(d, 4);
    let ntp = (u64::from(be32(d, 8)) << 32) | u64::from(be32(d, 12));
    let s = &d[28..];
    // SDES: V=2, P=0, SC=1; PT 202.
    assert_eq!(s[..2], [0x81, 202], "SDES header");
    let sdes_len = 4 * (usize::from(u16::from_be_bytes([s[2], s[3]])) + 1);
    assert!(s.len() >= sdes_len);
    assert_eq!(be32(s, 4), ssrc, "SDES chunk of the SR's source");
    assert_eq!(s[8], 1, "CNAME item");
    let n = usize::from(s[9]);
    assert!(n > 0);
    let cname = String::from_utf8(s[10..10 + n].to_vec()).unwrap();
    // The item list ends with a null octet, padded with nulls to 32 bits.
    let rest = &s[10 + n..sdes_len];
    assert!(!rest.is_empty() && rest.len() <= 4 && rest.iter().all(|&b| b == 0));
    assert_eq!((10 + n + rest.len()) % 4, 0);
    let tail = &s[sdes_len..];
    let bye = match tail.len() {
        0 => false,
        8 => {
            assert_eq!(tail[..4], [0x81, 203, 0, 1], "BYE header");
            assert_eq!(be32(tail, 4), ssrc);
            true
        }
        n => panic!("{n} bytes after the SDES"),
    };
    Report {
        ssrc,
        ntp,
        rtp_ts: be32(d, 16),
        packets: be32(d, 20),
        octets: be32(d, 24),
        cname,
        bye,
    }
}

fn unix_s_of_ntp(ntp: u64) -> f64 {
    (ntp >> 32) as f64 - 2_208_988_800.0 + (ntp & 0xffff_ffff) as f64 / 4_294_967_296.0
}

fn now_unix_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn sender_reports_to_port_plus_one_and_bye_at_the_end() {
    let dir = temp_dir("rtcp");
    let wav = dir.join("in.wav");
    // 4 s of 8 kHz mono as PCMU: 200 packets of 160 bytes.
    std::fs::write(&wav, write_wav(8000, 1, &signal(32_000))).unwrap();
    let sdp = dir.join("s.sdp");
    let (rtp_sock, rtcp_sock) = port_pair();
    let port = rtp_sock.local_addr().unwrap().port();
    let rtcp_thread = std::thread::spawn(move || {
        rtcp_sock
            .set_read_timeout(Some(Duration::from_secs(8)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = rtcp_sock.recv(&mut buf) {
            got.push((now_unix_s(), buf[..n].to_vec()));
            if got.last().is_some_and(|(_, d)| check_report(d).bye) {
                break;
            }
        }
        got
    });
    let mut child = run_sender(&[
        "--codec",
        "pcmu",
        "--sdp",
        sdp.to_str().unwrap(),
        wav.to_str().unwrap(),
        &format!("127.0.0.1:{port}"),
        "-q",
    ]);
    let got = receive(&rtp_sock, Duration::from_millis(600));
    assert!(wait_within(&mut child, Duration::from_secs(3)).success());
    let reports = rtcp_thread.join().unwrap();
    let sdp_text = std::fs::read_to_string(&sdp).unwrap();
    assert!(
        sdp_text.contains(&format!("a=rtcp:{}\r\n", port + 1)),
        "{sdp_text}"
    );
    assert_eq!(got.datagrams.len(), 200);
    let first = rtp(&got.datagrams[0]);
    // First report with the first packet, then every 0.5-1.5 s over
    // 4 s, then the BYE: 4 to 9 in all.
    assert!(
        (4..=9).contains(&reports.len()),
        "{} reports",
        reports.len()
    );
    let parsed: Vec<Report> = reports.iter().map(|(_, d)| check_report(d)).collect();
    for (k, r) in parsed.iter().enumerate() {
        assert_eq!(r.ssrc, first.ssrc);
        assert_eq!(r.cname, parsed[0].cname, "CNAME stable");
        assert_eq!(r.bye, k + 1 == parsed.len(), "BYE only in the last");
        // The wall clock of the report is the time it was sent.
        let lag = reports[k].0 - unix_s_of_ntp(r.ntp);
        assert!(
            (-0.01..0.2).contains(&lag),
            "report {k} arrived {lag} s after its NTP time"
        );
        // The counts: every packet so far, 160 payload bytes each.
        assert_eq!(r.octets, r.packets * 160);
    }
    assert_eq!((parsed[0].packets, parsed[0].octets), (1, 160));
    let last = parsed.last().unwrap();
    assert_eq!(last.packets, 200);
    // The media clock at the first report is the first packet's
    // (sent at its deadline), a few ms on at most.
    let ahead = parsed[0].rtp_ts.wrapping_sub(first.ts);
    assert!(
        ahead < 80,
        "first report {ahead} frames after the first packet"
    );
    // RTP and NTP advance together, 8000 frames a second.
    for w in parsed.windows(2) {
        let rtp_s = f64::from(w[1].rtp_ts.wrapping_sub(w[0].rtp_ts)) / 8000.0;
        let ntp_s = unix_s_of_ntp(w[1].ntp) - unix_s_of_ntp(w[0].ntp);
        assert!(
            (rtp_s - ntp_s).abs() < 0.0005,
            "media clock {rtp_s} s against wall clock {ntp_s} s"
        );
    }
}

#[test]
fn rtcp_mux_reports_on_the_rtp_port_and_no_rtcp_sends_none() {
    let dir = temp_dir("rtcp-mux");
    let wav = dir.join("in.wav");
    std::fs::write(&wav, write_wav(8000, 1, &signal(4000))).unwrap();
    let sdp = dir.join("s.sdp");
    for (option, expect) in [("--rtcp-mux", true), ("--no-rtcp", false)] {
        let (rtp_sock, rtcp_sock) = port_pair();
        let port = rtp_sock.local_addr().unwrap().port();
        let mut child = run_sender(&[
            option,
            "--sdp",
            sdp.to_str().unwrap(),
            wav.to_str().unwrap(),
            &format!("127.0.0.1:{port}"),
            "-q",
        ]);
        let got = receive(&rtp_sock, Duration::from_millis(600));
        assert!(wait_within(&mut child, Duration::from_secs(3)).success());
        // RFC 5761: RTCP packet types 200-204 share the port; RTP's 96.
        let (rtcp, media): (Vec<_>, Vec<_>) = got
            .datagrams
            .iter()
            .partition(|d| (200..=204).contains(&d[1]));
        assert_eq!(media.len(), 25, "{option}");
        rtcp_sock.set_nonblocking(true).unwrap();
        assert!(
            rtcp_sock.recv(&mut [0u8; 64]).is_err(),
            "{option}: RTCP on port+1"
        );
        let sdp_text = std::fs::read_to_string(&sdp).unwrap();
        if expect {
            assert_eq!(rtcp.len(), 2, "first report and BYE");
            assert!(!check_report(rtcp[0]).bye && check_report(rtcp[1]).bye);
            // The first report comes right after the first packet.
            assert_eq!(d1(&got.datagrams[1]), 200);
            assert!(sdp_text.contains("a=rtcp-mux\r\n"), "{sdp_text}");
        } else {
            assert!(rtcp.is_empty());
            assert!(!sdp_text.contains("rtcp"), "{sdp_text}");
        }
    }
}

fn d1(d: &[u8]) -> u8 {
    d[1]
}
