//! The jitter buffer: the playout thread's store between the network and
//! the sound card.
//!
//! Input: received packets (`Packet`, payload still encoded) pushed in
//! arrival order. Output: runs of decoded, interleaved `i16` frames at the
//! playout cursor, each run homogeneous: `Audio` (stored frames), `Missing`
//! (a hole the caller conceals) or `Idle` (silence: nothing to play).
//!
//! Policy:
//! - RTP packets are placed by timestamp (extended to 64 bits across wrap)
//!   in a fixed ring allocated once in `new`; sequence numbers are extended
//!   too, for duplicate and reorder detection and RFC 3550 loss counting.
//! - A stream starts (and restarts after being lost) by anchoring the cursor
//!   on its first packet and reading `Idle` until the buffered depth reaches
//!   the target playout delay.
//!   Whatever the start holds above the target (whole packets, and the
//!   source lock's probation), if it is silence, may be skipped once
//!   playing (`skip_start_silence`); sound never is.
//! - Reordered packets that arrive before their playout time are placed;
//!   duplicates are dropped; late packets (ending at or before the cursor)
//!   are dropped; a packet straddling the cursor keeps its unplayed part
//!   (counted as partly late). Each of these is counted.
//! - Lost audio reads as `Missing`; a forward timestamp jump on a packet with
//!   the marker bit and the next sequence number (silence suppression: the
//!   sender sent nothing) reads as `Idle` and is not loss. With a sequence
//!   gap it is loss: ffmpeg, for one, marks every Opus and AAC packet.
//! - A depth beyond `max_delay_ms` skips the cursor forward to the target
//!   delay (the oldest audio is dropped, counted as overflow); a timestamp
//!   jump beyond the ring's capacity re-anchors the stream (resync).
//! - Headerless PCM (`Packet::sequential`) carries no timing: it is appended
//!   at the write end in arrival order, and a packet that would take the
//!   depth beyond `max_delay_ms` is dropped (overflow). This bounds memory
//!   and latency for a sender that sends faster than real time.
//! - A new SSRC or a new payload format resets the buffer onto the new
//!   stream. No packet for `stream_lost_ms`, and nothing left to play,
//!   marks the stream lost.
//!
//! - Opus (`JitterConfig::opus`): payloads stay encoded in an
//!   `OpusStore` until the cursor reaches them, and are decoded there, in
//!   stream order, as Opus's stateful decoder needs. A hole the cursor
//!   reaches is rebuilt from the next packet's in-band FEC when that packet
//!   has arrived (read as `Audio`, counted in `fec_recovered`), else
//!   concealed by the decoder (read as `Concealed`). An empty Opus payload
//!   (DTX keep-alive) keeps the stream alive and stores nothing.
//!
//! Nothing allocates after `new`; `read` copies whole runs with slice copies.

use core::fmt;

use crate::audio::codec;
use crate::audio::format::{Encoding, StreamFormat, MAX_CHANNELS, MAX_RATE, MIN_RATE};
use crate::audio::opus::{OpusError, MAX_PACKET_FRAMES, MIN_FRAME};
use crate::receive::opus_store::{Decoded, OpusStore};
use crate::rtp::packet::Packet;
use crate::rtp::stats::{ReceiverStats, SeqStatus};

/// Per-frame state of a ring slot.
const EMPTY: u8 = 0;
const AUDIO: u8 = 1;
/// A talkspurt gap: the sender sent nothing on purpose.
const SILENCE: u8 = 2;
/// An Opus packet's frames, not decoded yet (in the `OpusStore`).
const ENCODED: u8 = 3;
/// Lost Opus frames rebuilt from the next packet's in-band FEC.
const RECOVERED: u8 = 4;
/// Lost Opus frames concealed by the decoder.
const CONCEALED: u8 = 5;

/// Extended timestamps start here, so that a packet older than the anchor
/// still has a positive position.
const ORIGIN: u64 = 1 << 40;

/// Longest ring accepted, so that a typo cannot ask for gigabytes.
const MAX_CAPACITY_MS: u32 = 60_000;

/// Sizing and delay policy of the jitter buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JitterConfig {
    /// Ring size in milliseconds at `max_rate`; audio beyond it cannot be stored.
    pub capacity_ms: u32,
    /// Playout delay to build up before starting, and to hold (milliseconds).
    pub target_delay_ms: u32,
    /// Hard ceiling on the buffered delay (milliseconds); see the overflow policy.
    pub max_delay_ms: u32,
    /// No packet for this long (milliseconds) means the stream is lost.
    pub stream_lost_ms: u32,
    /// Highest stream rate (frames per second) the ring is sized for.
    pub max_rate: u32,
    /// Highest channel count the ring is sized for.
    pub max_channels: u16,
    /// Opus streams may come: keep an Opus packet store and decoder.
    pub opus: bool,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            capacity_ms: 1000,
            target_delay_ms: 60,
            max_delay_ms: 300,
            stream_lost_ms: 500,
            max_rate: 48_000,
            max_channels: 2,
            opus: false,
        }
    }
}

/// A `JitterConfig` that cannot be used; names the field and its range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JitterError {
    Capacity(u32),
    /// `target_delay_ms` must not exceed `max_delay_ms`.
    TargetAboveMax {
        target_ms: u32,
        max_ms: u32,
    },
    /// `max_delay_ms` must be from 1 to `capacity_ms`.
    MaxDelay {
        max_ms: u32,
        capacity_ms: u32,
    },
    StreamLost(u32),
    Rate(u32),
    Channels(u16),
    /// The Opus decoder could not be made.
    Opus(OpusError),
}

impl fmt::Display for JitterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JitterError::Capacity(ms) => write!(
                f,
                "jitter buffer capacity {ms} ms is out of range: use 1 to {MAX_CAPACITY_MS} ms"
            ),
            JitterError::TargetAboveMax { target_ms, max_ms } => write!(
                f,
                "target playout delay {target_ms} ms exceeds the maximum delay {max_ms} ms: \
                 lower the latency or raise the maximum latency"
            ),
            JitterError::MaxDelay {
                max_ms,
                capacity_ms,
            } => write!(
                f,
                "maximum delay {max_ms} ms must be from 1 ms to the buffer capacity {capacity_ms} ms"
            ),
            JitterError::StreamLost(ms) => write!(
                f,
                "stream-lost timeout {ms} ms is out of range: use at least 1 ms"
            ),
            JitterError::Rate(r) => write!(
                f,
                "jitter buffer sized for rate {r} Hz: use {MIN_RATE} to {MAX_RATE} Hz"
            ),
            JitterError::Opus(e) => write!(f, "jitter buffer: {e}"),
            JitterError::Channels(c) => write!(
                f,
                "jitter buffer sized for {c} channels: use 1 to {MAX_CHANNELS}"
            ),
        }
    }
}

impl std::error::Error for JitterError {}

/// What `push` did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// Placed in order.
    Stored,
    /// Placed, although a packet with a higher sequence number came first.
    Reordered,
    /// Already received; dropped.
    Duplicate,
    /// Its audio was already played (or skipped); dropped.
    Late,
    /// The buffer was over `max_delay_ms`: for timestamped packets the
    /// oldest audio was dropped to make room and this packet stored; for
    /// sequential (headerless) packets this packet was dropped.
    Overflow,
    /// A new sender (SSRC) or a new payload format: the buffer was reset
    /// and re-anchored on this packet, which is stored. Log it once.
    NewStream {
        previous_ssrc: Option<u32>,
        ssrc: u32,
    },
    /// A timestamp jump beyond the buffer's capacity on the same stream: the
    /// buffer was re-anchored on this packet, which is stored.
    Resync,
    /// Its rate or channel count exceeds what the buffer was sized for.
    Unsupported,
}

/// One homogeneous run of frames at the playout cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Stored audio, copied into the output (for Opus also frames of a
    /// lost packet rebuilt from the next one's FEC).
    Audio(usize),
    /// Audio that was lost and that the codec concealed (Opus PLC): the
    /// output holds the concealment; play it, count it as concealed.
    Concealed(usize),
    /// Audio that should be there is not (loss, or the buffer ran dry): the
    /// caller conceals it. The output holds zeros.
    Missing(usize),
    /// Nothing to play (no stream, prebuffering, stream lost, or a talkspurt
    /// gap): silence. The output holds zeros.
    Idle(usize),
}

