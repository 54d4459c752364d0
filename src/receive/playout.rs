//! Playout: the realtime stage. Input: packets from the net thread's SPSC
//! queue. Output: one device period at a time to `alsa_out`.
//!
//! `Engine` is the pure part (tested in simulated time): it feeds packets
//! to the jitter buffer and renders exactly one device period per call,
//! in this order: jitter buffer (reordering, duplicates, late packets are
//! handled there) → i16 to f32 → concealer (missing frames: pitch-period
//! repetition fading over 60 ms; real audio after a gap is merged back) →
//! stretcher (reaches a new target delay without gaps) → resampler (stream
//! rate to device rate, and the sender's clock drift) → channel map.
//! The delay controller measures the jitter-buffer depth every period and
//! sets the resampler's drift and the stretcher's requests; with
//! `--latency auto` the delay estimator sets the target from the measured
//! arrival jitter.
//!
//! `run` is the thread: realtime priority, locked memory, the device
//! ladder (open, write, recover, reopen with backoff while packets keep
//! being received), statistics published as atomics, events to the main
//! thread through a second SPSC queue. It never logs, never blocks on a
//! lock and never allocates in its loop.

use crate::alsa::playback::{Access, AlsaError, AlsaOut, DeviceConfig, Negotiated, WriteOutcome};
use crate::audio::format::{StreamFormat, MAX_CHANNELS, MAX_RATE};
use crate::audio::resample::Resampler;
use crate::receive::conceal::Concealer;
use crate::receive::delay::{DelayConfig, DelayEstimator};
use crate::receive::drift::{ControllerConfig, ControllerError, DelayController};
use crate::receive::jitter::{JitterBuffer, JitterConfig, PushOutcome, ReadStatus, StreamState};
use crate::receive::stats::PlayoutStats;
use crate::receive::stretch::Stretcher;
use crate::rtp::packet::Packet;
use core::fmt;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

/// Capacity of the packet queue between the net and playout threads
/// (heapless keeps one slot free). 128 packets cover 2.5 s of 20 ms ptime:
/// a hardware device never blocks the playout thread that long, but a
/// sound server (PulseAudio, PipeWire as "default") can take a second or
/// two to start a stream when the device is (re)opened, and packets must
/// not be lost meanwhile.
pub const PACKET_QUEUE: usize = 128;
/// Capacity of the event queue from the playout thread to the main thread.
pub const EVENT_QUEUE: usize = 32;

pub type PacketQueue = heapless::spsc::Queue<Packet, PACKET_QUEUE>;
pub type EventQueue = heapless::spsc::Queue<Event, EVENT_QUEUE>;

/// How the playout delay target is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Latency {
    /// `--latency-ms N`: a fixed target.
    Fixed { ms: u32 },
    /// `--latency auto`: from the measured arrival jitter, within bounds.
    Auto { min_ms: u32, max_ms: u32 },
}

/// The device's rate and channels: follow each stream (reopening the
/// device when a stream of another format starts, so that a device that
/// takes the stream's format plays it bit-exact), or fixed by the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceFormat {
    FollowStream {
        initial_rate: u32,
        initial_channels: u16,
    },
    Fixed {
        rate: u32,
        channels: u16,
    },
}

#[derive(Clone, Debug)]
pub struct PlayoutConfig {
    pub latency: Latency,
    /// Follow the sender's clock (resampler drift) and reach target
    /// changes by time-stretching. Off: a plain fixed-delay buffer (for
    /// senders locked to the same clock, and for bit-exact tests).
    pub clock_follow: bool,
    /// No packet for this long: the stream is lost (fade out, log once).
    pub stream_lost_ms: u32,
    pub device: String,
    pub access: Access,
    pub device_format: DeviceFormat,
    pub period_ms: u32,
    pub buffer_periods: u32,
    /// SCHED_FIFO priority for the playout thread; 0 leaves it normal.
    pub rt_priority: i32,
    pub lock_memory: bool,
    /// Highest stream rate and channel count the payload map can carry.
    pub max_rate: u32,
    pub max_channels: u16,
}

impl Default for PlayoutConfig {
    fn default() -> Self {
        PlayoutConfig {
            latency: Latency::Auto {
                min_ms: 5,
                max_ms: 300,
            },
            clock_follow: true,
            stream_lost_ms: 500,
            device: "default".into(),
            access: Access::ReadWrite,
            device_format: DeviceFormat::FollowStream {
                initial_rate: 48_000,
                initial_channels: 2,
            },
            period_ms: 5,
            buffer_periods: 4,
            rt_priority: 70,
            lock_memory: true,
            max_rate: 48_000,
            max_channels: 2,
        }
    }
}

impl PlayoutConfig {
    /// The ceiling on the buffered delay: a headroom above the target
    /// (with `--latency auto` the engine moves it with the target).
    fn max_delay_ms(&self) -> u32 {
        let target = self.initial_target_ms();
        target + target.max(HEADROOM_MS as u32)
    }

