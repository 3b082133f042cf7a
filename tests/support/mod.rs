//! Support shared by the integration tests: include it with `mod support;`.
//!
//! Every integration test binary compiles this module whole and uses only part of it.
#![allow(dead_code)]

pub mod events;
pub mod fault_proxy;
pub mod kinesis_mock;
pub mod moto;
pub mod process;
pub mod prometheus;
pub mod receiver;
pub mod run;
