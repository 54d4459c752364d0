//! The playback device as the playout thread sees it: a named state
//! machine (`DeviceLink`) on the realtime side, and a device thread
//! (`DeviceThread`) that does everything alsa-lib allocates or blocks for.
//!
//! alsa-lib allocates whenever it opens or closes a PCM, and closing a PCM
//! whose sound server hangs can block for many seconds; the playout thread
//! must do neither. So it asks the device thread to open (`Request::Open`)
//! and hands it lost devices to close (`Request::Close`); the device
//! thread answers with a ready device (`Reply::Opened`, with the resampler
//! bank for its rate when that is new) or the error. Both directions are
//! fixed `heapless::spsc` queues: no lock, no allocation, no syscall on the
//! realtime side.
//!
//! States of the link, in the order a device goes through them:
//! `Closed` (waiting for the backoff to pass) → `Opening` (asked) →
//! `Open` (writing; announced as opened once the device is seen consuming,
//! since a sound server may take a second or two to start a stream) →
//! back to `Closed` when the device is lost or released (its close is
//! queued behind the open requests on the device thread, which runs them in
//! order: plugin libraries such as libjack crash when a PCM is opened while
//! another of theirs is still closing).
//!
//! While a close is running on the device thread, `closing` says so and
//! the playout thread does not beat the watchdog: a close is quick, unless
//! the sound system is wedged (a stopped sound server blocks it for as long
//! as it is stopped), and then a restart by systemd is the way out. A
//! device whose writes made no progress for the stall timeout (`AlsaOut`)
//! is such a one.

use core::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::alsa::playback::{AlsaError, AlsaOut, DeviceConfig, Negotiated};
use crate::audio::resample::ResampleError;
use crate::receive::engine::{PlayoutConfig, ResamplerBank};
use crate::receive::priority::MAX_STREAMS;

/// One resampler bank per stream, in stream order, for one device rate
/// (in place, not boxed: handing them over allocates nothing).
pub type Banks = heapless::Vec<ResamplerBank, MAX_STREAMS>;

/// Requests and replies in flight at once: one open and a few closes.
pub const DEVICE_QUEUE: usize = 8;

/// Reopen backoff: first retry after 100 ms, doubling to 500 ms: a sound
/// server or USB DAC that comes back is played to within half a second,
/// and a try costs little (a failed open is quick).
const BACKOFF_MIN_MS: u64 = 100;
const BACKOFF_MAX_MS: u64 = 500;
/// A device that takes this many periods without ever making the playout
/// thread wait for room (it does not pace: ALSA's `null`, a file) counts as
/// playing. A sound server that has not started its stream yet takes a
/// buffer's worth at most (about 40 ms of PulseAudio's prebuffer).
const WRITES_TO_CONFIRM: u64 = 200;
/// How often the device thread looks for work when idle.
const POLL_MS: u64 = 5;

/// From the playout thread to the device thread.
pub enum Request {
    /// Open the device; `bank_rate` is the rate of the resampler bank the
    /// engine already has (none is built again for the same rate).
    Open { bank_rate: Option<u32> },
    /// Close (without draining) a device that was lost or released.
    Close(AlsaOut),
    /// Free the resampler banks the engines no longer use.
    Free(Banks),
}

/// From the device thread to the playout thread. The device and banks are
/// held in place, not boxed: a box would be freed on the realtime side.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    Opened {
        device: AlsaOut,
        negotiated: Negotiated,
        /// Empty when the engines' banks are for this rate already.
        banks: Banks,
    },
    OpenFailed(OpenError),
}

/// Why a device could not be put to use.
#[derive(Debug)]
pub enum OpenError {
    Alsa(AlsaError),
    /// The device opened at a rate no stream can be converted to.
    Rate {
        device: String,
        rate: u32,
        error: ResampleError,
    },
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Alsa(e) => write!(f, "{e}"),
            OpenError::Rate {
                device,
                rate,
                error,
            } => write!(
                f,
                "device '{device}' opened at {rate} Hz, which the streams cannot be \
                 converted to ({error}); choose a rate with --device-rate"
            ),
        }
    }
}

impl std::error::Error for OpenError {}

pub type RequestQueue = heapless::spsc::Queue<Request, DEVICE_QUEUE>;
pub type ReplyQueue = heapless::spsc::Queue<Reply, DEVICE_QUEUE>;

/// What the link tells the playout thread, to be passed on as events.
pub enum LinkEvent {
    /// The device has been seen consuming: it really plays. A sound server
    /// may take a second or two to start a new stream: `started_ms` says.
    Playing {
        negotiated: Negotiated,
        started_ms: u64,
    },
    OpenFailed(OpenError),
    /// A bank could not be queued for freeing (the queue was full); it is
    /// dropped here instead. Never expected: counted as a fault.
    QueueFull,
}

