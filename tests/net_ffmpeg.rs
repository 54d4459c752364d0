//! Interop: ffmpeg's RTP sender (a peer users really have) streams to the
//! net stage on loopback, with its RTCP on the same port (RFC 5761 style).
//! Every frame ffmpeg sends must reach the queue, in sequence, with the
//! payload type resolved to the right format, and its RTCP sender reports
//! must be read as such, not dropped as malformed input.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use heapless::spsc::Queue;
use netspeaker::audio::codec;
use netspeaker::audio::format::{Encoding, PayloadMap, StreamFormat};
use netspeaker::net::{run, NetConfig, NetCounters, Receiver};
use netspeaker::rtp::packet::Packet;
use netspeaker::rtp::{InputMode, PacketParser};

/// Streams one second of a sine through ffmpeg as `codec` and returns what
/// the net stage queued, plus its counters.
fn stream_from_ffmpeg(codec: &str, rate: u32, channels: u16) -> (Vec<Packet>, NetCounters) {
    let receiver = Receiver::bind(&NetConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..NetConfig::default()
    })
    .unwrap();
    let port = receiver.local_addr().port();
    let counters = NetCounters::default();
    let mut parser = PacketParser::new(InputMode::Rtp(PayloadMap::default()));
    let mut queue: Box<Queue<Packet, 64>> = Box::default();
    let (mut producer, mut consumer) = queue.split();
    let mut events: Box<netspeaker::net::EventQueue> = Box::default();
    let (mut event_tx, _event_rx) = events.split();
    let stop = AtomicBool::new(false);
    let mut got = Vec::new();
    let want_frames = rate as usize;
    std::thread::scope(|s| {
        s.spawn(|| {
            run(
                &receiver,
                &mut parser,
                &mut producer,
                &mut event_tx,
                &counters,
                &stop,
            )
        });
        let status = Command::new("ffmpeg")
            // -re: paced at real time, as a live sender sends.
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-re",
                "-f",
                "lavfi",
                "-i",
            ])
            .arg(format!("sine=frequency=440:sample_rate={rate}:duration=1"))
            .args(["-ac", &channels.to_string(), "-c:a", codec, "-f", "rtp"])
            .arg(format!(
                "rtp://127.0.0.1:{port}?rtcpport={port}&pkt_size=1000"
            ))
            .stdout(Stdio::null())
            .spawn()
            .expect("ffmpeg is installed (see TESTING.md)");
        let mut ffmpeg = status;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut frames = 0;
        while frames < want_frames && Instant::now() < deadline {
            match consumer.dequeue() {
                Some(p) => {
                    frames += p.frames();
                    got.push(p);
                }
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        assert!(ffmpeg.wait().unwrap().success(), "ffmpeg failed");
        stop.store(true, Ordering::Relaxed);
    });
    (got, counters)
}

fn check_stream(got: &[Packet], counters: &NetCounters, format: StreamFormat, payload_type: u8) {
    let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    assert_eq!(
        got.iter().map(Packet::frames).sum::<usize>(),
        format.rate as usize,
        "one second of frames"
    );
    assert_eq!(c(&counters.queued), got.len() as u64);
    assert!(
        c(&counters.sender_reports) >= 1,
        "ffmpeg's sender report read as one"
    );
    assert_eq!(c(&counters.malformed), 0);
    assert_eq!(c(&counters.queue_full), 0);
    assert_eq!(c(&counters.unknown_payload_type), 0);
    let first = &got[0];
    for (prev, p) in got.iter().zip(&got[1..]) {
        assert_eq!(p.seq, prev.seq.wrapping_add(1));
        assert_eq!(
            p.timestamp,
            prev.timestamp.wrapping_add(prev.frames() as u32)
        );
        assert_eq!(p.ssrc, first.ssrc);
    }
    let mut samples = vec![0i16; 8192];
    let mut peak = 0i32;
    for p in got {
        assert_eq!(
            (p.format, p.payload_type, p.sequential),
            (format, payload_type, false)
        );
        let n = codec::decode(p.format.encoding, &p.payload, &mut samples);
        assert_eq!(n, p.frames() * format.channels as usize);
        for frame in samples[..n].chunks(format.channels as usize) {
            // ffmpeg upmixes its mono sine: every channel carries the same.
            assert!(frame.iter().all(|&s| s == frame[0]));
            peak = peak.max(i32::from(frame[0]).abs());
        }
    }
    assert!(peak > 1000, "a sine, not silence (peak {peak})");
}

#[test]
fn ffmpeg_pcmu_stream() {
    let (got, counters) = stream_from_ffmpeg("pcm_mulaw", 8000, 1);
    let f = StreamFormat {
        encoding: Encoding::Pcmu,
        rate: 8000,
        channels: 1,
    };
    check_stream(&got, &counters, f, 0);
}

#[test]
fn ffmpeg_pcma_stream() {
    let (got, counters) = stream_from_ffmpeg("pcm_alaw", 8000, 1);
    let f = StreamFormat {
        encoding: Encoding::Pcma,
        rate: 8000,
        channels: 1,
    };
    check_stream(&got, &counters, f, 8);
}

#[test]
fn ffmpeg_l16_stereo_stream() {
    let (got, counters) = stream_from_ffmpeg("pcm_s16be", 44_100, 2);
    let f = StreamFormat {
        encoding: Encoding::L16,
        rate: 44_100,
        channels: 2,
    };
    check_stream(&got, &counters, f, 10);
}
