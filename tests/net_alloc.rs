//! The net thread allocates nothing: a counting global allocator counts the
//! allocations made on the thread that runs `net::run`, from its first
//! instruction to its return, while a stream of valid packets mixed with
//! every kind of bad input (and a full queue) goes through it.

mod common;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use heapless::spsc::Queue;
use netspeaker::audio::format::PayloadMap;
use netspeaker::net::{run, Cidr, NetConfig, NetCounters, Receiver};
use netspeaker::rtp::packet::{Packet, MAX_DATAGRAM};
use netspeaker::rtp::{InputMode, PacketParser, RtpHeader};

#[global_allocator]
static GLOBAL: common::alloc::Counting = common::alloc::Counting;

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
fn net_thread_allocates_nothing() {
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
    let stop = AtomicBool::new(false);
    let mut received = 0u64;

    std::thread::scope(|s| {
        s.spawn(|| {
            common::alloc::count_this_thread(true);
            run(&receiver, &mut parser, &mut producer, &counters, &stop);
            common::alloc::count_this_thread(false);
        });
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
    // ...and none of them allocated.
    assert_eq!(common::alloc::allocations(), 0);
}
