//! Interop: ffmpeg's SRTP sender (`-f rtp -srtp_out_suite ...
//! -srtp_out_params KEY srtp://...`) streams PCMU, with its SRTCP on the
//! same port, through a capturing relay to the net stage with a key. With
//! the same key every frame arrives, decrypted bit-exact to what ffmpeg
//! encodes in the clear, and its SRTCP authenticates (counted as RTCP);
//! replaying the captured datagrams afterwards queues nothing; with
//! another key, or from a plaintext sender, nothing is queued and every
//! datagram is counted as failing authentication.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use heapless::spsc::Queue;
use netspeaker::audio::format::PayloadMap;
use netspeaker::net::{run_with_srtp, EventQueue, NetConfig, NetCounters, Receiver};
use netspeaker::rtp::packet::Packet;
use netspeaker::rtp::srtp::{MasterKey, SrtpContext, Suite};
use netspeaker::rtp::{InputMode, PacketParser};

const KEY: &str = "bmV0c3BlYWtlciBzcnRwIHRlc3Qga2V5IDAwMDEh";
const OTHER_KEY: &str = "YW5vdGhlciBzcnRwIGtleSwgbm90IG91cnMgMDIh";
const SINE: &str = "sine=frequency=440:sample_rate=8000:duration=1";

/// What ffmpeg sends as PCMU for `SINE`, encoded in the clear.
fn expected_pcmu() -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            SINE,
        ])
        .args(["-c:a", "pcm_mulaw", "-f", "mulaw", "-"])
        .stdin(Stdio::null())
        .output()
        .expect("ffmpeg is installed (see TESTING.md)");
    assert!(out.status.success());
    out.stdout
}

fn wait_for(counter: &AtomicU64, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter.load(Ordering::Relaxed) < n {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {n} datagrams"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

struct Run {
    packets: Vec<Packet>,
    counters: NetCounters,
    /// Every datagram ffmpeg sent, in order.
    captured: Vec<Vec<u8>>,
    /// Counter values before the captured datagrams were sent again.
    before_replay: [u64; 4],
}

/// Streams `SINE` from ffmpeg (`sender_args` choose SRTP or not) through a
/// relay that keeps a copy of each datagram to a net stage keyed with
/// `receiver_key`, then sends the copies again (a replay).
fn ffmpeg_through_relay(sender_args: &[&str], scheme: &str, receiver_key: &str) -> Run {
    let receiver = Receiver::bind(&NetConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..NetConfig::default()
    })
    .unwrap();
    let to = receiver.local_addr();
    let relay = UdpSocket::bind("127.0.0.1:0").unwrap();
    relay
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let relay_port = relay.local_addr().unwrap().port();
    let counters = NetCounters::default();
    let mut srtp = SrtpContext::new(&MasterKey::parse(receiver_key).unwrap(), Suite::default());
    let mut parser = PacketParser::new(InputMode::Rtp(PayloadMap::default()));
    let mut queue: Box<Queue<Packet, 128>> = Box::default();
    let (mut producer, mut consumer) = queue.split();
    let mut events: Box<EventQueue> = Box::default();
    let (mut event_tx, _event_rx) = events.split();
    let stop = AtomicBool::new(false);
    let relay_done = AtomicBool::new(false);
    let captured = Mutex::new(Vec::new());
    let mut packets = Vec::new();
    let mut before_replay = [0; 4];
    std::thread::scope(|s| {
        s.spawn(|| {
            run_with_srtp(
                &receiver,
                Some(&mut srtp),
                &mut parser,
                &mut producer,
                &mut event_tx,
                &counters,
                &stop,
            )
        });
        s.spawn(|| {
            let mut buf = [0u8; 2048];
            while !relay_done.load(Ordering::Relaxed) {
                if let Ok(n) = relay.recv(&mut buf) {
                    relay.send_to(&buf[..n], to).unwrap();
                    captured.lock().unwrap().push(buf[..n].to_vec());
                }
            }
        });
        let mut ffmpeg = Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-re",
                "-f",
                "lavfi",
                "-i",
                SINE,
            ])
            .args(["-c:a", "pcm_mulaw", "-f", "rtp"])
            .args(sender_args)
            .arg(format!(
                "{scheme}://127.0.0.1:{relay_port}?rtcpport={relay_port}"
            ))
            .stdout(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("ffmpeg is installed (see TESTING.md)");
        let ended = ffmpeg.wait().unwrap();
        assert!(ended.success(), "ffmpeg: {ended}");
        // The relay drains what is still in flight, then stops.
        std::thread::sleep(Duration::from_millis(100));
        relay_done.store(true, Ordering::Relaxed);
        let sent = captured.lock().unwrap().len() as u64;
        wait_for(&counters.datagrams, sent);
        while let Some(p) = consumer.dequeue() {
            packets.push(p);
        }
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        before_replay = [
            c(&counters.queued),
            c(&counters.replayed),
            c(&counters.auth_failed),
            c(&counters.sender_reports),
        ];
        // The attacker's replay: every captured datagram once more.
        let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
        for d in captured.lock().unwrap().iter() {
            attacker.send_to(d, to).unwrap();
        }
        wait_for(&counters.datagrams, 2 * sent);
        stop.store(true, Ordering::Relaxed);
    });
    while let Some(p) = consumer.dequeue() {
        packets.push(p);
    }
    Run {
        packets,
        counters,
        captured: captured.into_inner().unwrap(),
        before_replay,
    }
}

