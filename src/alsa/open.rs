//! The open ladder both directions share: what the caller asks
//! ([`DeviceConfig`]), what the device gave ([`Negotiated`]), and the
//! steps between.
//!
//! Input: a device name and the wished-for access, rate, channels, period
//! and buffer (rate and channels may be left to the device).
//! Output: a configured PCM, prepared, and the values read back from it.
//!
//! Policy, like `aplay`: ask, then accept what the device offers. In order:
//! access (exact: the caller's write path depends on it), sample format
//! (the first of the caller's preference list the device takes), rate,
//! channels, period and buffer (all with the "near" calls: the value asked
//! where the device has it, else the closest). Then the whole set is
//! installed and read back; the caller converts to whatever was granted.
//!
//! Some plugin chains accept every parameter one by one and still refuse
//! the whole set at install time: a `route` or `rate` plugin needs mmap
//! access on its slave, and the PulseAudio plugin has read/write only, so
//! a `plug` over pulse that must insert a route (a ttable, or slave
//! channels forced to another count than asked) gives EINVAL at
//! `hw_params` (alsa-lib 1.2.8; `aplay` fails the same way). The ladder
//! then tries the setup asked with periods twice and four times as long (a
//! rate plugin over a slave with a fixed period, such as JACK's, takes
//! only periods that convert to whole slave periods), then once more at
//! the device's own preference, where a plug has
//! nothing to convert unless its configuration forces it (a ttable always
//! does: that still fails, with an error naming the setup).
//!
//! Software parameters (start threshold, avail_min, timestamps) are set
//! from what was granted.

use core::fmt;
use std::ffi::CString;

use crate::audio::convert::Layout;
use alsa::pcm::{self, Frames, HwParams, PCM};
use alsa::{Direction, ValueOr};

use super::error::{errno, AlsaError};

/// Which way the samples flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// To the device (the receiver).
    Playback,
    /// From the device (the sender).
    Capture,
}

impl Stream {
    pub const fn name(self) -> &'static str {
        match self {
            Stream::Playback => "playback",
            Stream::Capture => "capture",
        }
    }

    /// The alsa-utils program that lists and tests such devices.
    pub const fn tool(self) -> &'static str {
        match self {
            Stream::Playback => "aplay",
            Stream::Capture => "arecord",
        }
    }

    fn direction(self) -> Direction {
        match self {
            Stream::Playback => Direction::Playback,
            Stream::Capture => Direction::Capture,
        }
    }
}

/// How frames reach the device's ring buffer (`--access rw|mmap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `snd_pcm_writei`/`readi`: alsa-lib copies from or to our buffer.
    ReadWrite,
    /// `snd_pcm_mmap_begin/commit`: we convert straight into the ring buffer.
    Mmap,
}

impl Access {
    pub const fn name(self) -> &'static str {
        match self {
            Access::ReadWrite => "rw",
            Access::Mmap => "mmap",
        }
    }

    fn to_alsa(self) -> pcm::Access {
        match self {
            Access::ReadWrite => pcm::Access::RWInterleaved,
            Access::Mmap => pcm::Access::MMapInterleaved,
        }
    }
}

/// Device sample formats this layer converts, all little endian.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleFormat {
    /// S16_LE: what most DACs and every plugin take; exact for 16-bit streams.
    S16,
    /// S32_LE: DACs that take only 32-bit containers.
    S32,
    /// FLOAT_LE: JACK and some plugin chains.
    F32,
    /// S24_3LE: 24 bits in 3 bytes (some USB DACs).
    S24_3,
}

impl SampleFormat {
    /// Preference order for negotiation: the cheapest exact format first.
    pub const PREFERENCE: [SampleFormat; 4] = [
        SampleFormat::S16,
        SampleFormat::S32,
        SampleFormat::F32,
        SampleFormat::S24_3,
    ];

    pub const fn bytes_per_sample(self) -> usize {
        match self {
            SampleFormat::S16 => 2,
            SampleFormat::S32 | SampleFormat::F32 => 4,
            SampleFormat::S24_3 => 3,
        }
    }

    /// The name ALSA uses (`aplay -f`, `/proc/asound/.../hw_params`).
    pub const fn alsa_name(self) -> &'static str {
        match self {
            SampleFormat::S16 => "S16_LE",
            SampleFormat::S32 => "S32_LE",
            SampleFormat::F32 => "FLOAT_LE",
            SampleFormat::S24_3 => "S24_3LE",
        }
    }

    /// The byte layout `audio::convert` writes for this format.
    pub const fn layout(self) -> Layout {
        match self {
            SampleFormat::S16 => Layout::S16Le,
            SampleFormat::S32 => Layout::S32Le,
            SampleFormat::F32 => Layout::F32Le,
            SampleFormat::S24_3 => Layout::S24_3Le,
        }
    }

    fn to_alsa(self) -> pcm::Format {
        match self {
            SampleFormat::S16 => pcm::Format::S16LE,
            SampleFormat::S32 => pcm::Format::S32LE,
            SampleFormat::F32 => pcm::Format::FloatLE,
            SampleFormat::S24_3 => pcm::Format::S243LE,
        }
    }
}

