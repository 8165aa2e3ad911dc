//! The domains of the design documents, written with es: seed 000's orders, seed 001's
//! product catalog and the bank account of the benchmarks. The runnable
//! programs are in `examples/`; the tests of the workspace reuse these types.
#![deny(missing_docs)]

pub mod bank;
pub mod catalog;
pub mod order;
pub mod order_list;
