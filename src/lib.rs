//! netspeaker: a network speaker. The receiver's data path, one module per
//! stage, in the order audio flows through them:
//!
//! net (socket, source filter) → rtp (header) → packet (slot, SPSC queue)
//! → codec (L16, G.711) → jitter (jitter buffer) → conceal (loss hiding)
//! → stretch / resample (delay and clock following, rate conversion; the
//! targets come from delay, the playout delay estimator, and drift, the
//! delay controller)
//! → playout (the realtime loop) → alsa_out (device, recovery).
//!
//! Around it: stats (counters, the statistics line), service (logging,
//! signals, systemd notify/watchdog), sched (realtime priority, locked
//! memory), and `send` (the sender's stages).

pub mod alsa_out;
pub mod cli;
pub mod clock;
pub mod codec;
pub mod conceal;
pub mod delay;
pub mod drift;
pub mod format;
pub mod jitter;
pub mod net;
pub mod notify;
pub mod packet;
pub mod playout;
pub mod ratelimit;
pub mod resample;
pub mod rtp;
pub mod sched;
pub mod send;
pub mod service;
pub mod stats;
pub mod stretch;
