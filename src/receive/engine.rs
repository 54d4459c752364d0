//! The playout engine: the pure part of the receiver's realtime stage,
//! tested in simulated time. Input: packets (`push`) and a clock; output:
//! exactly one device period of interleaved f32 frames per `render` call.
//!
//! Order of the chain: source lock (`receive::source`: a new SSRC plays
//! only once validated, and takes over only from a sender that stopped;
//! strays are counted and dropped) → jitter buffer (reordering, duplicates
//! and late packets are handled there) → i16 to f32 → concealer (missing
//! frames: pitch-period repetition fading over 60 ms; real audio after a
//! gap is merged back) → stretcher (reaches a new target delay without
//! gaps, and catches up audio held while there was no device) → resampler
//! (stream rate to device rate, and the sender's clock) → channel map.
//! The delay controller measures the playout delay every period and sets
//! the resampler's drift and the stretcher's requests; with `--latency
//! auto` the delay estimator sets the target from the measured arrival
//! jitter. The clock estimator (`receive::clock`) measures the sender's
//! clock against the device's on its own; trusted, it is fed forward to the
//! controller and decides between bit-exact pass-through and resampling
//! (see `Correction`).
//!
//! The device's format is fixed while it is open; every stream is converted
//! to it. The resamplers for every stream format the receiver can be sent
//! (the payload map, or the raw format) are built off the realtime thread
//! as a `ResamplerBank` for one device rate and handed in with the device:
//! a stream of another rate or channel count, or a reopened device, costs
//! the realtime thread no allocation.

use crate::alsa::playback::Access;
use crate::audio::channels;
use crate::audio::convert::i16s_to_f32;
use crate::audio::format::{Encoding, StreamFormat, MAX_CHANNELS, MAX_RATE};
use crate::audio::opus;
use crate::audio::resample::{ResampleError, Resampler};
use crate::receive::clock::{ClockConfig, ClockError, ClockEstimator, Estimate};
use crate::receive::conceal::Concealer;
use crate::receive::delay::{DelayConfig, DelayEstimator};
use crate::receive::drift::{ControllerConfig, ControllerError, DelayController};
use crate::receive::jitter::{JitterBuffer, JitterConfig, PushOutcome, ReadStatus, StreamState};
use crate::receive::source::{Admission, SourceConfig, SourceLock, Verdict};
use crate::receive::stretch::Stretcher;
use crate::receive::sync::{Action, Mapping, SyncConfig, SyncMetrics, SyncPlayout, Why};
use crate::rtp::packet::{Packet, PacketKind};
use core::fmt;

/// How the playout delay target is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Latency {
    /// `--latency-ms N`: a fixed target.
    Fixed { ms: u32 },
    /// `--latency auto`: from the measured arrival jitter, within bounds.
    Auto { min_ms: u32, max_ms: u32 },
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
    /// The device's rate and channel count, fixed for as long as it is
    /// open; `None`: the device's own preference (48 kHz where offered,
    /// else its nearest; its own channel count). Every stream is converted
    /// to it, so a stream start never waits for the device to reopen.
    pub device_rate: Option<u32>,
    pub device_channels: Option<u16>,
    pub period_ms: u32,
    pub buffer_periods: u32,
    /// SCHED_FIFO priority for the playout thread; 0 leaves it normal.
    pub rt_priority: i32,
    pub lock_memory: bool,
    /// Highest stream rate and channel count the payload map can carry.
    pub max_rate: u32,
    pub max_channels: u16,
    /// Every (rate, channels) a stream may have (from the payload map, or
    /// the raw format): a resampler is built for each at start-up.
    pub stream_formats: Vec<(u32, u16)>,
    /// A payload type maps to Opus: the jitter buffer keeps an Opus
    /// packet store and decoder (made at start-up).
    pub opus: bool,
    /// `--sync-ms`: play every frame at its capture time on the sender's
    /// wall clock plus this (see `receive::sync`); `None`: adaptive only.
    pub sync: Option<SyncConfig>,
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
            device_rate: None,
            device_channels: None,
            stream_formats: vec![(8000, 1), (44_100, 1), (44_100, 2)],
            period_ms: 5,
            buffer_periods: 4,
            rt_priority: 70,
            lock_memory: true,
            max_rate: 48_000,
            max_channels: 2,
            opus: false,
            sync: None,
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

    /// The jitter buffer holds at least `MIN_CAPACITY_MS`: audio that
    /// arrives while the device is not ready (being opened, recovering)
    /// is kept, not dropped, so the start of a stream is heard.
    fn capacity_ms(&self) -> u32 {
        let for_target = match self.latency {
            Latency::Fixed { ms } => 2 * ms + 2 * HEADROOM_MS as u32,
            Latency::Auto { max_ms, .. } => 2 * max_ms + 2 * HEADROOM_MS as u32,
        };
        // Sync playout holds up to its whole delay in the buffer.
        let for_sync = self
            .sync
            .map_or(0, |s| 2 * s.sync_ms + 2 * HEADROOM_MS as u32);
        for_target.max(for_sync).max(MIN_CAPACITY_MS)
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
    Clock(ClockError),
    Source(crate::receive::source::SourceError),
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
            PlayoutError::Clock(e) => write!(f, "clock estimator: {e}"),
            PlayoutError::Source(e) => write!(f, "source lock: {e}"),
        }
    }
}

impl std::error::Error for PlayoutError {}

/// Clock ratios within this of 1 are passed through (bit-exact) and their
/// slow drift corrected in stretches; the estimate is good to ≈ ±20 ppm.
const DEAD_BAND_PPM: f64 = 50.0;
/// How long after the buffer starved a shortening keeps half the margin
/// behind its look-ahead (see `Engine::control`).
const CAREFUL_AFTER_STARVING_S: f64 = 10.0;

/// Delay error (smoothed) that starts a resampled stretch.
const ENTER_CORRECTION_MS: f64 = 3.0;
/// Error under which following a clock hands back to pass-through.
const LEAVE_CORRECTION_MS: f64 = 1.0;
/// How the resampler serves a stream at the device's rate.
///
/// `Pass`: the clocks agree (the estimate is within `DEAD_BAND_PPM`, or not
/// known yet): samples are copied bit for bit, and the delay is let drift
/// by up to `ENTER_CORRECTION_MS`. `Follow`: the delay loop steers the
/// resampler, the estimate fed forward, until the estimate (or, before
/// there is one, the loop's own integral) is inside the dead band and the
/// error under `LEAVE_CORRECTION_MS`; then the resampler lands on a whole
/// frame and copies again. So a slow drift is undone in short resampled
/// stretches, a fast one followed throughout. A stream at another rate is
/// converted at the exact ratio of the rates while passing (no wobble of
/// the ratio from the loop's noise), and followed the same way. Sync
/// playout has the same two states, with its own µs-sized thresholds on
/// its own error (`sync::passes_through`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Correction {
    Pass,
    Follow,
}

