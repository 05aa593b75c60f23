//! What the mesh is doing, from its proxies: `weft stat`, `weft top`,
//! `weft tap`, and the data behind `weft dashboard`.
//!
//! ```text
//! mesh.rs   where the proxies are: the running demo, or a cluster (API server proxy)
//! prom.rs   the Prometheus text the proxies serve, read back
//! stats.rs  golden metrics between two scrapes (pure)
//! stat.rs   weft stat / weft top: scrape, compute, print
//! tap.rs    weft tap: the proxies' live request streams, merged
//! ```

pub mod mesh;
pub mod prom;
pub mod stat;
pub mod stats;
pub mod tap;