    fn capacity_ms(&self) -> u32 {
        match self.latency {
            Latency::Fixed { ms } => 2 * ms + 2 * HEADROOM_MS as u32,
            Latency::Auto { max_ms, .. } => 2 * max_ms + 2 * HEADROOM_MS as u32,
        }
    }

    fn initial_target_ms(&self) -> u32 {
        match self.latency {
            Latency::Fixed { ms } => ms,
            // Start a little above the floor: the estimator lowers or
            // raises it once packets have shown the network's jitter.
            Latency::Auto { min_ms, max_ms } => (min_ms.max(10)).min(max_ms),
        }
    }
}

/// Failures building the engine: configuration out of range.
#[derive(Debug)]
pub enum PlayoutError {
    Jitter(crate::receive::jitter::JitterError),
    Conceal(crate::receive::conceal::ConcealError),
    Stretch(crate::receive::stretch::StretchError),
    Resample(crate::audio::resample::ResampleError),
    Delay(crate::receive::delay::DelayError),
    Controller(ControllerError),
}

impl fmt::Display for PlayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlayoutError::Jitter(e) => write!(f, "jitter buffer: {e}"),
            PlayoutError::Conceal(e) => write!(f, "concealment: {e}"),
            PlayoutError::Stretch(e) => write!(f, "time-stretcher: {e}"),
            PlayoutError::Resample(e) => write!(f, "resampler: {e}"),
            PlayoutError::Delay(e) => write!(f, "delay estimator: {e}"),
            PlayoutError::Controller(e) => write!(f, "delay controller: {e}"),
        }
    }
}

impl std::error::Error for PlayoutError {}

/// What the playout thread tells the main thread (which logs it).
#[derive(Debug)]
pub enum Event {
    RealtimeRefused(crate::service::sched::SchedError),
    MemoryLockRefused(crate::service::sched::SchedError),
    DeviceOpened(Negotiated),
    DeviceOpenFailed(AlsaError),
    DeviceLost(AlsaError),
    /// The device is closed on purpose, to be opened again at once.
    Reopening(&'static str),
    Underrun,
    Resumed,
    StreamStarted {
        ssrc: u32,
        format: StreamFormat,
    },
    NewStream {
        previous_ssrc: u32,
        ssrc: u32,
        format: StreamFormat,
    },
    StreamLost,
    Resync,
}

/// Least headroom between the target delay and the delay at which audio
/// is dropped (see `PlayoutConfig::max_delay_ms`).
const HEADROOM_MS: f64 = 40.0;

/// Largest period the scratch buffers are sized for.
const MAX_PERIOD_MS: u32 = 100;

/// The pure playout chain; one call to `render` makes one device period.
pub struct Engine {
    jitter: JitterBuffer,
    concealer: Concealer,
    stretcher: Stretcher,
    /// Built for the current stream and device format (rebuilt only when
    /// either changes: a new sender of another format, or a reopen).
    resampler: Option<Resampler>,
    max_frames: usize,
    delay: DelayEstimator,
    controller: DelayController,
    latency: Latency,
    clock_follow: bool,
    /// Format the downstream stages are set up for.
    format: Option<StreamFormat>,
    device_rate: u32,
    device_channels: usize,
    /// Audio came out since the last silence: an Idle run fades out.
    sounding: bool,
    /// Timestamped packets of this stream fed to the delay estimator.
    timed_packets: u64,
    /// The playout delay margin in ms (see `apply_target`).
    margin_ms: f64,
    /// The rate the jitter buffer was sized for (its frame unit before the
    /// first stream).
    jitter_max_rate: u32,
    samples_i16: Vec<i16>,
    stream_in: Vec<f32>,
    stretched: Vec<f32>,
    resampled: Vec<f32>,
    metrics: EngineMetrics,
}

#[derive(Default, Debug, Clone, PartialEq)]
pub struct EngineMetrics {
    pub concealed_frames: u64,
    pub stretched_frames: u64,
    /// The sender's clock error as estimated (the controller's integral).
    pub drift_ppm: f64,
    /// The ratio correction applied now (drift plus delay correction).
    pub applied_ppm: f64,
    pub target_frames: usize,
}

impl Engine {
    pub fn new(config: &PlayoutConfig) -> Result<Engine, PlayoutError> {
        let max_rate = config.max_rate.clamp(8000, MAX_RATE);
        let max_channels = config.max_channels.clamp(1, MAX_CHANNELS) as usize;
        let jitter = JitterBuffer::new(&JitterConfig {
            capacity_ms: config.capacity_ms(),
            target_delay_ms: config.initial_target_ms(),
            max_delay_ms: config.max_delay_ms(),
            stream_lost_ms: config.stream_lost_ms,
            max_rate,
            max_channels: max_channels as u16,
        })
        .map_err(PlayoutError::Jitter)?;
        // Sized for the largest period at the highest rate either side
        // could run at, with room for stretching and resampling ratios.
        let period_ms = config.period_ms.clamp(1, MAX_PERIOD_MS);
        let max_frames = (MAX_RATE as usize * period_ms as usize / 1000) * 2 + 256;
        let (min_ms, max_ms) = match config.latency {
            Latency::Fixed { ms } => (ms, ms),
            Latency::Auto { min_ms, max_ms } => (min_ms, max_ms),
        };
        Ok(Engine {
            jitter,
            concealer: Concealer::new(max_channels, max_rate).map_err(PlayoutError::Conceal)?,
            stretcher: Stretcher::new(max_channels, max_rate, max_frames)
                .map_err(PlayoutError::Stretch)?,
            resampler: None,
            max_frames,
            delay: DelayEstimator::new(&DelayConfig {
                min_ms: min_ms as f64,
                max_ms: max_ms.max(min_ms + 1) as f64,
                initial_ms: config.initial_target_ms() as f64,
                ..DelayConfig::default()
            })
            .map_err(PlayoutError::Delay)?,
            controller: DelayController::new(&controller_config(48_000))
                .map_err(PlayoutError::Controller)?,
            latency: config.latency,
            clock_follow: config.clock_follow,
            format: None,
            device_rate: 0,
            device_channels: 0,
            sounding: false,
            timed_packets: 0,
            margin_ms: config.initial_target_ms() as f64,
            jitter_max_rate: max_rate,
            samples_i16: vec![0; max_frames * max_channels],
            stream_in: vec![0.0; max_frames * max_channels],
            stretched: vec![0.0; max_frames * max_channels],
            resampled: vec![0.0; max_frames * max_channels],
            metrics: EngineMetrics::default(),
        })
    }

