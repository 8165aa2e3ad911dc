//! The domains the examples and tests are written in: an order service (orders with items,
//! inventory, payment, confirmation and cancellation, its order list read model, and the
//! integration events it publishes to other services), a product catalog whose events were
//! upgraded once, and the bank account of the benchmarks; plus the order service over HTTP
//! (`web`). The runnable programs are in `examples/`; the tests of the
//! workspace reuse these types.
#![deny(missing_docs)]

pub mod bank;
pub mod catalog;
pub mod order;
pub mod order_integration;
pub mod order_list;
pub mod web;
