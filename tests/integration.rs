//! One integration test binary: the real server, real models, real store,
//! called over a real socket.

mod common;

mod audit_log;
mod backup;
mod bad_input;
mod cli;
mod cluster;
mod crashes;
mod durability;
mod erasure;
mod face;
mod faults;
mod finger;
mod health;
mod jobs;
mod keys;
mod listing;
mod model_quality;
mod postgres;
mod retention;
mod security;
mod site;