/// The rate asked when the caller leaves it to the device: what nearly
/// every DAC, USB device and sound server runs at natively.
pub const PREFERRED_RATE: u32 = 48_000;
/// The channel count asked when the caller leaves it to the device.
pub const PREFERRED_CHANNELS: u16 = 2;

/// What the caller asks of the device (`--device`, `--access`,
/// `--period-ms` converted to frames, `--buffer-periods`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// ALSA PCM name, e.g. "default", "hw:1,0", "plughw:1".
    pub device: String,
    pub access: Access,
    /// Frames per second wished for; `None`: the device's own preference
    /// (48000 where offered, else the nearest it has).
    pub rate: Option<u32>,
    /// Channels wished for; `None`: the device's own preference (2 where
    /// offered, else the nearest it has).
    pub channels: Option<u16>,
    /// Frames per period (at the rate asked, or at 48 kHz when the rate is
    /// left to the device; a device granting another rate keeps the count
    /// in frames): how much one write carries and how often the device
    /// wakes the thread.
    pub period_frames: u32,
    /// Periods in the device's ring buffer; the buffer is the device's share
    /// of the delay.
    pub buffer_periods: u32,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            device: "default".to_string(),
            access: Access::ReadWrite,
            rate: None,
            channels: None,
            // 10 ms at 48 kHz.
            period_frames: 480,
            buffer_periods: 4,
        }
    }
}

/// One complete hardware setup, as tried or as granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwSetup {
    pub access: Access,
    pub format: SampleFormat,
    pub rate: u32,
    pub channels: u16,
    pub period_frames: usize,
    pub buffer_frames: usize,
}

impl fmt::Display for HwSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} access, {}, {} Hz, {} channel(s), period {} frames, buffer {} frames",
            self.access.name(),
            self.format.alsa_name(),
            self.rate,
            self.channels,
            self.period_frames,
            self.buffer_frames
        )
    }
}

/// What the device actually gave, read back after `hw_params`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub device: String,
    pub access: Access,
    pub format: SampleFormat,
    pub rate: u32,
    pub channels: u16,
    pub period_frames: usize,
    pub buffer_frames: usize,
    /// Frames queued (playback) or asked (capture) before the device
    /// starts by itself.
    pub start_threshold: usize,
    /// True when the setup asked was refused at install time and this is
    /// the device's own preference instead (see the module comment).
    pub fell_back: bool,
}

impl fmt::Display for Negotiated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}': {}, start at {} frames{}",
            self.device,
            HwSetup {
                access: self.access,
                format: self.format,
                rate: self.rate,
                channels: self.channels,
                period_frames: self.period_frames,
                buffer_frames: self.buffer_frames,
            },
            self.start_threshold,
            if self.fell_back {
                " (the device's own rate and channels: it refused the setup asked)"
            } else {
                ""
            }
        )
    }
}

