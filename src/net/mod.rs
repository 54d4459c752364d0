//! The network layer of both directions.
//!
//! - [`socket`]: the one place UDP sockets are built (buffers, multicast
//!   join and output, `--interface` resolution), for the receiver and the
//!   sender alike.
//! - [`filter`]: the `--allow` source filter.
//! - [`link`]: follows `--interface` through the kernel's rtnetlink
//!   events (input: link and address messages; output: the receiver's
//!   group joined when the interface appears, rejoined when it comes back
//!   up, changes address or returns, and events the main thread logs).
//! - [`receive`]: the receiver's socket and the net thread's loop (input:
//!   datagrams; output: packet slots to the playout thread, counters, and
//!   drop events the main thread logs).
//! - [`sap`]: SAP (RFC 2974) announcements: the datagram format both
//!   ways and the receiver's listening sockets.
//! - [`send`]: the sender's destination socket (input: encoded datagrams;
//!   output: UDP to one address, unicast or multicast).

pub mod filter;
pub mod link;
pub mod receive;
pub mod sap;
pub mod send;
pub mod socket;

pub use filter::Cidr;
pub use receive::{
    run, run_streams, run_with_srtp, DropReason, EventLog, EventQueue, NetConfig, NetCounters,
    NetError, NetEvent, NetScratch, NetStream, Receiver, DEFAULT_RECV_BUFFER_BYTES, RECV_TIMEOUT,
};
