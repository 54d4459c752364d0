//! What SRTP adds per packet: the sender's `protect` and the receiver's
//! `unprotect` (tag check, replay window, decryption) over 10^5 packets,
//! for PCMU at 20 ms (160 bytes of payload) and L16 48 kHz stereo at 20 ms
//! (3840 bytes), both suites. Prints the median of 5 runs in nanoseconds
//! per packet and as a share of one core at 50 packets per second.
//! `cargo bench --bench srtp_speed`.
use netspeaker::rtp::srtp::{MasterKey, SrtpContext, Suite, MAX_OVERHEAD};
use netspeaker::rtp::RtpHeader;
use std::time::{Duration, Instant};

const PACKETS: usize = 100_000;
const BATCH: usize = 1000;
const RUNS: usize = 5;

fn packet(seq: u16, payload: usize, out: &mut Vec<u8>) -> usize {
    out.clear();
    out.resize(12 + payload + MAX_OVERHEAD, 0);
    RtpHeader {
        payload_type: 0,
        sequence: seq,
        timestamp: u32::from(seq).wrapping_mul(160),
        ssrc: 0x1234_5678,
        ..RtpHeader::default()
    }
    .write(out)
    .expect("header");
    for (i, b) in out[12..12 + payload].iter_mut().enumerate() {
        *b = (i as u8) ^ (seq as u8);
    }
    12 + payload
}

/// One run: (protect, unprotect) time per packet.
fn run(suite: Suite, payload: usize) -> (Duration, Duration) {
    let key = MasterKey::new([0x42; 16], [0x17; 14]);
    let mut tx = SrtpContext::new(&key, suite);
    let mut rx = SrtpContext::new(&key, suite);
    let mut batch: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::new()).collect();
    let mut lens = vec![0usize; BATCH];
    let (mut protect, mut unprotect) = (Duration::ZERO, Duration::ZERO);
    let mut seq = 0u16;
    for _ in 0..PACKETS / BATCH {
        let mut plain_lens = vec![0usize; BATCH];
        for (buf, len) in batch.iter_mut().zip(plain_lens.iter_mut()) {
            *len = packet(seq, payload, buf);
            seq = seq.wrapping_add(1);
        }
        let t = Instant::now();
        for ((buf, len), out) in batch.iter_mut().zip(&plain_lens).zip(lens.iter_mut()) {
            *out = tx.protect(buf, *len).expect("protect");
        }
        protect += t.elapsed();
        let t = Instant::now();
        for (buf, len) in batch.iter_mut().zip(&lens) {
            let n = rx.unprotect(&mut buf[..*len]).expect("unprotect");
            std::hint::black_box(n);
        }
        unprotect += t.elapsed();
    }
    (protect / PACKETS as u32, unprotect / PACKETS as u32)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    for (name, payload) in [("PCMU 20 ms", 160), ("L16 48 kHz stereo 20 ms", 3840)] {
        for suite in Suite::ALL {
            let runs: Vec<_> = (0..RUNS).map(|_| run(suite, payload)).collect();
            let p = median(runs.iter().map(|r| r.0).collect());
            let u = median(runs.iter().map(|r| r.1).collect());
            let share = |d: Duration| d.as_secs_f64() * 50.0 * 100.0;
            println!(
                "{name}, {suite}: protect {} ns/packet ({:.3} % of a core at 50 packets/s), \
                 unprotect {} ns/packet ({:.3} %)",
                p.as_nanos(),
                share(p),
                u.as_nanos(),
                share(u)
            );
        }
    }
}
