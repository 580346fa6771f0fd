//! Integration tests of the write side against real PostgreSQL and NATS
//! JetStream: one binary, one module per concern.

mod audit;
mod audit_http;
mod commands;
mod concurrency;
mod env;
mod input;
mod projection;
mod publishing;
mod redis_cache;
mod store;
