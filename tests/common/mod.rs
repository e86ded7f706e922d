//! Shared integration-test support. Each test file does `mod common;`.
#![allow(dead_code, unused_imports)]

pub mod broker;
pub mod carriers;
pub mod fault_proxy;
pub mod kit;
pub mod telemetry;
pub mod traced;

pub use broker::{Broker, BrokerBuilder, MosquittoSub, SubOutput, unique_client_id};