    pub fn push(&mut self, packet: &Packet) -> PushOutcome {
        // Before playing starts the level must count the packet size,
        // known only now, so the buffer does not start one packet early.
        if self.jitter.state() != StreamState::Playing {
            self.apply_target(packet.format.rate, packet.frames());
        }
        let outcome = self.jitter.push(packet);
        if matches!(outcome, PushOutcome::NewStream { .. } | PushOutcome::Resync) {
            self.delay.reset();
        }
        if matches!(outcome, PushOutcome::NewStream { .. } | PushOutcome::Resync) {
            self.timed_packets = 0;
        }
        if matches!(self.latency, Latency::Auto { .. }) && !packet.sequential {
            self.timed_packets += 1;
            self.delay.on_packet(
                packet.arrival_ns,
                packet.timestamp as u64,
                packet.format.rate,
            );
        }
        outcome
    }

    pub fn jitter(&self) -> &JitterBuffer {
        &self.jitter
    }

    pub fn metrics(&self) -> &EngineMetrics {
        &self.metrics
    }

    /// The playout delay this stage holds, in stream frames: what waits in
    /// the jitter buffer plus what the stretcher and resampler hold back.
    /// The delay controller keeps it at the target; the device's own delay
    /// comes on top (constant in blocking mode, reported apart).
    pub fn buffered_delay_frames(&self) -> f64 {
        match &self.resampler {
            Some(r) => buffered_frames(&self.jitter, &self.stretcher, r, self.device_rate),
            None => self.jitter.depth_frames() as f64,
        }
    }

    /// The device's format changed (opened or reopened).
    pub fn set_device(&mut self, rate: u32, channels: u16) {
        if self.device_rate != rate || self.device_channels != channels as usize {
            self.device_rate = rate;
            self.device_channels = channels as usize;
            self.format = None;
        }
    }