/// Where the device is. The open device lives in place, not boxed: the
/// state machine is one value of the playout thread, and a box would be an
/// allocation to free on the realtime side at every loss.
#[allow(clippy::large_enum_variant)]
enum State {
    Closed {
        retry_at_ns: u64,
    },
    Opening,
    Open {
        device: AlsaOut,
        /// Held until the device is seen consuming, then sent as an event.
        announce: Option<Negotiated>,
        writes: u64,
        /// Frames written since the open: with the device's delay, where
        /// it is (for the clock estimate).
        frames: u64,
        /// When the playout thread took it over.
        opened_ns: u64,
    },
}

/// The realtime side of the device: its state, and the queue ends to the
/// device thread.
pub struct DeviceLink {
    state: State,
    backoff_ms: u64,
    requests: heapless::spsc::Producer<'static, Request>,
    replies: heapless::spsc::Consumer<'static, Reply>,
    /// Closes handed to the device thread, and (its count) done: a close
    /// is pending from the moment it is handed over, not only once the
    /// device thread has picked it up.
    closes_asked: u64,
    closes_done: Arc<AtomicU64>,
    /// Writes after which a device that never made us wait counts as
    /// consuming all the same.
    writes_to_confirm: u64,
}

impl DeviceLink {
    pub fn new(
        requests: heapless::spsc::Producer<'static, Request>,
        replies: heapless::spsc::Consumer<'static, Reply>,
        closes_done: Arc<AtomicU64>,
        buffer_periods: u32,
    ) -> DeviceLink {
        DeviceLink {
            state: State::Closed { retry_at_ns: 0 },
            backoff_ms: BACKOFF_MIN_MS,
            requests,
            replies,
            closes_asked: 0,
            closes_done,
            writes_to_confirm: WRITES_TO_CONFIRM.max(buffer_periods as u64 + 2),
        }
    }

    /// Moves the state machine on: asks for an open when due, takes the
    /// device thread's answer. A newly opened device's banks go to the
    /// engines through `attach`, which returns the banks they replaced.
    pub fn poll(
        &mut self,
        now_ns: u64,
        bank_rate: Option<u32>,
        mut attach: impl FnMut(&Negotiated, Banks) -> Banks,
    ) -> Option<LinkEvent> {
        match &self.state {
            State::Closed { retry_at_ns } if now_ns >= *retry_at_ns => {
                if self.requests.enqueue(Request::Open { bank_rate }).is_ok() {
                    self.state = State::Opening;
                }
                None
            }
            State::Opening => match self.replies.dequeue()? {
                Reply::Opened {
                    device,
                    negotiated,
                    banks,
                } => {
                    self.backoff_ms = BACKOFF_MIN_MS;
                    let mut event = None;
                    let old = attach(&negotiated, banks);
                    if !old.is_empty() {
                        if let Err(Request::Free(old)) = self.requests.enqueue(Request::Free(old)) {
                            drop(old);
                            event = Some(LinkEvent::QueueFull);
                        }
                    }
                    self.state = State::Open {
                        device,
                        announce: Some(negotiated),
                        writes: 0,
                        frames: 0,
                        opened_ns: now_ns,
                    };
                    event
                }
                Reply::OpenFailed(e) => {
                    self.state = State::Closed {
                        retry_at_ns: now_ns + self.backoff_ms * 1_000_000,
                    };
                    self.backoff_ms = (self.backoff_ms * 2).min(BACKOFF_MAX_MS);
                    Some(LinkEvent::OpenFailed(e))
                }
            },
            _ => None,
        }
    }

    /// The open device, to write to.
    pub fn device(&mut self) -> Option<&mut AlsaOut> {
        match &mut self.state {
            State::Open { device, .. } => Some(device),
            _ => None,
        }
    }

    /// The open device has been seen consuming (its position means
    /// something from here on).
    pub fn consuming(&self) -> bool {
        matches!(&self.state, State::Open { announce: None, .. })
    }

