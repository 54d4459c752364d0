//! ALSA capture source. Input: a capture device (`--capture DEVICE`).
//! Output: interleaved `i16` frames at the rate and channel count the
//! device granted (asked for: the stream's; the converter bridges any
//! difference).
//!
//! Policy: the shared open ladder of [`super::open`] (format from a
//! preference list, S16 first; other formats are converted to `i16` here);
//! blocking reads, so the device's clock paces the stream. The recovery
//! ladder of playback, for reading: EAGAIN/EINTR read again; an overrun
//! (EPIPE, we were too slow) prepares and restarts; a suspend (ESTRPIPE)
//! resumes, waiting a period at a time while the device wakes, then
//! prepares; each is counted and reported by `read` as
//! [`ReadStatus::Recovered`]. Too many recoveries without a frame between
//! them, a DISCONNECTED state or any other error is
//! [`AlsaError::DeviceLost`]: the sender reopens the device with backoff.
//! A busy device at open is [`AlsaError::is_busy`], which the caller
//! retries with backoff.

use alsa::pcm::{State, PCM};
use std::sync::Arc;

use super::error::{errno, AlsaError};
use super::open::{open_pcm, Access, DeviceConfig, Negotiated, SampleFormat, Stream};
use crate::audio::format::{Encoding, StreamFormat};

/// What one `read` brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// This many frames.
    Frames(usize),
    /// The device overran or was suspended and was restarted; no frames
    /// this time (the gap is lost audio, the stream's timestamps skip on).
    Recovered,
}

/// Recoveries in a row, with no frame read between them, before the device
/// counts as lost: one is normal after a stall, several mean restarting
/// does not help.
const MAX_RECOVERIES_IN_A_ROW: u32 = 8;
/// Periods to wait for a suspended device to wake before preparing it.
const MAX_SUSPENDED_PERIODS: u32 = 50;

pub struct Capture {
    pcm: PCM,
    negotiated: Negotiated,
    /// The device name for errors (see playback).
    device: Arc<str>,
    /// Device-format bytes for formats other than S16; sized once in `open`.
    raw: Vec<u8>,
    overruns: u64,
    recoveries_in_a_row: u32,
}

impl Capture {
    /// Opens `device` asking for `want.rate` and `want.channels`, with
    /// periods of `period_frames` (the ptime) and a buffer of four.
    pub fn open(
        device: &str,
        want: StreamFormat,
        period_frames: usize,
    ) -> Result<Capture, AlsaError> {
        let config = DeviceConfig {
            device: device.to_string(),
            access: Access::ReadWrite,
            rate: Some(want.rate),
            channels: Some(want.channels),
            period_frames: u32::try_from(period_frames).unwrap_or(u32::MAX),
            // Four periods: room for a scheduling hiccup without overrun.
            buffer_periods: 4,
        };
        Capture::open_config(&config)
    }

    /// Opens with a full [`DeviceConfig`] (rate and channels may be left
    /// to the device). Read/write access only: the sender reads blocking.
    pub fn open_config(config: &DeviceConfig) -> Result<Capture, AlsaError> {
        let config = DeviceConfig {
            access: Access::ReadWrite,
            ..config.clone()
        };
        let (pcm, negotiated) =
            open_pcm(&config, Stream::Capture, &SampleFormat::PREFERENCE, false)?;
        let raw = match negotiated.format {
            SampleFormat::S16 => Vec::new(),
            other => vec![
                0u8;
                negotiated.period_frames
                    * usize::from(negotiated.channels)
                    * other.bytes_per_sample()
            ],
        };
        log::info!("capture device {negotiated}");
        Ok(Capture {
            pcm,
            device: Arc::from(negotiated.device.as_str()),
            negotiated,
            raw,
            overruns: 0,
            recoveries_in_a_row: 0,
        })
    }

    /// The granted format, as the samples `read` returns.
    pub fn format(&self) -> StreamFormat {
        StreamFormat {
            encoding: Encoding::S16Le,
            rate: self.negotiated.rate,
            channels: self.negotiated.channels,
        }
    }

    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    pub fn period_frames(&self) -> usize {
        self.negotiated.period_frames
    }

    /// Overruns and suspends recovered since open.
    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    /// Blocks until frames are available and reads as many as `out` holds
    /// (whole frames).
    pub fn read(&mut self, out: &mut [i16]) -> Result<ReadStatus, AlsaError> {
        if matches!(state_of(&self.pcm), Some(State::Disconnected)) {
            return Err(self.lost("read", errno::ENODEV));
        }
        let result = match self.negotiated.format {
            SampleFormat::S16 => {
                // SAFETY: the format is S16 (native endian on every target
                // we build for: little endian) and hw_params succeeded; the
                // checked accessor would allocate a parameter block on every
                // call.
                let io = unsafe { self.pcm.io_unchecked::<i16>() };
                io.readi(out)
            }
            format => self.read_converted(format, out),
        };
        match result {
            Ok(n) => {
                if n > 0 {
                    self.recoveries_in_a_row = 0;
                }
                Ok(ReadStatus::Frames(n))
            }
            Err(e) => match e.errno() {
                errno::EAGAIN | errno::EINTR => Ok(ReadStatus::Frames(0)),
                errno::EPIPE => {
                    self.count_recovery("overrun recovery")?;
                    self.restart("prepare after overrun")?;
                    Ok(ReadStatus::Recovered)
                }
                errno::ESTRPIPE => {
                    self.count_recovery("suspend recovery")?;
                    self.resume()?;
                    Ok(ReadStatus::Recovered)
                }
                other => Err(self.lost("read", other)),
            },
        }
    }