    /// Renders one period of interleaved f32 frames at the device's rate
    /// and channel count into `out`.
    pub fn render(&mut self, out: &mut [f32], now_ns: u64) {
        let dev_ch = self.device_channels.max(1);
        let out_frames = (out.len() / dev_ch).min(self.max_frames);
        let Some(format) = self.jitter.format() else {
            // No stream yet: nothing to decode; still let the buffer see
            // the clock so it can judge a lost stream.
            out.fill(0.0);
            return;
        };
        if self.format != Some(format) {
            self.configure(format);
        }
        let ch = format.channels as usize;
        let Some(resampler) = self.resampler.as_ref() else {
            out.fill(0.0);
            return;
        };
        let mid_frames = resampler.input_needed(out_frames).min(self.max_frames);
        let mut in_frames = self.stretcher.input_needed(mid_frames).min(self.max_frames);
        // The stretcher's look-ahead must come from audio that has
        // arrived: reading ahead of it would turn frames still on their
        // way into concealment (and the packets, arriving, into late
        // ones). Without room, the stretch waits for a later period.
        if in_frames > mid_frames
            && self.jitter.state() == StreamState::Playing
            && in_frames > self.jitter.depth_frames()
        {
            self.stretcher.cancel();
            in_frames = self.stretcher.input_needed(mid_frames).min(self.max_frames);
        }
        self.fill_from_jitter(in_frames, ch, now_ns);
        let (_, stretched) = self.stretcher.process(
            &self.stream_in[..in_frames * ch],
            &mut self.stretched[..mid_frames * ch],
        );
        let mut produced = 0;
        if let Some(resampler) = self.resampler.as_mut() {
            let mut consumed = 0;
            // The resampler takes what its history has room for; loop so
            // every stretched frame is used this period.
            while produced < out_frames {
                let (c, p) = resampler.process(
                    &self.stretched[consumed * ch..stretched * ch],
                    &mut self.resampled[produced * ch..out_frames * ch],
                );
                consumed += c;
                produced += p;
                if c == 0 && p == 0 {
                    break;
                }
            }
        }
        // Rounding at a ratio change can leave the period a frame short:
        // hold the last frame rather than leave a hole.
        let period = &mut self.resampled[..out_frames * ch];
        if produced == 0 {
            period.fill(0.0);
        } else if produced < out_frames {
            let (filled, rest) = period.split_at_mut(produced * ch);
            let last = &filled[(produced - 1) * ch..];
            for frame in rest.chunks_exact_mut(ch) {
                frame.copy_from_slice(last);
            }
        }
        map_channels(period, ch, &mut out[..out_frames * dev_ch], dev_ch);
        self.control(format, out_frames);
    }

    /// Sets the chain up for a new stream format or device format. The
    /// resampler is rebuilt (the one allocation outside start-up: it
    /// happens when a sender of another rate or channel count starts, or
    /// the device is reopened at another rate, never in a steady stream).
    fn configure(&mut self, format: StreamFormat) {
        let ch = format.channels as usize;
        self.concealer.set_format(ch, format.rate);
        self.stretcher.set_format(ch, format.rate);
        let device_rate = if self.device_rate == 0 {
            format.rate
        } else {
            self.device_rate
        };
        self.resampler = Resampler::new(ch, format.rate, device_rate, self.max_frames).ok();
        // The controller counts in stream frames; it holds no buffers, so
        // rebuilding it for the new rate allocates nothing.
        match DelayController::new(&controller_config(format.rate)) {
            Ok(c) => self.controller = c,
            Err(_) => self.controller.reset(),
        }
        self.sounding = false;
        self.format = Some(format);
    }

    fn fill_from_jitter(&mut self, frames: usize, ch: usize, now_ns: u64) {
        let mut done = 0;
        while done < frames {
            let want = frames - done;
            let status = self.jitter.read(&mut self.samples_i16[..want * ch], now_ns);
            let n = status.frames().min(want);
            if n == 0 {
                // Nothing came back: the rest is silence (or the fade of
                // what was playing), never a spin.
                self.fade_or_silence(done, frames, ch);
                return;
            }
            let seg = done * ch..(done + n) * ch;
            match status {
                ReadStatus::Audio(_) => {
                    if !self.sounding {
                        // Audio after silence starts clean: no fade-in,
                        // the first frame exactly as sent.
                        self.concealer.reset();
                        self.sounding = true;
                    }
                    for (dst, &s) in self.stream_in[seg.clone()]
                        .iter_mut()
                        .zip(&self.samples_i16[..n * ch])
                    {
                        *dst = s as f32 / 32768.0;
                    }
                    self.concealer.audio(&mut self.stream_in[seg]);
                }
                ReadStatus::Missing(_) => {
                    // Counted while the concealment sounds: a stream that
                    // stopped fades within 60 ms, then waits in silence
                    // until it is declared lost; that wait hides nothing.
                    if !self.concealer.is_silent() {
                        self.metrics.concealed_frames += n as u64;
                    }
                    self.concealer.conceal(&mut self.stream_in[seg]);
                }
                ReadStatus::Idle(_) => self.fade_or_silence(done, done + n, ch),
            }
            done += n;
        }
    }

    /// Idle frames (stream ended, lost, or a talkspurt's silence): what
    /// was playing fades out through the concealer, then exact silence.
    fn fade_or_silence(&mut self, from: usize, to: usize, ch: usize) {
        let seg = &mut self.stream_in[from * ch..to * ch];
        if self.sounding && !self.concealer.is_silent() {
            self.concealer.conceal(seg);
        } else {
            self.sounding = false;
            seg.fill(0.0);
        }
    }

