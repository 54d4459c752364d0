//! The net thread allocates nothing: a counting global allocator counts the
//! allocations made on the thread that runs `net::run`, from its first
//! instruction to its return, while a stream of valid packets mixed with
//! every kind of bad input (malformed, foreign, filtered, oversized, RTCP,
//! an unknown payload type, and a full queue) goes through it. A real
//! logger is installed, one that formats every record into a `String`, so
//! a log call on the net thread would allocate and fail the test; the drop
//! events it reports instead are logged by this (main) thread, which
//! proves they arrive. The same holds with SRTP: authentic, forged,
//! replayed, plaintext and truncated packets, SRTCP, and more SSRCs than
//! the replay state keeps.

mod common;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use heapless::spsc::Queue;
use netspeaker::audio::format::PayloadMap;
use netspeaker::net::{
    run, run_with_srtp, Cidr, EventLog, EventQueue, NetConfig, NetCounters, Receiver,
};
use netspeaker::rtp::packet::{Packet, MAX_DATAGRAM};
use netspeaker::rtp::srtp::{MasterKey, SrtpContext, Suite, MAX_OVERHEAD, STREAMS};
use netspeaker::rtp::{InputMode, PacketParser, RtpHeader};

#[global_allocator]
static GLOBAL: common::alloc::Counting = common::alloc::Counting;

/// Keeps every formatted line, as a file or syslog logger would write it.
struct Formatting {
    lines: Mutex<Vec<String>>,
}

impl log::Log for Formatting {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let line = format!(
            "[{}] {} {}",
            std::thread::current().name().unwrap_or("?"),
            record.level(),
            record.args()
        );
        if let Ok(mut lines) = self.lines.lock() {
            lines.push(line);
        }
    }

    fn flush(&self) {}
}

static LOGGER: Formatting = Formatting {
    lines: Mutex::new(Vec::new()),
};

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

#[test]
fn net_thread_allocates_nothing_with_a_real_logger() {
    // Both tests of this binary log through it; the first one sets it.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Trace);
    let receiver = Receiver::bind(&NetConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        allow: vec!["127.0.0.1".parse::<Cidr>().unwrap()],
        ..NetConfig::default()
    })
    .unwrap();
    let to = receiver.local_addr();
    let counters = NetCounters::default();
    let mut parser = PacketParser::new(InputMode::Rtp(PayloadMap::default()));
    let mut queue: Box<Queue<Packet, 16>> = Box::default();
    let (mut producer, mut consumer) = queue.split();
    let mut events: Box<EventQueue> = Box::default();
    let (mut event_tx, mut event_rx) = events.split();
    let mut event_log = EventLog::default();
    let stop = AtomicBool::new(false);
    let mut received = 0u64;

    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("net".into())
            .spawn_scoped(s, || {
                common::alloc::count_this_thread(true);
                run(
                    &receiver,
                    &mut parser,
                    &mut producer,
                    &mut event_tx,
                    &counters,
                    &stop,
                );
                common::alloc::count_this_thread(false);
            })
            .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let foreign = UdpSocket::bind("127.0.0.2:0").unwrap();
        let mut packet = vec![0u8; 172];
        let mut unknown = vec![0u8; 172];
        RtpHeader {
            payload_type: 97,
            ..RtpHeader::default()
        }
        .write(&mut unknown)
        .unwrap();
        let oversize = vec![0x80u8; MAX_DATAGRAM + 1];
        let mut sent = 0;
        for seq in 0..400u16 {
            RtpHeader {
                payload_type: 0,
                sequence: seq,
                timestamp: u32::from(seq) * 160,
                ssrc: 1,
                ..RtpHeader::default()
            }
            .write(&mut packet)
            .unwrap();
            tx.send_to(&packet, to).unwrap();
            tx.send_to(&[0x80, 0, 0], to).unwrap();
            tx.send_to(&unknown, to).unwrap();
            tx.send_to(&[0x80, 201, 0, 1, 0, 0, 0, 1], to).unwrap();
            tx.send_to(&oversize, to).unwrap();
            foreign.send_to(&packet, to).unwrap();
            sent += 6;
            if seq % 20 == 19 {
                wait_for(&counters.datagrams, sent);
                event_log.drain(&mut event_rx, netspeaker::service::clock::monotonic_ns());
                // Drain only every other time, so the queue also runs full.
                if seq % 40 == 39 {
                    while consumer.dequeue().is_some() {
                        received += 1;
                    }
                }
            }
        }
        wait_for(&counters.datagrams, sent);
        stop.store(true, Ordering::Relaxed);
    });
    while consumer.dequeue().is_some() {
        received += 1;
    }
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    // Every path was taken...
    assert_eq!(c(&counters.queued), received);
    assert!(c(&counters.queue_full) > 0);
    assert_eq!(c(&counters.queued) + c(&counters.queue_full), 400);
    for (name, n) in [
        ("malformed", c(&counters.malformed)),
        ("unknown payload type", c(&counters.unknown_payload_type)),
        ("rtcp", c(&counters.rtcp)),
        ("too large", c(&counters.too_large)),
        ("filtered", c(&counters.filtered)),
    ] {
        assert_eq!(n, 400, "{name}");
    }
    // ...and none of them allocated...
    assert_eq!(common::alloc::allocations(), 0);
    // ...while their reports reached the log, from this thread only.
    event_log.drain(&mut event_rx, netspeaker::service::clock::monotonic_ns());
    let lines = LOGGER.lines.lock().unwrap();
    for needle in [
        "source not in --allow",
        "malformed RTP packet",
        "payload type 97 is not mapped",
        "RTCP packet",
        "longer than",
        "playout queue full",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(needle)),
            "no line about {needle:?} in {lines:#?}"
        );
    }
    assert!(lines.iter().all(|l| !l.starts_with("[net]")), "{lines:#?}");
}

