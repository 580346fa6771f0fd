//! Real data sets and the tools that push them through the HTTP API: the
//! loader used by the start script and the load generator of the
//! benchmarks.

pub mod datasets;
pub mod load;