    /// Reads into the raw buffer and converts to `i16`.
    fn read_converted(&mut self, format: SampleFormat, out: &mut [i16]) -> alsa::Result<usize> {
        let channels = usize::from(self.negotiated.channels);
        let bytes_per_frame = channels * format.bytes_per_sample();
        let frames = (out.len() / channels).min(self.raw.len() / bytes_per_frame.max(1));
        let Some(raw) = self.raw.get_mut(..frames * bytes_per_frame) else {
            return Ok(0);
        };
        let n = self.pcm.io_bytes().readi(raw)?;
        let got = raw.get(..n * bytes_per_frame).unwrap_or(&[]);
        to_i16(format, got, &mut out[..n * channels]);
        Ok(n)
    }

    fn count_recovery(&mut self, during: &'static str) -> Result<(), AlsaError> {
        self.overruns += 1;
        self.recoveries_in_a_row += 1;
        if self.recoveries_in_a_row > MAX_RECOVERIES_IN_A_ROW {
            return Err(self.lost(during, errno::EPIPE));
        }
        Ok(())
    }

    /// Prepare and start: a capture stream only runs once started (the
    /// next read would start it too; starting here keeps the gap short).
    fn restart(&mut self, during: &'static str) -> Result<(), AlsaError> {
        self.pcm
            .prepare()
            .map_err(|e| self.lost(during, e.errno()))?;
        self.pcm.start().map_err(|e| self.lost(during, e.errno()))
    }

    /// ESTRPIPE: resume, waiting a period at a time while the device wakes
    /// (the sender's thread is paced by the device, which is asleep), then
    /// prepare.
    fn resume(&mut self) -> Result<(), AlsaError> {
        let period_ms = (self.negotiated.period_frames as u64 * 1000
            / u64::from(self.negotiated.rate.max(1)))
        .max(1);
        for _ in 0..MAX_SUSPENDED_PERIODS {
            match self.pcm.resume() {
                Ok(()) => return Ok(()),
                Err(e) if e.errno() == errno::EAGAIN => {
                    std::thread::sleep(std::time::Duration::from_millis(period_ms));
                }
                // The device cannot resume (ENOSYS): prepare instead.
                Err(_) => break,
            }
        }
        self.restart("prepare after suspend")
    }

    fn lost(&self, during: &'static str, errno: i32) -> AlsaError {
        AlsaError::DeviceLost {
            device: Arc::clone(&self.device),
            during,
            errno,
        }
    }
}

fn state_of(pcm: &PCM) -> Option<State> {
    // As in playback: the crate's `state()` panics on unknown values.
    let raw = pcm.state_raw();
    State::all().iter().copied().find(|s| *s as i32 == raw)
}

/// Converts little-endian device samples to `i16`, `out.len()` samples.
/// Wider formats keep their top 16 bits (truncation: the sender's stream
/// is 16-bit, and rounding would need headroom at full scale).
fn to_i16(format: SampleFormat, raw: &[u8], out: &mut [i16]) {
    match format {
        SampleFormat::S16 => {
            for (o, b) in out.iter_mut().zip(raw.chunks_exact(2)) {
                *o = i16::from_le_bytes([b[0], b[1]]);
            }
        }
        SampleFormat::S32 => {
            for (o, b) in out.iter_mut().zip(raw.chunks_exact(4)) {
                *o = (i32::from_le_bytes([b[0], b[1], b[2], b[3]]) >> 16) as i16;
            }
        }
        SampleFormat::S24_3 => {
            for (o, b) in out.iter_mut().zip(raw.chunks_exact(3)) {
                *o = i16::from_le_bytes([b[1], b[2]]);
            }
        }
        SampleFormat::F32 => {
            for (o, b) in out.iter_mut().zip(raw.chunks_exact(4)) {
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                // NaN becomes silence rather than a full-scale click.
                let v = if v.is_nan() { 0.0 } else { v };
                *o = (v * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(format: SampleFormat, raw: &[u8]) -> Vec<i16> {
        let mut out = vec![0i16; raw.len() / format.bytes_per_sample()];
        to_i16(format, raw, &mut out);
        out
    }

    #[test]
    fn wide_formats_give_their_top_16_bits() {
        for k in [-32768i32, -12345, -1, 0, 1, 32767] {
            let s32 = (k << 16) | 0x1234;
            assert_eq!(
                from(SampleFormat::S32, &s32.to_le_bytes()),
                [k as i16],
                "S32 {k}"
            );
            let s24 = ((k << 8) | 0x56).to_le_bytes();
            assert_eq!(from(SampleFormat::S24_3, &s24[..3]), [k as i16], "S24 {k}");
        }
    }

    #[test]
    fn float_samples_scale_round_and_clamp() {
        let raw: Vec<u8> = [0.5f32, -1.0, 1.5, f32::NAN, 3.0 / 32768.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(from(SampleFormat::F32, &raw), [16384, -32768, 32767, 0, 3]);
    }

    #[test]
    fn s16_passes_unchanged() {
        assert_eq!(
            from(SampleFormat::S16, &[0x34, 0x12, 0x00, 0x80]),
            [0x1234, i16::MIN]
        );
    }
}