fn srtp_args(key: &str) -> Vec<&str> {
    vec![
        "-srtp_out_suite",
        "AES_CM_128_HMAC_SHA1_80",
        "-srtp_out_params",
        key,
    ]
}

fn is_rtcp(d: &[u8]) -> bool {
    d.len() > 1 && (200..=204).contains(&d[1])
}

#[test]
fn ffmpeg_srtp_pcmu_decrypted_bit_exact_and_replay_dropped() {
    let run = ffmpeg_through_relay(&srtp_args(KEY), "srtp", KEY);
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let rtp = run.captured.iter().filter(|d| !is_rtcp(d)).count() as u64;
    let rtcp = run.captured.len() as u64 - rtp;
    assert!(rtcp >= 1, "ffmpeg sent its sender report");
    let [queued, replayed, auth_failed, reports_read] = run.before_replay;
    assert_eq!(
        (queued, replayed, auth_failed, reports_read),
        (rtp, 0, 0, rtcp),
        "every RTP packet queued, every SRTCP sender report authenticated and read"
    );
    let mut payload = Vec::new();
    for (prev, p) in run.packets.iter().zip(&run.packets[1..]) {
        assert_eq!(p.seq, prev.seq.wrapping_add(1));
    }
    for p in &run.packets {
        assert_eq!(p.payload_type, 0);
        payload.extend_from_slice(&p.payload);
    }
    assert_eq!(
        payload,
        expected_pcmu(),
        "decrypted payload is ffmpeg's PCMU"
    );
    // The replay queued nothing and was counted, packet by packet.
    assert_eq!(c(&run.counters.queued), rtp);
    assert_eq!(c(&run.counters.replayed), rtp);
    assert_eq!(c(&run.counters.auth_failed), 0);
    assert_eq!(c(&run.counters.malformed), 0);
}

#[test]
fn ffmpeg_srtp_with_another_key_queues_nothing() {
    let run = ffmpeg_through_relay(&srtp_args(OTHER_KEY), "srtp", KEY);
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    assert!(run.packets.is_empty());
    assert_eq!(c(&run.counters.queued), 0);
    // RTP and SRTCP alike, the original and the replay.
    assert_eq!(c(&run.counters.auth_failed), 2 * run.captured.len() as u64);
}

#[test]
fn ffmpeg_plaintext_rtp_to_keyed_receiver_queues_nothing() {
    let run = ffmpeg_through_relay(&[], "rtp", KEY);
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    assert!(run.packets.is_empty());
    assert_eq!(c(&run.counters.queued), 0);
    assert_eq!(
        c(&run.counters.rtcp),
        0,
        "plain RTCP is not authentic either"
    );
    assert_eq!(c(&run.counters.auth_failed), 2 * run.captured.len() as u64);
}
