//! Interop: GStreamer receives `netspeaker-send`'s RTP L16 stream with
//! caps built from the SDP file the sender wrote (Debian's GStreamer lacks
//! `sdpdemux`, so the test does what a user does with `udpsrc`: copies
//! clock rate, encoding, channels and payload type from `a=rtpmap`). The
//! recording is bit-exact the signal sent, apart from where it starts.
//! Its rtpbin reads the sender reports, SDES and BYE sent to port+1.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netspeaker::send::wav::write_wav;

const BIN: &str = env!("CARGO_BIN_EXE_netspeaker-send");

fn signal(samples: usize) -> Vec<i16> {
    let mut x: u32 = 4242;
    (0..samples)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as i16
        })
        .collect()
}

/// `a=rtpmap:PT NAME/RATE/CH` → udpsrc caps.
fn caps_from_sdp(sdp: &str) -> String {
    let map = sdp
        .lines()
        .find_map(|l| l.strip_prefix("a=rtpmap:"))
        .expect("an a=rtpmap line");
    let (pt, rest) = map.split_once(' ').unwrap();
    let mut f = rest.split('/');
    let (name, rate, ch) = (
        f.next().unwrap(),
        f.next().unwrap(),
        f.next().unwrap_or("1"),
    );
    format!(
        "application/x-rtp,media=audio,clock-rate={rate},encoding-name={name},\
         channels={ch},payload={pt}"
    )
}