/// Opens `config.device` for `stream` and configures it (module comment);
/// `formats` is the caller's preference list. `nonblock` opens the PCM
/// nonblocking (the caller then waits with `snd_pcm_wait`).
pub(crate) fn open_pcm(
    config: &DeviceConfig,
    stream: Stream,
    formats: &[SampleFormat],
    nonblock: bool,
) -> Result<(PCM, Negotiated), AlsaError> {
    let device = config.device.clone();
    for (field, value) in [
        ("rate", config.rate.map_or(1, u64::from)),
        ("channels", config.channels.map_or(1, u64::from)),
        ("period_frames", u64::from(config.period_frames)),
        ("buffer_periods", u64::from(config.buffer_periods)),
    ] {
        if value == 0 {
            return Err(AlsaError::Config { field, value });
        }
    }
    let name = CString::new(device.as_str()).map_err(|_| AlsaError::Open {
        device: device.clone(),
        stream,
        errno: errno::EINVAL,
    })?;
    let open = || {
        PCM::open(&name, stream.direction(), nonblock).map_err(|e| AlsaError::Open {
            device: device.clone(),
            stream,
            errno: e.errno(),
        })
    };
    let mut pcm = open()?;

    let mut fell_back = false;
    if let Err(e) = install(&pcm, config, stream, formats, config.rate, config.channels) {
        let explicit = config.rate.is_some() || config.channels.is_some();
        if !explicit || !matches!(e, AlsaError::Install { .. }) {
            return Err(e);
        }
        // A rate plugin over a slave whose period is fixed (JACK: its
        // cycle) takes only periods that convert to whole slave periods:
        // 5 ms at 44.1 kHz over JACK's 256 frames at 48 kHz is refused at
        // install, 10.7 ms is taken (aplay's default period is long, so it
        // never meets this). Longer periods at the setup asked first.
        let mut installed = false;
        for factor in [2, 4] {
            let longer = DeviceConfig {
                period_frames: config.period_frames.saturating_mul(factor),
                ..config.clone()
            };
            drop(pcm);
            pcm = open()?;
            installed =
                install(&pcm, &longer, stream, formats, config.rate, config.channels).is_ok();
            if installed {
                break;
            }
        }
        // The chain refused the whole set (module comment): once more at
        // the device's own preference. On a freshly opened PCM, as a
        // precaution: plug had built part of its chain during the failed
        // hw_params, and a new handle starts from a known state. Failing
        // that, the error of the setup asked is the one to report.
        // The period keeps its length in time, not in frames: 80 frames
        // asked at 8 kHz are 480 at 48 kHz (kept at 80, a 1.7 ms period,
        // writes over pulse stalled for good in 2 runs of 3).
        if !installed {
            let asked_rate = u64::from(config.rate.unwrap_or(PREFERRED_RATE).max(1));
            let scaled = u64::from(config.period_frames) * u64::from(PREFERRED_RATE) / asked_rate;
            let preferred = DeviceConfig {
                period_frames: u32::try_from(scaled.max(1)).unwrap_or(u32::MAX),
                ..config.clone()
            };
            drop(pcm);
            pcm = open()?;
            install(&pcm, &preferred, stream, formats, None, None).map_err(|_| e)?;
            fell_back = true;
        }
    }
    let negotiated = read_back(&pcm, config, stream, fell_back)?;
    set_sw_params(&pcm, &negotiated)?;
    Ok((pcm, negotiated))
}

fn params(device: &str, step: &'static str) -> impl Fn(alsa::Error) -> AlsaError {
    let device = device.to_string();
    move |e: alsa::Error| AlsaError::Params {
        device: device.clone(),
        step,
        errno: e.errno(),
    }
}

/// Access and format on `hwp`; returns the format chosen.
fn choose(
    hwp: &HwParams<'_>,
    config: &DeviceConfig,
    stream: Stream,
    formats: &[SampleFormat],
) -> Result<SampleFormat, AlsaError> {
    hwp.set_access(config.access.to_alsa())
        .map_err(|e| AlsaError::Access {
            device: config.device.clone(),
            access: config.access,
            errno: e.errno(),
        })?;
    let format = formats
        .iter()
        .copied()
        .find(|f| hwp.test_format(f.to_alsa()).is_ok())
        .ok_or_else(|| AlsaError::Format {
            device: config.device.clone(),
            stream,
        })?;
    hwp.set_format(format.to_alsa())
        .map_err(|_| AlsaError::Format {
            device: config.device.clone(),
            stream,
        })?;
    Ok(format)
}

/// Sets every parameter in order on fresh hw params and installs them.
fn install(
    pcm: &PCM,
    config: &DeviceConfig,
    stream: Stream,
    formats: &[SampleFormat],
    rate: Option<u32>,
    channels: Option<u16>,
) -> Result<(), AlsaError> {
    let device = &config.device;
    // EINVAL here: the chain offers no configuration at all, e.g. a route
    // or rate plugin (they need mmap on their slave) over pulse (rw only).
    let hwp = HwParams::any(pcm).map_err(params(
        device,
        "finding any configuration (a route/rate plugin over a slave without mmap, \
         such as pulse, has none)",
    ))?;
    let format = choose(&hwp, config, stream, formats)?;
    let want_rate = rate.unwrap_or(PREFERRED_RATE);
    let rate_err = |e: alsa::Error| AlsaError::Rate {
        device: device.clone(),
        rate: want_rate,
        errno: e.errno(),
    };
    // "Near", never exact: the exact rate or count where the device has
    // it, else the closest it has (the caller converts), as the module
    // comment says.
    hwp.set_rate_near(want_rate, ValueOr::Nearest)
        .map_err(rate_err)?;
    let want_channels = u32::from(channels.unwrap_or(PREFERRED_CHANNELS));
    hwp.set_channels_near(want_channels)
        .map_err(|e| AlsaError::Channels {
            device: device.clone(),
            channels: channels.unwrap_or(PREFERRED_CHANNELS),
            errno: e.errno(),
        })?;
    let frames = |v: u32| Frames::from(i32::try_from(v).unwrap_or(i32::MAX));
    hwp.set_period_size_near(frames(config.period_frames), ValueOr::Nearest)
        .map_err(|e| AlsaError::Period {
            device: device.clone(),
            period_frames: config.period_frames,
            errno: e.errno(),
        })?;
    let period_got = hwp
        .get_period_size()
        .map_err(params(device, "reading the period size"))?;
    let want_buffer = config
        .buffer_periods
        .saturating_mul(u32::try_from(period_got.max(1)).unwrap_or(u32::MAX));
    hwp.set_buffer_size_near(frames(want_buffer))
        .map_err(|e| AlsaError::Buffer {
            device: device.clone(),
            buffer_frames: want_buffer,
            errno: e.errno(),
        })?;
    pcm.hw_params(&hwp).map_err(|e| AlsaError::Install {
        device: device.clone(),
        setup: HwSetup {
            access: config.access,
            format,
            rate: hwp.get_rate().unwrap_or(want_rate),
            channels: hwp
                .get_channels()
                .ok()
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(0),
            period_frames: usize::try_from(period_got).unwrap_or(0),
            buffer_frames: hwp
                .get_buffer_size()
                .ok()
                .and_then(|b| usize::try_from(b).ok())
                .unwrap_or(0),
        },
        errno: e.errno(),
    })
}

