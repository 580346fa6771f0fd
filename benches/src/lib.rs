//! Real data sets and the tools that push them through the HTTP API: the
//! loader used by the start script and the load generators of the
//! benchmarks.

pub mod datasets;
pub mod feed;
pub mod load;
pub mod mix;
pub mod raw_http;
pub mod report;
pub mod study;
pub mod svg;
