//! The receiver's stages, in path order: jitter buffer, concealment,
//! stretching, delay estimate, delay controller (clock following), the
//! playout engine and its realtime thread, and the statistics they publish;
//! beside them, [`sap`] follows a SAP-announced session (`--sap`).

pub mod clock;
pub mod conceal;
pub mod delay;
pub mod device;
pub mod drift;
pub mod engine;
pub mod events;
pub mod jitter;
pub mod margin;
pub mod opus_store;
pub mod playout;
pub mod priority;
pub mod sap;
pub mod sender_clock;
pub mod source;
pub mod stats;
pub mod streams;
pub mod stretch;
pub mod sync;
