//! Playout: the realtime thread. Input: packets from the net thread's
//! SPSC queue. Output: one device period at a time to the playback device.
//!
//! Each period it drains the packet queue into the engine, renders one
//! period and writes it to the device (blocking read/write or mmap; the
//! write's wait is the thread's clock). The device's life (open, lost,
//! reopened with backoff, released on SIGHUP) is the `DeviceLink` state
//! machine; opening and closing happen on the device thread. While there is
//! no device, the audio is held in the jitter buffer (up to its capacity)
//! rather than thrown away, so a stream's start is not lost to a device
//! that is still opening; the engine then catches up by time-stretching.
//!
//! With several streams (`--stream`) each has its own queue and engine
//! (source lock, jitter buffer, conversion to the device's format), all
//! built at start-up; every period each renders its device period, and
//! the arbiter (`receive::priority`) says at what gain each is mixed: the
//! stream that owns the speaker at full level, the others ducked or
//! muted. A lone stream is rendered straight into the device's buffer.
//!
//! The thread never logs, never allocates, never takes a lock another
//! thread may hold, and sleeps only for its own period: everything it has
//! to say goes to the main thread as a typed `Event` through a second SPSC
//! queue, and its figures are published as relaxed atomics.

use crate::alsa::playback::{AlsaError, DeviceStatus, Negotiated, WriteOutcome};
use crate::audio::format::{StreamFormat, MAX_CHANNELS, MAX_RATE};
use crate::receive::device::{Banks, DeviceLink, LinkEvent, OpenError};
use crate::receive::engine::{Engine, PlayoutConfig, MAX_PERIOD_MS};
use crate::receive::jitter::{PushOutcome, StreamState};
use crate::receive::priority::{Arbiter, ArbiterConfig, OwnerChange, MAX_STREAMS};
use crate::receive::source::Admission;
use crate::receive::stats::PlayoutStats;
use crate::receive::sync::SyncFeed;
use crate::rtp::packet::Packet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

/// Capacity of each stream's packet queue between the net and playout
/// threads (heapless keeps one slot free): 620 ms of 20 ms packets, 155 ms
/// of 5 ms ones. The playout thread drains it every period, and between
/// the waits of a device write (at most two periods each), also while a
/// sound server starts its stream (1.5-2 s behind PulseAudio); with no
/// device it drains it every period too. The jitter buffer, not this
/// queue, keeps audio the device is not ready for: the queue's slack is
/// for a burst after a network stall and a late wake-up. Each slot is a
/// `Packet` (~4.1 kB), every one resident once the ring has turned: 128
/// slots were 0.5 MiB of the receiver's peak RSS (issue 11).
pub const PACKET_QUEUE: usize = 32;
/// Capacity of the event queue from the playout thread to the main thread.
pub const EVENT_QUEUE: usize = 32;

/// Least time a playing device must take nothing before the audio that
/// arrives meanwhile is held (otherwise its buffer's length). Below the
/// least headroom over the target (40 ms) plus a packet nothing can
/// overflow, so shorter waits, which a loaded host makes often, are left
/// to the delay controller rather than put the stretcher into catch-up.
const MIN_HOLD_AFTER_NS: u64 = 50_000_000;
/// A playing device that took nothing this long stood still: it is logged,
/// and the clock estimate's device side starts over (the standstill is not
/// a slow clock). Shorter waits, which a loaded host makes often, leave
/// the estimate's robust fit alone.
const STANDSTILL_NS: u64 = 100_000_000;

pub type PacketQueue = heapless::spsc::Queue<Packet, PACKET_QUEUE>;
pub type EventQueue = heapless::spsc::Queue<Event, EVENT_QUEUE>;

/// A stream's packet queue, leaked (it lives as long as the process) and
/// turned once round: the net thread writes every slot as the ring turns,
/// so writing each one whole here, at start-up, makes the queue resident
/// before the net and playout threads touch it (no page faults there).
pub fn packet_queue() -> (
    heapless::spsc::Producer<'static, Packet>,
    heapless::spsc::Consumer<'static, Packet>,
) {
    let queue: &'static mut PacketQueue = Box::leak(Box::new(PacketQueue::new()));
    let (mut tx, mut rx) = queue.split();
    let mut whole = Packet::empty(StreamFormat::TUTORIAL);
    // A payload to the slot's end: each copy writes its slot's every page.
    let _ = whole.payload.resize(crate::rtp::packet::MAX_PAYLOAD, 0);
    for _ in 0..PACKET_QUEUE {
        if tx.enqueue(whole.clone()).is_ok() {
            let _ = rx.dequeue();
        }
    }
    (tx, rx)
}

