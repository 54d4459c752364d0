//! netspeaker: a network speaker and its sender.
//!
//! The receiver's data path, in the order audio flows:
//!
//! ```text
//! net::receive (socket, source filter) → rtp (header, packet slot)
//!   → [SPSC queue] → receive::playout (realtime thread):
//!     receive::jitter (jitter buffer) → audio::codec (decode)
//!     → receive::conceal (loss hiding) → receive::stretch / audio::resample
//!       (delay targets from receive::delay, clock following from
//!        receive::drift) → audio::channels → alsa::playback (device)
//! ```
//!
//! The sender's, the other way round:
//!
//! ```text
//! send::source (file, stdin) | alsa::capture → send::convert (audio::*)
//!   → send::packetize (rtp header, audio::codec) → send::pace → net::send
//! ```
//!
//! Layers shared by both directions: `net` (sockets, multicast), `rtp`
//! (header parse and write, RFC 3550 statistics), `audio` (formats, codecs,
//! sample conversion, channel map, resampler, pitch search), `alsa` (one
//! open ladder for playback and capture), `service` (logging, signals,
//! systemd notify and watchdog, realtime scheduling, clocks, rate limits).
//! The stages of each direction live in `receive` and `send`; the binaries
//! in `src/bin` only parse options and wire stages together.

pub mod alsa;
pub mod audio;
pub mod net;
pub mod receive;
pub mod rtp;
pub mod send;
pub mod service;