/// An RTP packet of 160 PCMU bytes, protected when `srtp` is given.
fn packet(ssrc: u32, seq: u16, srtp: Option<&mut SrtpContext>) -> Vec<u8> {
    let mut d = vec![0u8; 172 + MAX_OVERHEAD];
    RtpHeader {
        payload_type: 0,
        sequence: seq,
        timestamp: u32::from(seq) * 160,
        ssrc,
        ..RtpHeader::default()
    }
    .write(&mut d)
    .unwrap();
    let len = match srtp {
        Some(c) => c.protect(&mut d, 172).unwrap(),
        None => 172,
    };
    d.truncate(len);
    d
}

#[test]
fn srtp_net_thread_allocates_nothing_on_any_input() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Trace);
    let key = MasterKey::new([3; 16], [4; 14]);
    let receiver = Receiver::bind(&NetConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..NetConfig::default()
    })
    .unwrap();
    let to = receiver.local_addr();
    let counters = NetCounters::default();
    let mut rx = SrtpContext::new(&key, Suite::default());
    let mut parser = PacketParser::new(InputMode::Rtp(PayloadMap::default()));
    let mut queue: Box<Queue<Packet, 512>> = Box::default();
    let (mut producer, mut consumer) = queue.split();
    let mut events: Box<EventQueue> = Box::default();
    let (mut event_tx, mut event_rx) = events.split();
    let mut event_log = EventLog::default();
    let stop = AtomicBool::new(false);
    let rounds = 300u16;
    let mut allocations = 0;

    std::thread::scope(|s| {
        let net = std::thread::Builder::new()
            .name("net".into())
            .spawn_scoped(s, || {
                common::alloc::count_this_thread(true);
                let before = common::alloc::allocations();
                run_with_srtp(
                    &receiver,
                    Some(&mut rx),
                    &mut parser,
                    &mut producer,
                    &mut event_tx,
                    &counters,
                    &stop,
                );
                let n = common::alloc::allocations() - before;
                common::alloc::count_this_thread(false);
                n
            })
            .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut sender = SrtpContext::new(&key, Suite::default());
        let mut stranger = SrtpContext::new(&MasterKey::new([5; 16], [4; 14]), Suite::default());
        // Senders of more SSRCs than the receiver keeps state for.
        let mut many: Vec<SrtpContext> = (0..STREAMS + 2)
            .map(|_| SrtpContext::new(&key, Suite::default()))
            .collect();
        let mut sent = 0;
        for seq in 0..rounds {
            let genuine = packet(1, seq, Some(&mut sender));
            let mut sr = vec![0u8; 28 + MAX_OVERHEAD];
            sr[..8].copy_from_slice(&[0x80, 200, 0, 6, 0, 0, 0, 1]);
            let sr_len = sender.protect_rtcp(&mut sr, 28).unwrap();
            let n = usize::from(seq) % many.len();
            let other_ssrc = packet(100 + n as u32, seq, Some(&mut many[n]));
            for d in [
                &genuine[..],
                &genuine[..],                                 // replay
                &packet(2, seq, Some(&mut stranger))[..],     // another key
                &packet(1, seq.wrapping_add(5000), None)[..], // plaintext
                &[0x80, 0, 0, 1, 0, 0, 0, 0][..],             // too short
                &sr[..sr_len],                                // SRTCP
                &other_ssrc[..],
            ] {
                tx.send_to(d, to).unwrap();
            }
            sent += 7;
            if seq % 20 == 19 {
                wait_for(&counters.datagrams, sent);
                event_log.drain(&mut event_rx, netspeaker::service::clock::monotonic_ns());
                while consumer.dequeue().is_some() {}
            }
        }
        wait_for(&counters.datagrams, sent);
        stop.store(true, Ordering::Relaxed);
        allocations = net.join().unwrap();
    });
    while consumer.dequeue().is_some() {}
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let n = u64::from(rounds);
    // Every path was taken...
    assert_eq!(c(&counters.queued), 2 * n, "genuine and the other SSRCs");
    assert_eq!(c(&counters.replayed), n);
    assert_eq!(c(&counters.auth_failed), 2 * n, "other key and plaintext");
    assert_eq!(c(&counters.malformed), n);
    // SRTCP authenticated, then read as a sender report, not dropped.
    assert_eq!(c(&counters.sender_reports), n);
    assert_eq!(c(&counters.rtcp), 0);
    // ...and none of them allocated...
    assert_eq!(allocations, 0);
    // ...while their reports reached the log.
    event_log.drain(&mut event_rx, netspeaker::service::clock::monotonic_ns());
    let lines = LOGGER.lines.lock().unwrap();
    for needle in ["SRTP authentication failed", "replay", "too short for SRTP"] {
        assert!(
            lines.iter().any(|l| l.contains(needle)),
            "no line about {needle:?} in {lines:#?}"
        );
    }
}

