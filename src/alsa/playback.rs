//! The ALSA output stage: the last stage of the receiver's data path.
//!
//! Input: interleaved `f32` frames in [-1, 1) at the negotiated rate and
//! channel count, one period at a time from the playout thread.
//! Output: those frames on an ALSA playback device, converted to the first
//! sample format the device accepts (S16_LE, S32_LE, FLOAT_LE, S24_3LE, in
//! that order of preference), in read/write or mmap access.
//!
//! Policy:
//! - `open` runs the shared ladder of [`super::open`] (ask, accept what the
//!   device offers, read back into [`Negotiated`]) and allocates the
//!   conversion buffer once. Where the device gives another rate or channel
//!   count than asked, the caller converts; this stage never resamples.
//!   `open`, `close` and `Drop` may allocate and block: they belong on the
//!   opener thread, never the playout thread.
//! - `write` blocks until every frame is queued: the device is the playout
//!   clock. It never allocates, never logs (it returns outcomes; the caller
//!   reports) and never sleeps but in the device wait: the PCM is opened
//!   nonblocking and waits with a timeout, because alsa-lib's PulseAudio
//!   plugin blocks forever in a blocking write when the server hangs (a
//!   killed server gives EIO at once, a stopped one gives nothing).
//! - Recovery is a bounded ladder: EAGAIN waits (for at most the stall
//!   timeout); EPIPE (underrun) prepares and rewrites, `Ok(Underrun)`;
//!   ESTRPIPE (suspend) tries `resume()` once per write: resumed, the frames
//!   are written, `Ok(Resumed)`; still waking up (EAGAIN), the frames are
//!   dropped and `Ok(Suspended)` tells the caller to keep its period pace
//!   and try again; after [`MAX_SUSPENDED_WRITES`] such writes (or when the
//!   device cannot resume) it prepares instead. Anything else, a
//!   DISCONNECTED state or no progress for the stall timeout is
//!   `Err(DeviceLost)`: the caller closes the device and reopens it with
//!   backoff.

use alsa::pcm::{State, PCM};
use core::fmt;
use std::sync::Arc;

use super::error::errno;
pub use super::error::AlsaError;
use super::open::{open_pcm, Stream};
pub use super::open::{Access, DeviceConfig, HwSetup, Negotiated, SampleFormat};
use crate::audio::convert::to_device;
use crate::service::clock::monotonic_ns;

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
    /// The device is suspended and still waking up: nothing was queued
    /// (the frames are dropped) and the write returned at once. The caller
    /// keeps its own period pace (the device cannot pace it now) and writes
    /// the next period as usual.
    Suspended,
}

/// The device's clock as `snd_pcm_status` saw it at one instant, for
/// estimating when a frame reaches the DAC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStatus {
    /// When the status was taken (CLOCK_MONOTONIC where the device honours
    /// the timestamp type, ns); 0 when the device keeps no timestamps.
    pub htstamp_ns: u64,
    /// When the stream was last started, stopped or paused, ns; 0 if never.
    pub trigger_ns: u64,
    /// The device's own audio timestamp (frames played, as a time), ns;
    /// `None` where the device does not report one.
    pub audio_tstamp_ns: Option<u64>,
    /// Frames queued that have not reached the DAC yet.
    pub delay_frames: i64,
    /// Frames of room in the ring buffer.
    pub avail_frames: u64,
}

/// Bounds of the recovery ladder. Every loop in `write` is capped by one.
/// Underruns in a row within one write before we call the device lost: one
/// is normal after a stall, a second means prepare does not help.
const MAX_UNDERRUNS_PER_WRITE: u32 = 4;
/// Writes (periods) that find the device still waking from a suspend
/// before we prepare it instead: `snd_pcm_resume` answers EAGAIN while the
/// hardware wakes up, which takes up to about a second (CamillaDSP waits
/// the same order of magnitude); at 10 ms periods this is half of that.
pub const MAX_SUSPENDED_WRITES: u32 = 50;
/// No progress for this long means the device (or its server) hangs. A
/// PulseAudio stream that underran on the server's side stands still for
/// about a second while the server refills it (seen under load): that is
/// not a hang, and reopening then only starts the same wait again.
const STALL_TIMEOUT_MIN_MS: u64 = 2500;
/// Until a started stream has been seen consuming, allow longer: a
/// PulseAudio null sink was seen taking over a second to start playing a
/// new stream on a loaded machine.
const START_STALL_TIMEOUT_MS: u64 = 5000;

