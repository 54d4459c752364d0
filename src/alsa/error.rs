//! The one error type of the ALSA layer, for playback and capture alike.
//!
//! Every variant names the device and the value it refused; `Display` adds
//! what the operator should check. Callers act on a few categories:
//! [`AlsaError::is_busy`] (another program holds the device: wait and
//! retry), [`AlsaError::is_lost`] (it vanished or stopped working: close it
//! and reopen with backoff) and everything else (the configuration is
//! wrong: report and stop).

use core::fmt;
use std::sync::Arc;

use super::open::{Access, HwSetup, Stream};

/// Failures of opening or running an ALSA device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlsaError {
    /// A configuration value the layer cannot use at all.
    Config { field: &'static str, value: u64 },
    /// `snd_pcm_open` failed.
    Open {
        device: String,
        stream: Stream,
        errno: i32,
    },
    /// The device refused the access type.
    Access {
        device: String,
        access: Access,
        errno: i32,
    },
    /// The device takes none of the sample formats the layer converts.
    Format { device: String, stream: Stream },
    /// The device refused every channel count near the one asked.
    Channels {
        device: String,
        channels: u16,
        errno: i32,
    },
    /// The device refused every rate near the one asked.
    Rate {
        device: String,
        rate: u32,
        errno: i32,
    },
    /// The device refused every period size near the one asked.
    Period {
        device: String,
        period_frames: u32,
        errno: i32,
    },
    /// The device refused every buffer size near the one asked.
    Buffer {
        device: String,
        buffer_frames: u32,
        errno: i32,
    },
    /// Every parameter was accepted one by one, but installing the whole
    /// set failed, both as asked and at the device's own preference.
    Install {
        device: String,
        setup: HwSetup,
        errno: i32,
    },
    /// Reading hardware parameters or installing software parameters
    /// failed.
    Params {
        device: String,
        step: &'static str,
        errno: i32,
    },
    /// The device stopped working mid-stream: unplugged, its sound server
    /// died or hung, or an error no in-place recovery covers. Close and
    /// reopen with backoff.
    DeviceLost {
        /// Shared with the open device: building this error on the
        /// playout thread must not allocate.
        device: Arc<str>,
        during: &'static str,
        errno: i32,
    },
}

/// The errno values this layer acts on (the `alsa` crate reports positive
/// errno codes; nix's `Errno` is the same table).
pub(crate) mod errno {
    use nix::errno::Errno;
    pub const EAGAIN: i32 = Errno::EAGAIN as i32;
    pub const EINTR: i32 = Errno::EINTR as i32;
    pub const EPIPE: i32 = Errno::EPIPE as i32;
    pub const ESTRPIPE: i32 = Errno::ESTRPIPE as i32;
    pub const EBUSY: i32 = Errno::EBUSY as i32;
    pub const ENOENT: i32 = Errno::ENOENT as i32;
    pub const ENODEV: i32 = Errno::ENODEV as i32;
    pub const ENXIO: i32 = Errno::ENXIO as i32;
    pub const EINVAL: i32 = Errno::EINVAL as i32;
    pub const ETIMEDOUT: i32 = Errno::ETIMEDOUT as i32;
}

fn errno_text(errno: i32) -> &'static str {
    nix::errno::Errno::from_raw(errno).desc()
}

impl AlsaError {
    /// Another program holds the device: worth waiting for.
    pub fn is_busy(&self) -> bool {
        matches!(self, AlsaError::Open { errno, .. } if *errno == errno::EBUSY)
    }

    /// The device was lost mid-stream: close it and reopen with backoff.
    pub fn is_lost(&self) -> bool {
        matches!(self, AlsaError::DeviceLost { .. })
    }

    /// The device stopped making progress (its sound server hangs):
    /// closing it may block for many seconds (the PulseAudio plugin waits
    /// for its 30 s timeout), so close it where blocking does no harm.
    pub fn is_hang(&self) -> bool {
        matches!(
            self,
            AlsaError::DeviceLost { errno, .. } if *errno == errno::ETIMEDOUT
        )
    }
}