impl ReadStatus {
    pub fn frames(self) -> usize {
        match self {
            ReadStatus::Audio(n)
            | ReadStatus::Concealed(n)
            | ReadStatus::Missing(n)
            | ReadStatus::Idle(n) => n,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamState {
    /// No packet yet.
    NoStream,
    /// Anchored; building up the target delay before playing.
    Prebuffering,
    Playing,
    /// No packet for `stream_lost_ms`; the next packet starts a new prebuffer.
    Lost,
}

/// Counters since `new`; they keep counting across streams.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JitterMetrics {
    /// Packets received, duplicates excluded (late and dropped ones included).
    pub packets: u64,
    /// RFC 3550 cumulative loss: expected minus received packets.
    pub lost: u64,
    /// Packets whose audio had all been played (or skipped) when they
    /// came: dropped.
    pub late: u64,
    /// Packets whose first frames had been played (concealed) when they
    /// came, the rest not: the rest is kept. Not in `late`.
    pub partly_late: u64,
    pub reordered: u64,
    pub duplicates: u64,
    /// Overflow events: packets dropped (sequential) or cursor skips (timestamped).
    pub overflow: u64,
    /// Frames dropped by overflow.
    pub overflow_frames: u64,
    pub new_streams: u64,
    pub resyncs: u64,
    /// Times the stream was declared lost.
    pub stream_lost: u64,
    /// Talkspurt gaps (marker bit with a timestamp jump) read as silence.
    pub talkspurts: u64,
    /// Times the buffer ran dry while playing.
    pub underruns: u64,
    /// Packets whose format the buffer is not sized for.
    pub unsupported: u64,
    /// RFC 3550 interarrival jitter, in timestamp units of the current stream.
    pub jitter: f64,
    /// SSRC of the current stream (0 for headerless PCM).
    pub ssrc: Option<u32>,
    /// Frames returned by `read`, by kind.
    pub audio_frames: u64,
    pub missing_frames: u64,
    pub idle_frames: u64,
    /// Opus: lost packets rebuilt from the next packet's in-band FEC.
    pub fec_recovered: u64,
    /// Opus: frames the decoder concealed (also in `missing_frames`).
    pub codec_concealed_frames: u64,
    /// Opus: stored packets that did not decode (played as a hole).
    pub decode_errors: u64,
    /// Silent frames skipped at a start (`skip_start_silence`).
    pub skipped_silence_frames: u64,
    /// Frames sync playout skipped to reach its target (late audio).
    pub sync_skipped_frames: u64,
}

impl JitterMetrics {
    /// The interarrival jitter in milliseconds for a stream of `rate` Hz.
    pub fn jitter_ms(&self, rate: u32) -> f64 {
        if rate == 0 {
            0.0
        } else {
            self.jitter * 1000.0 / rate as f64
        }
    }
}

fn frames_for_ms(rate: u32, ms: u32) -> usize {
    (rate as u64 * ms as u64 / 1000) as usize
}

/// A fixed-capacity jitter buffer; see the module documentation.
pub struct JitterBuffer {
    config: JitterConfig,
    /// Interleaved samples; the current stream uses `ring_frames * channels`.
    samples: Vec<i16>,
    /// One state per frame slot (`EMPTY`, `AUDIO`, `SILENCE`). Invariant:
    /// slots of positions outside `[cursor, newest_end)` are `EMPTY`.
    states: Vec<u8>,
    state: StreamState,
    format: Option<StreamFormat>,
    sequential: bool,
    /// Frames the ring holds at the current format (`capacity_ms` at its rate).
    ring_frames: usize,
    /// Extended timestamp of the next frame to play.
    cursor: u64,
    /// Extended timestamp just past the newest stored audio.
    newest_end: u64,
    /// Frames concealed since the buffer starved (cursor held).
    starved_frames: u64,
    /// Frames in the latest packet (the ptime): the buffer's level saws
    /// between the target and the target plus one packet.
    packet_frames: usize,
    target_frames: usize,
    /// Rate `target_frames` is counted in (0: not yet set).
    target_rate: u32,
    ts_ref_raw: u32,
    ts_ref_ext: u64,
    /// RFC 3550 receiver statistics; also tells duplicates and reordered
    /// packets apart (sequence numbers extended in one place).
    rtp_stats: ReceiverStats,
    last_arrival_ns: u64,
    /// When `read` was last called (0: never), and how many frames it
    /// asked for.
    last_read_ns: u64,
    last_read_frames: u64,
    in_underrun: bool,
    /// Opus packets waiting to be decoded, and the decoder.
    opus: Option<OpusStore>,
    metrics: JitterMetrics,
}

impl JitterBuffer {
    /// Validates `config` and allocates the ring; nothing allocates later.
    pub fn new(config: &JitterConfig) -> Result<Self, JitterError> {
        if config.capacity_ms == 0 || config.capacity_ms > MAX_CAPACITY_MS {
            return Err(JitterError::Capacity(config.capacity_ms));
        }
        if config.max_delay_ms == 0 || config.max_delay_ms > config.capacity_ms {
            return Err(JitterError::MaxDelay {
                max_ms: config.max_delay_ms,
                capacity_ms: config.capacity_ms,
            });
        }
        if config.target_delay_ms > config.max_delay_ms {
            return Err(JitterError::TargetAboveMax {
                target_ms: config.target_delay_ms,
                max_ms: config.max_delay_ms,
            });
        }
        if config.stream_lost_ms == 0 {
            return Err(JitterError::StreamLost(config.stream_lost_ms));
        }
        if !(MIN_RATE..=MAX_RATE).contains(&config.max_rate) {
            return Err(JitterError::Rate(config.max_rate));
        }
        if !(1..=MAX_CHANNELS).contains(&config.max_channels) {
            return Err(JitterError::Channels(config.max_channels));
        }
        let frames = frames_for_ms(config.max_rate, config.capacity_ms);
        let opus = if config.opus {
            let ring = frames_for_ms(crate::audio::opus::RATE, config.capacity_ms);
            Some(OpusStore::new(ring).map_err(JitterError::Opus)?)
        } else {
            None
        };
        // The ring is written all round within its first turn, by the
        // playout thread: make it resident here (issue 11: no page faults
        // there after start-up).
        let mut samples = vec![0; frames * config.max_channels as usize];
        let mut states = vec![EMPTY; frames];
        crate::service::alloc::prefault(&mut samples);
        crate::service::alloc::prefault(&mut states);
        Ok(JitterBuffer {
            config: config.clone(),
            samples,
            states,
            state: StreamState::NoStream,
            format: None,
            sequential: false,
            ring_frames: frames,
            cursor: ORIGIN,
            newest_end: ORIGIN,
            starved_frames: 0,
            packet_frames: 0,
            target_frames: 0,
            target_rate: 0,
            ts_ref_raw: 0,
            ts_ref_ext: ORIGIN,
            rtp_stats: ReceiverStats::default(),
            last_arrival_ns: 0,
            last_read_ns: 0,
            last_read_frames: 0,
            in_underrun: false,
            opus,
            metrics: JitterMetrics::default(),
        })
    }

    /// Stores one received packet; see the module documentation for policy.
    pub fn push(&mut self, packet: &Packet) -> PushOutcome {
        let format = packet.format;
        if format.channels == 0
            || format.channels > self.config.max_channels
            || format.rate < MIN_RATE
            || format.rate > self.config.max_rate
            || (format.encoding == Encoding::Opus && (self.opus.is_none() || packet.sequential))
        {
            self.metrics.unsupported += 1;
            return PushOutcome::Unsupported;
        }
        let same_stream = self.metrics.ssrc == Some(packet.ssrc)
            && self.format == Some(format)
            && self.sequential == packet.sequential;
        let mut new_stream = None;
        if !same_stream {
            new_stream = Some(PushOutcome::NewStream {
                previous_ssrc: self.metrics.ssrc,
                ssrc: packet.ssrc,
            });
            self.metrics.new_streams += 1;
            self.set_stream(packet);
            self.anchor(packet);
        } else {
            // A pause longer than the stream-lost timeout that no read saw
            // (the process was stopped) is a lost stream all the same.
            self.check_lost(packet.arrival_ns);
            if matches!(self.state, StreamState::NoStream | StreamState::Lost) {
                self.anchor(packet);
            }
        }
        let outcome = if packet.sequential {
            self.push_sequential(packet)
        } else {
            self.push_timestamped(packet)
        };
        self.start_when_prebuffered();
        new_stream.unwrap_or(outcome)
    }

    /// Reads ONE homogeneous run starting at the playout cursor, at most
    /// `out.len() / channels` frames (at least one when that is at least
    /// one), and advances the cursor by it. `out.len()` must be a multiple
    /// of the current format's channels (1 before any stream). `now_ns` is
    /// the monotonic clock, compared with packet arrival times to detect a
    /// lost stream.
    pub fn read(&mut self, out: &mut [i16], now_ns: u64) -> ReadStatus {
        let channels = self.channels();
        let wanted = out.len() / channels;
        if wanted == 0 {
            return ReadStatus::Idle(0);
        }
        self.last_read_ns = now_ns;
        self.last_read_frames = wanted as u64;
        self.check_lost(now_ns);
        self.start_when_prebuffered();
        if self.state != StreamState::Playing {
            zero(out, wanted * channels);
            self.metrics.idle_frames += wanted as u64;
            return ReadStatus::Idle(wanted);
        }
        if self.cursor >= self.newest_end {
            // Starved: nothing newer has arrived, so nothing is known to be
            // lost yet. The frames are concealed but the cursor stays:
            // packets that were only delayed (a stalled sender, a Wi-Fi
            // hiccup) then play instead of arriving "late" behind a cursor
            // that ran on, and the delay grows by the stall (the delay
            // controller takes it back without a gap). When the next packet
            // shows a gap (a loss), the concealment already played stands
            // in for it (see `resume_after_starving`).
            if !self.in_underrun {
                self.in_underrun = true;
                self.metrics.underruns += 1;
                self.starved_frames = 0;
            }
            self.starved_frames += wanted as u64;
            zero(out, wanted * channels);
            self.metrics.missing_frames += wanted as u64;
            return ReadStatus::Missing(wanted);
        }
        self.in_underrun = false;
        if self.opus.is_some() {
            self.decode_at_cursor(wanted);
        }
        let available = wanted.min((self.newest_end - self.cursor) as usize);
        let (first, second) = self.slot_ranges(self.cursor, available);
        let kind = self.states.get(first.start).copied().unwrap_or(EMPTY);
        let mut n = run_length(self.states.get(first.clone()).unwrap_or(&[]), kind);
        if n == first.len() {
            n += run_length(self.states.get(second.clone()).unwrap_or(&[]), kind);
        }
        let n = n.max(1);
        let (first, second) = self.slot_ranges(self.cursor, n);
        if matches!(kind, AUDIO | RECOVERED | CONCEALED) {
            let split = first.len() * channels;
            let (head, tail) = out.split_at_mut(split.min(out.len()));
            copy_slots(&self.samples, first.clone(), channels, head);
            copy_slots(&self.samples, second.clone(), channels, tail);
        } else {
            zero(out, n * channels);
        }
        for range in [first, second] {
            if let Some(s) = self.states.get_mut(range) {
                s.fill(EMPTY);
            }
        }
        self.cursor += n as u64;
        match kind {
            AUDIO => {
                self.metrics.audio_frames += n as u64;
                ReadStatus::Audio(n)
            }
            SILENCE => {
                self.metrics.idle_frames += n as u64;
                ReadStatus::Idle(n)
            }
            RECOVERED => {
                self.metrics.missing_frames += n as u64;
                ReadStatus::Audio(n)
            }
            CONCEALED => {
                self.metrics.missing_frames += n as u64;
                self.metrics.codec_concealed_frames += n as u64;
                ReadStatus::Concealed(n)
            }
            _ => {
                self.metrics.missing_frames += n as u64;
                ReadStatus::Missing(n)
            }
        }
    }

    /// At a start: skips the frames by which the buffer holds more than its
    /// target level (margin + packet, counted from the newest packet's
    /// arrival) and `keep` frames, if every one of them is silence, stored audio within
    /// ±`level` or a talkspurt's gap: all or nothing. The source lock's
    /// probation holds a new stream back until its second packet: with
    /// packets longer than the margin it starts up to a packet above its
    /// delay, which resampling takes back at 1 ms a second. Silence before
    /// the first sound (a paging call's, a file's lead-in) can go without
    /// being missed; sound is never skipped. Returns the frames skipped.
    pub fn skip_start_silence(&mut self, now_ns: u64, keep: usize, level: i16) -> usize {
        if self.state != StreamState::Playing {
            return 0;
        }
        let rate = self.format.map_or(0, |f| f.rate) as u64;
        let since_ns = now_ns.saturating_sub(self.last_arrival_ns);
        let since = (since_ns.saturating_mul(rate) / 1_000_000_000).min(self.packet_frames as u64);
        let depth = self.newest_end.saturating_sub(self.cursor);
        let excess = (depth + since).saturating_sub((self.target_frames + keep) as u64);
        let frames = excess.min(depth) as usize;
        if frames == 0 || frames >= self.ring_frames {
            return 0;
        }
        let channels = self.channels();
        let (first, second) = self.slot_ranges(self.cursor, frames);
        for slot in first.chain(second) {
            let silent = match self.states.get(slot) {
                Some(&SILENCE) => true,
                Some(&AUDIO) => self
                    .samples
                    .get(slot * channels..(slot + 1) * channels)
                    .is_some_and(|f| f.iter().all(|&v| v.unsigned_abs() <= level.unsigned_abs())),
                _ => false,
            };
            if !silent {
                return 0;
            }
        }
        let to = self.cursor + frames as u64;
        self.clear_positions(self.cursor, to);
        self.cursor = to;
        self.metrics.skipped_silence_frames += frames as u64;
        frames
    }

    /// Sync playout's alignment: the next `frames` frames are late and go
    /// unplayed, stored or not (the cursor may pass the newest audio: what
    /// arrives for the skipped frames is then late). Counted in
    /// `sync_skipped_frames`. Only while playing; returns the frames skipped.
    pub fn skip(&mut self, frames: usize) -> usize {
        if self.state != StreamState::Playing || frames == 0 || frames >= self.ring_frames {
            return 0;
        }
        let to = self.cursor + frames as u64;
        self.clear_positions(self.cursor, to.min(self.newest_end.max(self.cursor)));
        self.cursor = to;
        self.newest_end = self.newest_end.max(to);
        self.in_underrun = false;
        self.metrics.sync_skipped_frames += frames as u64;
        frames
    }

    /// The RTP timestamp of the frame at the playout cursor (the next one
    /// `read` gives out); meaningful for timestamped streams.
    pub fn cursor_timestamp(&self) -> u32 {
        self.ts_ref_raw
            .wrapping_add(self.cursor.wrapping_sub(self.ts_ref_ext) as u32)
    }

    /// The format of the frames `read` returns now (kept after a stream is lost).
    pub fn format(&self) -> Option<StreamFormat> {
        self.format
    }

    pub fn state(&self) -> StreamState {
        self.state
    }

    /// Frames from the playout cursor to the end of the newest stored audio.
    pub fn depth_frames(&self) -> usize {
        match self.state {
            StreamState::Prebuffering | StreamState::Playing => {
                self.newest_end.saturating_sub(self.cursor) as usize
            }
            StreamState::NoStream | StreamState::Lost => 0,
        }
    }

    pub fn target_delay_frames(&self) -> usize {
        self.target_frames
    }

    /// Frames in the latest packet stored (the stream's ptime).
    pub fn packet_frames(&self) -> usize {
        self.packet_frames
    }

    /// Sets the playout delay to hold (adaptive delay), in frames of the
    /// current stream (of `max_rate` before any stream); clamped to
    /// `max_delay_ms`.
    pub fn set_target_delay_frames(&mut self, frames: usize) {
        let rate = self.format.map_or(self.config.max_rate, |f| f.rate);
        self.target_rate = rate;
        self.target_frames = frames.min(self.max_delay_frames(rate));
    }

    /// Moves the ceiling on the buffered delay (adaptive delay keeps it a
    /// headroom above the target); clamped to 1..=`capacity_ms`, and the
    /// target is clamped under it.
    pub fn set_max_delay_ms(&mut self, ms: u32) {
        self.config.max_delay_ms = ms.clamp(1, self.config.capacity_ms);
        let rate = self.format.map_or(self.config.max_rate, |f| f.rate);
        self.target_frames = self.target_frames.min(self.max_delay_frames(rate));
    }

    pub fn max_delay_ms(&self) -> u32 {
        self.config.max_delay_ms
    }

    /// Frames the ring holds at the current stream's rate.
    pub fn capacity_frames(&self) -> usize {
        self.ring_frames
    }

    /// The extended timestamp of the playout cursor: advances by exactly
    /// what `read` returns while playing (for delay and drift estimation).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    pub fn metrics(&self) -> &JitterMetrics {
        &self.metrics
    }

    fn channels(&self) -> usize {
        self.format.map_or(1, |f| f.channels.max(1) as usize)
    }

    /// The depth past which `packet` overflows: `max_delay_ms`, plus what
    /// the reader has fallen behind since its last read (beyond the frames
    /// that read took: a reader in step is never behind). A playout thread
    /// held up (descheduled, a vgdb request, a slow page) reads the audio
    /// that arrived meanwhile as soon as it runs again, into the room the
    /// device made meanwhile: that is not a sender running ahead of real
    /// time, and its audio must not be dropped. Within the ring, always.
    fn overflow_limit(&self, packet: &Packet) -> u64 {
        let rate = packet.format.rate;
        let max_delay = self.max_delay_frames(rate) as u64;
        let behind = if self.last_read_ns == 0 {
            0
        } else {
            packet
                .arrival_ns
                .saturating_sub(self.last_read_ns)
                .saturating_mul(u64::from(rate))
                / 1_000_000_000
        }
        .saturating_sub(self.last_read_frames);
        let capacity = frames_for_ms(rate, self.config.capacity_ms) as u64;
        max_delay.max(max_delay.saturating_add(behind).min(capacity))
    }

    fn max_delay_frames(&self, rate: u32) -> usize {
        frames_for_ms(rate, self.config.max_delay_ms)
    }

    /// Adopts a new stream's format and SSRC; keeps an adaptive target by
    /// rescaling it to the new rate.
    fn set_stream(&mut self, packet: &Packet) {
        let rate = packet.format.rate;
        let old_rate = self.format.map(|f| f.rate);
        self.format = Some(packet.format);
        self.sequential = packet.sequential;
        self.metrics.ssrc = Some(packet.ssrc);
        self.ring_frames = frames_for_ms(rate, self.config.capacity_ms)
            .min(self.states.len())
            .min(self.samples.len() / packet.format.channels.max(1) as usize)
            .max(1);
        self.target_frames = if self.target_rate == 0 {
            frames_for_ms(rate, self.config.target_delay_ms)
        } else {
            (self.target_frames as u64 * rate as u64 / self.target_rate as u64) as usize
        };
        self.target_rate = rate;
        self.target_frames = self.target_frames.min(self.max_delay_frames(rate));
        if let Some(old) = old_rate.filter(|&r| r != rate && r != 0) {
            // Keep the jitter estimate meaningful in the new timestamp units.
            self.rtp_stats.rescale_jitter(old, rate);
            self.metrics.jitter = self.rtp_stats.jitter();
        }
    }

    /// Empties the ring and anchors the cursor on `packet`'s first frame,
    /// prebuffering from there; closes the loss accounting of the old run.
    fn anchor(&mut self, packet: &Packet) {
        self.rtp_stats.restart(packet.seq);
        self.metrics.lost = self.rtp_stats.cumulative_lost();
        let used = self.ring_frames.min(self.states.len());
        if let Some(s) = self.states.get_mut(..used) {
            s.fill(EMPTY);
        }
        self.state = StreamState::Prebuffering;
        self.cursor = ORIGIN;
        self.newest_end = ORIGIN;
        self.ts_ref_raw = packet.timestamp;
        self.ts_ref_ext = ORIGIN;
        self.in_underrun = false;
        self.last_arrival_ns = packet.arrival_ns;
        if let Some(store) = self.opus.as_mut() {
            store.reset(packet.format.channels);
        }
    }

    /// The first packet after the buffer starved starts at `start`. The
    /// frames concealed meanwhile stand in for a gap before it (lost
    /// packets): the cursor skips as much of the gap as was concealed, so
    /// a loss at the head of the buffer costs no delay; a packet that just
    /// continues (a stall) skips nothing and plays in full.
    fn resume_after_starving(&mut self, start: u64) {
        let skip = (start - self.cursor).min(self.starved_frames);
        if skip > 0 {
            self.clear_positions(self.cursor, self.cursor + skip);
            self.cursor += skip;
            self.newest_end = self.newest_end.max(self.cursor);
        } else {
            // The stream just continues: it stalled. Its margin is gone,
            // so prebuffer it again (the delay grows by the stall and the
            // controller takes the excess back later).
            self.state = StreamState::Prebuffering;
        }
        self.in_underrun = false;
        self.starved_frames = 0;
    }

    fn start_when_prebuffered(&mut self) {
        if self.state == StreamState::Prebuffering && self.depth_frames() >= self.target_frames {
            self.state = StreamState::Playing;
        }
    }

    fn check_lost(&mut self, now_ns: u64) {
        let lost_ns = self.config.stream_lost_ms as u64 * 1_000_000;
        // Audio still buffered is still to be played: a backlog held while
        // the device was away outlasts the sender by seconds.
        if matches!(self.state, StreamState::Playing | StreamState::Prebuffering)
            && now_ns.saturating_sub(self.last_arrival_ns) > lost_ns
            && (self.state == StreamState::Prebuffering || self.newest_end <= self.cursor)
        {
            self.state = StreamState::Lost;
            self.metrics.stream_lost += 1;
            self.in_underrun = false;
        }
    }

    /// Headerless PCM: append at the write end in arrival order.
    fn push_sequential(&mut self, packet: &Packet) -> PushOutcome {
        self.metrics.packets += 1;
        self.last_arrival_ns = packet.arrival_ns;
        if self.state == StreamState::Playing && (self.in_underrun || self.newest_end < self.cursor)
        {
            // The buffer ran dry: the stream continues where it stopped,
            // after a fresh prebuffer that restores the margin, rather than
            // feeding an underrun cascade.
            self.newest_end = self.newest_end.max(self.cursor);
            self.state = StreamState::Prebuffering;
            self.in_underrun = false;
            self.starved_frames = 0;
        }
        let frames = packet.frames() as u64;
        let start = self.newest_end;
        let end = start + frames;
        let limit = self.overflow_limit(packet);
        if end - self.cursor > limit {
            self.metrics.overflow += 1;
            self.metrics.overflow_frames += frames;
            return PushOutcome::Overflow;
        }
        self.store(packet, start, start, end);
        self.newest_end = end;
        PushOutcome::Stored
    }

    /// RTP: place by timestamp.
    fn push_timestamped(&mut self, packet: &Packet) -> PushOutcome {
        if self.rtp_stats.status(packet.seq) == SeqStatus::Duplicate {
            self.metrics.duplicates += 1;
            return PushOutcome::Duplicate;
        }
        let frames = packet.frames() as u64;
        let mut start = self.extend_ts(packet.timestamp);
        let ring = self.ring_frames as u64;
        let mut outcome = PushOutcome::Stored;
        if start > self.newest_end + ring || start + frames + ring < self.cursor {
            self.metrics.resyncs += 1;
            self.anchor(packet);
            start = self.extend_ts(packet.timestamp);
            outcome = PushOutcome::Resync;
        }
        let end = start + frames;

        self.metrics.packets += 1;
        let follows = self.rtp_stats.follows(packet.seq);
        let reordered = self.rtp_stats.record(packet.seq) == SeqStatus::Reordered;
        self.metrics.lost = self.rtp_stats.cumulative_lost();
        self.rtp_stats
            .update_jitter(packet.arrival_ns, start, packet.format.rate);
        self.metrics.jitter = self.rtp_stats.jitter();
        self.last_arrival_ns = packet.arrival_ns;
        if start > self.ts_ref_ext {
            self.ts_ref_ext = start;
            self.ts_ref_raw = packet.timestamp;
        }

        if frames == 0 {
            // An empty Opus payload (DTX keep-alive): the stream is alive.
            return outcome;
        }
        let max_delay = self.overflow_limit(packet);
        if self.state == StreamState::Prebuffering
            && start < self.cursor
            && self.newest_end.saturating_sub(start) <= max_delay
        {
            // Nothing has played yet: an earlier packet moves the anchor back.
            self.cursor = start;
        }
        if self.in_underrun && self.state == StreamState::Playing && start >= self.cursor {
            self.resume_after_starving(start);
        }
        if end <= self.cursor {
            self.metrics.late += 1;
            return PushOutcome::Late;
        }
        if start < self.cursor {
            // Its head came after its play time (before an overflow skip
            // below moves the cursor: that is not lateness).
            self.metrics.partly_late += 1;
        }
        if end - self.cursor > max_delay {
            let skip_to = end - (self.target_frames as u64).min(max_delay);
            if skip_to > self.cursor {
                self.clear_positions(self.cursor, skip_to.min(self.newest_end));
                self.metrics.overflow += 1;
                self.metrics.overflow_frames += skip_to - self.cursor;
                self.cursor = skip_to;
                self.newest_end = self.newest_end.max(self.cursor);
                if outcome == PushOutcome::Stored {
                    outcome = PushOutcome::Overflow;
                }
            }
        }
        let from_gap = self.newest_end.max(self.cursor);
        if packet.marker && follows && start > from_gap {
            // Silence suppression: the sender sent nothing on purpose.
            self.fill_positions(from_gap, start, SILENCE);
            self.metrics.talkspurts += 1;
        }
        self.store(packet, start, start.max(self.cursor), end);
        self.newest_end = self.newest_end.max(end);
        if reordered && outcome == PushOutcome::Stored {
            self.metrics.reordered += 1;
            outcome = PushOutcome::Reordered;
        }
        outcome
    }

    fn extend_ts(&self, raw: u32) -> u64 {
        let delta = raw.wrapping_sub(self.ts_ref_raw) as i32 as i64;
        (self.ts_ref_ext as i64 + delta).max(0) as u64
    }

    /// Ring slots of `n` frames from position `pos`, as up to two ranges
    /// (the ring wraps).
    fn slot_ranges(
        &self,
        pos: u64,
        n: usize,
    ) -> (core::ops::Range<usize>, core::ops::Range<usize>) {
        let ring = self.ring_frames.max(1);
        let n = n.min(ring);
        let slot = (pos % ring as u64) as usize;
        let first = n.min(ring - slot);
        (slot..slot + first, 0..n - first)
    }

    fn fill_positions(&mut self, from: u64, to: u64, value: u8) {
        if to <= from {
            return;
        }
        let n = (to - from).min(self.ring_frames as u64) as usize;
        let (first, second) = self.slot_ranges(from, n);
        for range in [first, second] {
            if let Some(s) = self.states.get_mut(range) {
                s.fill(value);
            }
        }
    }

    fn clear_positions(&mut self, from: u64, to: u64) {
        self.fill_positions(from, to, EMPTY);
    }

    /// Decodes `packet`'s frames for positions `[from, end)` (the packet
    /// starts at `start`) into the ring.
    fn store(&mut self, packet: &Packet, start: u64, from: u64, end: u64) {
        self.packet_frames = packet.frames();
        if end <= from {
            return;
        }
        if packet.format.encoding == Encoding::Opus {
            let frames = (end - start) as usize;
            if let Some(store) = self.opus.as_mut() {
                if store.put(start, frames, &packet.payload) {
                    self.fill_positions(from, end, ENCODED);
                } else {
                    self.metrics.unsupported += 1;
                }
            }
            return;
        }
        let channels = packet.format.channels.max(1) as usize;
        let bytes_per_frame = packet.format.bytes_per_frame();
        let n = (end - from) as usize;
        let (first, second) = self.slot_ranges(from, n);
        let mut offset = (from - start) as usize * bytes_per_frame;
        for range in [first, second] {
            let bytes = range.len() * bytes_per_frame;
            let src = packet.payload.get(offset..offset + bytes);
            let dst = self
                .samples
                .get_mut(range.start * channels..range.end * channels);
            if let (Some(src), Some(dst)) = (src, dst) {
                codec::decode(packet.format.encoding, src, dst);
                if let Some(s) = self.states.get_mut(range) {
                    s.fill(AUDIO);
                }
            }
            offset += bytes;
        }
    }
}

impl JitterBuffer {
    /// Opus: makes the frames at the cursor playable. An undecoded packet
    /// there is decoded (whole; its frames before the cursor are dropped);
    /// a hole there is rebuilt from the next packet's FEC when that packet
    /// is stored and the hole is no longer than it, else concealed by the
    /// decoder (its leading part, when longer), at least 2.5 ms at a time.
    fn decode_at_cursor(&mut self, wanted: usize) {
        let cursor = self.cursor;
        let kind = self.state_at(cursor);
        if kind == ENCODED {
            let Some(store) = self.opus.as_mut() else {
                return;
            };
            match store.decode(cursor) {
                Some(Ok(mut d)) => {
                    // A later packet that overlaps this one's tail is taken
                    // at its word, and this one's decoded audio ends where
                    // that one starts: its head (an encoder's pre-skip, for
                    // a stream's first packet) is not played, and the audio
                    // runs on without a seam into the next packet.
                    let end = d.start + d.frames as u64;
                    if let Some(next) = store.next_start_within(d.start, end) {
                        d.head = (end - next) as usize;
                        d.frames -= d.head;
                    }
                    self.write_decoded(d, AUDIO);
                }
                Some(Err(_)) | None => {
                    self.metrics.decode_errors += 1;
                    let end = self.run_end(cursor, ENCODED);
                    self.clear_positions(cursor, end);
                    self.decode_hole(wanted);
                }
            }
        } else if kind == EMPTY {
            self.decode_hole(wanted);
        }
    }