    /// Sets the jitter buffer's levels from the playout delay margin: the
    /// fixed `--latency-ms`, or with `--latency auto` the estimate from the
    /// measured arrival jitter (headerless streams carry no timestamps to
    /// measure with and keep the initial margin). The buffer starts
    /// playing at margin + one packet, so that every frame waits at least
    /// the margin: the level then saws between margin + packet (a packet
    /// just arrived) and the margin (the next one is due).
    fn apply_target(&mut self, rate: u32, packet_frames: usize) {
        if let (Latency::Auto { .. }, true) = (self.latency, self.timed_packets > 0) {
            self.margin_ms = self.delay.target_ms();
        }
        let packet_ms = packet_frames as f64 * 1000.0 / rate.max(1) as f64;
        // Headroom above the level absorbs a burst before the overflow
        // policy drops audio; it also bounds the delay of a sender that
        // runs faster than real time.
        let level_ms = self.margin_ms + packet_ms;
        let headroom_ms = self.margin_ms.max(HEADROOM_MS);
        self.jitter
            .set_max_delay_ms((level_ms + headroom_ms).ceil() as u32);
        // The buffer counts its target in frames of its current stream, or
        // of its largest rate before the first stream has set it up.
        let basis = self
            .jitter
            .format()
            .map_or(self.jitter_max_rate, |f| f.rate);
        self.jitter
            .set_target_delay_frames((level_ms * basis as f64 / 1000.0).round() as usize);
    }

    /// The mean delay the controller holds, in stream frames: the margin
    /// plus half a packet (the middle of the saw).
    pub fn target_delay_frames(&self) -> f64 {
        self.jitter.target_delay_frames() as f64 - self.jitter.packet_frames() as f64 / 2.0
    }