/// Samples within this of zero are silence a start may skip (−60 dBFS).
const SILENT_LEVEL: i16 = 32;
/// Silence a start's skip leaves above the target, ms.
const START_SKIP_SPARE_MS: f64 = 2.0;

/// Least headroom between the target delay and the delay at which audio
/// is dropped (see `PlayoutConfig::max_delay_ms`).
const HEADROOM_MS: f64 = 40.0;

/// Largest period the scratch buffers are sized for.
pub const MAX_PERIOD_MS: u32 = 100;

/// Audio kept while there is no device to play it (see `capacity_ms`).
/// PulseAudio and PipeWire take 1.5-2 s to open and start a stream (and
/// more on a loaded Pi): 2 s was measured to drop the end of that wait's
/// audio; 3 s keeps all of it.
pub const MIN_CAPACITY_MS: u32 = 3_000;

/// The pure playout chain; one call to `render` makes one device period.
pub struct Engine {
    /// Which sender plays: ahead of the jitter buffer.
    source: SourceLock,
    jitter: JitterBuffer,
    concealer: Concealer,
    stretcher: Stretcher,
    /// One resampler per stream format, for the device's rate; handed in
    /// with the device (built off the realtime thread).
    bank: Option<ResamplerBank>,
    /// The bank entry serving the current stream.
    active: Option<usize>,
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
    /// The stream's Opus packets carry in-band FEC (an LBRR flag was seen
    /// since the stream started): with `--latency auto` the margin holds
    /// one packet more (see `apply_target`).
    fec_stream: bool,
    /// The sender-to-device clock ratio, measured apart from the loop.
    clock: ClockEstimator,
    /// How the resampler serves the stream now.
    correction: Correction,
    /// The clock estimate is being fed forward to the loop.
    feeding_forward: bool,
    /// Frames of headerless PCM received in this stream: its timestamps.
    raw_frames: u64,
    /// Raised ceiling on the buffered delay while audio held during a
    /// device wait is caught up; lowered as the backlog shrinks.
    ceiling_ms: Option<f64>,
    /// No device: nothing is read, the audio waits.
    holding: bool,
    /// The jitter buffer was playing at the last render.
    was_playing: bool,
    /// The buffer's starvings seen so far, and the stream frames left of
    /// the careful spell the last one started (see `control`).
    starvings_seen: u64,
    careful_frames: u64,
    /// The rate the jitter buffer was sized for (its frame unit before the
    /// first stream).
    jitter_max_rate: u32,
    /// Sync playout (`--sync-ms`), when configured.
    sync: Option<SyncPlayout>,
    /// Sync is in charge now: the controller holds its error.
    sync_engaged: bool,
    /// Silence still to insert before the cursor's audio (sync alignment),
    /// stream frames.
    sync_hold: usize,
    /// This period's sync error, stream frames (+: late); `None` while
    /// sync is not in charge.
    sync_error_frames: Option<f64>,
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
    /// Samples passed through untouched now (equal rates, clocks agree).
    pub passthrough: bool,
    /// A stream at another rate converted at the exact ratio of the rates
    /// (the clocks agree; nothing follows or corrects now).
    pub converting: bool,
    /// The sender's clock against the device's, as estimated on its own
    /// (`receive::clock`); 0 until known.
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
            opus: config.opus,
        })
        .map_err(PlayoutError::Jitter)?;
        let max_frames = max_render_frames(config);
        let (min_ms, max_ms) = match config.latency {
            Latency::Fixed { ms } => (ms, ms),
            Latency::Auto { min_ms, max_ms } => (min_ms, max_ms),
        };
        let source = SourceLock::new(&SourceConfig {
            stream_lost_ms: config.stream_lost_ms,
            ..SourceConfig::default()
        })
        .map_err(PlayoutError::Source)?;
        Ok(Engine {
            source,
            jitter,
            concealer: Concealer::new(max_channels, max_rate).map_err(PlayoutError::Conceal)?,
            stretcher: Stretcher::new(max_channels, max_rate, max_frames)
                .map_err(PlayoutError::Stretch)?,
            bank: None,
            active: None,
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
            fec_stream: false,
            ceiling_ms: None,
            holding: false,
            was_playing: false,
            starvings_seen: 0,
            careful_frames: 0,
            clock: ClockEstimator::new(&ClockConfig::default()).map_err(PlayoutError::Clock)?,
            correction: Correction::Pass,
            feeding_forward: false,
            raw_frames: 0,
            jitter_max_rate: max_rate,
            sync: config
                .sync
                .map(|s| SyncPlayout::new(s.sync_ms, s.trust_clock)),
            sync_engaged: false,
            sync_hold: 0,
            sync_error_frames: None,
            samples_i16: vec![0; max_frames * max_channels],
            stream_in: vec![0.0; max_frames * max_channels],
            stretched: vec![0.0; max_frames * max_channels],
            resampled: vec![0.0; max_frames * max_channels],
            metrics: EngineMetrics::default(),
        })
    }

    /// Feeds one packet: the source lock first (which sender plays),
    /// then the jitter buffer.
    pub fn push(&mut self, packet: &Packet) -> Admission {
        match self.source.push(packet) {
            Verdict::Play => Admission::Pushed(self.play(packet)),
            Verdict::TakeOver { .. } => {
                // The new source's held packets first, oldest first; its
                // first packet's outcome (the new stream) is the one told.
                let mut held = Packet::empty(packet.format);
                let mut first = None;
                while self.source.take_held(&mut held) {
                    let outcome = self.play(&held);
                    first.get_or_insert(outcome);
                }
                if packet.kind == PacketKind::Audio {
                    let outcome = self.play(packet);
                    first.get_or_insert(outcome);
                }
                first.map_or(Admission::Held, Admission::Pushed)
            }
            Verdict::Held => Admission::Held,
            Verdict::Contending { ssrc, current } => Admission::Contending { ssrc, current },
            Verdict::Ended { ssrc } => Admission::Ended { ssrc },
            Verdict::Ignored => Admission::Ignored,
        }
    }

    /// The source lock (its counters: `source().metrics()`).
    pub fn source(&self) -> &SourceLock {
        &self.source
    }

    fn play(&mut self, packet: &Packet) -> PushOutcome {
        // Before playing starts the level must count the packet size,
        // known only now, so the buffer does not start one packet early.
        if self.jitter.state() != StreamState::Playing {
            self.apply_target(packet.format.rate, packet.frames());
        }
        let outcome = self.jitter.push(packet);
        if let (true, false, Some(sync)) =
            (self.sync_engaged, packet.sequential, self.sync.as_mut())
        {
            // Every arrival of the playing sender while sync is in charge
            // is one sample of its margin; late ones too (negative).
            if !matches!(
                outcome,
                PushOutcome::Duplicate | PushOutcome::Unsupported | PushOutcome::NewStream { .. }
            ) {
                sync.on_arrival(
                    packet.ssrc,
                    packet.timestamp,
                    packet.arrival_ns,
                    packet.format.rate,
                );
            }
        }
        if matches!(outcome, PushOutcome::NewStream { .. } | PushOutcome::Resync) {
            // A new sender, or a jump of its timeline: its clock is
            // measured afresh, and so is its jitter.
            self.delay.reset();
            self.clock.reset();
            self.timed_packets = 0;
            self.correction = Correction::Pass;
            self.feeding_forward = false;
            self.raw_frames = 0;
            self.fec_stream = false;
            self.sync_hold = 0;
            if let Some(sync) = self.sync.as_mut() {
                sync.unlock();
            }
        }
        if packet.format.encoding == Encoding::Opus
            && !self.fec_stream
            && opus::carries_fec(&packet.payload)
        {
            self.fec_stream = true;
            self.apply_target(packet.format.rate, packet.frames());
        }
        // Late, reordered and duplicate packets still tell when the sender
        // sent them; the estimator's lower envelope sorts them out.
        if !packet.sequential && outcome != PushOutcome::Unsupported {
            self.clock
                .on_packet(packet.arrival_ns, packet.timestamp, packet.format.rate);
        } else if packet.sequential
            && matches!(outcome, PushOutcome::Stored | PushOutcome::NewStream { .. })
        {
            // Headerless PCM carries no timestamp, but its frames are its
            // clock: count them (a lost datagram is a step in the transit
            // floor, which the estimator takes as a route change).
            self.clock.on_packet(
                packet.arrival_ns,
                self.raw_frames as u32,
                packet.format.rate,
            );
            self.raw_frames += packet.frames() as u64;
        }
        // A new sender after the old one's concealment has faded out
        // starts clean, as audio after silence does: its held packets may
        // start playing at once, with no idle read in between to say so.
        if matches!(outcome, PushOutcome::NewStream { .. }) && self.concealer.is_silent() {
            self.sounding = false;
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
        match self.resampler() {
            Some(r) => buffered_frames(&self.jitter, &self.stretcher, r, self.device_rate),
            None => self.jitter.depth_frames() as f64,
        }
    }

    /// A device was opened (or reopened) at `channels` and the bank's
    /// rate. A bank for another rate replaces the current one, which is
    /// returned so that the caller can free it off the realtime thread.
    pub fn attach_device(
        &mut self,
        channels: u16,
        bank: Option<ResamplerBank>,
    ) -> Option<ResamplerBank> {
        let mut old = None;
        if let Some(bank) = bank {
            if self.bank.as_ref().map(ResamplerBank::device_rate) != Some(bank.device_rate) {
                self.device_rate = bank.device_rate;
                old = self.bank.replace(bank);
                self.format = None;
            } else {
                old = Some(bank);
            }
        }
        if self.device_channels != channels as usize {
            self.device_channels = channels as usize;
            self.format = None;
        }
        // A (re)opened device counts its frames from zero.
        self.clock.reset_device();
        if let Some(sync) = self.sync.as_mut() {
            sync.device.reset();
        }
        old
    }

    /// The device rate the engine renders at (0 before the first device).
    pub fn device_rate(&self) -> u32 {
        self.device_rate
    }

    /// The device rate of the resampler bank in use, if any.
    pub fn bank_rate(&self) -> Option<u32> {
        self.bank.as_ref().map(ResamplerBank::device_rate)
    }

    /// No device (`true`): hold the audio in the jitter buffer instead of
    /// reading it; when the device is back, the backlog is played out
    /// faster by stretching instead of dropped.
    pub fn set_holding(&mut self, holding: bool) {
        if holding == self.holding {
            return;
        }
        self.holding = holding;
        if !holding {
            self.ceiling_ms = Some(f64::INFINITY);
        }
        let (rate, packet) = (
            self.jitter
                .format()
                .map_or(self.jitter_max_rate, |f| f.rate),
            self.jitter.packet_frames(),
        );
        self.apply_target(rate, packet);
    }

    /// A period passes with no device. Audio waits in the jitter buffer
    /// until it is full; past that the oldest goes, one period per
    /// period, as if played.
    pub fn idle(&mut self, now_ns: u64, period_ms: u32) {
        let Some(format) = self.jitter.format() else {
            return;
        };
        let ch = format.channels.max(1) as usize;
        let frames =
            (format.rate as usize * period_ms as usize / 1000).min(self.samples_i16.len() / ch);
        let room = self
            .jitter
            .capacity_frames()
            .saturating_sub(self.jitter.packet_frames() * 2);
        if self.jitter.depth_frames() > room {
            self.jitter
                .read(&mut self.samples_i16[..frames * ch], now_ns);
        }
    }

    fn resampler(&self) -> Option<&Resampler> {
        self.bank
            .as_ref()?
            .entries
            .get(self.active?)
            .map(|e| &e.resampler)
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
        // A start held back by the source lock's probation (or by a
        // prebuffer after a stall) reaches its delay by skipping the
        // silence before its first sound, if it has one, instead of by
        // seconds of resampling (see `JitterBuffer::skip_start_silence`).
        let playing = self.jitter.state() == StreamState::Playing;
        self.sync_step(format, playing, now_ns, out_frames);
        if playing && !self.was_playing && self.clock_follow && !self.sync_engaged {
            // The controller measures after each period's read: half a
            // period below the level's mean on average. That half period
            // stays, and `START_SKIP_SPARE_MS` more: a start lands a little
            // above its target rather than below (short of its target, a
            // delay starves first).
            let keep = out_frames * format.rate as usize / self.device_rate.max(1) as usize / 2
                + (START_SKIP_SPARE_MS * format.rate as f64 / 1000.0) as usize;
            self.jitter.skip_start_silence(now_ns, keep, SILENT_LEVEL);
        }
        self.was_playing = playing;
        let ch = format.channels as usize;
        let Some(resampler) = self.resampler() else {
            out.fill(0.0);
            return;
        };
        let mid_frames = resampler.input_needed(out_frames).min(self.max_frames);
        let mut in_frames = self.stretcher.input_needed(mid_frames).min(self.max_frames);
        // The stretcher's look-ahead must come from audio that has
        // arrived: reading ahead of it would turn frames still on their
        // way into concealment (and the packets, arriving, into late
        // ones). Without room, the stretch waits for a later period. So
        // too once the look-ahead is in: a stretch holds it back from
        // playing, and a cut down to the target drained the jitter buffer
        // below it (the look-ahead, 45 ms at 5 ms periods, is more than a
        // clean link's whole delay), starving it 1-4 times at each
        // catch-up of a slow device's start, with the audio to play in
        // hand. Letting go plays that audio while the next packet comes.
        let depth = self.jitter.depth_frames();
        if self.stretcher.pending() != 0
            && self.jitter.state() == StreamState::Playing
            && in_frames > depth
        {
            if depth + self.stretcher.buffered() >= mid_frames {
                // What has arrived, and no more: short of its next
                // window, the stretch lets go by itself.
                in_frames = depth;
            } else {
                self.stretcher.cancel();
                in_frames = self.stretcher.input_needed(mid_frames).min(self.max_frames);
            }
        }
        self.fill_from_jitter(in_frames, ch, now_ns);
        let (_, stretched) = self.stretcher.process(
            &self.stream_in[..in_frames * ch],
            &mut self.stretched[..mid_frames * ch],
        );
        let mut produced = 0;
        if let Some(resampler) = active_mut(&mut self.bank, self.active) {
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
        channels::map(period, ch, &mut out[..out_frames * dev_ch], dev_ch);
        self.control(format, out_frames);
    }

    /// Sync playout's decision for this period (see `receive::sync`): the
    /// error of the cursor's frame, then an alignment (skip late frames,
    /// or hold the cursor behind inserted silence) or the error for the
    /// controller. Without what sync needs, the adaptive mode plays.
    fn sync_step(&mut self, format: StreamFormat, playing: bool, now_ns: u64, out_frames: usize) {
        self.sync_error_frames = None;
        let Some(sync) = self.sync.as_mut() else {
            return;
        };
        // Headerless PCM has no sender reports: `NoReports`.
        let rate = format.rate;
        let resampler_frames = self
            .bank
            .as_ref()
            .and_then(|b| b.entries.get(self.active?))
            .map_or(0.0, |e| {
                e.resampler.latency_frames() * f64::from(rate) / f64::from(self.device_rate.max(1))
            });
        let cursor_rtp = self.jitter.cursor_timestamp();
        if playing && self.sync_engaged && self.jitter.depth_frames() == 0 {
            // The buffer ran dry (a talkspurt ended, a packet is late):
            // the cursor waits for its frame while the device plays on,
            // so the error grows by a period each period and means
            // nothing yet. Aligning to it would skip audio that has not
            // come (and every silence would look like a late stream).
            // The ratio holds; the frame is judged when it is here.
            self.sync_error_frames = Some(0.0);
            return;
        }
        let result = match (playing, self.jitter.metrics().ssrc) {
            (true, Some(ssrc)) => {
                // What plays before the cursor's frame: the stretcher's
                // store, the resampler's, inserted silence. A stretch
                // still pending is left out, as the controller counts it
                // itself (it takes a stretch off its filter when asking).
                let ahead =
                    self.stretcher.buffered() as f64 + resampler_frames + self.sync_hold as f64;
                sync.error_ns(ssrc, cursor_rtp, ahead, rate)
            }
            _ => Err(Why::NoStream),
        };
        let result = result.and_then(|e| Ok((e, sync.decide(e, rate, now_ns)?)));
        let engaged = match result {
            Ok((error_ns, decision)) => {
                if let Action::Align(_) = decision {
                    // The cursor moves: arrivals are measured again from
                    // the next, steered, period.
                    sync.clear_read_point();
                    // An alignment starts the control after the jitter
                    // buffer afresh: the stretcher's request, the
                    // resampler's ratio (whatever the adaptive mode had
                    // it at: catching up a backlog runs it thousands of
                    // ppm off, which would take a second to glide back)
                    // and the adaptive catch-up of held audio. What the
                    // stretcher and the resampler hold still plays (the
                    // error counts it), so the output stays continuous:
                    // dropping the resampler's history clicked. The ratio
                    // starts at what the clocks are known to ask (the
                    // feed-forward): from 0, a device 850 ppm off drifted
                    // 70-120 µs while the ratio glided there.
                    self.stretcher.cancel();
                    self.controller.reset();
                    self.ceiling_ms = None;
                    let ratio = sync.feed_forward_ppm(rate);
                    if let Some(r) = active_mut(&mut self.bank, self.active) {
                        r.set_drift_ppm_now(ratio);
                    }
                    let shift = error_ns * f64::from(rate) / 1e9;
                    let whole = shift.round();
                    // What is left after whole frames: under one.
                    self.sync_error_frames = Some(shift - whole);
                    if whole > 0.0 {
                        // Late: whole frames go (a start's, or a step's).
                        let mut rest = whole as usize;
                        let held = rest.min(self.sync_hold);
                        self.sync_hold -= held;
                        rest -= held;
                        self.jitter.skip(rest);
                        if rest > 0 && self.sounding {
                            // A splice: the audio after the skipped
                            // frames is cross-faded in from the
                            // continuation of what played, as after a
                            // gap (a zero-length one), never a click.
                            self.concealer.conceal(&mut []);
                        }
                    } else {
                        self.sync_hold += (-whole) as usize;
                    }
                } else if let Action::Steer(frames) = decision {
                    self.sync_error_frames = Some(frames);
                    // The arrival margin's read point. The cursor's frame
                    // leaves the jitter buffer now and reaches the DAC
                    // `error_ns` late: to play on time it had to be here
                    // by `now - error`, its due time less all that plays
                    // after the jitter buffer (the device's delay, what
                    // the stretcher and resampler hold, inserted silence).
                    // A margin is how much later a packet could have come
                    // and still played on time here. The frames after the
                    // cursor are read a period at a time, each up to a
                    // period before its even share of time: one period
                    // less makes every margin a lower bound, by less than
                    // a period.
                    let period_ns = out_frames as f64 * 1e9 / f64::from(self.device_rate.max(1));
                    sync.set_read_point(cursor_rtp, now_ns as f64 - error_ns - period_ns);
                }
                true
            }
            Err(why) => {
                sync.stand_down(why);
                false
            }
        };
        if engaged != self.sync_engaged {
            // Each mode has its own loop: rebuilt (no allocation) at the
            // switch, starting from no error.
            self.sync_engaged = engaged;
            self.rebuild_controller(format.rate);
            if !engaged {
                self.sync_hold = 0;
            }
        }
    }

    /// A fresh delay controller for the mode in charge (sync or adaptive)
    /// at `rate`. It counts in stream frames and holds no buffers, so
    /// rebuilding it allocates nothing.
    fn rebuild_controller(&mut self, rate: u32) {
        let config = if self.sync_engaged {
            crate::receive::sync::controller_config(rate)
        } else {
            controller_config(rate)
        };
        match DelayController::new(&config) {
            Ok(c) => self.controller = c,
            Err(_) => self.controller.reset(),
        }
    }

    /// Sets the chain up for a new stream format or device format: picks
    /// the bank's resampler for the stream and clears its history. Nothing
    /// is allocated; a format the bank was not built for (it cannot be
    /// sent: the bank covers the payload map) plays as silence.
    fn configure(&mut self, format: StreamFormat) {
        let ch = format.channels as usize;
        self.concealer.set_format(ch, format.rate);
        self.stretcher.set_format(ch, format.rate);
        self.active = self
            .bank
            .as_ref()
            .and_then(|b| b.find(format.rate, format.channels));
        if let Some(r) = active_mut(&mut self.bank, self.active) {
            r.reset();
        }
        self.rebuild_controller(format.rate);
        self.sounding = false;
        self.format = Some(format);
    }

    fn fill_from_jitter(&mut self, frames: usize, ch: usize, now_ns: u64) {
        let mut done = 0;
        if self.sync_hold > 0 {
            // Sync alignment: silence first, the cursor's audio after it.
            done = self.sync_hold.min(frames);
            self.sync_hold -= done;
            self.fade_or_silence(0, done, ch);
        }
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
                    i16s_to_f32(
                        &self.samples_i16[..n * ch],
                        &mut self.stream_in[seg.clone()],
                    );
                    self.concealer.audio(&mut self.stream_in[seg]);
                }
                ReadStatus::Concealed(_) => {
                    // The codec's own concealment (Opus PLC): played as
                    // audio, counted as concealed.
                    self.metrics.concealed_frames += n as u64;
                    self.sounding = true;
                    i16s_to_f32(
                        &self.samples_i16[..n * ch],
                        &mut self.stream_in[seg.clone()],
                    );
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
    ///
    /// A lost Opus packet is rebuilt from the next one's FEC only if that
    /// packet is there when the hole is played: nominally one packet after
    /// the lost one would have come, plus the same jitter. So with
    /// `--latency auto` a stream that carries FEC gets one packet more of
    /// margin (20 ms at the usual ptime; NetEQ and GStreamer's
    /// rtpjitterbuffer, 200 ms by default, hold at least as much). A fixed
    /// `--latency-ms` is taken as given.
    fn apply_target(&mut self, rate: u32, packet_frames: usize) {
        let packet_ms = packet_frames as f64 * 1000.0 / rate.max(1) as f64;
        if let Latency::Auto { .. } = self.latency {
            if self.timed_packets > 0 {
                self.margin_ms = self.delay.target_ms();
            }
            if self.fec_stream {
                self.margin_ms = self.margin_ms.max(self.delay.target_ms() + packet_ms);
            }
        }
        // Headroom above the level absorbs a burst before the overflow
        // policy drops audio; it also bounds the delay of a sender that
        // runs faster than real time.
        let level_ms = self.margin_ms + packet_ms;
        let headroom_ms = self.margin_ms.max(HEADROOM_MS);
        // One packet more than the level: right after a packet arrives
        // the buffer holds the level plus that packet whenever it runs a
        // packet high, as it does after a sender's start burst (ffmpeg's
        // 40 ms packets, arriving +-10 ms, overflowed a ceiling of level +
        // headroom by 0.6 ms at 0.6 s, dropping audio of a clean link).
        let mut normal_ms = level_ms + packet_ms + headroom_ms;
        if let Some(sync) = &self.sync {
            // Sync playout holds audio until its time: up to the whole
            // sync delay less the network's.
            normal_ms = normal_ms.max(sync.sync_ms() + 2.0 * packet_ms + HEADROOM_MS);
        }
        // Audio held while the device was away stays: the ceiling comes
        // down with the backlog as stretching plays it out faster, never
        // below what is buffered (which would drop its oldest part).
        let max_ms = if self.holding {
            f64::INFINITY
        } else if let Some(ceiling) = self.ceiling_ms {
            let depth_ms = self.jitter.depth_frames() as f64 * 1000.0 / rate.max(1) as f64;
            let lowered = ceiling.min(depth_ms + headroom_ms);
            if lowered <= normal_ms {
                self.ceiling_ms = None;
                normal_ms
            } else {
                self.ceiling_ms = Some(lowered);
                lowered
            }
        } else {
            normal_ms
        };
        self.jitter
            .set_max_delay_ms(max_ms.min(u32::MAX as f64).ceil() as u32);
        self.stretcher.set_catch_up(self.ceiling_ms.is_some());
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

    /// Where the device is: `frames_played` (frames written − its delay)
    /// at `now_ns`, for the clock estimate's device side.
    pub fn device_position(&mut self, now_ns: u64, frames_played: u64) {
        self.clock
            .on_device(now_ns, frames_played, self.device_rate);
    }

    /// The device's position starts over (opened, or seen consuming at
    /// last): the clock estimate's device side forgets what it had.
    pub fn device_restarted(&mut self) {
        self.clock.reset_device();
        if let Some(sync) = self.sync.as_mut() {
            sync.device.reset();
        }
    }

    /// The open device's timeline broke (an underrun, a resume, a
    /// standstill): its position starts over, its clock is the same. The
    /// clock estimate holds the device's rate it knew; sync's device side
    /// starts over.
    pub fn device_timeline_broke(&mut self) {
        self.clock.restart_device();
        if let Some(sync) = self.sync.as_mut() {
            sync.device.reset();
        }
    }

    /// Sync playout's view of the sender's clock: the mapping the net
    /// thread published, and whether the kernel says this machine's wall
    /// clock is synchronised.
    pub fn set_sender_mapping(&mut self, mapping: Option<Mapping>, wall_clock_synced: bool) {
        if let Some(sync) = self.sync.as_mut() {
            sync.set_mapping(mapping);
            sync.set_wall_clock_synced(wall_clock_synced);
        }
    }

    /// Sync playout's view of the device, after each write: at `at_ns`
    /// (monotonic) `queued_frames` of the `written` frames written since
    /// it started were still in its ring buffer, and the device's delay
    /// was `beyond_frames` more (a plugin's or sound server's latency
    /// after the ring), at `rate`; `realtime_offset_ns` is CLOCK_REALTIME
    /// less CLOCK_MONOTONIC at that moment.
    pub fn sync_device_status(
        &mut self,
        at_ns: u64,
        written: u64,
        queued_frames: i64,
        beyond_frames: i64,
        rate: u32,
        realtime_offset_ns: i64,
    ) {
        if let Some(sync) = self.sync.as_mut() {
            sync.device
                .on_status(at_ns, written, queued_frames, rate, realtime_offset_ns);
            sync.device.on_latency(beyond_frames, rate);
        }
    }

    /// What sync playout did; `None` without `--sync-ms`.
    pub fn sync_metrics(&self) -> Option<&SyncMetrics> {
        self.sync.as_ref().map(SyncPlayout::metrics)
    }

    /// The sender-to-device clock ratio as estimated on its own (ppm, +:
    /// the sender is fast), with its uncertainty; None until known.
    pub fn clock_estimate(&self) -> Option<Estimate> {
        self.clock.ratio_ppm()
    }

    fn control(&mut self, format: StreamFormat, out_frames: usize) {
        self.apply_target(format.rate, self.jitter.packet_frames());
        self.metrics.target_frames = self.target_delay_frames().max(0.0) as usize;
        let estimate = self.clock.ratio_ppm();
        self.metrics.drift_ppm = estimate.map_or(0.0, |e| e.ppm);
        if !self.clock_follow || self.jitter.state() != StreamState::Playing {
            // A stream's end starves the buffer too: not a late link.
            self.starvings_seen = self.jitter.metrics().underruns;
            return;
        }
        let target = self.target_delay_frames();
        let Some(resampler) = active_mut(&mut self.bank, self.active) else {
            return;
        };
        let mut measured =
            buffered_frames(&self.jitter, &self.stretcher, resampler, self.device_rate);
        if let Some(error) = self.sync_error_frames {
            // Sync: the error against the clocks stands in for the delay's
            // against its target.
            measured = target + error;
        }
        let period = out_frames * format.rate as usize / self.device_rate.max(1) as usize;
        // A stretch may start only with audio enough here, so that taking
        // it never runs the buffer dry: lengthening, its look-ahead;
        // shortening, its first step's (the output and one search window,
        // 29 ms at 5 ms periods), the rest taken as it arrives. Neither
        // need leave the jitter margin behind: what the stretcher holds is
        // audio in hand, played as soon as the buffer runs short (`render`
        // and the stretcher let the stretch go). Asking for the whole
        // look-ahead and the margin left every catch-up 25-30 ms above the
        // target (the look-ahead is 45 ms, a clean link's target 16),
        // resampled away at 1 ms a second.
        let depth = self.jitter.depth_frames();
        let look_ahead = self.stretcher.look_ahead(period.max(1)) + period;
        let cut_start = self.stretcher.first_step_input(period.max(1));
        let margin_frames = (self.margin_ms * format.rate as f64 / 1000.0) as usize;
        // While it shortens, the stretcher holds its look-ahead taken out
        // of the jitter buffer, whose level saws a packet deep as packets
        // land. A cut down to the target empties the buffer before each
        // packet lands once the margin is below the look-ahead: a packet
        // a little late then starves it. So for CAREFUL_AFTER_STARVING_S
        // after the buffer starved, when the link has shown it can be
        // late, a cut spends at most half the margin: it may start, and
        // go down to, a delay (the controller's filtered mean) a
        // look-ahead, half the margin and half a packet up, and what is
        // left above the target is resampled away (at most 1 ms/s).
        // Cutting to the target every time let each starving add a
        // concealment's worth of delay that the next cut took again
        // (simulated: one packet 40 ms late started 5 more starvings in
        // 1.3 s; end to end, two streams at once starved 14 times in 4 s
        // on a clean link). Without a recent starving the cut goes to the
        // target: the backlog of a device that was slow to start (1.9 s
        // behind PulseAudio) is then gone in seconds, not resampled away
        // for 40 s.
        let starvings = self.jitter.metrics().underruns;
        if starvings != self.starvings_seen {
            self.starvings_seen = starvings;
            self.careful_frames = (CAREFUL_AFTER_STARVING_S * format.rate as f64) as u64;
        } else {
            self.careful_frames = self.careful_frames.saturating_sub(period as u64);
        }
        let careful = self.careful_frames > 0;
        let frames_per_ms = format.rate as f64 / 1000.0;
        // A millisecond: the least worth a stretch.
        let tolerance = frames_per_ms;
        let level = target + self.controller.error_ms(target) * frames_per_ms;
        let shorten_room = if careful {
            level
                - (look_ahead + margin_frames.div_ceil(2) + self.jitter.packet_frames() / 2) as f64
        } else {
            f64::INFINITY
        };
        self.controller.allow_stretch(
            self.stretcher.pending() != 0 || (depth >= cut_start && shorten_room >= tolerance),
            self.stretcher.pending() != 0 || depth >= look_ahead,
        );
        // Bit-perfect when the clocks agree (see `Correction`).
        // Inside or outside the dead band only when the estimate is sure
        // of it; undecided counts as not known.
        let in_band = estimate.and_then(|e| {
            if e.uncertainty_ppm >= DEAD_BAND_PPM {
                None
            } else if e.ppm.abs() + e.uncertainty_ppm < DEAD_BAND_PPM {
                Some(true)
            } else if e.ppm.abs() - e.uncertainty_ppm > DEAD_BAND_PPM {
                Some(false)
            } else {
                None
            }
        });
        let signed_error_ms = self.controller.error_ms(target);
        let error_ms = signed_error_ms.abs();
        let stretching = self.stretcher.pending() != 0;
        // Sync needs the sender's rate fed forward and what the loop has
        // learnt beyond it; its error is the controller's, in ns.
        let sync_ratio_ppm = self.sync.as_ref().map_or(0.0, |s| {
            s.feed_forward_ppm(format.rate) + self.controller.integral_ppm()
        });
        let sync_error_ns = signed_error_ms * 1e6;
        self.correction = match self.correction {
            // Sync passes through inside its own µs-sized band (see
            // `sync::passes_through`), and lands on a whole frame leaving.
            c if self.sync_engaged => {
                if crate::receive::sync::passes_through(
                    c == Correction::Pass,
                    format.rate == self.device_rate,
                    format.rate,
                    sync_ratio_ppm,
                    sync_error_ns,
                ) {
                    Correction::Pass
                } else {
                    Correction::Follow
                }
            }
            _ if in_band == Some(false) => Correction::Follow,
            Correction::Pass if error_ms > ENTER_CORRECTION_MS && !stretching => Correction::Follow,
            Correction::Pass => Correction::Pass,
            Correction::Follow => {
                // Without an estimate yet, the loop's own integral stands in.
                let agree = in_band.unwrap_or(self.controller.integral_ppm().abs() < DEAD_BAND_PPM);
                if agree && error_ms < LEAVE_CORRECTION_MS {
                    Correction::Pass
                } else {
                    Correction::Follow
                }
            }
        };
        // An estimate is fed forward once it is good to the dead band;
        // before that the loop's integral does the work alone.
        let mut confident = estimate.filter(|e| e.uncertainty_ppm < DEAD_BAND_PPM);
        if let (true, Some(sync)) = (self.sync_engaged, &self.sync) {
            // Sync feeds its own clocks forward: the sender's media clock
            // against its wall clock, from its reports, and the device's.
            // The estimate turning confident changes nothing it feeds, so
            // it must not clear what the loop holds either: that moved
            // every frame by what the integral held until the loop learnt
            // it again (37-40 µs with 100 ppm held, in simulated time).
            confident = None;
            self.controller
                .set_feed_forward_ppm(sync.feed_forward_ppm(format.rate));
        } else {
            self.controller
                .set_feed_forward_ppm(confident.map_or(0.0, |e| e.ppm));
        }
        if confident.is_some() && !self.feeding_forward {
            // The estimate takes over the ratio the loop had learnt (and
            // whatever a start-up transient wound into it).
            self.controller.clear_integral();
        }
        self.feeding_forward = confident.is_some();
        self.controller
            .set_integrating(self.correction == Correction::Follow);
        let control = self.controller.update(measured, target, period.max(1));
        let drift = match self.correction {
            Correction::Pass => 0.0,
            Correction::Follow => control.drift_ppm,
        };
        resampler.set_drift_ppm(drift);
        self.metrics.applied_ppm = drift;
        self.metrics.passthrough = resampler.is_passthrough();
        self.metrics.converting = self.correction == Correction::Pass && !self.metrics.passthrough;
        // A new request only once the last is done (requests add up), and
        // for the whole error at once: the stretcher spreads it at its own
        // bounded rate (≤ 8 %), where the controller's per-period share
        // would leave it waiting for a segment long enough to cut.
        if control.stretch_frames != 0 {
            let pending = self.stretcher.pending();
            if pending != 0 && pending.signum() != control.stretch_frames.signum() {
                // The error changed sides under a stretch: a stall's
                // backlog landed while the buffer was being lengthened
                // towards the target the stall raised. Finishing it would
                // add audio above the target for seconds (measured: 410 ->
                // 617 ms over 3 s).
                self.stretcher.cancel();
                self.metrics.stretched_frames = self
                    .metrics
                    .stretched_frames
                    .saturating_sub(pending.unsigned_abs() as u64);
            }
            if self.stretcher.pending() == 0 {
                let mut whole = ((measured - target).abs() - tolerance).max(0.0);
                if control.stretch_frames > 0 {
                    whole = whole.min(shorten_room.max(0.0));
                }
                let whole = whole as isize;
                let frames =
                    control.stretch_frames.signum() * whole.max(control.stretch_frames.abs());
                self.stretcher.request(frames);
                self.metrics.stretched_frames += frames.unsigned_abs() as u64;
            }
        }
    }
}

fn active_mut(bank: &mut Option<ResamplerBank>, active: Option<usize>) -> Option<&mut Resampler> {
    bank.as_mut()?
        .entries
        .get_mut(active?)
        .map(|e| &mut e.resampler)
}

struct BankEntry {
    rate: u32,
    channels: u16,
    resampler: Resampler,
}

/// A resampler for each stream format the receiver can be sent, all to one
/// device rate. Built where allocation is allowed (start-up, the device
/// thread) and handed to the engine with the device.
pub struct ResamplerBank {
    device_rate: u32,
    entries: Vec<BankEntry>,
}

impl ResamplerBank {
    /// `formats`: every (rate, channels) a stream may have; duplicates are
    /// built once.
    pub fn new(
        formats: &[(u32, u16)],
        device_rate: u32,
        config: &PlayoutConfig,
    ) -> Result<ResamplerBank, ResampleError> {
        let max_frames = max_render_frames(config);
        let mut entries: Vec<BankEntry> = Vec::with_capacity(formats.len());
        for &(rate, channels) in formats {
            if entries
                .iter()
                .any(|e| e.rate == rate && e.channels == channels)
            {
                continue;
            }
            let built: Vec<&Resampler> = entries.iter().map(|e| &e.resampler).collect();
            let resampler = Resampler::sharing(
                channels.max(1) as usize,
                rate,
                device_rate,
                max_frames,
                &built,
            )?;
            entries.push(BankEntry {
                rate,
                channels,
                resampler,
            });
        }
        Ok(ResamplerBank {
            device_rate,
            entries,
        })
    }

    pub fn device_rate(&self) -> u32 {
        self.device_rate
    }

    fn find(&self, rate: u32, channels: u16) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.rate == rate && e.channels == channels)
    }
}

impl fmt::Debug for ResamplerBank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResamplerBank")
            .field("device_rate", &self.device_rate)
            .field("formats", &self.entries.len())
            .finish()
    }
}