#[test]
fn gstreamer_records_l16_stream_described_by_sdp() {
    let dir = std::env::temp_dir().join(format!("ns-send-gst-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rate = 48_000u32;
    let sent = signal(rate as usize * 2 * 3);
    let wav = dir.join("in.wav");
    std::fs::write(&wav, write_wav(rate, 2, &sent)).unwrap();
    let port = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    // A first, short run only writes the SDP (the description does not
    // depend on the run: SSRC and sequence are not in it).
    let sdp = dir.join("stream.sdp");
    let short = dir.join("short.wav");
    std::fs::write(&short, write_wav(rate, 2, &[0; 4])).unwrap();
    let st = Command::new(BIN)
        .arg(&short)
        .arg(format!("127.0.0.1:{port}"))
        .arg("--sdp")
        .arg(&sdp)
        .arg("-q")
        .status()
        .unwrap();
    assert!(st.success());
    let caps = caps_from_sdp(&std::fs::read_to_string(&sdp).unwrap());
    assert!(
        caps.contains("encoding-name=L16") && caps.contains("channels=2"),
        "{caps}"
    );

    let out = dir.join("out.raw");
    let gst = Command::new("gst-launch-1.0")
        .args(["-q", "-e", "udpsrc", "address=127.0.0.1"])
        .arg(format!("port={port}"))
        .arg(format!("caps={caps}"))
        .args(["!", "rtpL16depay", "!", "filesink"])
        .arg(format!("location={}", out.display()))
        .stdin(Stdio::null())
        .spawn()
        .expect("start gst-launch-1.0");
    // No readiness signal from gst-launch: give it a moment; whatever it
    // misses is the start offset the comparison allows.
    std::thread::sleep(Duration::from_millis(700));
    let st = Command::new(BIN)
        .arg(&wav)
        .arg(format!("127.0.0.1:{port}"))
        .arg("-q")
        .status()
        .unwrap();
    assert!(st.success());
    std::thread::sleep(Duration::from_millis(300));
    // -e: SIGINT makes gst-launch send EOS, so the file is complete.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gst.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut gst = gst;
    let t = Instant::now();
    while gst.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(5) {
            let _ = gst.kill();
            panic!("gst-launch did not stop");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let bytes = std::fs::read(&out).unwrap();
    // rtpL16depay outputs network byte order.
    let recorded: Vec<i16> = bytes
        .chunks_exact(2)
        .map(|b| i16::from_be_bytes([b[0], b[1]]))
        .collect();
    assert!(
        recorded.len() >= rate as usize * 2 * 2,
        "recorded only {} samples",
        recorded.len()
    );
    let head = &recorded[..16];
    let offset = (0..=sent.len() - recorded.len())
        .step_by(2)
        .find(|&o| &sent[o..o + 16] == head)
        .expect("the recording's start is not in the signal");
    assert_eq!(&sent[offset..offset + recorded.len()], &recorded[..]);
}

/// A free even port whose successor is free too (RTP and RTCP).
fn free_port_pair() -> u16 {
    for _ in 0..200 {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port % 2 == 0 && port < u16::MAX && UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair");
}

/// One `rtp_source_process_sr` line of GStreamer's debug log:
/// "got SR packet: SSRC 13e860d1, NTP eeb924ee:23c6a338, RTP 27343203,
/// PC 1, OC 160".
fn gst_sr(line: &str) -> Option<(u32, u64, u32, u32, u32)> {
    let s = line.split("got SR packet: SSRC ").nth(1)?;
    let field = |name: &str| s.split(name).nth(1)?.split(',').next();
    let ssrc = u32::from_str_radix(s.split(',').next()?, 16).ok()?;
    let (hi, lo) = field(", NTP ")?.split_once(':')?;
    let ntp = (u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?;
    let rtp = field(", RTP ")?.parse().ok()?;
    let pc = field(", PC ")?.parse().ok()?;
    let oc = field(", OC ")?.trim().parse().ok()?;
    Some((ssrc, ntp, rtp, pc, oc))
}

/// GStreamer's rtpbin, with RTCP on port+1 as the SDP's `a=rtcp` says,
/// takes the sender reports (NTP and RTP timestamps, counts), the SDES and
/// the BYE: its rtpsession debug log reports each.
#[test]
fn gstreamer_rtpbin_reads_the_sender_reports_and_the_bye() {
    let dir = std::env::temp_dir().join(format!("ns-send-gst-rtcp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("in.wav");
    // 4 s of 8 kHz mono, sent as PCMU: 200 packets of 160 bytes.
    std::fs::write(&wav, write_wav(8000, 1, &signal(32_000))).unwrap();
    let port = free_port_pair();
    let log = dir.join("gst.log");
    let mut gst = Command::new("gst-launch-1.0")
        .args([
            "rtpbin",
            "name=rb",
            "udpsrc",
            &format!("port={port}"),
            "caps=application/x-rtp,media=audio,clock-rate=8000,encoding-name=PCMU,payload=0",
            "!",
            "rb.recv_rtp_sink_0",
            "udpsrc",
            &format!("port={}", port + 1),
            "!",
            "rb.recv_rtcp_sink_0",
            "rb.",
            "!",
            "rtppcmudepay",
            "!",
            "mulawdec",
            "!",
            "fakesink",
        ])
        .env("GST_DEBUG", "rtpsession:5,rtpsource:5")
        .env("GST_DEBUG_NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start gst-launch-1.0");
    // Until the pipeline listens (its log names the RTCP sink pad).
    let t = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("create_recv_rtcp_sink")
        && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let sdp = dir.join("s.sdp");
    let status = Command::new(BIN)
        .args(["--codec", "pcmu", "-q", "--sdp"])
        .arg(&sdp)
        .arg(&wav)
        .arg(format!("127.0.0.1:{port}"))
        .status()
        .unwrap();
    assert!(status.success());
    let t = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("rtp_source_mark_bye")
        && t.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = gst.kill();
    let _ = gst.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(std::fs::read_to_string(&sdp)
        .unwrap()
        .contains(&format!("a=rtcp:{}\r\n", port + 1)));
    let srs: Vec<_> = text.lines().filter_map(gst_sr).collect();
    // One with the first packet, then one every 0.5-1.5 s over the 4 s.
    assert!((3..=9).contains(&srs.len()), "{} SRs in\n{text}", srs.len());
    let ssrc = srs[0].0;
    assert!(srs.iter().all(|s| s.0 == ssrc));
    assert_eq!(
        (srs[0].3, srs[0].4),
        (1, 160),
        "first SR with the first packet"
    );
    let last = srs.last().unwrap();
    assert_eq!((last.3, last.4), (200, 32_000));
    for w in srs.windows(2) {
        // Signed: a wall clock stepped back between two reports (one CI
        // run saw the NTP times go backwards) is a failed check with the
        // reports in view, not an overflow panic.
        let ntp_s = (i128::from(w[1].1) - i128::from(w[0].1)) as f64 / 4_294_967_296.0;
        let rtp_s = f64::from(w[1].2.wrapping_sub(w[0].2)) / 8000.0;
        assert!(
            (ntp_s - rtp_s).abs() < 0.005,
            "NTP {ntp_s} s, RTP {rtp_s} s between two reports; all (SSRC, NTP, RTP, \
             packets, octets): {srs:x?}"
        );
        // 0.5-1.5 s apart (1 s ± 50 %), the last (at the end) sooner.
        assert!(
            (0.45..1.55).contains(&ntp_s) || w[1] == *last,
            "interval {ntp_s} s"
        );
    }
    assert!(text.contains("rtp_session_process_sdes"), "SDES not read");
    assert!(
        text.contains(&format!("marking SSRC {ssrc:08x} as BYE")),
        "no BYE for {ssrc:08x}"
    );
}
