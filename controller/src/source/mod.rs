//! Where objects come from: a Kubernetes API server ([`kube`]) or a
//! directory of YAML ([`dir`]). Both deliver the same [`Event`]s.

pub mod dir;
pub mod kube;
pub mod parse;

use crate::index::{Kind, Object, ObjectRef};

/// A change a source saw.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Event {
    Apply(Object),
    Delete(ObjectRef),
    /// Every object of a kind, replacing what was there (a (re)list).
    Reset(Kind, Vec<Object>),
    /// The source has delivered its initial state of this kind.
    Synced(Kind),
    /// A problem the source met (a malformed file): counted and logged.
    Error {
        source: String,
        message: String,
    },
}