    fn decode_hole(&mut self, wanted: usize) {
        let cursor = self.cursor;
        let hole_end = self.run_end(cursor, EMPTY).min(self.newest_end);
        let hole = (hole_end - cursor) as usize;
        let Some(store) = self.opus.as_mut() else {
            return;
        };
        let next = store.frames_at(hole_end);
        let result = match next {
            Some(next_frames) if hole <= next_frames && hole > 0 => {
                // The lost packet just before the next one, rebuilt whole
                // from its FEC (libopus decodes FEC only for the next
                // packet's full length). Its frames before the cursor were
                // already played as concealment while the buffer starved
                // (the next packet came late); the rest plays from FEC.
                store.recover(hole_end - next_frames as u64, next_frames)
            }
            Some(next_frames) if hole > next_frames => {
                // Conceal up to where the FEC frame starts, so that the
                // last lost packet can still come back from FEC. libopus
                // conceals in steps of 2.5 ms, and after a starved stretch
                // of any length the rest need not be one: conceal a whole
                // number of steps ending there, its start before the
                // cursor dropped.
                let until = hole - next_frames;
                if until > MAX_PACKET_FRAMES {
                    store.conceal(cursor, MAX_PACKET_FRAMES).map(|d| (d, false))
                } else {
                    let n = until.div_ceil(MIN_FRAME) * MIN_FRAME;
                    store
                        .conceal(hole_end - (next_frames + n) as u64, n)
                        .map(|d| (d, false))
                }
            }
            _ => {
                let n = hole
                    .min(wanted.max(MIN_FRAME))
                    .min(MAX_PACKET_FRAMES)
                    .max(MIN_FRAME.min(hole));
                let n = n / MIN_FRAME * MIN_FRAME;
                if n == 0 {
                    return;
                }
                store.conceal(cursor, n).map(|d| (d, false))
            }
        };
        match result {
            Ok((d, true)) => {
                self.metrics.fec_recovered += 1;
                self.write_decoded(d, RECOVERED);
            }
            Ok((d, false)) => self.write_decoded(d, CONCEALED),
            Err(_) => self.metrics.decode_errors += 1,
        }
    }