/// What the playout thread tells the main thread (which logs it).
#[derive(Debug)]
pub enum Event {
    RealtimeRefused(crate::service::sched::SchedError),
    MemoryLockRefused(crate::service::sched::SchedError),
    /// The device was opened and has been seen consuming, `started_ms`
    /// after it was handed over.
    DeviceOpened {
        negotiated: Negotiated,
        started_ms: u64,
    },
    DeviceOpenFailed(OpenError),
    DeviceLost(AlsaError),
    /// The device is closed on purpose, to be opened again at once.
    Reopening(&'static str),
    Underrun,
    Resumed,
    /// The playing device took nothing for `ms` (a sound server starting
    /// a new stream after an underrun); what arrived meanwhile was kept.
    DeviceStood {
        ms: u64,
    },
    // `stream`: which stream (its index in `--stream` order; 0 alone).
    StreamStarted {
        stream: u8,
        ssrc: u32,
        format: StreamFormat,
    },
    NewStream {
        stream: u8,
        previous_ssrc: u32,
        ssrc: u32,
        format: StreamFormat,
    },
    StreamLost {
        stream: u8,
    },
    Resync {
        stream: u8,
    },
    /// A second sender (`ssrc`, validated) streams to the port while
    /// `current` plays: its packets are held, then counted as stray.
    Contending {
        stream: u8,
        ssrc: u32,
        current: u32,
    },
    /// The current sender said RTCP BYE: the next one plays at once.
    SenderLeft {
        stream: u8,
        ssrc: u32,
    },
    /// An internal queue was full (never expected; counted).
    QueueFull,
    /// Several streams: the speaker went from one stream to another
    /// (indexes in `--stream` order; `None`: no stream is live).
    Speaker {
        from: Option<u8>,
        to: Option<u8>,
    },
}

/// One stream's way into the playout thread.
pub struct StreamInput {
    /// Its formats (the rest of it is the shared configuration).
    pub config: PlayoutConfig,
    pub priority: u8,
    pub packets: heapless::spsc::Consumer<'static, Packet>,
    /// The sender's clock as the net thread publishes it, for sync
    /// playout (`NetCounters::sender_clock`; unused without `--sync-ms`).
    pub sender_clock: Arc<SyncFeed>,
}

/// One stream inside the playout thread.
pub struct Lane {
    pub engine: Engine,
    pub packets: heapless::spsc::Consumer<'static, Packet>,
    sender_clock: Arc<SyncFeed>,
    was_state: StreamState,
    /// Its rendered period, before the mix (several streams only).
    out: Vec<f32>,
}

/// Everything the playout thread owns.
pub struct PlayoutThread {
    pub config: PlayoutConfig,
    pub lanes: Vec<Lane>,
    pub arbiter: Arbiter,
    pub device: DeviceLink,
    pub events: heapless::spsc::Producer<'static, Event>,
    pub stats: Arc<PlayoutStats>,
    pub stop: Arc<AtomicBool>,
    /// SIGHUP: close and reopen the device.
    pub reopen: Arc<AtomicBool>,
    /// Beaten once per loop; the main thread pets systemd's watchdog only
    /// while it moves.
    pub heartbeat: Arc<crate::service::notify::Heartbeat>,
}

impl PlayoutThread {
    /// The thread body; returns when `stop` is set, having handed the
    /// device to the device thread to close.
    pub fn run(mut self) {
        let refusals = crate::service::sched::enter_realtime(crate::service::sched::Request {
            priority: self.config.rt_priority,
            lock_memory: self.config.lock_memory,
        });
        if let Some(e) = refusals.realtime {
            self.event(Event::RealtimeRefused(e));
        }
        if let Some(e) = refusals.memory {
            self.event(Event::MemoryLockRefused(e));
        }
        let mut out = vec![0.0f32; max_period_samples(&self.config)];
        if self.lanes.len() > 1 {
            for lane in self.lanes.iter_mut() {
                lane.out = vec![0.0f32; out.len()];
            }
        }
        let period_ns = self.config.period_ms as u64 * 1_000_000;
        // Start-up is over: from here on nothing on this thread allocates.
        crate::service::alloc::watch_this_thread(crate::service::alloc::Watched::Playout);
        while !self.stop.load(Relaxed) {
            let now = crate::service::clock::monotonic_ns();
            self.drain_packets();
            if let Some(change) = self.arbiter.update(now) {
                self.speaker_changed(change);
            }
            if self.reopen.swap(false, Relaxed) {
                self.event(Event::Reopening("SIGHUP"));
                self.device.release(now, 0);
            }
            let bank_rate = self.lanes.first().and_then(|l| l.engine.bank_rate());
            let lanes = &mut self.lanes;
            let link_event = self.device.poll(now, bank_rate, |n, banks| {
                attach_device(lanes, n.channels, banks)
            });
            if let Some(e) = link_event {
                self.link_event(e);
            }
            // Until the device really plays (a sound server starts its
            // stream a second or two after the open, taking a buffer's worth
            // meanwhile), the audio waits in the jitter buffer and the device
            // gets silence: a stream's start is kept, not fed into a device
            // that does not play it yet.
            let playing = self.device.consuming();
            for lane in self.lanes.iter_mut() {
                lane.engine.set_holding(!playing);
                // Sync playout: the sender's clock as last published (a
                // write caught in progress keeps the last one).
                if let Ok(mapping) = lane.sender_clock.load() {
                    let synced = lane.sender_clock.wall_clock_synced.load(Relaxed);
                    lane.engine.set_sender_mapping(mapping, synced);
                }
            }
            match self.device.device() {
                Some(dev) => {
                    let n = dev.negotiated();
                    let channels = n.channels.max(1) as usize;
                    let (rate, len) =
                        (n.rate, device_samples(n.period_frames, channels, out.len()));
                    let buffer_frames = n.buffer_frames as u64;
                    if playing {
                        render(
                            &mut self.lanes,
                            &mut self.arbiter,
                            &mut out[..len],
                            (channels, rate),
                            now,
                        );
                    } else {
                        out[..len].fill(0.0);
                        for lane in self.lanes.iter_mut() {
                            lane.engine.idle(now, self.config.period_ms);
                        }
                    }
                    // Packets go on into the jitter buffer while the write
                    // waits: a sound server starting its stream (1.5-2 s
                    // behind PulseAudio) or hiccuping takes nothing
                    // meanwhile, and a stream's first words arrive then.
                    // A device that takes nothing for longer than its
                    // buffer does not play in real time: after an underrun
                    // PulseAudio's plugin starts a new stream, which its
                    // null sink takes up to 2 s to begin. The audio that
                    // arrives meanwhile is kept, as at an open, and played
                    // out faster afterwards (the next period lets go).
                    let (lanes, arbiter, events) =
                        (&mut self.lanes, &mut self.arbiter, &mut self.events);
                    let hold_after_ns = (buffer_frames * 1_000_000_000 / u64::from(rate.max(1)))
                        .max(MIN_HOLD_AFTER_NS);
                    let mut stood_ns = 0u64;
                    let written = dev.write_waiting(&out[..len], |stalled_ns| {
                        if stalled_ns >= hold_after_ns {
                            for lane in lanes.iter_mut() {
                                lane.engine.set_holding(true);
                            }
                        }
                        stood_ns = stood_ns.max(stalled_ns);
                        drain(lanes, arbiter, events)
                    });
                    // One status read: the delay for the statistics line
                    // and the position for the clock estimate.
                    let status = dev.status();
                    let delay_at = crate::service::clock::monotonic_ns();
                    // The wall clock against the monotonic one, read
                    // together (vDSO reads, no system call), for sync.
                    let realtime_offset = crate::service::clock::realtime_ns() as i64
                        - crate::service::clock::monotonic_ns() as i64;
                    let delay = status.map(|s| s.delay_frames);
                    let restarted =
                        matches!(written, Ok(WriteOutcome::Underrun | WriteOutcome::Resumed));
                    if playing && (restarted || stood_ns >= STANDSTILL_NS) {
                        // The device's timeline broke: the clock estimate
                        // must not read the standstill as a slow clock.
                        for lane in self.lanes.iter_mut() {
                            lane.engine.device_timeline_broke();
                        }
                        if stood_ns >= STANDSTILL_NS {
                            self.event(Event::DeviceStood {
                                ms: stood_ns / 1_000_000,
                            });
                        }
                    }
                    match written {
                        Ok(outcome) => {
                            let queued = if outcome == WriteOutcome::Suspended {
                                0
                            } else {
                                len / channels
                            };
                            if let Some(e) = self.device.written(queued, delay_at) {
                                // From now on its position is real: a
                                // sound server that was still starting
                                // its stream reported none.
                                for lane in self.lanes.iter_mut() {
                                    lane.engine.device_restarted();
                                }
                                self.link_event(e);
                            }
                            if let (Some(s), true) = (status, self.device.consuming()) {
                                let (at, played) = device_position(
                                    &s,
                                    self.device.frames_written(),
                                    buffer_frames,
                                    delay_at,
                                );
                                let written = self.device.frames_written();
                                // Sync: the device's delay splits into
                                // what waits in its ring (written less
                                // taken: follows the device's clock) and
                                // what a plugin or server adds after it
                                // (JACK adds its ports' latency, which
                                // changes as clients join); the engine
                                // smooths the second part on its own.
                                let queued = written.saturating_sub(played) as i64;
                                for lane in self.lanes.iter_mut() {
                                    lane.engine.device_position(at, played);
                                    lane.engine.sync_device_status(
                                        at,
                                        written,
                                        queued,
                                        s.delay_frames - queued,
                                        rate,
                                        realtime_offset,
                                    );
                                }
                            }
                            match outcome {
                                WriteOutcome::Written => {}
                                WriteOutcome::Underrun => {
                                    self.stats.underruns.fetch_add(1, Relaxed);
                                    self.event(Event::Underrun);
                                }
                                WriteOutcome::Resumed => {
                                    self.stats.resumes.fetch_add(1, Relaxed);
                                    self.event(Event::Resumed);
                                }
                                WriteOutcome::Suspended => {
                                    // Nothing was queued and the device
                                    // cannot pace us while it wakes: keep
                                    // the period pace ourselves.
                                    crate::service::clock::sleep_until(now + period_ns);
                                }
                            }
                        }
                        Err(e) => {
                            self.stats.device_errors.fetch_add(1, Relaxed);
                            self.stats.reopens.fetch_add(1, Relaxed);
                            self.event(Event::DeviceLost(e));
                            self.device.lost(now);
                        }
                    }
                    self.publish(delay, rate);
                }
                None => {
                    // No device: the audio waits in the jitter buffer (the
                    // engine drops the oldest only past its capacity), so
                    // packets keep being received and counted.
                    for lane in self.lanes.iter_mut() {
                        lane.engine.idle(now, self.config.period_ms);
                    }
                    self.publish(None, 0);
                    crate::service::clock::sleep_until(now + period_ns);
                }
            }
            for i in 0..self.lanes.len() {
                let Some(lane) = self.lanes.get_mut(i) else {
                    continue;
                };
                let (from, to) = (lane.was_state, lane.engine.jitter().state());
                if from != to {
                    lane.was_state = to;
                    // A sender that said BYE has ended (already told): no
                    // warning.
                    let ended = lane.engine.source().current_ended();
                    if to == StreamState::Lost && from == StreamState::Playing && !ended {
                        self.event(Event::StreamLost { stream: i as u8 });
                    }
                }
            }
            self.stats.periods.fetch_add(1, Relaxed);
            // Progress for the watchdog: periods written, or waits for a
            // missing device. Not while a close runs on the device
            // thread: the sound system is wedged and a restart is the way
            // out.
            if !self.device.closing() {
                self.heartbeat.beat();
            }
        }
        // Stopping: the device thread closes it at once (no drain), so the
        // process exits within a few periods of SIGTERM; closing flushes
        // plugins such as `file`.
        self.device.shut_down();
    }