impl fmt::Display for AlsaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlsaError::Config { field, value } => write!(
                f,
                "ALSA device setup: {field} = {value} is not usable: it must be at least 1"
            ),
            AlsaError::Open {
                device,
                stream,
                errno,
            } => match *errno {
                errno::EBUSY => write!(
                    f,
                    "{} device '{device}' is busy: another program is using it — stop it \
                     (fuser -v /dev/snd/*) or use dmix/dsnoop",
                    stream.name()
                ),
                errno::ENOENT | errno::ENODEV | errno::ENXIO => write!(
                    f,
                    "no such {} device '{device}' ({}): see {} -l and {} -L",
                    stream.name(),
                    errno_text(*errno),
                    stream.tool(),
                    stream.tool()
                ),
                _ => write!(
                    f,
                    "cannot open {} device '{device}': {} — check the name ({} -L), that the \
                     card is present and, for pulse/jack devices, that the sound server runs",
                    stream.name(),
                    errno_text(*errno),
                    stream.tool()
                ),
            },
            AlsaError::Access {
                device,
                access,
                errno,
            } => write!(
                f,
                "device '{device}' refuses {} access ({}): use --access {}",
                access.name(),
                errno_text(*errno),
                match access {
                    Access::ReadWrite => "mmap",
                    Access::Mmap => "rw",
                }
            ),
            AlsaError::Format { device, stream } => write!(
                f,
                "format not supported: {} device '{device}' takes none of S16_LE, S32_LE, \
                 FLOAT_LE, S24_3LE — use a plug device (plughw:...) in front of it",
                stream.name()
            ),
            AlsaError::Channels {
                device,
                channels,
                errno,
            } => write!(
                f,
                "device '{device}' refuses {channels} channel(s) and any count near it ({}): \
                 use a plug device (plughw:...)",
                errno_text(*errno)
            ),
            AlsaError::Rate {
                device,
                rate,
                errno,
            } => write!(
                f,
                "device '{device}' refuses {rate} Hz and any rate near it ({}): \
                 use a plug device (plughw:...)",
                errno_text(*errno)
            ),
            AlsaError::Period {
                device,
                period_frames,
                errno,
            } => write!(
                f,
                "device '{device}' refuses a period of {period_frames} frames and any near \
                 it ({}): try another --period-ms",
                errno_text(*errno)
            ),
            AlsaError::Buffer {
                device,
                buffer_frames,
                errno,
            } => write!(
                f,
                "device '{device}' refuses a buffer of {buffer_frames} frames and any near \
                 it ({}): try another --buffer-periods",
                errno_text(*errno)
            ),
            AlsaError::Install {
                device,
                setup,
                errno,
            } => write!(
                f,
                "device '{device}': installing hw params ({setup}) failed ({}), also at the \
                 device's own rate and channel count: its plugin chain cannot run this \
                 setup (a route or rate plugin, which plug inserts for a ttable or a \
                 forced slave channel count, needs mmap on its slave and pulse has only \
                 rw; aplay -v -D {device} fails the same way) — drop the ttable/forced \
                 channels, or put the route over a device with mmap",
                errno_text(*errno)
            ),
            AlsaError::Params {
                device,
                step,
                errno,
            } => write!(
                f,
                "device '{device}': {step} failed ({}): the device rejected the negotiated \
                 setup — try a plug device or other --period-ms/--buffer-periods",
                errno_text(*errno)
            ),
            AlsaError::DeviceLost {
                device,
                during,
                errno,
            } => write!(
                f,
                "device '{device}' was lost during {during} ({}): unplugged, or its sound \
                 server stopped or hangs — it will be reopened",
                errno_text(*errno)
            ),
        }
    }
}

impl std::error::Error for AlsaError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_and_missing_devices_say_what_to_do() {
        let busy = AlsaError::Open {
            device: "hw:1".into(),
            stream: Stream::Playback,
            errno: errno::EBUSY,
        };
        assert!(busy.is_busy());
        assert!(
            busy.to_string().contains("playback device 'hw:1' is busy"),
            "{busy}"
        );
        assert!(busy.to_string().contains("dmix"));
        let missing = AlsaError::Open {
            device: "hw:5".into(),
            stream: Stream::Capture,
            errno: errno::ENOENT,
        };
        assert!(!missing.is_busy());
        let text = missing.to_string();
        assert!(text.contains("no such capture device 'hw:5'"), "{text}");
        assert!(text.contains("arecord -l"), "{text}");
    }

    #[test]
    fn install_failure_names_the_setup_tried() {
        let e = AlsaError::Install {
            device: "x".into(),
            setup: HwSetup {
                access: Access::ReadWrite,
                format: super::super::open::SampleFormat::S16,
                rate: 8000,
                channels: 1,
                period_frames: 160,
                buffer_frames: 640,
            },
            errno: errno::EINVAL,
        };
        let text = e.to_string();
        for part in ["'x'", "S16_LE", "8000 Hz", "1 channel", "160", "640"] {
            assert!(text.contains(part), "{part} missing: {text}");
        }
    }

    #[test]
    fn only_a_stall_is_a_hang() {
        let lost = |errno| AlsaError::DeviceLost {
            device: "pulse".into(),
            during: "write",
            errno,
        };
        assert!(lost(errno::ETIMEDOUT).is_hang());
        assert!(lost(errno::ETIMEDOUT).is_lost());
        assert!(!lost(errno::ENODEV).is_hang());
        assert!(lost(errno::ENODEV).is_lost());
    }
}
