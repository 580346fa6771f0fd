//! Integration tests against real PostgreSQL (and its hot standby), NATS
//! JetStream and Redis: one binary, one module per concern.

mod audit;
mod audit_http;
mod cluster;
mod commands;
mod concurrency;
mod deploy;
mod env;
mod hostile;
mod hostile_props;
mod input;
mod ledger;
mod merkle;
mod outage;
mod projection;
mod publishing;
mod reads;
mod redis_cache;
mod store;
mod workload;