    /// Copies the store's last decode into the ring from the cursor on,
    /// marking those frames `kind`; frames before the cursor are dropped.
    fn write_decoded(&mut self, d: Decoded, kind: u8) {
        let end = d.start + d.frames as u64;
        let from = self.cursor.max(d.start);
        if end <= from {
            return;
        }
        let channels = self.channels();
        let n = (end - from) as usize;
        let (first, second) = self.slot_ranges(from, n);
        let Some(store) = self.opus.as_ref() else {
            return;
        };
        let mut offset = (d.head + (from - d.start) as usize) * channels;
        for range in [first, second] {
            let len = range.len() * channels;
            let src = store.scratch().get(offset..offset + len);
            let dst = self
                .samples
                .get_mut(range.start * channels..range.end * channels);
            if let (Some(src), Some(dst)) = (src, dst) {
                dst.copy_from_slice(src);
                if let Some(s) = self.states.get_mut(range) {
                    s.fill(kind);
                }
            }
            offset += len;
        }
        self.newest_end = self.newest_end.max(end);
    }

    fn state_at(&self, pos: u64) -> u8 {
        let (first, _) = self.slot_ranges(pos, 1);
        self.states.get(first.start).copied().unwrap_or(EMPTY)
    }

    /// The first position from `pos` (up to `newest_end`) whose state is not `kind`.
    fn run_end(&self, pos: u64, kind: u8) -> u64 {
        let n = self.newest_end.saturating_sub(pos) as usize;
        let (first, second) = self.slot_ranges(pos, n);
        let mut len = run_length(self.states.get(first.clone()).unwrap_or(&[]), kind);
        if len == first.len() {
            len += run_length(self.states.get(second).unwrap_or(&[]), kind);
        }
        pos + len as u64
    }
}

/// Length of the leading run of `kind` in `states`.
fn run_length(states: &[u8], kind: u8) -> usize {
    states
        .iter()
        .position(|&s| s != kind)
        .unwrap_or(states.len())
}

fn copy_slots(samples: &[i16], slots: core::ops::Range<usize>, channels: usize, out: &mut [i16]) {
    let len = slots.len() * channels;
    if let (Some(src), Some(dst)) = (
        samples.get(slots.start * channels..slots.end * channels),
        out.get_mut(..len),
    ) {
        dst.copy_from_slice(src);
    }
}

fn zero(out: &mut [i16], samples: usize) {
    let n = samples.min(out.len());
    if let Some(s) = out.get_mut(..n) {
        s.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::format::Encoding;

    const MS: u64 = 1_000_000;
    /// 20 ms at 8 kHz: the usual VoIP ptime.
    const PTIME: usize = 160;

    fn l16(rate: u32, channels: u16) -> StreamFormat {
        StreamFormat {
            encoding: Encoding::L16,
            rate,
            channels,
        }
    }

    /// The sample the test senders put at RTP timestamp `ts`, channel `c`:
    /// distinct for nearby frames, so misplaced audio shows.
    fn value(ts: u32, c: usize) -> i16 {
        (ts.wrapping_mul(7).wrapping_add(c as u32 * 5000) % 30_000) as i16
    }

    fn packet(
        format: StreamFormat,
        ssrc: u32,
        seq: u16,
        ts: u32,
        frames: usize,
        arrival_ns: u64,
    ) -> Packet {
        let mut p = Packet::empty(format);
        p.ssrc = ssrc;
        p.seq = seq;
        p.timestamp = ts;
        p.payload_type = 96;
        p.arrival_ns = arrival_ns;
        let mut samples = [0i16; 1];
        let mut bytes = [0u8; 2];
        for i in 0..frames {
            for c in 0..format.channels as usize {
                samples[0] = value(ts.wrapping_add(i as u32), c);
                let n = codec::encode(format.encoding, &samples, &mut bytes);
                for &b in &bytes[..n] {
                    p.payload.push(b).unwrap();
                }
            }
        }
        p
    }

    /// Packet `k` of a mono 8 kHz stream of 20 ms packets, starting at
    /// `seq0`/`ts0`, arriving on time at `k * 20 ms`.
    fn voip(seq0: u16, ts0: u32, k: u32) -> Packet {
        packet(
            l16(8000, 1),
            1,
            seq0.wrapping_add(k as u16),
            ts0.wrapping_add(k * PTIME as u32),
            PTIME,
            k as u64 * 20 * MS,
        )
    }

    fn config() -> JitterConfig {
        JitterConfig {
            capacity_ms: 1000,
            target_delay_ms: 60,
            max_delay_ms: 200,
            stream_lost_ms: 500,
            max_rate: 48_000,
            max_channels: 2,
            opus: false,
        }
    }

    fn buffer() -> JitterBuffer {
        JitterBuffer::new(&config()).unwrap()
    }

    /// Reads up to `frames` frames; returns the run and the samples.
    fn read(jb: &mut JitterBuffer, frames: usize, now_ns: u64) -> (ReadStatus, Vec<i16>) {
        let channels = jb.format().map_or(1, |f| f.channels as usize);
        let mut out = vec![i16::MIN; frames * channels];
        let status = jb.read(&mut out, now_ns);
        out.truncate(status.frames() * channels);
        (status, out)
    }

    /// The samples a sender put at timestamps `ts .. ts + frames`.
    fn expected(ts: u32, frames: usize, channels: usize) -> Vec<i16> {
        (0..frames)
            .flat_map(|i| (0..channels).map(move |c| value(ts.wrapping_add(i as u32), c)))
            .collect()
    }

    /// The raw RTP timestamp of the playout cursor.
    fn cursor_ts(jb: &JitterBuffer) -> u32 {
        jb.ts_ref_raw
            .wrapping_add(jb.cursor.wrapping_sub(jb.ts_ref_ext) as u32)
    }

    #[test]
    fn prebuffers_to_target_then_plays_in_order() {
        let mut jb = buffer();
        assert_eq!(jb.state(), StreamState::NoStream);
        assert_eq!(read(&mut jb, PTIME, 0).0, ReadStatus::Idle(PTIME));
        assert_eq!(
            jb.push(&voip(10, 1000, 0)),
            PushOutcome::NewStream {
                previous_ssrc: None,
                ssrc: 1
            }
        );
        assert_eq!(jb.target_delay_frames(), 480);
        assert_eq!(jb.state(), StreamState::Prebuffering);
        assert_eq!(read(&mut jb, PTIME, 0).0, ReadStatus::Idle(PTIME));
        assert_eq!(jb.push(&voip(10, 1000, 1)), PushOutcome::Stored);
        assert_eq!(read(&mut jb, PTIME, 20 * MS).0, ReadStatus::Idle(PTIME));
        assert_eq!(jb.push(&voip(10, 1000, 2)), PushOutcome::Stored);
        assert_eq!(jb.state(), StreamState::Playing);
        assert_eq!(jb.depth_frames(), 480);
        for k in 0..20u32 {
            let (status, samples) = read(&mut jb, PTIME, (40 + 20 * k as u64) * MS);
            assert_eq!(status, ReadStatus::Audio(PTIME), "read {k}");
            assert_eq!(samples, expected(1000 + k * PTIME as u32, PTIME, 1));
            jb.push(&voip(10, 1000, k + 3));
        }
        let m = jb.metrics();
        assert_eq!((m.packets, m.lost, m.late, m.reordered), (23, 0, 0, 0));
    }

    /// Plays packets `0..count` of a stream in lock step (push one, read
    /// one period) after the prebuffer; returns the runs read.
    fn lock_step(jb: &mut JitterBuffer, seq0: u16, ts0: u32, count: u32) -> Vec<ReadStatus> {
        let mut runs = Vec::new();
        for k in 0..count {
            jb.push(&voip(seq0, ts0, k));
            if k >= 2 {
                let want = cursor_ts(jb);
                let (status, samples) = read(jb, PTIME, k as u64 * 20 * MS);
                if status == ReadStatus::Audio(PTIME) {
                    assert_eq!(samples, expected(want, PTIME, 1), "packet {k}");
                }
                runs.push(status);
            }
        }
        runs
    }

    #[test]
    fn timestamp_wrap() {
        let mut jb = buffer();
        let runs = lock_step(&mut jb, 7, u32::MAX - 1000, 20);
        assert!(
            runs.iter().all(|&r| r == ReadStatus::Audio(PTIME)),
            "{runs:?}"
        );
        let m = jb.metrics();
        assert_eq!((m.packets, m.lost, m.late, m.resyncs), (20, 0, 0, 0));
    }

    #[test]
    fn seq_wrap() {
        let mut jb = buffer();
        let runs = lock_step(&mut jb, u16::MAX - 5, 0, 20);
        assert!(
            runs.iter().all(|&r| r == ReadStatus::Audio(PTIME)),
            "{runs:?}"
        );
        assert_eq!(jb.metrics().lost, 0);
        // Across the wrap, an old sequence number is still a duplicate...
        assert_eq!(jb.push(&voip(u16::MAX - 5, 0, 19)), PushOutcome::Duplicate);
        // ...and a gap across the next wrap is loss, counted once.
        let mut jb = buffer();
        for k in [0, 1, 2, 3, 5, 6] {
            jb.push(&voip(u16::MAX - 2, 0, k));
        }
        assert_eq!(jb.metrics().lost, 1);
        assert_eq!(jb.metrics().packets, 6);
    }

    #[test]
    fn reordered_packet_placed_and_counted() {
        let mut jb = buffer();
        for k in [0, 2, 1, 3] {
            jb.push(&voip(0, 0, k));
        }
        assert_eq!(jb.metrics().reordered, 1);
        for k in 0..4u32 {
            let (status, samples) = read(&mut jb, PTIME, 60 * MS);
            assert_eq!(status, ReadStatus::Audio(PTIME));
            assert_eq!(samples, expected(k * PTIME as u32, PTIME, 1));
        }
        assert_eq!(jb.metrics().lost, 0);
        assert_eq!(jb.metrics().packets, 4);
    }

    #[test]
    fn reordered_before_anchor_moves_prebuffer_start() {
        let mut jb = buffer();
        jb.push(&voip(0, 0, 1));
        assert_eq!(jb.push(&voip(0, 0, 0)), PushOutcome::Reordered);
        jb.push(&voip(0, 0, 2));
        let (status, samples) = read(&mut jb, PTIME, 40 * MS);
        assert_eq!(status, ReadStatus::Audio(PTIME));
        assert_eq!(samples, expected(0, PTIME, 1));
    }

    #[test]
    fn duplicate_dropped_and_not_counted_as_packet() {
        let mut jb = buffer();
        assert!(matches!(
            jb.push(&voip(0, 0, 0)),
            PushOutcome::NewStream { .. }
        ));
        assert_eq!(jb.push(&voip(0, 0, 1)), PushOutcome::Stored);
        assert_eq!(jb.push(&voip(0, 0, 1)), PushOutcome::Duplicate);
        assert_eq!(jb.push(&voip(0, 0, 2)), PushOutcome::Stored);
        assert_eq!(jb.push(&voip(0, 0, 0)), PushOutcome::Duplicate);
        let m = jb.metrics();
        assert_eq!((m.packets, m.duplicates, m.lost), (3, 2, 0));
        assert_eq!(jb.depth_frames(), 3 * PTIME);
    }

    #[test]
    fn late_packet_dropped() {
        let mut jb = buffer();
        for k in [0, 2, 3] {
            jb.push(&voip(0, 0, k));
        }
        assert_eq!(read(&mut jb, PTIME, 60 * MS).0, ReadStatus::Audio(PTIME));
        assert_eq!(read(&mut jb, PTIME, 60 * MS).0, ReadStatus::Missing(PTIME));
        assert_eq!(jb.push(&voip(0, 0, 1)), PushOutcome::Late);
        assert_eq!((jb.metrics().late, jb.metrics().partly_late), (1, 0));
        let (status, samples) = read(&mut jb, PTIME, 80 * MS);
        assert_eq!(status, ReadStatus::Audio(PTIME));
        assert_eq!(samples, expected(2 * PTIME as u32, PTIME, 1));
    }

    #[test]
    fn straddling_packet_keeps_unplayed_part() {
        let mut jb = buffer();
        for k in [0, 2] {
            jb.push(&voip(0, 0, k));
        }
        jb.set_target_delay_frames(2 * PTIME);
        assert_eq!(read(&mut jb, PTIME, 40 * MS).0, ReadStatus::Audio(PTIME));
        assert_eq!(read(&mut jb, 60, 40 * MS).0, ReadStatus::Missing(60));
        assert_eq!(jb.push(&voip(0, 0, 1)), PushOutcome::Reordered);
        let (status, samples) = read(&mut jb, PTIME, 40 * MS);
        // The unplayed 100 frames of packet 1 run on into packet 2.
        assert_eq!(status, ReadStatus::Audio(PTIME));
        assert_eq!(samples, expected(PTIME as u32 + 60, PTIME, 1));
        assert_eq!((jb.metrics().late, jb.metrics().partly_late), (0, 1));
    }

    #[test]
    fn loss_reads_missing_and_is_counted() {
        let mut jb = buffer();
        for k in [0, 1, 3, 4, 7] {
            jb.push(&voip(0, 0, k));
        }
        let runs: Vec<_> = (0..8).map(|_| read(&mut jb, 400, 100 * MS).0).collect();
        assert_eq!(
            runs,
            [
                ReadStatus::Audio(320),
                ReadStatus::Missing(160),
                ReadStatus::Audio(320),
                ReadStatus::Missing(320),
                ReadStatus::Audio(160),
                // Nothing newer: the buffer ran dry (concealed, the
                // cursor held until something arrives).
                ReadStatus::Missing(400),
                ReadStatus::Missing(400),
                ReadStatus::Missing(400),
            ]
        );
        let m = jb.metrics();
        assert_eq!((m.lost, m.underruns), (3, 1));
    }

    #[test]
    fn stalled_sender_plays_on_without_late_packets() {
        let mut jb = buffer();
        lock_step(&mut jb, 0, 0, 6); // packets 0..6, playing in step
                                     // The sender stalls for 200 ms: reads find nothing newer.
        for i in 0..10 {
            let status = read(&mut jb, PTIME, (120 + 20 * i) * MS).0;
            assert!(matches!(
                status,
                ReadStatus::Audio(_) | ReadStatus::Missing(_)
            ));
        }
        assert_eq!(jb.metrics().underruns, 1);
        // Then the held packets arrive at once: none is late, none lost,
        // and playing resumes exactly where it stopped.
        let next = cursor_ts(&jb);
        for k in 6..16 {
            assert_eq!(jb.push(&voip(0, 0, k)), PushOutcome::Stored, "packet {k}");
        }
        let (status, samples) = read(&mut jb, PTIME, 330 * MS);
        assert_eq!(status, ReadStatus::Audio(PTIME));
        assert_eq!(samples, expected(next, PTIME, 1));
        let m = jb.metrics();
        assert_eq!((m.late, m.lost), (0, 0));
    }

    #[test]
    fn loss_at_the_head_is_replaced_by_what_was_concealed_while_starved() {
        let mut jb = buffer();
        lock_step(&mut jb, 0, 0, 5); // packets 0..5
        while jb.depth_frames() > 0 {
            read(&mut jb, PTIME, 100 * MS);
        }
        // Packet 5 is lost: the buffer starves for one packet's time...
        assert_eq!(read(&mut jb, PTIME, 120 * MS).0, ReadStatus::Missing(PTIME));
        let held = jb.cursor();
        // ...then packet 6 arrives: the concealment stood in for packet 5,
        // so packet 6 plays next, with no delay added.
        assert_eq!(jb.push(&voip(0, 0, 6)), PushOutcome::Stored);
        assert_eq!(jb.cursor(), held + PTIME as u64);
        let (status, samples) = read(&mut jb, PTIME, 140 * MS);
        assert_eq!(status, ReadStatus::Audio(PTIME));
        assert_eq!(samples, expected(6 * PTIME as u32, PTIME, 1));
        assert_eq!(jb.metrics().lost, 1);
    }

    #[test]
    fn marked_packet_after_a_sequence_gap_is_loss_not_silence() {
        // ffmpeg sets the marker on every Opus packet: a marked packet
        // after lost ones must not turn the loss into silence.
        let mut jb = buffer();
        for k in 0..3 {
            jb.push(&voip(0, 0, k));
        }
        let mut p = voip(0, 0, 4);
        p.marker = true;
        jb.push(&p);
        let mut runs = Vec::new();
        while jb.cursor() < jb.newest_end {
            runs.push(read(&mut jb, 400, 60 * MS).0);
        }
        assert!(runs.contains(&ReadStatus::Missing(PTIME)), "{runs:?}");
        assert_eq!(jb.metrics().talkspurts, 0);
        assert_eq!(jb.metrics().lost, 1);
    }

    #[test]
    fn talkspurt_gap_reads_idle_not_missing() {
        for marker in [true, false] {
            let mut jb = buffer();
            for k in 0..3 {
                jb.push(&voip(0, 0, k));
            }
            // Silence suppression: the next packet has the next sequence
            // number but a timestamp 100 ms later.
            let mut p = voip(0, 800, 3);
            p.marker = marker;
            jb.push(&p);
            let mut runs = Vec::new();
            while jb.cursor() < jb.newest_end {
                runs.push(read(&mut jb, 400, 60 * MS).0);
            }
            let gap = if marker {
                ReadStatus::Idle(400)
            } else {
                ReadStatus::Missing(400)
            };
            assert_eq!(
                runs,
                [
                    ReadStatus::Audio(400),
                    ReadStatus::Audio(80),
                    gap,
                    gap,
                    ReadStatus::Audio(160)
                ],
                "marker {marker}"
            );
            assert_eq!(jb.metrics().lost, 0);
            assert_eq!(jb.metrics().talkspurts, marker as u64);
        }
    }

    #[test]
    fn a_held_up_reader_loses_nothing_to_overflow() {
        // Max 200 ms, target 60 ms; reads of 5 ms periods in step with
        // packets arriving on time, then the reader is held up for 300 ms
        // (more than the max over the level) while packets keep arriving.
        let mut jb = buffer();
        let period = PTIME / 4;
        let mut k = 0u32;
        let mut played = Vec::new();
        let mut tick = |jb: &mut JitterBuffer, now: u64, read_now: bool, k: &mut u32| {
            while u64::from(*k) * 20 * MS <= now {
                assert_ne!(jb.push(&voip(0, 0, *k)), PushOutcome::Overflow);
                *k += 1;
            }
            if read_now {
                played.push(read(jb, period, now));
            }
        };
        for t in 0..200u64 {
            tick(&mut jb, t * 5 * MS, true, &mut k);
        }
        for t in 200..260u64 {
            tick(&mut jb, t * 5 * MS, false, &mut k);
        }
        // Running again: it reads what it owes at once, then in step.
        for _ in 0..60 {
            tick(&mut jb, 1300 * MS, true, &mut k);
        }
        for t in 261..400u64 {
            tick(&mut jb, t * 5 * MS, true, &mut k);
        }
        let m = jb.metrics();
        assert_eq!((m.overflow, m.underruns, m.late), (0, 0, 0), "{m:?}");
        // Every frame from the start on, in order.
        let first = played
            .iter()
            .position(|(s, _)| matches!(s, ReadStatus::Audio(_)))
            .unwrap();
        let audio: Vec<i16> = played[first..]
            .iter()
            .flat_map(|(s, v)| {
                assert!(matches!(s, ReadStatus::Audio(_)), "{s:?}");
                v.clone()
            })
            .collect();
        assert_eq!(audio, expected(0, audio.len(), 1));
        // A reader in step still overflows a sender running ahead.
        let mut jb = buffer();
        for k in 0..15 {
            read(&mut jb, period, 0);
            let mut p = voip(0, 0, k);
            p.arrival_ns = 0;
            jb.push(&p);
        }
        assert_eq!(jb.metrics().overflow, 1);
    }

    #[test]
    fn overflow_skips_cursor_to_target() {
        let mut jb = buffer();
        let mut outcomes = Vec::new();
        for k in 0..15 {
            outcomes.push(jb.push(&voip(0, 0, k)));
            assert!(jb.depth_frames() <= 1600, "depth {}", jb.depth_frames());
        }
        // Packet 10 ends at 1760 frames (220 ms > 200 ms max): skip to
        // 1760 - 480 (the target).
        assert_eq!(outcomes[10], PushOutcome::Overflow);
        assert_eq!(
            outcomes
                .iter()
                .filter(|&&o| o == PushOutcome::Overflow)
                .count(),
            1
        );
        let m = jb.metrics();
        assert_eq!((m.overflow, m.overflow_frames), (1, 1280));
        assert_eq!(jb.depth_frames(), 2400 - 1280);
        let (status, samples) = read(&mut jb, PTIME, 300 * MS);
        assert_eq!(status, ReadStatus::Audio(PTIME));
        assert_eq!(samples, expected(1280, PTIME, 1));
    }

    #[test]
    fn big_timestamp_jump_resyncs() {
        for jump in [100_000i64, -100_000] {
            let mut jb = buffer();
            lock_step(&mut jb, 0, 50_000, 10);
            let ts0 = (50_000 + jump) as u32;
            let p = packet(l16(8000, 1), 1, 10, ts0, PTIME, 200 * MS);
            assert_eq!(jb.push(&p), PushOutcome::Resync, "jump {jump}");
            assert_eq!(jb.state(), StreamState::Prebuffering);
            for k in 1..3u32 {
                let p = packet(
                    l16(8000, 1),
                    1,
                    10 + k as u16,
                    ts0 + k * PTIME as u32,
                    PTIME,
                    (200 + 20 * k as u64) * MS,
                );
                assert_eq!(jb.push(&p), PushOutcome::Stored);
            }
            let (status, samples) = read(&mut jb, PTIME, 260 * MS);
            assert_eq!(status, ReadStatus::Audio(PTIME));
            assert_eq!(samples, expected(ts0, PTIME, 1));
            let m = jb.metrics();
            assert_eq!((m.resyncs, m.lost, m.late, m.new_streams), (1, 0, 0, 1));
        }
    }

    fn raw_packet(n: u32, arrival_ns: u64) -> Packet {
        let mut p = packet(
            StreamFormat::TUTORIAL,
            0,
            n as u16,
            n * 160,
            160,
            arrival_ns,
        );
        p.sequential = true;
        p.payload_type = crate::rtp::packet::RAW_PAYLOAD_TYPE;
        p
    }

    #[test]
    fn tutorial_sender_at_twice_real_time_is_bounded() {
        let mut jb = buffer();
        let max_depth = 1600; // 200 ms at 8 kHz
        let mut queue: std::collections::VecDeque<i16> = Default::default();
        let mut played_audio = 0;
        let packets = 1000u32; // 10 s of sending, 20 s of audio
        for n in 0..packets {
            let now = n as u64 * 10 * MS;
            let p = raw_packet(n, now);
            assert_eq!(p.payload.len(), 320);
            match jb.push(&p) {
                PushOutcome::Stored | PushOutcome::NewStream { .. } => {
                    queue.extend(expected(n * 160, 160, 1))
                }
                PushOutcome::Overflow => {}
                other => panic!("packet {n}: {other:?}"),
            }
            assert!(jb.depth_frames() <= max_depth);
            if n % 2 == 1 {
                let (status, samples) = read(&mut jb, 160, now);
                if jb.metrics().audio_frames > 0 {
                    assert_eq!(status, ReadStatus::Audio(160), "read at packet {n}");
                }
                if let ReadStatus::Audio(_) = status {
                    let want: Vec<i16> = queue.drain(..samples.len()).collect();
                    assert_eq!(samples, want, "arrival order");
                    played_audio += 1;
                }
            }
        }
        let m = jb.metrics();
        assert_eq!(m.packets, packets as u64);
        // Half the audio is excess; the rest plays without a gap.
        assert!((450..=550).contains(&m.overflow), "overflow {}", m.overflow);
        assert_eq!(
            m.overflow + played_audio + jb.depth_frames() as u64 / 160,
            packets as u64
        );
        assert_eq!(m.missing_frames, 0);
    }

    #[test]
    fn sequential_underrun_prebuffers_and_resumes_in_place() {
        let mut jb = buffer();
        for n in 0..3 {
            jb.push(&raw_packet(n, n as u64 * 20 * MS));
        }
        assert_eq!(jb.state(), StreamState::Playing);
        for _ in 0..3 {
            assert_eq!(read(&mut jb, 160, 60 * MS).0, ReadStatus::Audio(160));
        }
        // Starved: concealed while the cursor waits.
        assert_eq!(read(&mut jb, 160, 60 * MS).0, ReadStatus::Missing(160));
        assert_eq!(jb.metrics().underruns, 1);
        assert_eq!(jb.push(&raw_packet(3, 80 * MS)), PushOutcome::Stored);
        // A fresh prebuffer restores the margin before playing on.
        assert_eq!(jb.state(), StreamState::Prebuffering);
        assert_eq!(read(&mut jb, 160, 80 * MS).0, ReadStatus::Idle(160));
        jb.push(&raw_packet(4, 100 * MS));
        jb.push(&raw_packet(5, 120 * MS));
        // The next datagram continues exactly where the stream left off.
        let (status, samples) = read(&mut jb, 160, 120 * MS);
        assert_eq!(status, ReadStatus::Audio(160));
        assert_eq!(samples, expected(3 * 160, 160, 1));
    }

    #[test]
    fn ssrc_change_resets() {
        let mut jb = buffer();
        lock_step(&mut jb, 0, 1000, 10);
        assert!(jb.depth_frames() > 0);
        let new_sender = |k: u32| {
            packet(
                l16(8000, 1),
                2,
                9000 + k as u16,
                77_777 + k * 160,
                160,
                (200 + 20 * k as u64) * MS,
            )
        };
        assert_eq!(
            jb.push(&new_sender(0)),
            PushOutcome::NewStream {
                previous_ssrc: Some(1),
                ssrc: 2
            }
        );
        assert_eq!(jb.state(), StreamState::Prebuffering);
        assert_eq!(jb.depth_frames(), 160);
        assert_eq!(read(&mut jb, 160, 200 * MS).0, ReadStatus::Idle(160));
        jb.push(&new_sender(1));
        jb.push(&new_sender(2));
        let (status, samples) = read(&mut jb, 160, 240 * MS);
        assert_eq!(status, ReadStatus::Audio(160));
        assert_eq!(samples, expected(77_777, 160, 1));
        let m = jb.metrics();
        assert_eq!(
            (m.packets, m.new_streams, m.lost, m.ssrc),
            (13, 2, 0, Some(2))
        );
    }

    #[test]
    fn format_change_on_same_ssrc_is_new_stream() {
        let mut jb = buffer();
        lock_step(&mut jb, 0, 0, 5);
        assert_eq!(jb.target_delay_frames(), 480);
        let stereo = l16(16_000, 2);
        let p = packet(stereo, 1, 5, 800, 320, 100 * MS);
        assert_eq!(
            jb.push(&p),
            PushOutcome::NewStream {
                previous_ssrc: Some(1),
                ssrc: 1
            }
        );
        assert_eq!(jb.format(), Some(stereo));
        assert_eq!(jb.target_delay_frames(), 960);
        assert_eq!(jb.capacity_frames(), 16_000);
        jb.push(&packet(stereo, 1, 6, 1120, 320, 120 * MS));
        jb.push(&packet(stereo, 1, 7, 1440, 320, 140 * MS));
        let (status, samples) = read(&mut jb, 320, 140 * MS);
        assert_eq!(status, ReadStatus::Audio(320));
        assert_eq!(samples, expected(800, 320, 2));
    }

    #[test]
    fn stream_lost_then_plays_again() {
        let mut jb = buffer();
        lock_step(&mut jb, 0, 0, 10); // last packet arrives at 180 ms
        let mut now = 200 * MS;
        loop {
            let status = read(&mut jb, 160, now).0;
            if jb.state() == StreamState::Lost {
                assert_eq!(status, ReadStatus::Idle(160));
                break;
            }
            assert!(matches!(
                status,
                ReadStatus::Audio(_) | ReadStatus::Missing(_)
            ));
            now += 20 * MS;
        }
        assert_eq!(jb.state(), StreamState::Lost);
        assert!(now > 680 * MS && now <= 720 * MS, "lost at {now}");
        for _ in 0..10 {
            assert_eq!(read(&mut jb, 160, now).0, ReadStatus::Idle(160));
            now += 20 * MS;
        }
        assert_eq!(jb.metrics().stream_lost, 1);
        assert_eq!(jb.depth_frames(), 0);
        // The sender resumes a while later, timestamps advanced by its pause.
        for k in 0..3u32 {
            let p = packet(l16(8000, 1), 1, 10 + k as u16, 40_000 + k * 160, 160, now);
            assert_eq!(jb.push(&p), PushOutcome::Stored);
        }
        let (status, samples) = read(&mut jb, 160, now);
        assert_eq!(status, ReadStatus::Audio(160));
        assert_eq!(samples, expected(40_000, 160, 1));
        let m = jb.metrics();
        assert_eq!(
            (m.stream_lost, m.new_streams, m.lost, m.resyncs),
            (1, 1, 0, 0)
        );
    }

    #[test]
    fn pause_unseen_by_reads_plays_what_was_held() {
        let mut jb = buffer();
        lock_step(&mut jb, 0, 0, 10); // last packet at 180 ms
        let held = jb.depth_frames();
        assert!(held > 0);
        // Nothing was read for 2 s (the device was away; the audio waited):
        // the next packets arrive before any read. What was buffered is
        // still to be played, so the stream is not lost: it goes on, the
        // held audio first, then the new packets, with nothing missing.
        let resume = 2180 * MS;
        let p = |k: u32| packet(l16(8000, 1), 1, 10 + k as u16, (10 + k) * 160, 160, resume);
        assert_eq!(jb.push(&p(0)), PushOutcome::Stored);
        assert_eq!(jb.state(), StreamState::Playing);
        jb.push(&p(1));
        jb.push(&p(2));
        assert_eq!(jb.depth_frames(), held + 3 * 160);
        let (status, _) = read(&mut jb, held + 3 * 160, resume);
        assert_eq!(status, ReadStatus::Audio(held + 3 * 160));
        let m = jb.metrics();
        assert_eq!((m.stream_lost, m.lost, m.resyncs), (0, 0, 0));
    }

    #[test]
    fn interarrival_jitter_matches_rfc3550_by_hand() {
        let mut jb = buffer();
        // Arrivals at 0, 21, 40 and 62 ms for timestamps 0, 160, 320, 480 at
        // 8 kHz: arrival in timestamp units 0, 168, 320, 496; transit 0, 8,
        // 0, 16; D = 8, -8, 16; J = 8/16 = 0.5, then
        // 0.5 + (8 - 0.5)/16 = 0.96875, then 0.96875 + (16 - 0.96875)/16.
        for (k, arrival_ms) in [0u64, 21, 40, 62].into_iter().enumerate() {
            let p = packet(
                l16(8000, 1),
                1,
                k as u16,
                k as u32 * 160,
                160,
                arrival_ms * MS,
            );
            jb.push(&p);
        }
        let j = jb.metrics().jitter;
        assert_eq!(j, 0.96875 + (16.0 - 0.96875) / 16.0);
        assert_eq!(jb.metrics().jitter_ms(8000), j / 8.0);
    }

    #[test]
    fn burst_after_pause_is_stored_and_played_in_order() {
        let mut jb = JitterBuffer::new(&JitterConfig {
            target_delay_ms: 120,
            ..config()
        })
        .unwrap();
        let mut runs = Vec::new();
        let mut next_ts = 0u32;
        for period in 0..40u32 {
            let now = period as u64 * 20 * MS;
            // Packets 10..=14 are held up by the network and delivered at
            // once with packet 15.
            if !(10..15).contains(&period) {
                let from = if period == 15 { 10 } else { period };
                for k in from..=period {
                    let mut p = voip(0, 0, k);
                    p.arrival_ns = now;
                    assert_eq!(
                        jb.push(&p),
                        if k == 0 {
                            PushOutcome::NewStream {
                                previous_ssrc: None,
                                ssrc: 1,
                            }
                        } else {
                            PushOutcome::Stored
                        }
                    );
                }
            }
            let (status, samples) = read(&mut jb, PTIME, now);
            if let ReadStatus::Audio(n) = status {
                assert_eq!(samples, expected(next_ts, n, 1));
                next_ts += n as u32;
            }
            runs.push(status);
        }
        assert!(
            runs.iter().all(|r| !matches!(r, ReadStatus::Missing(_))),
            "{runs:?}"
        );
        assert_eq!(next_ts, (40 - 5) * PTIME as u32);
        let m = jb.metrics();
        assert_eq!((m.late, m.lost, m.overflow, m.reordered), (0, 0, 0, 0));
    }

    #[test]
    fn max_delay_moves_and_clamps_target() {
        let mut jb = JitterBuffer::new(&JitterConfig {
            capacity_ms: 500,
            target_delay_ms: 100,
            max_delay_ms: 300,
            ..JitterConfig::default()
        })
        .unwrap();
        jb.set_target_delay_frames(48_000 * 200 / 1000);
        jb.set_max_delay_ms(60);
        assert_eq!(jb.max_delay_ms(), 60);
        assert_eq!(jb.target_delay_frames(), 48_000 * 60 / 1000);
        jb.set_max_delay_ms(10_000);
        assert_eq!(jb.max_delay_ms(), 500);
    }

    #[test]
    fn adaptive_target_is_clamped_to_max_delay() {
        let mut jb = buffer();
        jb.push(&voip(0, 0, 0));
        jb.set_target_delay_frames(100_000);
        assert_eq!(jb.target_delay_frames(), 1600);
        jb.set_target_delay_frames(320);
        assert_eq!(jb.target_delay_frames(), 320);
        jb.push(&voip(0, 0, 1));
        assert_eq!(jb.state(), StreamState::Playing);
    }

    #[test]
    fn a_start_skips_its_excess_only_when_it_is_silence() {
        // 30 ms level (10 ms margin + a 20 ms packet); the first two
        // packets handed over together at 20 ms (a source's probation):
        // 40 ms buffered, 10 ms above the level.
        let silent_until = |ts_end: u32| {
            move |k: u32| {
                let mut p = voip(0, 1000, k);
                for i in 0..PTIME {
                    if 1000 + k * PTIME as u32 + (i as u32) < ts_end {
                        let v: i16 = if i % 2 == 0 { 0 } else { -1 };
                        p.payload[2 * i..2 * i + 2].copy_from_slice(&v.to_be_bytes());
                    }
                }
                p
            }
        };
        let start = |ts_end: u32| {
            let mut jb = buffer();
            let make = silent_until(ts_end);
            jb.push(&make(0));
            jb.set_target_delay_frames(240);
            assert_eq!(jb.skip_start_silence(20 * MS, 0, 32), 0, "not playing yet");
            jb.push(&make(1));
            assert_eq!(jb.state(), StreamState::Playing);
            jb
        };
        // Silence (±1) through the first 10 ms and beyond: skipped to the
        // level, and what follows plays as sent.
        let mut jb = start(1000 + 120);
        assert_eq!(jb.skip_start_silence(20 * MS, 0, 32), 80);
        assert_eq!(cursor_ts(&jb), 1080);
        assert_eq!(jb.depth_frames(), 240);
        let (status, samples) = read(&mut jb, 60, 20 * MS);
        assert_eq!(status, ReadStatus::Audio(60));
        assert_eq!(samples[40..], expected(1120, 20, 1)[..]);
        assert_eq!(jb.metrics().skipped_silence_frames, 80);
        // Late by 5 ms (a period after the newest arrival): 40 frames more.
        let mut jb = start(1000 + 120);
        assert_eq!(jb.skip_start_silence(25 * MS, 0, 32), 120);
        // Asked to keep 40 frames: 40 fewer.
        let mut jb = start(1000 + 120);
        assert_eq!(jb.skip_start_silence(20 * MS, 40, 32), 40);
        // Sound within the excess: nothing is skipped.
        let mut jb = start(1000 + 79);
        assert_eq!(jb.skip_start_silence(20 * MS, 0, 32), 0);
        assert_eq!(cursor_ts(&jb), 1000);
        assert_eq!(jb.metrics().skipped_silence_frames, 0);
    }

    #[test]
    fn config_is_validated() {
        let bad = [
            JitterConfig {
                capacity_ms: 0,
                ..config()
            },
            JitterConfig {
                max_delay_ms: 2000,
                ..config()
            },
            JitterConfig {
                target_delay_ms: 300,
                ..config()
            },
            JitterConfig {
                stream_lost_ms: 0,
                ..config()
            },
            JitterConfig {
                max_rate: 1000,
                ..config()
            },
            JitterConfig {
                max_channels: 0,
                ..config()
            },
        ];
        for c in bad {
            let err = JitterBuffer::new(&c).err();
            assert!(err.is_some(), "{c:?}");
            assert!(!err.unwrap().to_string().is_empty());
        }
        assert!(JitterBuffer::new(&JitterConfig::default()).is_ok());
    }

    #[test]
    fn unsupported_format_dropped() {
        let mut jb = buffer();
        let p = packet(l16(96_000, 1), 1, 0, 0, 10, 0);
        assert_eq!(jb.push(&p), PushOutcome::Unsupported);
        assert_eq!(jb.state(), StreamState::NoStream);
        assert_eq!(jb.metrics().unsupported, 1);
    }

    /// xorshift64*: a seeded generator, so failures replay exactly.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }

        fn percent(&mut self, p: u64) -> bool {
            self.below(100) < p
        }
    }

    #[test]
    fn random_impairments_keep_invariants() {
        let mut totals = JitterMetrics::default();
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let sequential = seed % 5 == 0;
            let mut jb = buffer();
            let mut format = if sequential {
                StreamFormat::TUTORIAL
            } else {
                l16(8000, 1)
            };
            let mut ssrc = if sequential { 0 } else { 1 };
            let mut seq = rng.next() as u16;
            let mut ts = rng.next() as u32;
            let mut in_flight: Vec<(u64, Packet)> = Vec::new();
            let mut pause_until = 0;
            for step in 0..1500u64 {
                let now = step * 10 * MS;
                if step % 2 == 0 && now >= pause_until {
                    if rng.percent(1) {
                        pause_until = now + rng.below(800) * MS;
                    }
                    if !sequential && rng.percent(1) {
                        ssrc = rng.next() as u32;
                        format = if rng.percent(50) {
                            l16(16_000, 2)
                        } else {
                            l16(8000, 1)
                        };
                    }
                    let mut marker = false;
                    if !sequential && rng.percent(2) {
                        ts = ts.wrapping_add(rng.below(20_000) as u32);
                        marker = rng.percent(50);
                    }
                    if !sequential && rng.percent(1) {
                        ts = ts.wrapping_sub(rng.below(100_000) as u32);
                    }
                    let frames = format.frames_for_ms(20);
                    let mut p = packet(format, ssrc, seq, ts, frames, 0);
                    p.marker = marker;
                    p.sequential = sequential;
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(frames as u32);
                    if !rng.percent(10) {
                        let copies = if rng.percent(5) { 2 } else { 1 };
                        for _ in 0..copies {
                            let delay = if rng.percent(3) {
                                rng.below(300)
                            } else {
                                rng.below(80)
                            };
                            in_flight.push((now + delay * MS, p.clone()));
                        }
                    }
                }
                in_flight.sort_by_key(|(t, _)| *t);
                let due = in_flight.iter().take_while(|(t, _)| *t <= now).count();
                for (t, mut p) in in_flight.drain(..due) {
                    p.arrival_ns = t;
                    jb.push(&p);
                    let rate = jb.format().map_or(8000, |f| f.rate);
                    // The max delay, plus what the reader may be behind:
                    // the 10 ms since its last read (less what that took).
                    let max_delay = frames_for_ms(rate, 200 + 10);
                    assert!(jb.depth_frames() <= max_delay, "seed {seed} step {step}");
                    assert!(jb.depth_frames() <= jb.capacity_frames());
                }
                let channels = jb.format().map_or(1, |f| f.channels as usize);
                let wanted = 1 + rng.below(jb.format().map_or(80, |f| f.rate as u64 / 50)) as usize;
                let mut out = vec![i16::MIN; wanted * channels];
                let cursor = jb.cursor();
                let depth_before = jb.depth_frames();
                let ts_at_cursor = cursor_ts(&jb);
                let status = jb.read(&mut out, now);
                let n = status.frames();
                assert!(
                    (1..=wanted).contains(&n),
                    "seed {seed} step {step}: {status:?} of {wanted}"
                );
                let starved = matches!(status, ReadStatus::Missing(_)) && depth_before == 0;
                if jb.state() == StreamState::Playing && starved {
                    // Starved: concealed, the cursor held for what arrives.
                    assert_eq!(jb.cursor(), cursor, "seed {seed} step {step}");
                } else if jb.state() == StreamState::Playing {
                    assert_eq!(jb.cursor(), cursor + n as u64, "seed {seed} step {step}");
                } else {
                    assert!(matches!(status, ReadStatus::Idle(_)));
                    assert_eq!(jb.cursor(), cursor, "seed {seed} step {step}");
                }
                if let (ReadStatus::Audio(n), false) = (status, sequential) {
                    assert_eq!(
                        out[..n * channels],
                        expected(ts_at_cursor, n, channels)[..],
                        "seed {seed} step {step}"
                    );
                }
            }
            let m = jb.metrics();
            assert!(m.audio_frames > 0, "seed {seed}: nothing played");
            totals.late += m.late;
            totals.reordered += m.reordered;
            totals.duplicates += m.duplicates;
            totals.lost += m.lost;
            totals.overflow += m.overflow;
            totals.resyncs += m.resyncs;
            totals.new_streams += m.new_streams;
            totals.stream_lost += m.stream_lost;
            totals.talkspurts += m.talkspurts;
            totals.underruns += m.underruns;
        }
        // The impairments reached every policy.
        for (name, count) in [
            ("late", totals.late),
            ("reordered", totals.reordered),
            ("duplicates", totals.duplicates),
            ("lost", totals.lost),
            ("overflow", totals.overflow),
            ("resyncs", totals.resyncs),
            ("new_streams", totals.new_streams),
            ("stream_lost", totals.stream_lost),
            ("talkspurts", totals.talkspurts),
            ("underruns", totals.underruns),
        ] {
            assert!(count > 0, "no {name} in any seed");
        }
    }

