//! cotejo: biometric identification over gRPC. Enroll faces (and, later,
//! fingerprints), identify 1:N, verify 1:1.

pub mod admission;
pub mod api;
pub mod auth;
pub mod biometric;
pub mod calibration;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod eval;
pub mod face;
pub mod finger;
pub mod imaging;
pub mod index;
pub mod inference;
pub mod jobs;
pub mod metrics;
pub mod openmp;
pub mod server;
pub mod shard;
pub mod store;
pub mod telemetry;
pub mod workers;