    fn control(&mut self, format: StreamFormat, out_frames: usize) {
        self.apply_target(format.rate, self.jitter.packet_frames());
        self.metrics.target_frames = self.target_delay_frames().max(0.0) as usize;
        if !self.clock_follow || self.jitter.state() != StreamState::Playing {
            return;
        }
        let target = self.target_delay_frames();
        let Some(resampler) = self.resampler.as_mut() else {
            return;
        };
        let measured = buffered_frames(&self.jitter, &self.stretcher, resampler, self.device_rate);
        let period = out_frames * format.rate as usize / self.device_rate.max(1) as usize;
        // A stretch may start only with its look-ahead already here:
        // shortening must leave the jitter margin intact behind it;
        // lengthening (the delay is short of the target) at least must
        // not run the buffer dry.
        let depth = self.jitter.depth_frames();
        let look_ahead = self.stretcher.look_ahead(period.max(1)) + period;
        let margin_frames = (self.margin_ms * format.rate as f64 / 1000.0) as usize;
        self.controller.allow_stretch(
            self.stretcher.pending() != 0 || depth >= look_ahead + margin_frames,
            self.stretcher.pending() != 0 || depth >= look_ahead,
        );
        let control = self.controller.update(measured, target, period.max(1));
        resampler.set_drift_ppm(control.drift_ppm);
        self.metrics.applied_ppm = control.drift_ppm;
        // A new request only once the last is done (requests add up), and
        // for the whole error at once: the stretcher spreads it at its own
        // bounded rate (≤ 8 %), where the controller's per-period share
        // would leave it waiting for a segment long enough to cut.
        if control.stretch_frames != 0 && self.stretcher.pending() == 0 {
            let tolerance = format.rate as f64 / 1000.0;
            let whole = ((measured - target).abs() - tolerance).max(0.0) as isize;
            let frames = control.stretch_frames.signum() * whole.max(control.stretch_frames.abs());
            self.stretcher.request(frames);
            self.metrics.stretched_frames += frames.unsigned_abs() as u64;
        }
        self.metrics.drift_ppm = self.controller.drift_ppm();
    }
}

/// The delay controller as playout uses it: the resampler's whole drift
/// range (±5000 ppm, a pitch glide under 9 cents) so that the delay can
/// move at 5 ms/s where there is no room to stretch.
fn controller_config(rate: u32) -> ControllerConfig {
    ControllerConfig {
        rate,
        max_ppm: crate::audio::resample::MAX_DRIFT_PPM,
        ..ControllerConfig::default()
    }
}

fn buffered_frames(
    jitter: &JitterBuffer,
    stretcher: &Stretcher,
    resampler: &Resampler,
    device_rate: u32,
) -> f64 {
    let rate = jitter.format().map_or(1, |f| f.rate) as f64;
    // The resampler reports its look-ahead in output (device) frames.
    let resampler_frames = resampler.latency_frames() * rate / device_rate.max(1) as f64;
    jitter.depth_frames() as f64 + stretcher.buffered() as f64 + resampler_frames
}

/// Maps interleaved frames from `in_ch` to `out_ch` channels: equal counts
/// copy; mono is duplicated to every output; to mono the channels are
/// averaged; otherwise channels are taken in order and missing ones are
/// silent.
pub fn map_channels(input: &[f32], in_ch: usize, out: &mut [f32], out_ch: usize) {
    if in_ch == out_ch {
        out[..input.len()].copy_from_slice(input);
        return;
    }
    for (src, dst) in input.chunks_exact(in_ch).zip(out.chunks_exact_mut(out_ch)) {
        if in_ch == 1 {
            dst.fill(src[0]);
        } else if out_ch == 1 {
            dst[0] = src.iter().sum::<f32>() / in_ch as f32;
        } else {
            for (i, d) in dst.iter_mut().enumerate() {
                *d = src.get(i).copied().unwrap_or(0.0);
            }
        }
    }
}

/// Everything the playout thread owns.
pub struct PlayoutThread {
    pub config: PlayoutConfig,
    pub engine: Engine,
    pub packets: heapless::spsc::Consumer<'static, Packet>,
    pub events: heapless::spsc::Producer<'static, Event>,
    pub stats: Arc<PlayoutStats>,
    pub stop: Arc<AtomicBool>,
    /// SIGHUP: close and reopen the device.
    pub reopen: Arc<AtomicBool>,
    /// Beaten once per loop; the main thread pets systemd's watchdog only
    /// while it moves.
    pub heartbeat: Arc<crate::service::notify::Heartbeat>,
}

/// Reopen backoff: first retry after 100 ms, doubling to 500 ms: a sound
/// server or USB DAC that comes back is played to within half a second,
/// and a try costs little (a failed open is quick).
const BACKOFF_MIN_MS: u64 = 100;
const BACKOFF_MAX_MS: u64 = 500;

impl PlayoutThread {
    /// The thread body; returns when `stop` is set.
    pub fn run(mut self) {
        if self.config.rt_priority > 0 {
            if let Err(e) = crate::service::sched::set_realtime(self.config.rt_priority) {
                self.event(Event::RealtimeRefused(e));
            }
        }
        if self.config.lock_memory {
            if let Err(e) = crate::service::sched::lock_memory() {
                self.event(Event::MemoryLockRefused(e));
            }
        }
        let mut out = vec![0.0f32; max_period_samples(&self.config)];
        let mut device: Option<AlsaOut> = None;
        let mut backoff_ms = BACKOFF_MIN_MS;
        let mut next_open_ns = 0u64;
        let mut was_state = StreamState::NoStream;
        let mut announce: Option<Negotiated> = None;
        let mut writes_since_open = 0u64;
        let mut closing: Option<std::thread::JoinHandle<()>> = None;
        // The stream format the device was last opened for.
        let mut asked_for: Option<(u32, u16)> = None;
        while !self.stop.load(Relaxed) {
            let now = crate::service::clock::monotonic_ns();
            self.drain_packets();
            if self.reopen.swap(false, Relaxed) {
                self.event(Event::Reopening("SIGHUP"));
                device = None;
                next_open_ns = 0;
            }
            // A stream of another format wants the device reopened at it.
            // Compared with what was asked at the last open, not with what
            // the device gave: a device that refuses the format keeps its
            // own (the engine converts) and must not be reopened forever.
            if let (Some(_), Some(wanted)) = (&device, self.wanted_device_format()) {
                if Some(wanted) != asked_for && self.jitter_playing() {
                    self.event(Event::Reopening("the stream's rate or channels changed"));
                    device = None;
                    next_open_ns = 0;
                }
            }
            // Plugin libraries (libjack) crash when a PCM is opened while
            // another of theirs is still closing: reopen only after the
            // background close of a hung device has finished.
            if closing.as_ref().is_some_and(|h| h.is_finished()) {
                closing = None;
            }
            if device.is_none() && closing.is_none() && now >= next_open_ns {
                asked_for = Some(self.device_format_to_ask());
                match self.open_device() {
                    Ok(dev) => {
                        let n = dev.negotiated().clone();
                        self.engine.set_device(n.rate, n.channels);
                        // Announced once the device is seen consuming: a
                        // sound server may take a second or two to start a
                        // stream, and "open" should mean "playing".
                        announce = Some(n);
                        writes_since_open = 0;
                        device = Some(dev);
                        backoff_ms = BACKOFF_MIN_MS;
                    }
                    Err(e) => {
                        self.event(Event::DeviceOpenFailed(e));
                        self.stats.device_errors.fetch_add(1, Relaxed);
                        next_open_ns = now + backoff_ms * 1_000_000;
                        backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
                    }
                }
            }
            match device.as_mut() {
                Some(dev) => {
                    let n = dev.negotiated();
                    let len = (n.period_frames * n.channels as usize).min(out.len());
                    self.engine.render(&mut out[..len], now);
                    let written = dev.write(&out[..len]);
                    if written.is_ok() && announce.is_some() {
                        // The first buffer's worth of writes only fill
                        // the device; two more mean it really consumes.
                        writes_since_open += 1;
                        if writes_since_open > self.config.buffer_periods as u64 + 2 {
                            if let Some(n) = announce.take() {
                                self.event(Event::DeviceOpened(n));
                            }
                        }
                    }
                    match written {
                        Ok(WriteOutcome::Written) => {}
                        Ok(WriteOutcome::Underrun) => {
                            self.stats.underruns.fetch_add(1, Relaxed);
                            self.event(Event::Underrun);
                        }
                        Ok(WriteOutcome::Resumed) => {
                            self.stats.resumes.fetch_add(1, Relaxed);
                            self.event(Event::Resumed);
                        }
                        Ok(WriteOutcome::Suspended) => {
                            // Nothing was queued and the device cannot
                            // pace us while it wakes: keep the period pace.
                            let period_ns = self.config.period_ms as u64 * 1_000_000;
                            crate::service::clock::sleep_until(now + period_ns);
                        }
                        Err(e) => {
                            self.stats.device_errors.fetch_add(1, Relaxed);
                            self.stats.reopens.fetch_add(1, Relaxed);
                            let e_hung = e.is_hang();
                            self.event(Event::DeviceLost(e));
                            // Closing a PCM whose sound server hangs can
                            // block for many seconds: close that one
                            // elsewhere. Any other lost device closes at
                            // once, here: a close on another thread while
                            // this one reopens races inside plugin
                            // libraries (libjack crashes).
                            if let Some(dev) = device.take() {
                                if e_hung {
                                    // AlsaOut is Send: close it on a thread
                                    // of its own (a failed spawn drops the
                                    // closure, closing it here after all).
                                    closing = std::thread::Builder::new()
                                        .name("alsa-close".into())
                                        .spawn(move || drop(dev))
                                        .ok();
                                } else {
                                    drop(dev);
                                }
                            }
                            next_open_ns = now + BACKOFF_MIN_MS * 1_000_000;
                        }
                    }
                    let delay = device.as_ref().and_then(|d| d.delay_frames());
                    self.publish(delay, n_rate(&device));
                }
                None => {
                    // No device: keep the stream moving at real time into
                    // the void, so packets keep being received, counted
                    // and aged, and playback resumes in step on reopen.
                    let period_ns = self.config.period_ms as u64 * 1_000_000;
                    let rate = self.engine.jitter().format().map_or(8000, |f| f.rate);
                    self.engine.set_device(rate, 1);
                    let frames = (rate as u64 * self.config.period_ms as u64 / 1000) as usize;
                    let len = frames.min(out.len());
                    self.engine.render(&mut out[..len], now);
                    self.publish(None, rate);
                    crate::service::clock::sleep_until(now + period_ns);
                }
            }
            let state = self.engine.jitter().state();
            if state != was_state {
                self.state_changed(was_state, state);
                was_state = state;
            }
            self.stats.periods.fetch_add(1, Relaxed);
            // Progress for the watchdog: periods written, or waits for a
            // missing device. Not while a hung device's close is pending:
            // the sound system is wedged and a restart is the way out.
            if closing.is_none() {
                self.heartbeat.beat();
            }
        }
        // Stopping: close at once (no drain) so the process exits within
        // a few periods of SIGTERM; closing flushes plugins such as `file`.
        drop(device);
    }

