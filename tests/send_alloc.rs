//! After `Sender::new`, streaming allocates nothing: a counting global
//! allocator watches the thread that runs `Sender::run` over a looping
//! file, with and without rate and channel conversion, with Opus, and
//! with SRTP, with RTCP sender reports to port+1 and on the RTP port
//! (SRTCP with a key).

mod common;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use netspeaker::audio::format::Encoding;
use netspeaker::net::send::DestConfig;
use netspeaker::rtp::srtp::Suite;
use netspeaker::send::source::Input;
use netspeaker::send::wav::write_wav;
use netspeaker::send::{Output, Rtcp, SendConfig, Sender, SourceConfig, SrtpOptions};
use netspeaker::service::notify::Heartbeat;

#[global_allocator]
static GLOBAL: common::alloc::Counting = common::alloc::Counting;

fn allocations_while_streaming(
    rate: u32,
    channels: u16,
    output: Output,
    name: &str,
    srtp: bool,
    rtcp: Rtcp,
) -> u64 {
    let dir = std::env::temp_dir().join(format!("ns-send-alloc-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("in.wav");
    // 0.1 s, looped: the rewind is on the measured path too.
    let frames = rate as usize / 10;
    let samples: Vec<i16> = (0..frames * usize::from(channels))
        .map(|i| (i as i16).wrapping_mul(97))
        .collect();
    std::fs::write(&wav, write_wav(rate, channels, &samples)).unwrap();
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let key_file = dir.join("srtp.key");
    std::fs::write(&key_file, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd\n").unwrap();
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let config = SendConfig {
        source: SourceConfig::File {
            input: Input::File(wav),
            raw: None,
            looping: true,
        },
        output,
        rate: None,
        channels: None,
        ptime_ms: 10,
        dest: DestConfig {
            addr: sink.local_addr().unwrap(),
            ttl: 1,
            interface: None,
        },
        sdp: None,
        sap: None,
        srtp: srtp.then(|| SrtpOptions {
            key_file,
            suite: Suite::default(),
        }),
        opus: netspeaker::audio::opus::EncoderConfig {
            fec: true,
            expected_loss_pct: 10,
            ..Default::default()
        },
        rtcp,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let heartbeat = Arc::new(Heartbeat::new());
    let mut sender = Sender::new(&config, &stop, &heartbeat).unwrap().unwrap();
    // Stopped by packets sent, not by time: under qemu the same 40 packets
    // take longer than on the host.
    let stopper = {
        let stop = Arc::clone(&stop);
        let heartbeat = Arc::clone(&heartbeat);
        std::thread::spawn(move || {
            let t0 = std::time::Instant::now();
            while heartbeat.count() < 40 && t0.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(5));
            }
            stop.store(true, Ordering::Relaxed);
        })
    };
    let before = common::alloc::allocations();
    common::alloc::count_this_thread(true);
    let summary = sender.run(&stop, &heartbeat).unwrap();
    common::alloc::count_this_thread(false);
    let after = common::alloc::allocations();
    stopper.join().unwrap();
    // 40 packets of 10 ms went out, across several loops of the file,
    // each a beat for the watchdog.
    assert!(summary.packets >= 30, "{summary:?}");
    assert!(
        heartbeat.count() >= summary.packets,
        "{}",
        heartbeat.count()
    );
    after - before
}

#[test]
fn streaming_allocates_nothing() {
    assert_eq!(
        allocations_while_streaming(
            48_000,
            2,
            Output::rtp(Encoding::L16, 96),
            "l16",
            false,
            Rtcp::NextPort
        ),
        0
    );
    // 44.1 kHz stereo → 8 kHz mono PCMU: channel mixing and the resampler.
    assert_eq!(
        allocations_while_streaming(
            44_100,
            2,
            Output::rtp(Encoding::Pcmu, 96),
            "pcmu",
            false,
            Rtcp::NextPort
        ),
        0
    );
    assert_eq!(
        allocations_while_streaming(8000, 1, Output::Raw, "raw", false, Rtcp::NextPort),
        0
    );
    // 44.1 kHz stereo → 48 kHz Opus with FEC: the encoder works in place.
    assert_eq!(
        allocations_while_streaming(
            44_100,
            2,
            Output::rtp(Encoding::Opus, 97),
            "opus",
            false,
            Rtcp::NextPort
        ),
        0
    );
    // RTCP on the RTP port, and SRTCP: the first report and the BYE
    // are written, protected and sent on the measured path.
    assert_eq!(
        allocations_while_streaming(
            8000,
            1,
            Output::rtp(Encoding::Pcmu, 0),
            "mux",
            false,
            Rtcp::Mux
        ),
        0
    );
    assert_eq!(
        allocations_while_streaming(
            48_000,
            2,
            Output::rtp(Encoding::L16, 96),
            "srtcp",
            true,
            Rtcp::Mux
        ),
        0
    );
    // SRTP: encryption and the tag on every packet.
    assert_eq!(
        allocations_while_streaming(
            48_000,
            2,
            Output::rtp(Encoding::L16, 96),
            "srtp",
            true,
            Rtcp::NextPort
        ),
        0
    );
}
