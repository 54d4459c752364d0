//! netspeaker: a network speaker and its sender.
//!
//! The receiver's data path, in the order audio flows:
//!
//! ```text
//! net::receive (socket from net::socket, source filter net::filter)
//!   → rtp (header, packet slot) → [SPSC queue]
//!   → receive::playout (the realtime thread) driving receive::engine:
//!     receive::jitter (jitter buffer) → audio::codec (decode)
//!     → receive::conceal (loss hiding) → receive::stretch (delay moves)
//!     → audio::resample (rate conversion, clock following; targets from
//!       receive::delay, receive::clock and receive::drift)
//!     → audio::channels → alsa::playback
//!   receive::device: the device's state machine, and the device thread
//!   that opens and closes it (alsa::open) off the realtime thread.
//! With several --stream: one socket, queue and engine per stream (the
//! option read by receive::streams); the net thread polls every socket,
//! and the playout thread mixes the engines' periods at the gains of
//! receive::priority (which stream owns the speaker, who is ducked).
//! RTCP beside it (port + 1, or the RTP port with rtcp-mux), on the net
//!   thread: rtp::rtcp (sender reports, BYE) → receive::sender_clock (the
//!   sender's media clock against its wall clock); BYEs go on the queue.
//!   With --sync-ms the sender's mapping reaches the engine through a
//!   seqlock (receive::sync), which times each frame at the DAC from it,
//!   the wall clock and the device's status.
//! With --sap, before all of it and beside it on its own thread:
//!   net::sap (SAP datagrams, listening sockets) → rtp::sdp (the session
//!   description) → receive::sap (choose and follow the session).
//! ```
//!
//! The sender's, the other way round:
//!
//! ```text
//! send::source (file, stdin) | alsa::capture → send::convert (audio::*)
//!   → send::packetize (rtp::header, audio::codec) → send::pace → net::send
//!   send::report (RTCP sender reports and BYE, rtp::rtcp) → net::send
//! send::sdp (the description) → send::announce (SAP, net::sap) on its own
//!   thread with --sap.
//! ```
//!
//! Layers shared by both directions: `net` (sockets, multicast, SAP),
//! `rtp` (header parse and write, RFC 3550 statistics, RTCP, SRTP, SDP parse), `audio` (formats, codecs,
//! sample conversion, channel map, resampler, pitch search), `alsa` (one
//! open ladder for playback and capture), `service` (logging, signals,
//! systemd notify and the supervisor loop, realtime scheduling, clocks,
//! rate limits, the realtime allocation watch). The stages of each
//! direction live in `receive` and `send`; the binaries in `src/bin` only
//! parse options and wire stages together.

pub mod alsa;
pub mod audio;
pub mod net;
pub mod receive;
pub mod rtp;
pub mod send;
pub mod service;

/// What the unit tests of several modules share.
#[cfg(test)]
pub(crate) mod testing {
    /// A seeded linear congruential generator (Knuth's MMIX constants):
    /// simulations are random, and a failure replays exactly.
    pub struct Lcg(pub u64);

    impl Lcg {
        /// Uniform in [0, 1).
        pub fn uniform(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }
}