    fn jitter_playing(&self) -> bool {
        self.engine.jitter().state() == StreamState::Playing
    }

    fn wanted_device_format(&self) -> Option<(u32, u16)> {
        match self.config.device_format {
            DeviceFormat::Fixed { .. } => None,
            DeviceFormat::FollowStream { .. } => {
                self.engine.jitter().format().map(|f| (f.rate, f.channels))
            }
        }
    }

    /// The rate and channels to open the device at: fixed by the user, or
    /// the stream's (before any stream: the initial guess).
    fn device_format_to_ask(&self) -> (u32, u16) {
        match self.config.device_format {
            DeviceFormat::Fixed { rate, channels } => (rate, channels),
            DeviceFormat::FollowStream {
                initial_rate,
                initial_channels,
            } => self
                .wanted_device_format()
                .unwrap_or((initial_rate, initial_channels)),
        }
    }

    fn open_device(&self) -> Result<AlsaOut, AlsaError> {
        let (rate, channels) = self.device_format_to_ask();
        AlsaOut::open(&DeviceConfig {
            device: self.config.device.clone(),
            access: self.config.access,
            rate: Some(rate),
            channels: Some(channels),
            period_frames: (rate as u64 * self.config.period_ms as u64 / 1000).max(16) as u32,
            buffer_periods: self.config.buffer_periods,
        })
    }

