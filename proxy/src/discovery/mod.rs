//! Configuration from the controller's discovery feed ([`client`]) or a
//! static file ([`static_file`]), held in a lock-free [`store`] that the data
//! path reads.

pub mod client;
pub mod static_file;
pub mod store;

pub use store::{Resolved, Slot, Store};