/// RTCP on port + 1 and beside RTP: sender reports feed the sender's
/// clock, BYEs go to the queue, bad compounds are counted and reported;
/// none of it allocates on the net thread.
#[test]
fn sender_reports_on_both_ports_allocate_nothing() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Trace);
    let receiver = (0..100)
        .find_map(|_| {
            let port = UdpSocket::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()?
                .port();
            let r = Receiver::bind(&NetConfig {
                listen: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                rtcp_next_port: true,
                ..NetConfig::default()
            })
            .ok()?;
            r.rtcp_addr().map(|_| r)
        })
        .expect("a free port pair");
    let to = receiver.local_addr();
    let rtcp_to = receiver.rtcp_addr().unwrap();
    let counters = NetCounters::default();
    let mut parser = PacketParser::new(InputMode::Rtp(PayloadMap::default()));
    let mut queue: Box<Queue<Packet, 16>> = Box::default();
    let (mut producer, mut consumer) = queue.split();
    let mut events: Box<EventQueue> = Box::default();
    let (mut event_tx, mut event_rx) = events.split();
    let mut event_log = EventLog::default();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("net".into())
            .spawn_scoped(s, || {
                common::alloc::count_this_thread(true);
                run(
                    &receiver,
                    &mut parser,
                    &mut producer,
                    &mut event_tx,
                    &counters,
                    &stop,
                );
                common::alloc::count_this_thread(false);
            })
            .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut report = [0u8; netspeaker::rtp::rtcp::MAX_REPORT_LEN];
        let mut sent = 0;
        for k in 0..100u64 {
            let info = netspeaker::rtp::rtcp::SenderInfo {
                ntp: netspeaker::rtp::rtcp::ntp_from_unix_ns(
                    1_800_000_000_000_000_000 + k * 2_500_000_000,
                ),
                rtp_timestamp: (k * 20_000) as u32,
                packets: k as u32,
                octets: 0,
            };
            let len =
                netspeaker::rtp::rtcp::write_report(&mut report, 5, &info, b"a@b", false).unwrap();
            tx.send_to(&report[..len], rtcp_to).unwrap();
            tx.send_to(&report[..len], to).unwrap();
            tx.send_to(&report[..len - 1], rtcp_to).unwrap();
            sent += 3;
            if k % 10 == 9 {
                wait_for(&counters.datagrams, sent);
                event_log.drain(&mut event_rx, netspeaker::service::clock::monotonic_ns());
            }
        }
        let len = netspeaker::rtp::rtcp::write_report(
            &mut report,
            5,
            &netspeaker::rtp::rtcp::SenderInfo {
                ntp: 0,
                rtp_timestamp: 0,
                packets: 0,
                octets: 0,
            },
            b"a@b",
            true,
        )
        .unwrap();
        tx.send_to(&report[..len], rtcp_to).unwrap();
        sent += 1;
        wait_for(&counters.datagrams, sent);
        stop.store(true, Ordering::Relaxed);
    });
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    // Each report twice (the same one on both ports: the second is a
    // repeat the clock ignores, but it is counted), plus the BYE's.
    assert_eq!(c(&counters.sender_reports), 201);
    assert_eq!(c(&counters.malformed), 100);
    assert_eq!(c(&counters.queued), 1);
    assert!(consumer.dequeue().is_some());
    assert_eq!(common::alloc::allocations(), 0);
    event_log.drain(&mut event_rx, netspeaker::service::clock::monotonic_ns());
    let lines = LOGGER.lines.lock().unwrap();
    assert!(lines
        .iter()
        .any(|l| l.contains("on the RTCP port: not a well-formed")));
}
