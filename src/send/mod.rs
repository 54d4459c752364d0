//! The sender's stages: source (WAV, raw, stdin, ALSA capture) → convert
//! (rate, channels) → packetize (RTP or headerless) → pace (absolute
//! deadline on the monotonic clock) → socket; and the SDP description.

pub mod convert;
pub mod dest;
pub mod pace;
pub mod packetize;
pub mod sdp;
pub mod source;
pub mod wav;