    fn link_event(&mut self, e: LinkEvent) {
        match e {
            LinkEvent::Playing {
                negotiated,
                started_ms,
            } => self.event(Event::DeviceOpened {
                negotiated,
                started_ms,
            }),
            LinkEvent::OpenFailed(e) => {
                self.stats.device_errors.fetch_add(1, Relaxed);
                self.event(Event::DeviceOpenFailed(e));
            }
            LinkEvent::QueueFull => self.event(Event::QueueFull),
        }
    }

    fn speaker_changed(&mut self, change: OwnerChange) {
        let index = |i: Option<usize>| i.and_then(|i| u8::try_from(i).ok());
        self.stats
            .speaker
            .store(change.to.map_or(0, |i| i as u32 + 1), Relaxed);
        // A lone stream owns the speaker whenever it plays: nothing to say.
        if self.lanes.len() > 1 {
            self.event(Event::Speaker {
                from: index(change.from),
                to: index(change.to),
            });
        }
    }

    fn drain_packets(&mut self) {
        drain(&mut self.lanes, &mut self.arbiter, &mut self.events);
    }

    fn publish(&self, alsa_delay_frames: Option<i64>, device_rate: u32) {
        let s = &self.stats;
        // Counters are the sum over the streams; the gauges are those of
        // the stream that owns the speaker (the first before any plays).
        let mut sum = [0u64; 13];
        for (lane, own) in self.lanes.iter().zip(s.streams.iter()) {
            let m = lane.engine.jitter().metrics();
            let em = lane.engine.metrics();
            own.packets.store(m.packets, Relaxed);
            own.lost.store(m.lost, Relaxed);
            own.late.store(m.late, Relaxed);
            own.stray
                .store(lane.engine.source().metrics().stray, Relaxed);
            own.concealed_frames.store(em.concealed_frames, Relaxed);
            if let Some(f) = lane.engine.jitter().format() {
                own.rate.store(f.rate, Relaxed);
            }
            let each = [
                m.packets,
                m.lost,
                m.late,
                m.reordered,
                m.duplicates,
                lane.engine.source().metrics().stray,
                m.overflow,
                m.new_streams,
                m.stream_lost,
                m.underruns,
                m.fec_recovered,
                em.concealed_frames,
                em.stretched_frames,
            ];
            for (t, v) in sum.iter_mut().zip(each) {
                *t += v;
            }
        }
        let counters = [
            &s.packets,
            &s.lost,
            &s.late,
            &s.reordered,
            &s.duplicates,
            &s.stray,
            &s.overflow,
            &s.new_streams,
            &s.stream_lost,
            &s.starved,
            &s.fec_recovered,
            &s.concealed_frames,
            &s.stretched_frames,
        ];
        for (c, v) in counters.iter().zip(sum) {
            c.store(v, Relaxed);
        }
        let shown = self.arbiter.owner().unwrap_or(0);
        let Some(lane) = self.lanes.get(shown).or(self.lanes.first()) else {
            return;
        };
        let jb = lane.engine.jitter();
        let m = jb.metrics();
        let em = lane.engine.metrics();
        s.drift_uppm.store((em.drift_ppm * 1e6) as i64, Relaxed);
        s.drift_uncertainty_uppm.store(
            lane.engine
                .clock_estimate()
                .map_or(-1, |e| (e.uncertainty_ppm * 1e6) as i64),
            Relaxed,
        );
        s.passthrough.store(
            if em.passthrough {
                1
            } else if em.converting {
                2
            } else {
                0
            },
            Relaxed,
        );
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
        if let Some(sm) = lane.engine.sync_metrics() {
            s.sync_state
                .store(sm.why.map_or(1, |w| 1 + w.code()), Relaxed);
            s.sync_error_ns
                .store(sm.error_ns.map_or(0, |e| e as i64), Relaxed);
            s.sync_aligns.store(sm.aligns, Relaxed);
            s.sync_skipped_frames.store(sm.skipped_frames, Relaxed);
            s.sync_inserted_frames.store(sm.inserted_frames, Relaxed);
            s.sync_margin_us.store(
                sm.margin_ns
                    .map_or(crate::receive::stats::NO_MARGIN, |ns| ns / 1000),
                Relaxed,
            );
            s.sync_partly_late.store(m.partly_late, Relaxed);
            s.sync_device_ppb
                .store((sm.device_ppm * 1000.0) as i64, Relaxed);
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

/// Moves the packets waiting in every stream's queue into its engine,
/// telling the arbiter which streams sound and the main thread what
/// started or changed. Also called while a write waits for the device, so
/// that packets go on into the jitter buffer then.
fn drain(
    lanes: &mut [Lane],
    arbiter: &mut Arbiter,
    events: &mut heapless::spsc::Producer<'static, Event>,
) {
    for (i, lane) in lanes.iter_mut().enumerate() {
        while let Some(packet) = lane.packets.dequeue() {
            let admission = lane.engine.push(&packet);
            // The stream's format: a take-over triggered by a BYE carries
            // none of its own.
            let format = lane.engine.jitter().format().unwrap_or(packet.format);
            if let Admission::Pushed(outcome) = admission {
                if outcome != PushOutcome::Unsupported {
                    arbiter.on_audio(i, packet.arrival_ns);
                }
            }
            if let Some(event) = admitted(i as u8, admission, format) {
                // A full event queue means the main thread is not reading;
                // the counters still tell the story.
                let _ = events.enqueue(event);
            }
        }
    }
}

/// What the main thread is told of a packet's admission, if anything.
fn admitted(stream: u8, admission: Admission, format: StreamFormat) -> Option<Event> {
    match admission {
        Admission::Pushed(PushOutcome::NewStream {
            previous_ssrc: Some(previous_ssrc),
            ssrc,
        }) => Some(Event::NewStream {
            stream,
            previous_ssrc,
            ssrc,
            format,
        }),
        Admission::Pushed(PushOutcome::NewStream {
            previous_ssrc: None,
            ssrc,
        }) => Some(Event::StreamStarted {
            stream,
            ssrc,
            format,
        }),
        Admission::Pushed(PushOutcome::Resync) => Some(Event::Resync { stream }),
        Admission::Contending { ssrc, current } => Some(Event::Contending {
            stream,
            ssrc,
            current,
        }),
        Admission::Ended { ssrc } => Some(Event::SenderLeft { stream, ssrc }),
        Admission::Pushed(_) | Admission::Held | Admission::Ignored => None,
    }
}

/// A device was opened: each stream's engine takes its bank (in stream
/// order; none when the rate is the same); the banks they replaced are
/// returned, to be freed on the device thread.
fn attach_device(lanes: &mut [Lane], channels: u16, banks: Banks) -> Banks {
    let mut old = Banks::new();
    let mut banks = banks.into_iter();
    for lane in lanes.iter_mut() {
        if let Some(replaced) = lane.engine.attach_device(channels, banks.next()) {
            // As many old banks as lanes: the capacity holds them.
            let _ = old.push(replaced);
        }
    }
    old
}

/// One device period: a lone stream straight into `out`; several each
/// into its own buffer, mixed at the arbiter's gains.
fn render(
    lanes: &mut [Lane],
    arbiter: &mut Arbiter,
    out: &mut [f32],
    (channels, rate): (usize, u32),
    now: u64,
) {
    if let [lane] = lanes {
        lane.engine.render(out, now);
        return;
    }
    out.fill(0.0);
    for (i, lane) in lanes.iter_mut().enumerate() {
        let Some(own) = lane.out.get_mut(..out.len()) else {
            continue;
        };
        lane.engine.render(own, now);
        arbiter.mix_into(i, own, out, channels, rate);
    }
}

/// Where the device is, for the clock estimate: (when, frames it has
/// taken from the ring buffer by then). The frames are those written less
/// those still in the buffer (its size less `avail`), not less the delay:
/// a sound server's delay adds its own latency, which it changes on the
/// fly and interpolates between its timing updates (PulseAudio: ramps of
/// ±100 ppm for seconds, then snaps), while what it has taken from the
/// buffer follows its clock. The time is the status's own timestamp (when
/// the position was read) where it has one and it is no later than
/// `read_at_ns` nor over a second older, else `read_at_ns`.
fn device_position(
    status: &DeviceStatus,
    frames_written: u64,
    buffer_frames: u64,
    read_at_ns: u64,
) -> (u64, u64) {
    let queued = buffer_frames.saturating_sub(status.avail_frames);
    let played = frames_written.saturating_sub(queued);
    let stamp = status.htstamp_ns;
    let at = if stamp != 0 && stamp <= read_at_ns && read_at_ns - stamp < 1_000_000_000 {
        stamp
    } else {
        read_at_ns
    };
    (at, played)
}

fn max_period_samples(config: &PlayoutConfig) -> usize {
    // A device may grant a period larger than asked; 4x with a floor
    // covers what "near" calls return in practice, at any rate.
    let frames =
        (MAX_RATE as usize * config.period_ms.clamp(1, MAX_PERIOD_MS) as usize / 1000) * 4 + 1024;
    // Channels as the device is asked for or the streams have, not the
    // most ALSA allows: sized for 8 it was 152 kB of the receiver's heap
    // (massif), 39 kB at the defaults now. A device with more channels is
    // written in shorter pieces (`device_samples`), still a period or more
    // each at 5 ms periods.
    let channels = config
        .device_channels
        .unwrap_or(2)
        .max(config.max_channels)
        .clamp(2, MAX_CHANNELS);
    frames * channels as usize
}

/// How much of `out` one write takes: a period of the device's
/// interleaved samples, or the whole frames that fit.
fn device_samples(period_frames: usize, channels: usize, out: usize) -> usize {
    let channels = channels.max(1);
    period_frames.min(out / channels) * channels
}

/// The running playout side: its threads and the end of the event queue
/// the main thread reads.
pub struct Playout {
    pub thread: std::thread::JoinHandle<()>,
    pub device_thread: std::thread::JoinHandle<()>,
    pub events: heapless::spsc::Consumer<'static, Event>,
}

impl Playout {
    /// Both threads have returned.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished() && self.device_thread.is_finished()
    }
}

/// Why the playout side could not start.
#[derive(Debug)]
pub enum StartError {
    Engine(crate::receive::engine::PlayoutError),
    Priority(crate::receive::priority::PriorityError),
    Spawn {
        thread: &'static str,
        error: std::io::Error,
    },
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Engine(e) => write!(f, "{e}"),
            StartError::Priority(e) => write!(f, "{e}"),
            StartError::Spawn { thread, error } => write!(
                f,
                "cannot start the {thread} thread: {error} (check the service's task limits)"
            ),
        }
    }
}

impl std::error::Error for StartError {}

/// Builds the engine and starts the playout and device threads for one
/// stream (`--listen`): [`start_streams`] with that stream alone.
pub fn start(
    config: &PlayoutConfig,
    packets: heapless::spsc::Consumer<'static, Packet>,
    stats: Arc<PlayoutStats>,
    stop: Arc<AtomicBool>,
    reopen: Arc<AtomicBool>,
    heartbeat: Arc<crate::service::notify::Heartbeat>,
) -> Result<Playout, StartError> {
    let stream = StreamInput {
        config: config.clone(),
        priority: 0,
        packets,
        sender_clock: Arc::default(),
    };
    start_streams(
        config,
        vec![stream],
        &ArbiterConfig::default(),
        Shared {
            stats,
            stop,
            reopen,
            heartbeat,
        },
    )
}

/// What the playout thread shares with the main thread.
pub struct Shared {
    pub stats: Arc<PlayoutStats>,
    pub stop: Arc<AtomicBool>,
    /// SIGHUP: close and reopen the device.
    pub reopen: Arc<AtomicBool>,
    pub heartbeat: Arc<crate::service::notify::Heartbeat>,
}

/// Builds an engine per stream and the arbiter between them, and starts
/// the playout and device threads. `config` is the device's and the
/// shared playout settings; each stream's own `config` gives its formats.
/// The queues live as long as the process: leaked once here so that
/// their ends can move into threads without locks or allocation.
pub fn start_streams(
    config: &PlayoutConfig,
    streams: Vec<StreamInput>,
    arbiter: &ArbiterConfig,
    shared: Shared,
) -> Result<Playout, StartError> {
    use crate::receive::device::{DeviceThread, ReplyQueue, RequestQueue};
    let Shared {
        stats,
        stop,
        reopen,
        heartbeat,
    } = shared;
    if streams.len() > MAX_STREAMS {
        return Err(StartError::Priority(
            crate::receive::priority::PriorityError::TooManyStreams(streams.len()),
        ));
    }
    let priorities: Vec<u8> = streams.iter().map(|s| s.priority).collect();
    let arbiter = Arbiter::new(arbiter, &priorities).map_err(StartError::Priority)?;
    let stream_configs: Vec<PlayoutConfig> = streams.iter().map(|s| s.config.clone()).collect();
    let mut lanes = Vec::with_capacity(streams.len());
    for s in streams {
        lanes.push(Lane {
            engine: Engine::new(&s.config).map_err(StartError::Engine)?,
            packets: s.packets,
            sender_clock: s.sender_clock,
            was_state: StreamState::NoStream,
            out: Vec::new(),
        });
    }
    let events: &'static mut EventQueue = Box::leak(Box::new(EventQueue::new()));
    let (event_tx, event_rx) = events.split();
    let requests: &'static mut RequestQueue = Box::leak(Box::new(RequestQueue::new()));
    let (request_tx, request_rx) = requests.split();
    let replies: &'static mut ReplyQueue = Box::leak(Box::new(ReplyQueue::new()));
    let (reply_tx, reply_rx) = replies.split();
    let closes_done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let device_stop = Arc::new(AtomicBool::new(false));
    let device_thread = DeviceThread {
        config: config.clone(),
        streams: stream_configs,
        requests: request_rx,
        replies: reply_tx,
        closes_done: Arc::clone(&closes_done),
        stop: Arc::clone(&device_stop),
    };
    let device_thread = std::thread::Builder::new()
        .name("device".into())
        .spawn(move || device_thread.run())
        .map_err(|error| StartError::Spawn {
            thread: "device",
            error,
        })?;
    let playout = PlayoutThread {
        config: config.clone(),
        lanes,
        arbiter,
        device: DeviceLink::new(request_tx, reply_rx, closes_done, config.buffer_periods),
        events: event_tx,
        stats,
        stop,
        reopen,
        heartbeat,
    };
    let thread = std::thread::Builder::new()
        .name("playout".into())
        .spawn(move || {
            playout.run();
            // The device thread ends once it has closed what the playout
            // thread handed it.
            device_stop.store(true, Relaxed);
        })
        .map_err(|error| StartError::Spawn {
            thread: "playout",
            error,
        })?;
    Ok(Playout {
        thread,
        device_thread,
        events: event_rx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_a_period_or_the_whole_frames_that_fit() {
        // The usual device: one period.
        assert_eq!(device_samples(240, 2, 9_728), 480);
        // Six channels in a buffer sized for two: whole frames only.
        assert_eq!(device_samples(4_000, 6, 9_728), 1_621 * 6);
        assert_eq!(device_samples(240, 0, 100), 100);
        // At the defaults the buffer holds a period of 8 channels at
        // 192 kHz, 5 ms, however few channels it is sized for.
        let config = PlayoutConfig::default();
        let out = max_period_samples(&config);
        assert_eq!(out % 2, 0);
        assert_eq!(device_samples(960, 8, out), 960 * 8);
    }

    #[test]
    fn device_position_from_the_buffer_fill_and_the_status_time() {
        let status = DeviceStatus {
            htstamp_ns: 5_000_000_000,
            avail_frames: 1_500,
            // A sound server's latency on top: not part of the position.
            delay_frames: 9_000,
            ..DeviceStatus::default()
        };
        // 48 000 written, 2 000 of a 3 500-frame buffer still queued.
        assert_eq!(
            device_position(&status, 48_000, 3_500, 5_000_300_000),
            (5_000_000_000, 46_000)
        );
        // No timestamp, one from the future or a stale one: our reading.
        for stamp in [0, 5_000_400_000, 3_000_000_000] {
            let s = DeviceStatus {
                htstamp_ns: stamp,
                ..status
            };
            assert_eq!(
                device_position(&s, 48_000, 3_500, 5_000_300_000),
                (5_000_300_000, 46_000)
            );
        }
        // An overrun avail or a buffer larger than what was written.
        let s = DeviceStatus {
            avail_frames: 10_000,
            ..status
        };
        assert_eq!(device_position(&s, 48_000, 3_500, 5_000_300_000).1, 48_000);
        assert_eq!(device_position(&status, 100, 3_500, 5_000_300_000).1, 0);
    }
}
