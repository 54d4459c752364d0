//! What the playout thread reports, in words: the main thread drains the
//! playout thread's event queue and writes each event as a log line, the
//! noisy kinds (underruns, failed opens) rate-limited. The playout thread
//! itself never logs (formatting allocates, and a logger may block).

use crate::receive::playout::Event;
use crate::service::ratelimit::RateLimit;

/// Rate limits of the noisy kinds of line.
pub struct EventLog {
    underruns: RateLimit,
    standstills: RateLimit,
    device: RateLimit,
    /// Several streams: how each is named in the log, in stream order,
    /// and what happens to those that do not own the speaker.
    streams: Vec<String>,
    others: String,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            // At most 3 lines each 10 s (underruns, standstills) or 30 s (a device that
            // keeps failing to open): the counters carry the rest.
            underruns: RateLimit::new(10_000_000_000, 3),
            standstills: RateLimit::new(10_000_000_000, 3),
            device: RateLimit::new(30_000_000_000, 3),
            streams: Vec::new(),
            others: String::new(),
        }
    }
}

impl EventLog {
    /// For several streams: `streams` names each (in stream order),
    /// `others` says what the ones that do not own the speaker get
    /// ("ducked -30 dB", "muted").
    pub fn with_streams(streams: Vec<String>, others: String) -> EventLog {
        EventLog {
            streams,
            others,
            ..EventLog::default()
        }
    }

    /// The prefix naming a stream in a line about it; none with one
    /// stream.
    fn of(&self, index: u8) -> String {
        if self.streams.is_empty() {
            String::new()
        } else {
            format!("stream {}: ", self.stream_name(index))
        }
    }

    /// How the log and statistics line name stream `index`.
    pub fn stream_name(&self, index: u8) -> &str {
        self.streams
            .get(index as usize)
            .map_or("an unknown stream", String::as_str)
    }

    /// Writes the line `event` calls for, unless its kind was written too
    /// often lately.
    pub fn log(&mut self, event: &Event, now: u64) {
        if let Event::Speaker { from, to } = event {
            let name = |i: &Option<u8>| i.map(|i| self.stream_name(i).to_string());
            match (name(from), name(to)) {
                (from, Some(to)) => log::info!(target: "playout",
                    "speaker: {to} owns the speaker{}; the other streams are {}",
                    from.map_or(String::new(), |f| format!(" (taking it from {f})")),
                    self.others
                ),
                (Some(from), None) => log::info!(target: "playout",
                    "speaker: {from} is quiet and no stream plays; nothing is ducked"
                ),
                (None, None) => {}
            }
            return;
        }
        let (underruns, standstills, device) =
            (&mut self.underruns, &mut self.standstills, &mut self.device);
        match event {
            Event::RealtimeRefused(e) | Event::MemoryLockRefused(e) => {
                log::warn!(target: "playout", "{e}")
            }
            Event::DeviceOpened {
                negotiated: n,
                started_ms,
            } => {
                let setup = format!(
                    "{} {} {} Hz {} ch, period {} frames, buffer {} frames \
                     (consuming after {started_ms} ms)",
                    n.access.name(),
                    n.format.alsa_name(),
                    n.rate,
                    n.channels,
                    n.period_frames,
                    n.buffer_frames
                );
                if n.fell_back {
                    log::warn!(target: "playout",
                        "device '{}' refused the rate and channels asked (--device-rate, \
                         --device-channels) in every period tried; playing at its own: {setup}",
                        n.device
                    )
                } else {
                    log::info!(target: "playout", "device '{}' open: {setup}", n.device)
                }
            }
            Event::DeviceOpenFailed(e) => {
                if let Some(suppressed) = device.check(now) {
                    log::error!(target: "playout", "{e}; retrying{}", suppressed_note(suppressed));
                }
            }
            Event::DeviceLost(e) => log::warn!(target: "playout", "{e}; reopening"),
            Event::Reopening(why) => log::info!(target: "playout", "reopening the device: {why}"),
            Event::Underrun => {
                if let Some(suppressed) = underruns.check(now) {
                    log::warn!(target: "playout",
                        "underrun: the device ran dry and was restarted{}",
                        suppressed_note(suppressed)
                    );
                }
            }
            Event::Resumed => log::warn!(target: "playout", "device resumed after suspend"),
            Event::DeviceStood { ms } => {
                if let Some(suppressed) = standstills.check(now) {
                    log::warn!(target: "playout",
                        "the device took nothing for {ms} ms; the audio that arrived \
                         meanwhile was kept and is played out faster{}",
                        suppressed_note(suppressed)
                    );
                }
            }
            Event::StreamStarted {
                stream,
                ssrc,
                format,
            } => {
                log::info!(target: "playout", "{}stream started: SSRC {ssrc:08x}, {format}", self.of(*stream))
            }
            Event::NewStream {
                stream,
                previous_ssrc,
                ssrc,
                format,
            } => {
                log::info!(target: "playout",
                    "{}new sender: SSRC {previous_ssrc:08x} → {ssrc:08x}, {format}; buffer reset",
                    self.of(*stream)
                )
            }
            Event::StreamLost { stream } => {
                log::warn!(target: "playout", "{}stream lost: no packets; faded out, waiting for the sender", self.of(*stream))
            }
            Event::Resync { stream } => {
                log::info!(target: "playout", "{}timestamp jump: jitter buffer resynchronised", self.of(*stream))
            }
            Event::Contending {
                stream,
                ssrc,
                current,
            } => log::warn!(target: "playout",
                "{}source: another sender (SSRC {ssrc:08x}) streams to this port while \
             SSRC {current:08x} plays; it is ignored (counted as stray) until that one stops",
                self.of(*stream)
            ),
            Event::SenderLeft { stream, ssrc } => {
                log::info!(target: "playout", "{}source: sender SSRC {ssrc:08x} said goodbye (RTCP BYE)", self.of(*stream))
            }
            Event::Speaker { .. } => {}
            Event::QueueFull => {
                log::warn!(target: "playout", "playout: an internal queue was full (a bug: please report)")
            }
        }
    }
}

fn suppressed_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} similar lines suppressed)")
    }
}
