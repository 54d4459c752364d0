//! The ALSA output stage: the last stage of the receiver's data path.
//!
//! Input: interleaved `f32` frames in [-1, 1) at the negotiated rate and
//! channel count, one period at a time from the playout thread.
//! Output: those frames on an ALSA playback device, converted to the first
//! sample format the device accepts (S16_LE, S32_LE, FLOAT_LE, S24_3LE, in
//! that order of preference), in read/write or mmap access.
//!
//! Policy:
//! - `open` negotiates in order (access, format, channels, rate, period,
//!   buffer), each step with its own error naming the device and the refused
//!   value, reads back what it got into [`Negotiated`] and allocates the
//!   conversion buffer once. Where the device gives another rate or channel
//!   count than asked, the caller converts; this stage never resamples.
//! - `write` blocks until every frame is queued: the device is the playout
//!   clock. It never allocates and never hangs: the PCM is opened
//!   nonblocking and waits with a timeout, because alsa-lib's PulseAudio
//!   plugin blocks forever in a blocking write when the server hangs (a
//!   killed server gives EIO at once, a stopped one gives nothing).
//! - Recovery is a bounded ladder: EAGAIN waits (for at most the stall
//!   timeout); EPIPE (underrun) prepares and rewrites, `Ok(Underrun)`;
//!   ESTRPIPE (suspend) resumes with bounded retries, then prepares,
//!   `Ok(Resumed)`; anything else, a DISCONNECTED state or no progress for
//!   the stall timeout is `Err(DeviceLost)`: the caller closes the device and
//!   reopens it with backoff.

use alsa::pcm::{self, Frames, HwParams, State, PCM};
use alsa::{Direction, ValueOr};
use core::fmt;
use std::ffi::CString;

use crate::audio::convert::{to_device, Layout};
use crate::service::clock::monotonic_ns;

/// How frames reach the device's ring buffer (`--access rw|mmap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `snd_pcm_writei`: alsa-lib copies from our buffer.
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
}

/// Device sample formats this stage can write, in order of preference.
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

/// What the caller asks of the device (`--device`, `--access`,
/// `--period-ms` converted to frames, `--buffer-periods`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// ALSA PCM name, e.g. "default", "hw:1,0", "plughw:1".
    pub device: String,
    pub access: Access,
    /// Frames per second the stream would like.
    pub rate: u32,
    pub channels: u16,
    /// Frames per period: how much one write carries and how often the
    /// device wakes the playout thread.
    pub period_frames: u32,
    /// Periods in the device's ring buffer; the buffer is the device's share
    /// of the playout delay.
    pub buffer_periods: u32,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            device: "default".to_string(),
            access: Access::ReadWrite,
            rate: 48_000,
            channels: 2,
            // 10 ms at 48 kHz.
            period_frames: 480,
            buffer_periods: 4,
        }
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
}

/// A write that succeeded; how it went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// All frames queued without trouble.
    Written,
    /// The device had run dry (EPIPE); it was prepared again in place and
    /// all frames queued. The listener heard a gap.
    Underrun,
    /// The device had been suspended (ESTRPIPE); it was resumed (or
    /// prepared) in place and all frames queued.
    Resumed,
}

/// Failures of the output stage; each says what the operator should check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlsaError {
    /// A configuration value this stage cannot use at all.
    Config { field: &'static str, value: u64 },
    /// `snd_pcm_open` failed.
    Open { device: String, errno: i32 },
    /// The device refused the access type.
    Access {
        device: String,
        access: Access,
        errno: i32,
    },
    /// The device takes none of the sample formats we can write.
    Format { device: String },
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
    /// The device refused the period size.
    Period {
        device: String,
        period_frames: u32,
        errno: i32,
    },
    /// The device refused the buffer size.
    Buffer {
        device: String,
        buffer_frames: u32,
        errno: i32,
    },
    /// Installing or reading back hardware or software parameters failed.
    Params {
        device: String,
        step: &'static str,
        errno: i32,
    },
    /// The device stopped working mid-stream: unplugged, its sound server
    /// died or hung, or an error no in-place recovery covers. Close and
    /// reopen with backoff.
    DeviceLost {
        device: String,
        during: &'static str,
        errno: i32,
    },
}