    fn drain_packets(&mut self) {
        while let Some(packet) = self.packets.dequeue() {
            match self.engine.push(&packet) {
                PushOutcome::NewStream {
                    previous_ssrc: Some(previous_ssrc),
                    ssrc,
                } => self.event(Event::NewStream {
                    previous_ssrc,
                    ssrc,
                    format: packet.format,
                }),
                PushOutcome::NewStream {
                    previous_ssrc: None,
                    ssrc,
                } => self.event(Event::StreamStarted {
                    ssrc,
                    format: packet.format,
                }),
                PushOutcome::Resync => self.event(Event::Resync),
                _ => {}
            }
        }
    }

    fn state_changed(&mut self, from: StreamState, to: StreamState) {
        if to == StreamState::Lost && from == StreamState::Playing {
            self.event(Event::StreamLost);
        }
    }

    fn publish(&self, alsa_delay_frames: Option<i64>, device_rate: u32) {
        let jb = self.engine.jitter();
        let m = jb.metrics();
        let s = &self.stats;
        s.packets.store(m.packets, Relaxed);
        s.lost.store(m.lost, Relaxed);
        s.late.store(m.late, Relaxed);
        s.reordered.store(m.reordered, Relaxed);
        s.duplicates.store(m.duplicates, Relaxed);
        s.overflow.store(m.overflow, Relaxed);
        s.new_streams.store(m.new_streams, Relaxed);
        s.stream_lost.store(m.stream_lost, Relaxed);
        s.starved.store(m.underruns, Relaxed);
        let em = self.engine.metrics();
        s.concealed_frames.store(em.concealed_frames, Relaxed);
        s.stretched_frames.store(em.stretched_frames, Relaxed);
        s.drift_uppm.store((em.drift_ppm * 1e6) as i64, Relaxed);
        if let Some(f) = jb.format() {
            let rate = f.rate.max(1) as u64;
            s.stream_rate.store(f.rate, Relaxed);
            s.depth_us
                .store(jb.depth_frames() as u64 * 1_000_000 / rate, Relaxed);
            s.target_us
                .store(em.target_frames as u64 * 1_000_000 / rate, Relaxed);
            s.jitter_us
                .store((m.jitter * 1e6 / rate as f64) as u64, Relaxed);
        }
        if let Some(d) = alsa_delay_frames {
            s.alsa_delay_us
                .store(d * 1_000_000 / device_rate.max(1) as i64, Relaxed);
        }
    }

    fn event(&mut self, event: Event) {
        // A full event queue means the main thread is not reading; the
        // counters still tell the story, so dropping is harmless.
        let _ = self.events.enqueue(event);
    }
}

fn n_rate(device: &Option<AlsaOut>) -> u32 {
    device.as_ref().map_or(0, |d| d.negotiated().rate)
}

fn max_period_samples(config: &PlayoutConfig) -> usize {
    // A device may grant a period larger than asked; 4x with a floor
    // covers what "near" calls return in practice.
    let frames =
        (MAX_RATE as usize * config.period_ms.clamp(1, MAX_PERIOD_MS) as usize / 1000) * 4 + 1024;
    frames * MAX_CHANNELS as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::format::Encoding;

    fn pcmu_packet(k: u32) -> Packet {
        let format = StreamFormat {
            encoding: Encoding::Pcmu,
            rate: 8000,
            channels: 1,
        };
        let mut p = Packet::empty(format);
        p.ssrc = 9;
        p.seq = k as u16;
        p.timestamp = k * 320;
        p.arrival_ns = k as u64 * 40_000_000;
        p.payload_type = 0;
        let _ = p.payload.extend_from_slice(&[0x55; 320]);
        p
    }

    #[test]
    fn first_packet_of_a_slower_stream_waits_for_the_whole_margin() {
        // Sized for 44.1 kHz (the static L16 types), fed 8 kHz PCMU in
        // 40 ms packets with a 120 ms margin: playing starts at 160 ms.
        let mut engine = Engine::new(&PlayoutConfig {
            latency: Latency::Fixed { ms: 120 },
            clock_follow: false,
            max_rate: 44_100,
            max_channels: 2,
            ..PlayoutConfig::default()
        })
        .unwrap();
        for k in 0..3 {
            engine.push(&pcmu_packet(k));
            assert_eq!(
                engine.jitter().state(),
                StreamState::Prebuffering,
                "packet {k}"
            );
        }
        engine.push(&pcmu_packet(3));
        assert_eq!(engine.jitter().state(), StreamState::Playing);
        assert_eq!(engine.jitter().target_delay_frames(), 1280);
    }

    #[test]
    fn mono_is_played_on_every_channel_and_stereo_mixed_to_mono() {
        let mut out = [0.0f32; 4];
        map_channels(&[0.25, -0.5], 1, &mut out, 2);
        assert_eq!(out, [0.25, 0.25, -0.5, -0.5]);
        let mut mono = [0.0f32; 2];
        map_channels(&[0.5, 0.25, -0.5, 0.0], 2, &mut mono, 1);
        assert_eq!(mono, [0.375, -0.25]);
    }
}