    mod opus_stream {
        //! Opus through the buffer: packets decoded in order at read time,
        //! reordering waits, a lost packet comes back from FEC.
        use super::*;
        use crate::audio::opus::{Decoder, Encoder, EncoderConfig};

        const FRAME: usize = 960;

        fn voiced(frames: usize) -> Vec<i16> {
            (0..frames)
                .map(|i| {
                    let t = i as f64 / 48_000.0;
                    let v: f64 = (1..=8)
                        .map(|k| {
                            (2.0 * core::f64::consts::PI * 200.0 * k as f64 * t).sin() / k as f64
                        })
                        .sum();
                    (6000.0 * v).round() as i16
                })
                .collect()
        }

        /// 40 packets of 20 ms mono Opus, FEC on (SILK, 24 kbit/s).
        fn packets() -> Vec<Vec<u8>> {
            let mut enc = Encoder::new(&EncoderConfig {
                channels: 1,
                bitrate_bps: 24_000,
                fec: true,
                expected_loss_pct: 20,
                frame_frames: FRAME,
                dtx: false,
            })
            .unwrap();
            voiced(40 * FRAME)
                .chunks_exact(FRAME)
                .map(|f| {
                    let mut out = [0u8; 1500];
                    let n = enc.encode(f, &mut out).unwrap();
                    out[..n].to_vec()
                })
                .collect()
        }

