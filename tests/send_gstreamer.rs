//! Interop: GStreamer receives `netspeaker-send`'s RTP L16 stream with
//! caps built from the SDP file the sender wrote (Debian's GStreamer lacks
//! `sdpdemux`, so the test does what a user does with `udpsrc`: copies
//! clock rate, encoding, channels and payload type from `a=rtpmap`). The
//! recording is bit-exact the signal sent, apart from where it starts.

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