/// Reads back what was installed, not what we asked.
fn read_back(
    pcm: &PCM,
    config: &DeviceConfig,
    stream: Stream,
    fell_back: bool,
) -> Result<Negotiated, AlsaError> {
    let device = &config.device;
    let cur = pcm
        .hw_params_current()
        .map_err(params(device, "reading back hw params"))?;
    let format_got = cur
        .get_format()
        .map_err(params(device, "reading back the format"))?;
    let format = SampleFormat::PREFERENCE
        .into_iter()
        .find(|f| f.to_alsa() == format_got)
        .ok_or_else(|| AlsaError::Format {
            device: device.clone(),
            stream,
        })?;
    let rate = cur
        .get_rate()
        .map_err(params(device, "reading back the rate"))?;
    let channels = cur
        .get_channels()
        .map_err(params(device, "reading back the channels"))?;
    let channels = u16::try_from(channels).map_err(|_| AlsaError::Channels {
        device: device.clone(),
        channels: config.channels.unwrap_or(PREFERRED_CHANNELS),
        errno: errno::EINVAL,
    })?;
    let period = cur
        .get_period_size()
        .map_err(params(device, "reading back the period size"))?;
    let buffer = cur
        .get_buffer_size()
        .map_err(params(device, "reading back the buffer size"))?;
    let period_frames = usize::try_from(period).unwrap_or(0).max(1);
    let buffer_frames = usize::try_from(buffer).unwrap_or(0).max(1);
    let start_threshold = match stream {
        // Start as soon as one period is queued: the playout thread can
        // always produce frames (concealment fills gaps), so it tops the
        // buffer up right after; waiting for a full buffer would only add
        // start-up delay. After an underrun the same threshold restarts
        // the device with the first rewritten period.
        Stream::Playback => period_frames.min(buffer_frames),
        // Capture starts at the first read.
        Stream::Capture => 1,
    };
    Ok(Negotiated {
        device: device.clone(),
        access: config.access,
        format,
        rate,
        channels,
        period_frames,
        buffer_frames,
        start_threshold,
        fell_back,
    })
}

fn set_sw_params(pcm: &PCM, n: &Negotiated) -> Result<(), AlsaError> {
    let device = &n.device;
    let swp = pcm
        .sw_params_current()
        .map_err(params(device, "reading sw params"))?;
    let frames = |v: usize| Frames::from(i32::try_from(v).unwrap_or(i32::MAX));
    swp.set_start_threshold(frames(n.start_threshold))
        .map_err(params(device, "setting the start threshold"))?;
    // Wake the thread when a whole period fits (or is there): one write or
    // read per period.
    swp.set_avail_min(frames(n.period_frames))
        .map_err(params(device, "setting avail_min"))?;
    // Timestamps for clock estimation, on the monotonic clock the rest of
    // the program uses. Not every plugin keeps them: refusal is harmless,
    // `status()` then reports zero times.
    let _ = swp.set_tstamp_mode(true);
    let _ = swp.set_tstamp_type(pcm::TstampType::Monotonic);
    if let Err(e) = pcm.sw_params(&swp) {
        // Some plugins refuse the timestamp type: without it, then.
        let swp = pcm
            .sw_params_current()
            .map_err(params(device, "reading sw params"))?;
        swp.set_start_threshold(frames(n.start_threshold))
            .map_err(params(device, "setting the start threshold"))?;
        swp.set_avail_min(frames(n.period_frames))
            .map_err(params(device, "setting avail_min"))?;
        pcm.sw_params(&swp).map_err(|_| AlsaError::Params {
            device: device.clone(),
            step: "installing sw params",
            errno: e.errno(),
        })?;
    }
    Ok(())
}