fn errno_text(errno: i32) -> &'static str {
    nix::errno::Errno::from_raw(errno).desc()
}

impl fmt::Display for AlsaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlsaError::Config { field, value } => {
                write!(
                    f,
                    "ALSA output: {field} = {value} is not usable: it must be at least 1"
                )
            }
            AlsaError::Open { device, errno } => match *errno {
                libc_errno::EBUSY => write!(
                    f,
                    "device '{device}' is busy: another program is playing — stop it or use dmix"
                ),
                libc_errno::ENOENT | libc_errno::ENODEV | libc_errno::ENXIO => write!(
                    f,
                    "no such device '{device}' ({}): see aplay -l and aplay -L",
                    errno_text(*errno)
                ),
                _ => write!(
                    f,
                    "cannot open device '{device}': {} — check the name (aplay -L), that the \
                     card is present and, for pulse/jack devices, that the sound server runs",
                    errno_text(*errno)
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
            AlsaError::Format { device } => write!(
                f,
                "format not supported: device '{device}' takes none of S16_LE, S32_LE, \
                 FLOAT_LE, S24_3LE — use a plug device (plughw:...) in front of it"
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
                "device '{device}' refuses a period of {period_frames} frames ({}): \
                 try another --period-ms",
                errno_text(*errno)
            ),
            AlsaError::Buffer {
                device,
                buffer_frames,
                errno,
            } => write!(
                f,
                "device '{device}' refuses a buffer of {buffer_frames} frames ({}): \
                 try another --buffer-periods",
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

impl AlsaError {
    /// The device stopped making progress (its sound server hangs): closing
    /// it may block too, so the caller closes it in the background.
    pub fn is_hang(&self) -> bool {
        matches!(
            self,
            AlsaError::DeviceLost { errno, .. } if *errno == libc_errno::ETIMEDOUT
        )
    }
}

/// The errno values this stage acts on (the `alsa` crate reports positive
/// errno codes; nix's `Errno` is the same table).
mod libc_errno {
    use nix::errno::Errno;
    pub const EAGAIN: i32 = Errno::EAGAIN as i32;
    pub const EPIPE: i32 = Errno::EPIPE as i32;
    pub const ESTRPIPE: i32 = Errno::ESTRPIPE as i32;
    pub const EBUSY: i32 = Errno::EBUSY as i32;
    pub const ENOENT: i32 = Errno::ENOENT as i32;
    pub const ENODEV: i32 = Errno::ENODEV as i32;
    pub const ENXIO: i32 = Errno::ENXIO as i32;
    pub const EINVAL: i32 = Errno::EINVAL as i32;
    pub const ETIMEDOUT: i32 = Errno::ETIMEDOUT as i32;
}

/// Bounds of the recovery ladder. Every loop in `write` is capped by one.
/// Underruns in a row within one write before we call the device lost: one
/// is normal after a stall, a second means prepare does not help.
const MAX_UNDERRUNS_PER_WRITE: u32 = 4;
/// `snd_pcm_resume` answers EAGAIN while the hardware wakes up; give it
/// about a second (CamillaDSP uses the same order of magnitude).
const RESUME_RETRIES: u32 = 20;
const RESUME_RETRY_MS: u64 = 50;
/// No progress for this long means the device (or its server) hangs.
const STALL_TIMEOUT_MIN_MS: u64 = 1000;
/// Until a started stream has been seen consuming, allow longer: a
/// PulseAudio null sink was seen taking over a second to start playing a
/// new stream on a loaded machine.
const START_STALL_TIMEOUT_MS: u64 = 5000;

/// An open playback device with its conversion buffer.
pub struct AlsaOut {
    pcm: PCM,
    negotiated: Negotiated,
    /// Device-format bytes for rw writes; sized once in `open`.
    convert: Vec<u8>,
    bytes_per_frame: usize,
    start_threshold: usize,
    /// How long `write` waits without progress before declaring the device
    /// lost, in ms.
    stall_timeout_ms: u64,
    /// Longest single `snd_pcm_wait`: two periods. The PulseAudio plugin's
    /// poll descriptor does not always wake when room appears (its pointer
    /// moves only when asked), so we look again at least this often.
    wait_slice_ms: u64,
    /// The device has freed room since it was opened or last prepared.
    consuming: bool,
}

impl fmt::Debug for AlsaOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlsaOut")
            .field("negotiated", &self.negotiated)
            .finish()
    }
}

fn state_of(pcm: &PCM) -> Option<State> {
    // The crate's `state()` panics on a value it does not know; a wedged
    // plugin must not take the process down, so map the raw value here.
    let raw = pcm.state_raw();
    State::all().iter().copied().find(|s| *s as i32 == raw)
}

impl AlsaOut {
    /// Opens and configures the device; fully built or not at all.
    pub fn open(config: &DeviceConfig) -> Result<AlsaOut, AlsaError> {
        let device = config.device.clone();
        for (field, value) in [
            ("rate", u64::from(config.rate)),
            ("channels", u64::from(config.channels)),
            ("period_frames", u64::from(config.period_frames)),
            ("buffer_periods", u64::from(config.buffer_periods)),
        ] {
            if value == 0 {
                return Err(AlsaError::Config { field, value });
            }
        }
        let name = CString::new(device.as_str()).map_err(|_| AlsaError::Open {
            device: device.clone(),
            errno: libc_errno::EINVAL,
        })?;
        // Nonblocking: see the module comment (a hung PulseAudio server
        // would block a blocking write forever).
        let pcm = PCM::open(&name, Direction::Playback, true).map_err(|e| AlsaError::Open {
            device: device.clone(),
            errno: e.errno(),
        })?;

        let params = |step: &'static str| {
            let device = device.clone();
            move |e: alsa::Error| AlsaError::Params {
                device,
                step,
                errno: e.errno(),
            }
        };

        let (format, rate, channels, period_frames, buffer_frames) = {
            let hwp = HwParams::any(&pcm).map_err(params("reading hw params"))?;
            let alsa_access = match config.access {
                Access::ReadWrite => pcm::Access::RWInterleaved,
                Access::Mmap => pcm::Access::MMapInterleaved,
            };
            hwp.set_access(alsa_access).map_err(|e| AlsaError::Access {
                device: device.clone(),
                access: config.access,
                errno: e.errno(),
            })?;
            let format = SampleFormat::PREFERENCE
                .into_iter()
                .find(|f| hwp.test_format(f.to_alsa()).is_ok())
                .ok_or_else(|| AlsaError::Format {
                    device: device.clone(),
                })?;
            hwp.set_format(format.to_alsa())
                .map_err(|_| AlsaError::Format {
                    device: device.clone(),
                })?;
            let channels_err = |e: alsa::Error| AlsaError::Channels {
                device: device.clone(),
                channels: config.channels,
                errno: e.errno(),
            };
            let want_channels = u32::from(config.channels);
            if hwp.set_channels(want_channels).is_err() {
                hwp.set_channels_near(want_channels).map_err(channels_err)?;
            }
            hwp.set_rate_near(config.rate, ValueOr::Nearest)
                .map_err(|e| AlsaError::Rate {
                    device: device.clone(),
                    rate: config.rate,
                    errno: e.errno(),
                })?;
            // The period is asked in our frames; if the device's rate differs
            // the period keeps its length in frames, which is what the
            // caller sizes its buffers by.
            hwp.set_period_size_near(config.period_frames as Frames, ValueOr::Nearest)
                .map_err(|e| AlsaError::Period {
                    device: device.clone(),
                    period_frames: config.period_frames,
                    errno: e.errno(),
                })?;
            let period_got = hwp
                .get_period_size()
                .map_err(params("reading the period size"))?;
            let want_buffer = config
                .buffer_periods
                .saturating_mul(period_got.max(1) as u32);
            hwp.set_buffer_size_near(want_buffer as Frames)
                .map_err(|e| AlsaError::Buffer {
                    device: device.clone(),
                    buffer_frames: want_buffer,
                    errno: e.errno(),
                })?;
            pcm.hw_params(&hwp)
                .map_err(params("installing hw params"))?;

            // Read back what was installed, not what we asked.
            let cur = pcm
                .hw_params_current()
                .map_err(params("reading back hw params"))?;
            let format_got = cur
                .get_format()
                .map_err(params("reading back the format"))?;
            let format = SampleFormat::PREFERENCE
                .into_iter()
                .find(|f| f.to_alsa() == format_got)
                .unwrap_or(format);
            let rate = cur.get_rate().map_err(params("reading back the rate"))?;
            let channels = cur
                .get_channels()
                .map_err(params("reading back the channels"))?;
            let period = cur
                .get_period_size()
                .map_err(params("reading back the period size"))?;
            let buffer = cur
                .get_buffer_size()
                .map_err(params("reading back the buffer size"))?;
            (
                format,
                rate,
                channels,
                period.max(1) as usize,
                buffer.max(1) as usize,
            )
        };
        let channels = u16::try_from(channels).map_err(|_| AlsaError::Channels {
            device: device.clone(),
            channels: config.channels,
            errno: libc_errno::EINVAL,
        })?;

        // Start as soon as one period is queued: the playout thread can
        // always produce frames (concealment fills gaps), so it tops the
        // buffer up right after; waiting for a full buffer would only add
        // start-up delay. After an underrun the same threshold restarts the
        // device with the first rewritten period.
        let start_threshold = period_frames.min(buffer_frames);
        {
            let swp = pcm
                .sw_params_current()
                .map_err(params("reading sw params"))?;
            swp.set_start_threshold(start_threshold as Frames)
                .map_err(params("setting the start threshold"))?;
            // Wake the writer when a whole period fits: one write per period.
            swp.set_avail_min(period_frames as Frames)
                .map_err(params("setting avail_min"))?;
            pcm.sw_params(&swp)
                .map_err(params("installing sw params"))?;
        }

        let bytes_per_frame = format.bytes_per_sample() * usize::from(channels);
        let buffer_ms = (buffer_frames as u64 * 1000) / u64::from(rate.max(1));
        let negotiated = Negotiated {
            device,
            access: config.access,
            format,
            rate,
            channels,
            period_frames,
            buffer_frames,
        };
        log::info!(
            "alsa_out: '{}' opened: {} access, {}, {} Hz, {} channel(s), period {} frames, \
             buffer {} frames ({} ms)",
            negotiated.device,
            negotiated.access.name(),
            format.alsa_name(),
            rate,
            channels,
            period_frames,
            buffer_frames,
            buffer_ms
        );
        Ok(AlsaOut {
            pcm,
            convert: vec![0u8; period_frames * bytes_per_frame],
            bytes_per_frame,
            start_threshold,
            stall_timeout_ms: STALL_TIMEOUT_MIN_MS.max(2 * buffer_ms),
            consuming: false,
            wait_slice_ms: (2 * period_frames as u64 * 1000 / u64::from(rate.max(1))).clamp(1, 100),
            negotiated,
        })
    }

    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// Frames written but not yet played (`snd_pcm_delay`); `None` when the
    /// device cannot tell (not running, or in trouble).
    pub fn delay_frames(&self) -> Option<i64> {
        // Frames is c_long: i64 here, i32 on 32-bit Raspberry Pi OS.
        #[allow(clippy::useless_conversion)]
        self.pcm.delay().ok().map(i64::from)
    }

    /// Writes all frames (interleaved f32 in [-1, 1), negotiated channel
    /// count; a trailing partial frame is ignored), converting to the device
    /// format. Blocks on the device: that is the playout clock.
    pub fn write(&mut self, samples: &[f32]) -> Result<WriteOutcome, AlsaError> {
        let channels = usize::from(self.negotiated.channels);
        let frames = samples.len() / channels;
        let mut outcome = WriteOutcome::Written;
        let mut underruns = 0u32;
        let mut done = 0usize;
        let mut last_progress_ns = monotonic_ns();
        let mut stalled_ns = 0u64;
        let mut waited = false;
        while done < frames {
            if state_of(&self.pcm) == Some(State::Disconnected) {
                return Err(self.lost("write", libc_errno::ENODEV));
            }
            let rest = &samples[done * channels..frames * channels];
            let step = match self.negotiated.access {
                Access::ReadWrite => self.write_rw(rest),
                Access::Mmap => self.write_mmap(rest),
            };
            match step {
                Ok(0) => {}
                Ok(n) => {
                    done += n;
                    let now = monotonic_ns();
                    if waited {
                        // Room appeared after a wait: the device consumes.
                        if !self.consuming {
                            log::debug!(
                                "alsa_out: '{}' consuming after {} ms",
                                self.negotiated.device,
                                now.saturating_sub(last_progress_ns) / 1_000_000
                            );
                        }
                        self.consuming = true;
                    }
                    waited = false;
                    last_progress_ns = now;
                    stalled_ns = 0;
                    continue;
                }
                Err(e) => match e.errno() {
                    libc_errno::EAGAIN => {}
                    libc_errno::EPIPE => {
                        underruns += 1;
                        if underruns > MAX_UNDERRUNS_PER_WRITE {
                            return Err(self.lost("underrun recovery", libc_errno::EPIPE));
                        }
                        self.pcm
                            .prepare()
                            .map_err(|e| self.lost("prepare after underrun", e.errno()))?;
                        self.consuming = false;
                        if outcome == WriteOutcome::Written {
                            outcome = WriteOutcome::Underrun;
                        }
                        last_progress_ns = monotonic_ns();
                        stalled_ns = 0;
                        continue;
                    }
                    libc_errno::ESTRPIPE => {
                        self.resume()?;
                        self.consuming = false;
                        outcome = WriteOutcome::Resumed;
                        last_progress_ns = monotonic_ns();
                        stalled_ns = 0;
                        continue;
                    }
                    errno => return Err(self.lost("write", errno)),
                },
            }
            // Nothing fits now: wait for room, bounded.
            let stall_timeout_ms = if self.consuming {
                self.stall_timeout_ms
            } else {
                START_STALL_TIMEOUT_MS
            };
            // Stalled time is counted in wait slices, each at most a slice
            // long: time this process spent stopped (SIGSTOP, a suspended
            // VM) is not the device's fault and must not count.
            let waited_ms = stalled_ns / 1_000_000;
            if waited_ms >= stall_timeout_ms {
                return Err(self.lost("write (no progress)", libc_errno::ETIMEDOUT));
            }
            let timeout = (stall_timeout_ms - waited_ms).min(self.wait_slice_ms) as u32;
            waited = true;
            let before_wait = monotonic_ns();
            let waited_result = self.pcm.wait(Some(timeout));
            stalled_ns += monotonic_ns()
                .saturating_sub(before_wait)
                .min(u64::from(timeout) * 1_000_000 + 1_000_000);
            match waited_result {
                Ok(_) => {}
                // The next write reports and recovers underrun and suspend.
                Err(e)
                    if matches!(
                        e.errno(),
                        libc_errno::EPIPE | libc_errno::ESTRPIPE | libc_errno::EAGAIN
                    ) => {}
                Err(e) => return Err(self.lost("wait", e.errno())),
            }
        }
        Ok(outcome)
    }

    /// One `writei` of up to one conversion buffer; frames written.
    fn write_rw(&mut self, samples: &[f32]) -> alsa::Result<usize> {
        let channels = usize::from(self.negotiated.channels);
        let frames = (samples.len() / channels).min(self.convert.len() / self.bytes_per_frame);
        let bytes = frames * self.bytes_per_frame;
        let Some(out) = self.convert.get_mut(..bytes) else {
            return Ok(0);
        };
        to_device(
            self.negotiated.format.layout(),
            &samples[..frames * channels],
            out,
        );
        self.pcm.io_bytes().writei(out)
    }

    /// Converts straight into the ring buffer; frames committed.
    fn write_mmap(&mut self, samples: &[f32]) -> alsa::Result<usize> {
        let channels = usize::from(self.negotiated.channels);
        let want = samples.len() / channels;
        let avail = self.pcm.avail_update()?;
        let avail = usize::try_from(avail).unwrap_or(0);
        if avail == 0 {
            self.start_if_prepared()?;
            return Err(alsa::Error::new("snd_pcm_avail_update", libc_errno::EAGAIN));
        }
        let format = self.negotiated.format;
        let bpf = self.bytes_per_frame;
        let n = self.pcm.io_bytes().mmap(want.min(avail), |area| {
            let frames = (area.len() / bpf).min(want);
            to_device(
                format.layout(),
                &samples[..frames * channels],
                &mut area[..frames * bpf],
            );
            frames
        })?;
        // alsa-lib's mmap_commit does not start the stream (only its
        // read/write paths check the start threshold), so we do.
        let queued = self
            .negotiated
            .buffer_frames
            .saturating_sub(usize::try_from(self.pcm.avail_update().unwrap_or(0)).unwrap_or(0));
        if queued >= self.start_threshold {
            self.start_if_prepared()?;
        }
        Ok(n)
    }

    fn start_if_prepared(&self) -> alsa::Result<()> {
        if state_of(&self.pcm) == Some(State::Prepared) {
            self.pcm.start()?;
        }
        Ok(())
    }

    /// ESTRPIPE: resume with bounded retries, then prepare.
    fn resume(&self) -> Result<(), AlsaError> {
        for _ in 0..RESUME_RETRIES {
            match self.pcm.resume() {
                Ok(()) => return Ok(()),
                Err(e) if e.errno() == libc_errno::EAGAIN => {
                    std::thread::sleep(std::time::Duration::from_millis(RESUME_RETRY_MS));
                }
                // The device cannot resume (ENOSYS): prepare instead.
                Err(_) => break,
            }
        }
        self.pcm
            .prepare()
            .map_err(|e| self.lost("prepare after suspend", e.errno()))
    }

    fn lost(&self, during: &'static str, errno: i32) -> AlsaError {
        AlsaError::DeviceLost {
            device: self.negotiated.device.clone(),
            during,
            errno,
        }
    }

    /// Plays out what is queued and stops, waiting at most the buffer's
    /// length plus the stall timeout. Errors here are of no use to the
    /// caller (it is closing), so they end the drain quietly.
    pub fn drain(&mut self) {
        if self.start_if_prepared().is_err() {
            return;
        }
        let deadline = monotonic_ns() + self.stall_timeout_ms * 2_000_000;
        // Nonblocking mode: snd_pcm_drain returns EAGAIN and plays on; poll
        // the state until it leaves DRAINING.
        loop {
            match self.pcm.drain() {
                Ok(()) => return,
                Err(e) if e.errno() == libc_errno::EAGAIN => {}
                Err(_) => return,
            }
            if state_of(&self.pcm) != Some(State::Draining) || monotonic_ns() > deadline {
                return;
            }
            let _ = self.pcm.wait(Some(50));
            if state_of(&self.pcm) != Some(State::Draining) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Drains and closes the device.
    pub fn close(mut self) {
        self.drain();
    }

    /// Closes without draining, on a thread of its own, and returns at
    /// once. For a device reported lost: closing a PulseAudio PCM whose
    /// server hangs blocks in the plugin until its 30 s timeout (seen with
    /// a stopped server), which the playout thread must not wait for.
    pub fn close_detached(self) -> Option<std::thread::JoinHandle<()>> {
        let pcm = self.pcm;
        let spawned = std::thread::Builder::new()
            .name("alsa-close".into())
            .spawn(move || drop(pcm));
        match spawned {
            Ok(handle) => Some(handle),
            Err(e) => {
                // The closure, and the handle with it, was dropped: this
                // thread has closed it after all.
                log::warn!("alsa_out: could not close the lost device in the background: {e}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_period_is_refused_before_opening() {
        let config = DeviceConfig {
            period_frames: 0,
            ..DeviceConfig::default()
        };
        let err = AlsaOut::open(&config).unwrap_err();
        assert_eq!(
            err,
            AlsaError::Config {
                field: "period_frames",
                value: 0
            }
        );
        assert!(err.to_string().contains("period_frames"));
    }

    #[test]
    fn busy_and_missing_devices_say_what_to_do() {
        let busy = AlsaError::Open {
            device: "hw:1".into(),
            errno: libc_errno::EBUSY,
        };
        assert!(busy.to_string().contains("device 'hw:1' is busy"), "{busy}");
        assert!(busy.to_string().contains("dmix"));
        let missing = AlsaError::Open {
            device: "hw:5".into(),
            errno: libc_errno::ENOENT,
        };
        assert!(
            missing.to_string().contains("no such device 'hw:5'"),
            "{missing}"
        );
        assert!(missing.to_string().contains("aplay -l"));
    }
}
