//! SAP announcer (RFC 2974): input, the stream's SDP text and where to
//! announce it; output, an announcement datagram at once and then about
//! every [`INTERVAL`], and a deletion when stopped (or dropped), on a
//! thread of its own ("sap") so the pacing thread never waits on it.
//!
//! Interval: RFC 2974's formula (300 s or more, sized for the global
//! MBone's 4 kbit/s SAP budget) is far too slow for the listeners of this
//! field: PulseAudio's module-rtp-recv forgets a session 20 s after its
//! last announcement, and PulseAudio and PipeWire themselves announce
//! every 5 s. We announce every 5 s, offset at random by up to a third
//! either way as RFC 2974 asks (so that senders started together do not
//! stay in step): at ~300 bytes that is ~0.5 kbit/s on the local link,
//! and a listener that loses two announcements in a row still keeps the
//! session.
//!
//! Line ends: the SDP goes out with LF alone, as PulseAudio and PipeWire
//! send it. RFC 8866 writes CRLF but tells parsers to accept LF, and
//! PulseAudio 16.1's module-rtp-recv refuses CRLF ("Failed to parse SDP
//! data: invalid header", tried); every parser we know takes LF. A send
//! that fails is logged (rate-limited) and retried at the
//! next interval; it never stops the stream.

use core::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::net::sap;
use crate::net::send::{self as dest, Dest, DestConfig};
use crate::service::clock::monotonic_ns;

/// Mean time between announcements.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// What to announce, and where.
#[derive(Clone, Debug)]
pub struct AnnounceConfig {
    /// The SAP destination (`--sap-address`), with TTL and interface.
    pub dest: DestConfig,
    /// The session description (the text `--sdp` writes).
    pub sdp: String,
    /// The session name, for log lines.
    pub name: String,
}

#[derive(Debug)]
pub enum Error {
    /// The SAP socket could not be opened.
    Dest(dest::Error),
    Thread(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Dest(e) => write!(f, "SAP announcements (--sap-address): {e}"),
            Error::Thread(e) => write!(f, "cannot start the SAP announcer thread: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// The running announcer; stopping or dropping it sends the deletion.
pub struct Announcer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Announcer {
    pub fn start(config: &AnnounceConfig) -> Result<Announcer, Error> {
        let mut dest = Dest::open(&config.dest).map_err(Error::Dest)?;
        let origin = match dest.local_addr().map(|a| a.ip()) {
            Some(ip) if !ip.is_unspecified() => ip,
            _ => unspecified_like(config.dest.addr),
        };
        let text = config.sdp.replace("\r\n", "\n");
        let hash = sap::msg_id_hash(&text);
        let announce = sap::write(false, origin, hash, &text);
        let delete = sap::write(true, origin, hash, &text);
        let stop = Arc::new(AtomicBool::new(false));
        log::info!(
            "sap: announcing session '{}' to {} every {} s",
            config.name,
            config.dest.addr,
            INTERVAL.as_secs()
        );
        let thread = {
            let stop = Arc::clone(&stop);
            let name = config.name.clone();
            std::thread::Builder::new()
                .name("sap".into())
                .spawn(move || {
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        if Instant::now() >= next {
                            send(&mut dest, &announce);
                            next = Instant::now() + jittered(INTERVAL);
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    send(&mut dest, &delete);
                    log::info!("sap: session '{name}' deleted");
                })
                .map_err(Error::Thread)?
        };
        Ok(Announcer {
            stop,
            thread: Some(thread),
        })
    }

    /// Sends the deletion and waits for the thread (within ~50 ms).
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.finish();
    }
}

fn send(dest: &mut Dest, datagram: &[u8]) {
    // Transient failures are counted and logged (rate-limited) by Dest.
    if let Err(e) = dest.send(datagram) {
        log::warn!("sap: {e}; retrying at the next announcement");
    }
}

fn unspecified_like(addr: SocketAddr) -> IpAddr {
    match addr {
        SocketAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// `interval` offset by a pseudo-random amount within ±1/3 (RFC 2974,
/// section 3.1); the clock's low bits are random enough to keep senders
/// out of step.
fn jittered(interval: Duration) -> Duration {
    let third = interval.as_millis() as u64 / 3;
    let r = monotonic_ns().wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 33;
    let offset = r % (2 * third + 1);
    Duration::from_millis(interval.as_millis() as u64 - third + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_offset_stays_within_a_third() {
        for _ in 0..1000 {
            let d = jittered(INTERVAL);
            assert!(d >= Duration::from_millis(3333) && d <= Duration::from_millis(6667));
        }
    }

    /// Announces to a unicast loopback port: the first datagram arrives at
    /// once, the deletion at stop, both with our SDP.
    #[test]
    fn announcement_at_start_and_deletion_at_stop() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=hall\r\n".to_string();
        let a = Announcer::start(&AnnounceConfig {
            dest: DestConfig {
                addr: rx.local_addr().unwrap(),
                ttl: 1,
                interface: None,
            },
            sdp: sdp.clone(),
            name: "hall".into(),
        })
        .unwrap();
        let mut buf = [0u8; 2048];
        let n = rx.recv(&mut buf).unwrap();
        let p = sap::parse(&buf[..n]).unwrap();
        assert!(!p.deletion);
        // Sent with LF line ends (PulseAudio refuses CRLF).
        assert_eq!(p.sdp, "v=0\no=- 1 1 IN IP4 127.0.0.1\ns=hall\n");
        assert_eq!(p.origin, "127.0.0.1".parse::<IpAddr>().unwrap());
        a.stop();
        let n = rx.recv(&mut buf).unwrap();
        let p = sap::parse(&buf[..n]).unwrap();
        assert!(p.deletion);
        assert_eq!(p.sdp, "v=0\no=- 1 1 IN IP4 127.0.0.1\ns=hall\n");
    }
}
