//! ALSA devices for both directions: playback (the receiver) and capture
//! (the sender).

pub mod capture;
pub mod playback;