/// Frames one render may produce: sized for the largest period at the
/// highest rate either side could run at, with room for stretching and
/// resampling ratios.
fn max_render_frames(config: &PlayoutConfig) -> usize {
    let period_ms = config.period_ms.clamp(1, MAX_PERIOD_MS);
    (MAX_RATE as usize * period_ms as usize / 1000) * 2 + 256
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
            // (Before packet 1 the source is on probation: no stream yet.)
            assert_ne!(engine.jitter().state(), StreamState::Playing, "packet {k}");
        }
        engine.push(&pcmu_packet(3));
        assert_eq!(engine.jitter().state(), StreamState::Playing);
        assert_eq!(engine.jitter().target_delay_frames(), 1280);
    }

    /// One 20 ms packet of an 8 kHz L16 page: a 1500 Hz tone at
    /// `AMPLITUDE` from its first frame, from `ssrc`, arriving at `at_ns`.
    fn page_packet(ssrc: u32, k: u32, at_ns: u64) -> Packet {
        let mut p = Packet::empty(StreamFormat {
            encoding: Encoding::L16,
            rate: 8000,
            channels: 1,
        });
        p.ssrc = ssrc;
        p.seq = 1000 + k as u16;
        p.timestamp = 5000 + k * 160;
        p.arrival_ns = at_ns;
        p.marker = k == 0;
        p.payload_type = 96;
        for i in 0..160u32 {
            let t = (k * 160 + i) as f64 / 8000.0;
            let v = (8000.0 * (2.0 * std::f64::consts::PI * 1500.0 * t).sin()) as i16;
            let _ = p.payload.extend_from_slice(&v.to_be_bytes());
        }
        p
    }

    /// The page-latency budget (issue 14: a page's first frame plays
    /// within 50 ms of its first packet). On the defaults (adaptive
    /// delay, clock following, 5 ms periods at 48 kHz) the only wait in
    /// the engine is the source lock's probation, one packet: the period
    /// rendered right after the second packet arrives starts with the
    /// first packet's first frame, at full level. What remains of the
    /// budget is the period's wake (0-5 ms) and the device's buffer.
    #[test]
    fn a_page_starts_in_the_first_period_after_its_second_packet_from_its_first_frame() {
        let config = PlayoutConfig::default();
        let mut engine = Engine::new(&config).unwrap();
        let bank = ResamplerBank::new(&config.stream_formats, 48_000, &config).unwrap();
        engine.attach_device(2, Some(bank));
        let period_ns = 5_000_000u64;
        let mut out = vec![0.0f32; 240 * 2];
        let mut k = 0u32;
        let mut first_sound = None;
        for tick in 0..20u64 {
            let now = tick * period_ns;
            while u64::from(k) * 20_000_000 <= now {
                engine.push(&page_packet(0x9999, k, u64::from(k) * 20_000_000));
                k += 1;
            }
            engine.render(&mut out, now);
            if out.iter().any(|&v| v != 0.0) {
                first_sound = Some(now);
                break;
            }
        }
        assert_eq!(first_sound, Some(20_000_000), "not at the second packet");
        // The period is the page from its first frame: the tone as sent,
        // nothing skipped or faded. Within 5 % of full scale past the
        // first 16 frames (the band-limited onset rings: 3.3 % measured);
        // a frame skipped or held back would be off by 20 %, a fade-in
        // by most of full scale.
        let full = 8000.0 / 32768.0;
        let mut worst = 0.0f64;
        for (n, frame) in out.chunks_exact(2).enumerate().skip(16) {
            let want = full * (2.0 * std::f64::consts::PI * 1500.0 * n as f64 / 48_000.0).sin();
            worst = worst.max((f64::from(frame[0]) - want).abs());
        }
        println!(
            "first period off the sent tone by {:.4} of full",
            worst / full
        );
        assert!(worst < 0.05 * full, "off the sent tone by {worst}");
        assert_eq!(engine.jitter().metrics().skipped_silence_frames, 0);
    }

    #[test]
    fn a_lone_stray_packet_never_sounds() {
        let config = PlayoutConfig::default();
        let mut engine = Engine::new(&config).unwrap();
        let bank = ResamplerBank::new(&config.stream_formats, 48_000, &config).unwrap();
        engine.attach_device(2, Some(bank));
        let mut out = vec![0.0f32; 240 * 2];
        engine.push(&page_packet(0x5757, 0, 0));
        for tick in 0..200u64 {
            engine.render(&mut out, tick * 5_000_000);
            assert!(out.iter().all(|&v| v == 0.0), "sound at tick {tick}");
        }
        assert_eq!(engine.source().metrics().takeovers, 0);
    }

    /// A stream of the config's one format (L16, a voiced-like tone, 20
    /// ms packets from t = 0) into an engine whose device plays from
    /// `device_at_ns` on, in 5 ms periods of 48 kHz stereo, for `seconds`:
    /// before, the audio is held. `each` sees every rendered period.
    fn slow_device_start(
        config: &PlayoutConfig,
        channels: u16,
        device_at_ns: u64,
        seconds: u64,
        mut each: impl FnMut(&mut Engine, &[f32], u64),
    ) -> Engine {
        let (rate, _) = config.stream_formats[0];
        let format = StreamFormat {
            encoding: Encoding::L16,
            rate,
            channels,
        };
        let frames = rate / 50;
        let packet = |k: u32| {
            let mut p = Packet::empty(format);
            p.ssrc = 5;
            p.seq = k as u16;
            p.timestamp = k * frames;
            p.arrival_ns = k as u64 * 20_000_000;
            p.marker = k == 0;
            p.payload_type = 96;
            for i in 0..frames {
                // So the stretcher finds its periods.
                let t = (k * frames + i) as f64 / f64::from(rate);
                let v = (8000.0 * (2.0 * std::f64::consts::PI * 180.0 * t).sin()) as i16;
                for _ in 0..channels {
                    let _ = p.payload.extend_from_slice(&v.to_be_bytes());
                }
            }
            p
        };
        let mut engine = Engine::new(config).unwrap();
        let period_ns = 5_000_000u64;
        let mut out = vec![0.0f32; 240 * 2];
        let mut k = 0u32;
        for tick in 1..=(seconds * 1000 / 5) {
            let now = tick * period_ns;
            while k as u64 * 20_000_000 <= now {
                engine.push(&packet(k));
                k += 1;
            }
            if now < device_at_ns {
                engine.set_holding(true);
                engine.idle(now, 5);
                continue;
            }
            if engine.bank_rate().is_none() {
                let bank = ResamplerBank::new(&config.stream_formats, 48_000, config).unwrap();
                engine.attach_device(2, Some(bank));
            }
            engine.set_holding(false);
            engine.render(&mut out, now);
            each(&mut engine, &out, now);
        }
        engine
    }

    #[test]
    fn a_backlog_caught_up_on_the_defaults_ends_near_the_target_without_starving() {
        // The first stream after start-up behind PulseAudio: the device
        // takes 1.9 s to consume, the default (auto) latency on a clean
        // link, 20 ms packets of 48 kHz stereo. The catch-up must not run
        // the jitter buffer dry (a glitch at every such start), and the
        // delay must come back to its target in seconds, not tens.
        let config = PlayoutConfig {
            stream_formats: vec![(48_000, 2)],
            ..PlayoutConfig::default()
        };
        let mut excess = Vec::new();
        let engine = slow_device_start(&config, 2, 1_900_000_000, 30, |engine, _, now| {
            engine.device_position(now, (now - 1_900_000_000) / 5_000_000 * 240);
            let e = (engine.buffered_delay_frames() - engine.target_delay_frames()) / 48.0;
            excess.push((now, e));
        });
        let m = engine.jitter().metrics();
        // Nothing dropped, nothing starved: every frame of the start plays.
        assert_eq!(
            (m.overflow, m.late, m.lost, m.underruns),
            (0, 0, 0, 0),
            "{m:?}"
        );
        // The mean excess over the second before `at_s` (the level saws a
        // packet deep: a mean, not a sample).
        let mean_excess = |at_s: u64| {
            let window: Vec<f64> = excess
                .iter()
                .filter(|(t, _)| (at_s - 1) * 1_000_000_000 < *t && *t <= at_s * 1_000_000_000)
                .map(|(_, e)| *e)
                .collect();
            window.iter().sum::<f64>() / window.len().max(1) as f64
        };
        let (early, late) = (mean_excess(12), mean_excess(30));
        println!("excess over the target: {early:.1} ms at 12 s, {late:.1} ms at 30 s");
        // 1.9 s of backlog at up to 20 % faster is gone by about 11.5 s,
        // cut down to the target with no more than a step's window in
        // hand. Cutting to the target with a look-ahead held back left
        // 33 ms at 12 s and 15 ms at 30 s, after 4 starvings; starting
        // cuts only with the whole look-ahead here, 18.5 and 0.8 ms.
        assert!(early < 5.0, "{early:.1} ms above the target at 12 s");
        // Within 3 ms the clocks' agreement is left alone (bit-exact).
        assert!(late.abs() < 4.0, "{late:.1} ms off the target at 30 s");
    }

    #[test]
    fn audio_held_while_the_device_opens_is_played_then_caught_up() {
        // A paging announcement starts while the device is still opening
        // (a sound server takes 1.5 s): nothing of it may be dropped, and
        // the backlog is played out faster by stretching until the delay is
        // back at its target.
        let config = PlayoutConfig {
            latency: Latency::Fixed { ms: 40 },
            stream_formats: vec![(8000, 1)],
            ..PlayoutConfig::default()
        };
        let mut first_sound_ns = None;
        let mut back_at_target_ns = None;
        let engine = slow_device_start(&config, 1, 1_500_000_000, 40, |engine, out, now| {
            if first_sound_ns.is_none() && out.iter().any(|&v| v != 0.0) {
                first_sound_ns = Some(now);
            }
            let excess_ms = (engine.buffered_delay_frames() - engine.target_delay_frames()) / 8.0;
            if first_sound_ns.is_some() && back_at_target_ns.is_none() && excess_ms.abs() < 5.0 {
                back_at_target_ns = Some(now);
            }
        });
        let m = engine.jitter().metrics();
        assert_eq!((m.overflow, m.late, m.lost), (0, 0, 0), "{m:?}");
        // Played from the device's first period on, from the stream's first
        // frame (nothing skipped: no overflow, nothing late).
        assert_eq!(first_sound_ns, Some(1_500_000_000));
        // 1.5 s of backlog at up to 20 % faster: well under 15 s.
        let back = back_at_target_ns.expect("the delay never came back to its target");
        println!("back at the target at {} ms", back / 1_000_000);
        assert!(
            back < 15_000_000_000,
            "back at the target only at {back} ns"
        );
        assert!(
            engine.metrics().stretched_frames > 8000,
            "{:?}",
            engine.metrics()
        );
    }
}