        fn packet(payload: &[u8], k: usize) -> Packet {
            let mut p = Packet::empty(StreamFormat {
                encoding: Encoding::Opus,
                rate: 48_000,
                channels: 1,
            });
            p.ssrc = 7;
            p.seq = 100 + k as u16;
            p.timestamp = 5000 + (k * FRAME) as u32;
            p.payload_type = 97;
            p.arrival_ns = k as u64 * 20 * MS;
            p.payload.extend_from_slice(payload).unwrap();
            p
        }

        /// Pushes the packets in `order` all at once, then reads everything.
        fn play(
            packets: &[Vec<u8>],
            order: &[usize],
        ) -> (Vec<i16>, Vec<ReadStatus>, JitterMetrics) {
            let mut jb = JitterBuffer::new(&JitterConfig {
                opus: true,
                capacity_ms: 1000,
                max_delay_ms: 1000,
                target_delay_ms: 0,
                ..config()
            })
            .unwrap();
            for &k in order {
                jb.push(&packet(&packets[k], k));
            }
            let mut out = Vec::new();
            let mut runs = Vec::new();
            let mut buf = vec![0i16; 240];
            let now = 20 * MS;
            while out.len() < packets.len() * FRAME {
                let st = jb.read(&mut buf, now);
                if matches!(st, ReadStatus::Idle(_)) || st.frames() == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..st.frames()]);
                runs.push(st);
            }
            (out, runs, jb.metrics().clone())
        }

        fn reference(packets: &[Vec<u8>]) -> Vec<i16> {
            let mut dec = Decoder::new().unwrap();
            dec.reset(1);
            let mut out = vec![0i16; FRAME];
            packets
                .iter()
                .flat_map(|p| {
                    let n = dec.decode(p, &mut out).unwrap();
                    out[..n].to_vec()
                })
                .collect()
        }

        fn snr_db(want: &[i16], got: &[i16]) -> f64 {
            let sig: f64 = want.iter().map(|&v| f64::from(v).powi(2)).sum();
            let err: f64 = want
                .iter()
                .zip(got)
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum();
            10.0 * (sig / err.max(1.0)).log10()
        }

        #[test]
        fn opus_every_loss_with_fec_in_the_next_packet_is_rebuilt() {
            // 20 % of the packets lost (a fixed pattern, runs of two
            // included), all the others there when the cursor comes: each
            // loss whose next packet arrived and carries FEC is rebuilt
            // from it; the rest (a loss before a loss, a next packet
            // without FEC) are concealed.
            let p = packets();
            let lost: Vec<bool> = (0..p.len())
                .map(|k| k > 0 && k + 1 < p.len() && (k * 7919 + 13) % 10 < 2)
                .collect();
            let order: Vec<usize> = (0..p.len()).filter(|&k| !lost[k]).collect();
            let (_, _, m) = play(&p, &order);
            let rebuildable = (0..p.len())
                .filter(|&k| lost[k] && !lost[k + 1] && crate::audio::opus::carries_fec(&p[k + 1]))
                .count() as u64;
            let losses = lost.iter().filter(|&&l| l).count() as u64;
            println!(
                "{losses} lost, {rebuildable} rebuildable, {} rebuilt",
                m.fec_recovered
            );
            assert!(rebuildable >= 3, "{rebuildable}");
            assert_eq!(m.fec_recovered, rebuildable, "{m:?}");
            assert_eq!(
                m.codec_concealed_frames,
                (losses - rebuildable) * FRAME as u64,
                "{m:?}"
            );
        }

        #[test]
        fn opus_losses_in_real_time_with_a_packet_of_margin_are_rebuilt() {
            // Packets every 20 ms, read about every 5 ms; playing starts
            // with 60 ms buffered, so each frame waits 40 ms. 20 % lost,
            // and a packet after a loss comes 15 ms late: after one loss
            // it is still there in time; after two in a row (55 ms after
            // the first lost one would have come) the buffer starves for
            // 15 ms. The reads are of 230 and 250 frames in turn (as when
            // stretching): the rest of such a hole is no whole number of
            // libopus's 2.5 ms steps, and its last packet must still come
            // back from FEC.
            let mut enc = Encoder::new(&EncoderConfig {
                channels: 1,
                bitrate_bps: 24_000,
                fec: true,
                expected_loss_pct: 20,
                frame_frames: FRAME,
                dtx: false,
            })
            .unwrap();
            let n = 150;
            let p: Vec<Vec<u8>> = (0..n * FRAME)
                .map(|i| {
                    let t = i as f64 / 48_000.0;
                    let env = 0.35 + 0.65 * (core::f64::consts::PI * 4.0 * t).sin().abs();
                    let f0 = 200.0 + 50.0 * (2.0 * core::f64::consts::PI * 3.0 * t).sin();
                    (6000.0 * env * (2.0 * core::f64::consts::PI * f0 * t).sin()) as i16
                })
                .collect::<Vec<i16>>()
                .chunks_exact(FRAME)
                .map(|f| {
                    let mut out = [0u8; 1500];
                    let len = enc.encode(f, &mut out).unwrap();
                    out[..len].to_vec()
                })
                .collect();
            let lost: Vec<bool> = (0..n)
                .map(|k| k > 2 && k + 3 < n && (k * 7919 + 13) % 10 < 2)
                .collect();
            let mut jb = JitterBuffer::new(&JitterConfig {
                opus: true,
                target_delay_ms: 50,
                max_delay_ms: 300,
                ..config()
            })
            .unwrap();
            let mut buf = vec![0i16; 250];
            for tick in 0..(n as u64 * 4 + 40) {
                let now = tick * 5 * MS;
                for k in (tick / 4).saturating_sub(3) as usize..=(tick / 4) as usize {
                    if k >= n {
                        continue;
                    }
                    let late = if k > 0 && lost[k - 1] { 3 } else { 0 };
                    if !lost[k] && k as u64 * 4 + late == tick {
                        let mut pk = packet(&p[k], k);
                        pk.arrival_ns = now;
                        jb.push(&pk);
                    }
                }
                let len = if tick % 2 == 0 { 230 } else { 250 };
                jb.read(&mut buf[..len], now);
            }
            let m = jb.metrics();
            let doubles = (0..n - 1).filter(|&k| lost[k] && lost[k + 1]).count();
            assert!(doubles >= 3, "{doubles} double losses");
            let rebuildable = (0..n - 1)
                .filter(|&k| lost[k] && !lost[k + 1] && crate::audio::opus::carries_fec(&p[k + 1]))
                .count() as u64;
            let losses = lost.iter().filter(|&&l| l).count() as u64;
            println!(
                "{losses} lost, {rebuildable} rebuildable, {} rebuilt: {m:?}",
                m.fec_recovered
            );
            assert!(rebuildable >= 10, "{rebuildable}");
            assert_eq!(m.fec_recovered, rebuildable, "{m:?}");
            // Each double loss starved the buffer, and so did the end.
            assert_eq!(m.underruns, doubles as u64 + 1, "{m:?}");
        }

        #[test]
        fn opus_in_order_plays_as_the_decoder_decodes() {
            let p = packets();
            let order: Vec<usize> = (0..p.len()).collect();
            let (out, runs, m) = play(&p, &order);
            assert_eq!(out, reference(&p));
            assert!(runs.iter().all(|r| matches!(r, ReadStatus::Audio(_))));
            assert_eq!((m.fec_recovered, m.decode_errors), (0, 0));
        }

        #[test]
        fn opus_reordered_packets_still_decode_in_order() {
            let p = packets();
            let mut order: Vec<usize> = (0..p.len()).collect();
            order.swap(10, 11);
            order.swap(20, 23);
            let (out, _, m) = play(&p, &order);
            assert_eq!(out, reference(&p), "bit-exact despite reordering");
            // 11 before 10; 23 before 21, 22 and 20.
            assert_eq!(m.reordered, 4);
        }

        #[test]
        fn opus_lost_packet_comes_back_from_fec() {
            let p = packets();
            let lost = 20;
            let order: Vec<usize> = (0..p.len()).filter(|&k| k != lost).collect();
            let (out, runs, m) = play(&p, &order);
            assert_eq!(out.len(), p.len() * FRAME);
            assert_eq!(m.fec_recovered, 1);
            assert_eq!(m.missing_frames, FRAME as u64);
            assert!(!runs.iter().any(|r| matches!(r, ReadStatus::Missing(_))));
            let clean = reference(&p);
            let span = lost * FRAME..(lost + 1) * FRAME;
            let fec = snr_db(&clean[span.clone()], &out[span]);
            // Two packets lost: the first is concealed by the decoder, the
            // second rebuilt from the FEC of the packet after it.
            let order: Vec<usize> = (0..p.len())
                .filter(|&k| k != lost && k != lost + 1)
                .collect();
            let (plc_out, plc_runs, plc_m) = play(&p, &order);
            assert_eq!(plc_m.fec_recovered, 1);
            assert!(plc_runs
                .iter()
                .any(|r| matches!(r, ReadStatus::Concealed(_))));
            let span = lost * FRAME..(lost + 1) * FRAME;
            let plc = snr_db(&clean[span.clone()], &plc_out[span]);
            println!("lost packet: FEC {fec:.1} dB, PLC {plc:.1} dB against the clean decode");
            assert!(fec > plc + 3.0, "FEC {fec:.1} dB vs PLC {plc:.1} dB");
            // After the loss the stream converges back on the clean decode.
            let tail = (lost + 4) * FRAME..;
            assert!(snr_db(&clean[tail.clone()], &out[tail]) > 20.0);
        }

        #[test]
        fn opus_loss_in_real_time_is_rebuilt_from_fec() {
            // Packets arrive every 20 ms, the playout reads 5 ms periods
            // 120 ms behind: when the cursor reaches the hole, the packet
            // after it is there.
            let p = packets();
            let mut jb = JitterBuffer::new(&JitterConfig {
                opus: true,
                target_delay_ms: 120,
                max_delay_ms: 300,
                ..config()
            })
            .unwrap();
            let mut buf = vec![0i16; 240];
            let mut statuses = Vec::new();
            for tick in 0..(p.len() as u64 * 4 + 40) {
                let now = tick * 5 * MS;
                if tick % 4 == 0 {
                    let k = (tick / 4) as usize;
                    if k < p.len() && k != 20 {
                        let mut pk = packet(&p[k], k);
                        pk.arrival_ns = now;
                        jb.push(&pk);
                    }
                }
                statuses.push(jb.read(&mut buf, now));
            }
            let m = jb.metrics();
            assert_eq!(m.fec_recovered, 1, "{m:?}");
            assert_eq!(m.codec_concealed_frames, 0, "{m:?}");
        }

        #[test]
        fn opus_first_packet_overlapping_the_second_still_decodes_in_order() {
            // GStreamer's rtpopuspay stamps the first packet 648 frames
            // (960 less the encoder's 312-frame pre-skip) before the second.
            let p = packets();
            let mut jb = JitterBuffer::new(&JitterConfig {
                opus: true,
                target_delay_ms: 120,
                max_delay_ms: 300,
                ..config()
            })
            .unwrap();
            let mut buf = vec![0i16; 240];
            let mut out = Vec::new();
            let mut statuses = Vec::new();
            for tick in 0..(p.len() as u64 * 4 + 40) {
                let now = tick * 5 * MS;
                if tick % 4 == 0 {
                    let k = (tick / 4) as usize;
                    if k < p.len() {
                        let mut pk = packet(&p[k], k);
                        if k == 0 {
                            pk.timestamp = pk.timestamp.wrapping_add(312);
                        }
                        pk.arrival_ns = now;
                        jb.push(&pk);
                    }
                }
                let st = jb.read(&mut buf, now);
                if !matches!(st, ReadStatus::Idle(_)) {
                    out.extend_from_slice(&buf[..st.frames()]);
                }
                statuses.push(st);
            }
            let m = jb.metrics();
            assert_eq!(m.codec_concealed_frames, 0, "{m:?} {statuses:?}");
            let clean = reference(&p);
            // The first packet's 312-frame head is not played;
            // after the stream come the reads that starved.
            assert!(out.len() > clean.len() - 312);
            out.truncate(clean.len() - 312);
            // The first packet's last 648 frames play up to where the
            // second starts, then the whole second: each packet decoded
            // once, in order, and the audio continuous.
            assert_eq!(&out[..], &clean[312..312 + out.len()]);
        }

        #[test]
        fn opus_empty_and_dtx_packets_keep_the_stream() {
            let p = packets();
            let mut jb = JitterBuffer::new(&JitterConfig {
                opus: true,
                target_delay_ms: 0,
                ..config()
            })
            .unwrap();
            jb.push(&packet(&p[0], 0));
            let mut empty = packet(&[], 1);
            empty.payload.clear();
            assert_eq!(jb.push(&empty), PushOutcome::Stored);
            assert_eq!(jb.push(&packet(&[p[0][0]], 2)), PushOutcome::Stored);
            assert_eq!(jb.metrics().packets, 3);
            let mut buf = vec![0i16; FRAME];
            assert_eq!(jb.read(&mut buf, 0), ReadStatus::Audio(FRAME));
            // The empty packet's 20 ms were never sent: a hole (concealed),
            // then the 1-byte DTX packet decodes.
            let st = jb.read(&mut buf, 0);
            assert!(
                matches!(st, ReadStatus::Concealed(_) | ReadStatus::Audio(_)),
                "{st:?}"
            );
        }

        #[test]
        fn opus_junk_at_random_times_never_panics() {
            // Packets with random TOC bytes and contents (the ones the
            // parser accepts: a frame count from the TOC), random
            // sequence numbers and timestamps, mixed with real ones, read
            // in random slices: never a panic, every read within bounds.
            let p = packets();
            let mut jb = JitterBuffer::new(&JitterConfig {
                opus: true,
                target_delay_ms: 40,
                ..config()
            })
            .unwrap();
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let mut buf = vec![0i16; 4000];
            let mut decoded = 0u64;
            for step in 0..20_000u64 {
                let now = step * MS;
                let r = next();
                if r % 3 == 0 {
                    let k = (next() % p.len() as u64) as usize;
                    let mut pk = if r % 2 == 0 {
                        packet(&p[k], k)
                    } else {
                        let len = (next() % 300) as usize;
                        let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                        if crate::audio::opus::packet_frames(&junk).is_none() {
                            continue;
                        }
                        packet(&junk, k)
                    };
                    pk.seq = pk.seq.wrapping_add((next() % 5) as u16);
                    pk.timestamp = pk.timestamp.wrapping_add((next() % 3000) as u32);
                    pk.marker = next() % 10 == 0;
                    pk.arrival_ns = now;
                    jb.push(&pk);
                }
                let want = (next() % 2000) as usize * 2;
                let st = jb.read(&mut buf[..want], now);
                // Mono: one sample per frame.
                assert!(st.frames() <= want);
                decoded += matches!(st, ReadStatus::Audio(_)) as u64;
            }
            assert!(decoded > 0);
        }

        #[test]
        fn opus_without_a_store_is_unsupported() {
            let p = packets();
            let mut jb = JitterBuffer::new(&config()).unwrap();
            assert_eq!(jb.push(&packet(&p[0], 0)), PushOutcome::Unsupported);
        }
    }
}
