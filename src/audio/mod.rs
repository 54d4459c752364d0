//! Audio shared by both directions: stream formats, codecs (L16, G.711, Opus),
//! sample conversion (`i16`, `f32`, device layouts), the one channel map,
//! the resampler and the pitch search (concealment and stretching).

pub mod channels;
pub mod codec;
pub mod convert;
pub mod format;
pub mod opus;
pub mod pitch;
pub mod resample;
