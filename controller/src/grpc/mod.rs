//! The gRPC edge: the discovery feed ([`discovery`]).

pub mod discovery;
