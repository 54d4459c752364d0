//! ALSA devices for both directions: playback (the receiver) and capture
//! (the sender), opened by one ladder ([`open`]) and failing with one
//! error type ([`error::AlsaError`]).

pub mod capture;
pub mod error;
pub mod open;
pub mod playback;

pub use error::AlsaError;
pub use open::{Access, DeviceConfig, Negotiated, SampleFormat, Stream};