    /// Frames written to the open device since it was opened.
    pub fn frames_written(&self) -> u64 {
        match &self.state {
            State::Open { frames, .. } => *frames,
            _ => 0,
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    /// A write of `frames` went through; after enough of them the device
    /// is known to consume, and its announcement is handed out once.
    pub fn written(&mut self, frames: usize, now_ns: u64) -> Option<LinkEvent> {
        let confirm = self.writes_to_confirm;
        if let State::Open {
            device,
            announce,
            writes,
            frames: total,
            opened_ns,
        } = &mut self.state
        {
            *total += frames as u64;
            if announce.is_some() {
                *writes += 1;
                // Consuming: it made us wait for room and then took audio
                // in. A device that never makes us wait (a `null` sink)
                // counts once it took many periods without complaint.
                if device.consuming() || *writes > confirm {
                    let started_ms = now_ns.saturating_sub(*opened_ns) / 1_000_000;
                    return announce.take().map(|negotiated| LinkEvent::Playing {
                        negotiated,
                        started_ms,
                    });
                }
            }
        }
        None
    }

    /// Gives the device up (lost, or released on purpose): it is closed on
    /// the device thread, and a new open is asked after `retry_after_ms`.
    pub fn release(&mut self, now_ns: u64, retry_after_ms: u64) {
        let state = core::mem::replace(
            &mut self.state,
            State::Closed {
                retry_at_ns: now_ns + retry_after_ms * 1_000_000,
            },
        );
        match state {
            State::Open { device, .. } => {
                self.closes_asked += 1;
                if let Err(Request::Close(device)) = self.requests.enqueue(Request::Close(device)) {
                    self.closes_asked -= 1;
                    // The queue holds 8 requests and the device thread
                    // runs them in order; a full queue means it is stuck
                    // in a close, so this one would wait there too. Keep
                    // the device here instead and try again next period.
                    self.state = State::Open {
                        device,
                        announce: None,
                        writes: 0,
                        frames: 0,
                        opened_ns: 0,
                    };
                }
            }
            // An open in flight stays in flight: its answer is taken as
            // the new device.
            State::Opening => self.state = State::Opening,
            closed @ State::Closed { .. } => self.state = closed,
        }
    }

    /// The device was lost: release it and retry soon.
    pub fn lost(&mut self, now_ns: u64) {
        self.release(now_ns, BACKOFF_MIN_MS);
    }

    /// A close is running on the device thread.
    pub fn closing(&self) -> bool {
        self.closes_asked > self.closes_done.load(Relaxed)
    }

    /// At shutdown: hands the device to the device thread to close.
    pub fn shut_down(&mut self) {
        self.release(0, u64::MAX / 2_000_000);
    }
}

/// The device thread: opens, closes and frees for the playout thread.
pub struct DeviceThread {
    pub config: PlayoutConfig,
    /// Each stream's configuration (its formats), in stream order: a
    /// bank is built for each.
    pub streams: Vec<PlayoutConfig>,
    pub requests: heapless::spsc::Consumer<'static, Request>,
    pub replies: heapless::spsc::Producer<'static, Reply>,
    pub closes_done: Arc<AtomicU64>,
    pub stop: Arc<AtomicBool>,
}

impl DeviceThread {
    /// The thread body: serves requests in order until `stop` is set and
    /// every queued close has been done.
    pub fn run(mut self) {
        loop {
            match self.requests.dequeue() {
                Some(Request::Open { bank_rate }) => {
                    let reply = self.open(bank_rate);
                    // The playout thread has one open in flight at a time,
                    // so there is room; if not, the device is closed here.
                    let _ = self.replies.enqueue(reply);
                }
                Some(Request::Close(device)) => {
                    drop(device);
                    self.closes_done.fetch_add(1, Relaxed);
                }
                Some(Request::Free(bank)) => drop(bank),
                None => {
                    if self.stop.load(Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(POLL_MS));
                }
            }
        }
    }

    fn open(&self, bank_rate: Option<u32>) -> Reply {
        let c = &self.config;
        // The period is asked in frames of the rate asked for, or of the
        // usual 48 kHz when the device chooses (the open ladder keeps its
        // length in time if the device grants another rate).
        let rate = c.device_rate.unwrap_or(48_000);
        let device = match AlsaOut::open(&DeviceConfig {
            device: c.device.clone(),
            access: c.access,
            rate: c.device_rate,
            channels: c.device_channels,
            period_frames: (rate as u64 * c.period_ms as u64 / 1000).max(16) as u32,
            buffer_periods: c.buffer_periods,
        }) {
            Ok(d) => d,
            Err(e) => return Reply::OpenFailed(OpenError::Alsa(e)),
        };
        let negotiated = device.negotiated().clone();
        let mut banks = Banks::new();
        if bank_rate != Some(negotiated.rate) {
            for stream in &self.streams {
                let bank = match ResamplerBank::new(&stream.stream_formats, negotiated.rate, stream)
                {
                    Ok(b) => b,
                    Err(error) => {
                        return Reply::OpenFailed(OpenError::Rate {
                            device: negotiated.device.clone(),
                            rate: negotiated.rate,
                            error,
                        })
                    }
                };
                // More streams than banks are refused at start-up.
                let _ = banks.push(bank);
            }
        }
        Reply::Opened {
            device,
            negotiated,
            banks,
        }
    }
}