/// An open playback device with its conversion buffer. `Send`: built on
/// the opener thread, handed to the playout thread, handed back to close.
pub struct AlsaOut {
    pcm: PCM,
    negotiated: Negotiated,
    /// The device name for errors, shared so that reporting a loss does
    /// not allocate.
    device: Arc<str>,
    /// Device-format bytes for rw writes; sized once in `open`.
    convert: Vec<u8>,
    bytes_per_frame: usize,
    /// How long `write` waits without progress before declaring the device
    /// lost, in ms.
    stall_timeout_ms: u64,
    /// Longest single `snd_pcm_wait`: two periods. The PulseAudio plugin's
    /// poll descriptor does not always wake when room appears (its pointer
    /// moves only when asked), so we look again at least this often.
    wait_slice_ms: u64,
    /// The device has freed room since it was opened or last prepared.
    consuming: bool,
    /// Writes in a row that found the device suspended and not yet awake.
    suspended_writes: u32,
    /// What the last `status` saw, if nothing was written since.
    last_room: Option<Room>,
}

/// The room a status saw in the device's buffer, and when.
#[derive(Clone, Copy, Debug)]
struct Room {
    frames: u64,
    at_ns: u64,
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

/// How long to wait before writing a period, in ms: the time until a
/// period of room is due at the device's rate, after `room_frames` were
/// free `since_ns` ago, plus one millisecond, at most `slice_ms`. `None`
/// when the room is there already (or the rate is unknown): write at once.
fn room_due_ms(
    room_frames: u64,
    period_frames: u64,
    rate: u32,
    since_ns: u64,
    slice_ms: u64,
) -> Option<u32> {
    let missing = period_frames.checked_sub(room_frames).filter(|&m| m > 0)?;
    let rate = Some(u64::from(rate)).filter(|&r| r > 0)?;
    let due_ns = (missing * 1_000_000_000 / rate)
        .checked_sub(since_ns)
        .filter(|&d| d > 0)?;
    let ms = due_ns.div_ceil(1_000_000) + 1;
    u32::try_from(ms.min(slice_ms.max(1))).ok()
}

fn timespec_ns(t: nix::libc::timespec) -> u64 {
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(t.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

impl AlsaOut {
    /// Opens and configures the device; fully built or not at all. May
    /// allocate and block: call it on the opener thread.
    pub fn open(config: &DeviceConfig) -> Result<AlsaOut, AlsaError> {
        // Nonblocking: see the module comment (a hung PulseAudio server
        // would block a blocking write forever).
        let (pcm, negotiated) =
            open_pcm(config, Stream::Playback, &SampleFormat::PREFERENCE, true)?;
        let bytes_per_frame =
            negotiated.format.bytes_per_sample() * usize::from(negotiated.channels);
        let rate = u64::from(negotiated.rate.max(1));
        let buffer_ms = negotiated.buffer_frames as u64 * 1000 / rate;
        let period_ms = negotiated.period_frames as u64 * 1000 / rate;
        Ok(AlsaOut {
            pcm,
            device: Arc::from(negotiated.device.as_str()),
            convert: vec![0u8; negotiated.period_frames * bytes_per_frame],
            bytes_per_frame,
            stall_timeout_ms: STALL_TIMEOUT_MIN_MS.max(2 * buffer_ms),
            consuming: false,
            wait_slice_ms: (2 * period_ms).clamp(1, 100),
            suspended_writes: 0,
            last_room: None,
            negotiated,
        })
    }

    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// The device has taken audio in after making us wait for room since
    /// it was opened or last restarted: it plays in real time. (A sound
    /// server accepts a buffer's worth before it has started its stream.)
    pub fn consuming(&self) -> bool {
        self.consuming
    }

    /// Frames written but not yet played (`snd_pcm_delay`); `None` when the
    /// device cannot tell (not running, or in trouble).
    pub fn delay_frames(&self) -> Option<i64> {
        // Frames is c_long: i64 here, i32 on 32-bit Raspberry Pi OS.
        #[allow(clippy::useless_conversion)]
        self.pcm.delay().ok().map(i64::from)
    }

    /// The device's timestamps and fill (`snd_pcm_status`); does not
    /// allocate. `None` when the device cannot tell.
    pub fn status(&mut self) -> Option<DeviceStatus> {
        let status = self.pcm.status().ok()?;
        let audio = timespec_ns(status.get_audio_htstamp());
        let avail_frames = u64::try_from(status.get_avail()).unwrap_or(0);
        self.last_room = Some(Room {
            frames: avail_frames,
            at_ns: monotonic_ns(),
        });
        #[allow(clippy::useless_conversion)]
        Some(DeviceStatus {
            htstamp_ns: timespec_ns(status.get_htstamp()),
            trigger_ns: timespec_ns(status.get_trigger_htstamp()),
            audio_tstamp_ns: (audio != 0).then_some(audio),
            delay_frames: i64::from(status.get_delay()),
            avail_frames,
        })
    }

    /// Writes all frames (interleaved f32 in [-1, 1), negotiated channel
    /// count; a trailing partial frame is ignored), converting to the device
    /// format. Blocks on the device: that is the playout clock. Never
    /// allocates, logs or sleeps outside the device wait.
    pub fn write(&mut self, samples: &[f32]) -> Result<WriteOutcome, AlsaError> {
        self.write_waiting(samples, |_| {})
    }

    /// `write`, calling `while_waiting` after each wait for room (each at
    /// most `wait_slice_ms`) with how long the device has taken nothing
    /// (ns, waits only): the playout thread moves packets on then. Its
    /// time does not count towards the stall timeout.
    pub fn write_waiting(
        &mut self,
        samples: &[f32],
        mut while_waiting: impl FnMut(u64),
    ) -> Result<WriteOutcome, AlsaError> {
        let channels = usize::from(self.negotiated.channels);
        let frames = samples.len() / channels;
        let mut outcome = WriteOutcome::Written;
        let mut underruns = 0u32;
        let mut done = 0usize;
        let mut stalled_ns = 0u64;
        let mut waited = false;
        // Frames of `samples` held converted in `self.convert` (read/write
        // access): a write that finds no room (EAGAIN, every period once the
        // buffer is full) or takes part of them leaves the rest converted
        // for the next try, instead of converting it again.
        let mut converted = 0..0;
        self.wait_for_room_first(&mut while_waiting)?;
        while done < frames {
            if state_of(&self.pcm) == Some(State::Disconnected) {
                return Err(self.lost("write", errno::ENODEV));
            }
            let rest = &samples[done * channels..frames * channels];
            let step = match self.negotiated.access {
                Access::ReadWrite => {
                    if !converted.contains(&done) {
                        converted = done..done + self.convert_rw(rest);
                    }
                    self.write_rw(done - converted.start..converted.end - converted.start)
                }
                Access::Mmap => self.write_mmap(rest),
            };
            match step {
                Ok(0) => {}
                Ok(n) => {
                    done += n;
                    if waited {
                        // Room appeared after a wait: the device consumes.
                        self.consuming = true;
                    }
                    self.suspended_writes = 0;
                    waited = false;
                    stalled_ns = 0;
                    continue;
                }
                Err(e) => match e.errno() {
                    errno::EAGAIN => {}
                    errno::EPIPE => {
                        underruns += 1;
                        if underruns > MAX_UNDERRUNS_PER_WRITE {
                            return Err(self.lost("underrun recovery", errno::EPIPE));
                        }
                        self.pcm
                            .prepare()
                            .map_err(|e| self.lost("prepare after underrun", e.errno()))?;
                        self.consuming = false;
                        if outcome == WriteOutcome::Written {
                            outcome = WriteOutcome::Underrun;
                        }
                        stalled_ns = 0;
                        continue;
                    }
                    errno::ESTRPIPE => {
                        if !self.resume_once()? {
                            return Ok(WriteOutcome::Suspended);
                        }
                        self.consuming = false;
                        outcome = WriteOutcome::Resumed;
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
                return Err(self.lost("write (no progress)", errno::ETIMEDOUT));
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
                Err(e) if matches!(e.errno(), errno::EPIPE | errno::ESTRPIPE | errno::EAGAIN) => {}
                Err(e) => return Err(self.lost("wait", e.errno())),
            }
            while_waiting(stalled_ns);
        }
        Ok(outcome)
    }

    /// A device that plays with its buffer full (every period, once it is)
    /// had no room for a period when the status after the last write was
    /// read: wait for the room first instead of trying a write that only
    /// says EAGAIN (behind PulseAudio's plugin each try is its own round of
    /// work). The wait is bounded by when the room is due plus a
    /// millisecond, because that plugin's poll descriptor does not always
    /// wake when room appears; the write loop handles whatever follows.
    fn wait_for_room_first(
        &mut self,
        while_waiting: &mut impl FnMut(u64),
    ) -> Result<(), AlsaError> {
        let Some(room) = self.last_room.take() else {
            return Ok(());
        };
        if !self.consuming || state_of(&self.pcm) != Some(State::Running) {
            return Ok(());
        }
        let since_ns = monotonic_ns().saturating_sub(room.at_ns);
        let Some(timeout_ms) = room_due_ms(
            room.frames,
            self.negotiated.period_frames as u64,
            self.negotiated.rate,
            since_ns,
            self.wait_slice_ms,
        ) else {
            return Ok(());
        };
        match self.pcm.wait(Some(timeout_ms)) {
            Ok(_) => {}
            Err(e) if matches!(e.errno(), errno::EPIPE | errno::ESTRPIPE | errno::EAGAIN) => {}
            Err(e) => return Err(self.lost("wait", e.errno())),
        }
        while_waiting(0);
        Ok(())
    }

    /// Converts the first frames of `samples` (as many as the conversion
    /// buffer holds) into it; frames converted.
    fn convert_rw(&mut self, samples: &[f32]) -> usize {
        let channels = usize::from(self.negotiated.channels);
        let frames = (samples.len() / channels).min(self.convert.len() / self.bytes_per_frame);
        let bytes = frames * self.bytes_per_frame;
        let Some(out) = self.convert.get_mut(..bytes) else {
            return 0;
        };
        to_device(
            self.negotiated.format.layout(),
            &samples[..frames * channels],
            out,
        );
        frames
    }

    /// One `writei` of the converted frames `frames` (indices into the
    /// conversion buffer); frames written.
    fn write_rw(&mut self, frames: std::ops::Range<usize>) -> alsa::Result<usize> {
        let bpf = self.bytes_per_frame;
        match self.convert.get(frames.start * bpf..frames.end * bpf) {
            Some(bytes) if !bytes.is_empty() => self.pcm.io_bytes().writei(bytes),
            _ => Ok(0),
        }
    }

    /// Converts straight into the ring buffer; frames committed.
    fn write_mmap(&mut self, samples: &[f32]) -> alsa::Result<usize> {
        let channels = usize::from(self.negotiated.channels);
        let want = samples.len() / channels;
        let avail = self.pcm.avail_update()?;
        let avail = usize::try_from(avail).unwrap_or(0);
        if avail == 0 {
            self.start_if_prepared()?;
            return Err(alsa::Error::new("snd_pcm_avail_update", errno::EAGAIN));
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
        if queued >= self.negotiated.start_threshold {
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

    /// ESTRPIPE: one `resume()`, never a sleep. True when the device can
    /// take frames again (resumed, or prepared because it cannot resume or
    /// has been waking up for too many writes); false while it still wakes.
    fn resume_once(&mut self) -> Result<bool, AlsaError> {
        let resumed = self.pcm.resume().map_err(|e| e.errno());
        let (step, writes) = suspend_step(resumed, self.suspended_writes);
        self.suspended_writes = writes;
        match step {
            SuspendStep::Resumed => Ok(true),
            SuspendStep::StillWaking => Ok(false),
            SuspendStep::Prepare => {
                self.pcm
                    .prepare()
                    .map_err(|e| self.lost("prepare after suspend", e.errno()))?;
                Ok(true)
            }
        }
    }

    fn lost(&self, during: &'static str, errno: i32) -> AlsaError {
        AlsaError::DeviceLost {
            device: Arc::clone(&self.device),
            during,
            errno,
        }
    }

    /// Plays out what is queued and stops, waiting at most the buffer's
    /// length plus the stall timeout. Errors here are of no use to the
    /// caller (it is closing), so they end the drain quietly. Blocks: for
    /// the opener thread.
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
                Err(e) if e.errno() == errno::EAGAIN => {}
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

    /// Drains and closes the device. Blocks (a PulseAudio PCM whose server
    /// hangs takes the plugin's 30 s timeout to close; so does a plain
    /// `drop`): call it on the opener thread.
    pub fn close(mut self) {
        self.drain();
    }
}

/// What a write does on meeting a suspended device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SuspendStep {
    /// `resume()` worked: write the frames.
    Resumed,
    /// Still waking up: return `Suspended`, try again next period.
    StillWaking,
    /// Waking took too long, or the device cannot resume: prepare, then
    /// write the frames.
    Prepare,
}

/// The suspend ladder as a pure decision: the result of one `resume()`
/// (an errno on failure) and the writes that already found the device
/// waking give the step and the new count.
fn suspend_step(resumed: Result<(), i32>, writes_waking: u32) -> (SuspendStep, u32) {
    match resumed {
        Ok(()) => (SuspendStep::Resumed, 0),
        Err(errno::EAGAIN) if writes_waking + 1 < MAX_SUSPENDED_WRITES => {
            (SuspendStep::StillWaking, writes_waking + 1)
        }
        // Waking too long, or the device cannot resume (ENOSYS).
        Err(_) => (SuspendStep::Prepare, 0),
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
    fn alsa_out_can_move_to_the_playout_thread() {
        // Opened on the opener thread, written on the playout thread: a
        // PCM that could not cross threads would not compile here.
        fn is_send<T: Send>() {}
        is_send::<AlsaOut>();
    }

    #[test]
    fn suspended_device_is_retried_each_period_then_prepared() {
        let mut writes = 0;
        // While the hardware wakes, every write returns at once.
        for n in 1..MAX_SUSPENDED_WRITES {
            let (step, w) = suspend_step(Err(errno::EAGAIN), writes);
            assert_eq!(step, SuspendStep::StillWaking, "write {n}");
            writes = w;
        }
        // The bound reached: prepare instead, and the count starts over.
        assert_eq!(
            suspend_step(Err(errno::EAGAIN), writes),
            (SuspendStep::Prepare, 0)
        );
    }

    #[test]
    fn wait_for_room_is_bounded_by_when_it_is_due() {
        // 48 kHz, 5 ms periods (240 frames), two-period slices.
        let due = |room, since_ns| room_due_ms(room, 240, 48_000, since_ns, 10);
        // No room just after the status: a period is due in 5 ms.
        assert_eq!(due(0, 0), Some(6));
        // Half a period free 1 ms ago: 1.5 ms to go, rounded up.
        assert_eq!(due(120, 1_000_000), Some(3));
        // A period free, or due by now: write at once.
        assert_eq!(due(240, 0), None);
        assert_eq!(due(300, 0), None);
        assert_eq!(due(0, 5_000_000), None);
        assert_eq!(due(0, 9_000_000), None);
        // Never longer than a slice, never zero, nothing at rate 0.
        assert_eq!(room_due_ms(0, 4800, 48_000, 0, 10), Some(10));
        assert_eq!(room_due_ms(0, 240, 48_000, 0, 0), Some(1));
        assert_eq!(room_due_ms(0, 240, 0, 0, 10), None);
        // Due in a few microseconds: still a whole millisecond's bound.
        assert_eq!(due(0, 4_999_000), Some(2));
    }

    #[test]
    fn suspended_device_that_resumes_is_written_at_once() {
        assert_eq!(suspend_step(Ok(()), 7), (SuspendStep::Resumed, 0));
    }

    #[test]
    fn device_that_cannot_resume_is_prepared_at_once() {
        let enosys = nix::errno::Errno::ENOSYS as i32;
        assert_eq!(suspend_step(Err(enosys), 0), (SuspendStep::Prepare, 0));
    }
}
