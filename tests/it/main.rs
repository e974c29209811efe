//! Integration tests: the real daemon between real sockets. One test
//! binary (one link step) with a small harness, ripgrep-style.

mod actions;
mod cli;
mod crash;
mod disk;
mod harness;
mod hostile;
mod interop;
mod mirror;
mod mqtt;
mod ocpp201;
mod offline;
mod powerloss;
mod proxy;
mod service;
mod site_check;
mod smart;
mod standalone;
mod tls;
mod web;
