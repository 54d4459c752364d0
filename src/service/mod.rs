//! The process around the data path, shared by both programs:
//!
//! - [`log`]: logging init (stderr with the level from `-v`/`-q`, syslog
//!   under systemd or with `--syslog`), each line naming its stage once;
//! - [`signals`]: SIGTERM/SIGINT stop, SIGHUP reopen, SIGUSR1 statistics,
//!   as flags;
//! - [`notify`]: the sd_notify protocol and the watchdog gate that pets
//!   only while the worker's heartbeat moves;
//! - [`sched`]: realtime priority and locked memory, one call per thread,
//!   refusals returned as values;
//! - [`usage`]: the bad-command-line error, its exit path (status 2) and
//!   the option value helpers;
//! - [`supervise()`]: the main thread's loop tying these together;
//! - [`clock`], [`ratelimit`]: the monotonic clock and log rate limits.
//!
//! A binary parses options (with [`usage`]), installs logging and signals,
//! spawns its threads and hands the main thread to [`supervise()`].

pub mod alloc;
pub mod clock;
pub mod log;
pub mod notify;
pub mod ratelimit;
pub mod sched;
pub mod signals;
pub mod supervise;
pub mod usage;

pub use supervise::{supervise, Callbacks, Config, Ending, Poll};
