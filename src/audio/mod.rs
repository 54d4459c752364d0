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

/// `items` as whole arrays of `N`, the rest left off: std's
/// `as_chunks` (stable since Rust 1.88; rust-version here is 1.80).
pub(crate) fn chunks<const N: usize, T>(items: &[T]) -> &[[T; N]] {
    let n = items.len().checked_div(N).unwrap_or(0);
    // SAFETY: `[T; N]` is `N` `T`s back to back, with `T`'s alignment and
    // no padding, so the first `n · N` items, all in bounds, are `n` of them.
    unsafe { std::slice::from_raw_parts(items.as_ptr().cast::<[T; N]>(), n) }
}
