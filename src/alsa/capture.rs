//! ALSA capture source. Input: a capture device (`--capture DEVICE`).
//! Output: interleaved `i16` frames at the rate and channel count the
//! device granted (asked for: the stream's; the converter bridges any
//! difference). Policy: blocking reads, so the device's clock paces the
//! stream; an overrun (`EPIPE`, we were too slow) or a suspend (`ESTRPIPE`)
//! is recovered in place, counted and reported by `read` as a value; a busy
//! device at open is its own error, which the caller retries with backoff.

use core::fmt;

use alsa::pcm::{Access, Format, HwParams, PCM};
use alsa::{Direction, ValueOr};

use crate::audio::format::{Encoding, StreamFormat};

#[derive(Debug)]
pub enum Error {
    /// Another program holds the device.
    Busy {
        device: String,
    },
    Open {
        device: String,
        err: alsa::Error,
    },
    /// The device refused a parameter.
    Param {
        device: String,
        what: &'static str,
        err: alsa::Error,
    },
    Read {
        device: String,
        err: alsa::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Busy { device } => write!(
                f,
                "capture device '{device}' is busy: another program is recording from it \
                 (check with fuser -v /dev/snd/*)"
            ),
            Error::Open { device, err } => write!(
                f,
                "cannot open capture device '{device}': {err} (list devices with arecord -L)"
            ),
            Error::Param { device, what, err } => {
                write!(f, "capture device '{device}' refused {what}: {err}")
            }
            Error::Read { device, err } => {
                write!(f, "reading from capture device '{device}' failed: {err}")
            }
        }
    }
}

impl std::error::Error for Error {}

/// What one `read` brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// This many frames.
    Frames(usize),
    /// The device overran or was suspended and was restarted; no frames
    /// this time (the gap is lost audio, the stream's timestamps skip on).
    Recovered,
}

pub struct Capture {
    device: String,
    pcm: PCM,
    format: StreamFormat,
    period_frames: usize,
    overruns: u64,
}

impl Capture {
    /// Opens `device` asking for `want.rate` and `want.channels`, with
    /// periods of `period_frames` (the ptime) and a buffer of four.
    pub fn open(device: &str, want: StreamFormat, period_frames: usize) -> Result<Capture, Error> {
        let pcm = PCM::new(device, Direction::Capture, false).map_err(|err| {
            if err.errno() == nix::libc::EBUSY {
                Error::Busy {
                    device: device.to_string(),
                }
            } else {
                Error::Open {
                    device: device.to_string(),
                    err,
                }
            }
        })?;
        let param = |what| {
            let device = device.to_string();
            move |err| Error::Param { device, what, err }
        };
        let (rate, channels, period) = {
            let hwp = HwParams::any(&pcm).map_err(param("any configuration"))?;
            hwp.set_access(Access::RWInterleaved)
                .map_err(param("interleaved read/write access"))?;
            hwp.set_format(Format::s16())
                .map_err(param("16-bit samples"))?;
            hwp.set_channels_near(u32::from(want.channels))
                .map_err(param("the channel count"))?;
            hwp.set_rate_near(want.rate, ValueOr::Nearest)
                .map_err(param("the sample rate"))?;
            let period = hwp
                .set_period_size_near(period_frames as alsa::pcm::Frames, ValueOr::Nearest)
                .map_err(param("the period size"))?;
            // Four periods: room for a scheduling hiccup without overrun.
            hwp.set_buffer_size_near(period * 4)
                .map_err(param("the buffer size"))?;
            pcm.hw_params(&hwp).map_err(param("the configuration"))?;
            // Read back what was granted; "near" may differ from asked.
            let cur = pcm.hw_params_current().map_err(param("reading back"))?;
            (
                cur.get_rate().map_err(param("reading back"))?,
                cur.get_channels().map_err(param("reading back"))?,
                cur.get_period_size().map_err(param("reading back"))?,
            )
        };
        let format = StreamFormat {
            encoding: Encoding::S16Le,
            rate,
            channels: channels as u16,
        };
        log::info!("'{device}' opened at {rate} Hz, {channels} channel(s), period {period} frames");
        Ok(Capture {
            device: device.to_string(),
            pcm,
            format,
            period_frames: usize::try_from(period).unwrap_or(period_frames),
            overruns: 0,
        })
    }

    /// The granted format.
    pub fn format(&self) -> StreamFormat {
        self.format
    }

    pub fn period_frames(&self) -> usize {
        self.period_frames
    }

    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    /// Blocks until frames are available and reads as many as `out` holds.
    pub fn read(&mut self, out: &mut [i16]) -> Result<ReadStatus, Error> {
        // SAFETY: the format was set to S16 (native endian) in `open` and
        // hw_params succeeded; the checked accessor would allocate a
        // parameter block on every call.
        let io = unsafe { self.pcm.io_unchecked::<i16>() };
        match io.readi(out) {
            Ok(n) => Ok(ReadStatus::Frames(n)),
            Err(e) if e.errno() == nix::libc::EPIPE || e.errno() == nix::libc::ESTRPIPE => {
                self.overruns += 1;
                self.pcm.try_recover(e, true).map_err(|err| Error::Read {
                    device: self.device.clone(),
                    err,
                })?;
                Ok(ReadStatus::Recovered)
            }
            Err(e) if e.errno() == nix::libc::EINTR => Ok(ReadStatus::Frames(0)),
            Err(err) => Err(Error::Read {
                device: self.device.clone(),
                err,
            }),
        }
    }
}
