//! Audio shared by both directions: stream formats, codecs (L16, G.711),
//! sample conversion, the channel map and the resampler.

pub mod channels;
pub mod codec;
pub mod convert;
pub mod format;
pub mod resample;
