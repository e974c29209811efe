//! ChargeGate: an edge site controller for EV charging sites. One daemon
//! between every charger at a site and the operator's cloud (CSMS): it
//! relays OCPP-J both ways, keeps a durable journal of everything that
//! happens, and answers chargers itself when the cloud is unreachable.
//!
//! # Layout
//!
//! [`hub`] is what every part shares (the registry of live sessions, the
//! commands a session takes).
//!
//! The path of a frame: [`server`] accepts a charger → [`session`]'s task
//! reads its frames and its state machine (`session/state.rs`, no I/O)
//! decides: relay, journal through [`journal`], or answer locally with
//! [`ocpp::local`]; the task writes to the cloud socket opened by
//! [`upstream`].
//!
//! - [`ocpp`]: pure protocol code (framing, payloads, local answers).
//! - [`event`]: the journal's vocabulary and the OCPP → event mapping.
//! - [`journal`]: redb storage, group commit, retention, live stream; the
//!   only place that opens the database.
//! - [`outbox`]: queued transaction messages, dead letters, id map (the
//!   session's side of it is `session/replay.rs` and `session/resync.rs`).
//! - [`auth`]: authorization cache and local lists for offline answers.
//! - [`state`]: live state of every charger, a fold of the journal.
//! - [`config`]: TOML → validated [`config::Config`].
//! - [`daemon`]: start, serve, drain on shutdown.
//! - [`actions`]: the remote actions, defined once; [`dispatch`] runs
//!   them for every front end ([`force_stop`], [`check`], [`diagnostics`]).
//! - [`api`] and [`client`]: the local HTTP API and the CLI's use of it.
//! - [`sim`]: simulated chargers; [`bench`](mod@bench): the relay benchmark.
//! - [`smart`]: schedules, charging profiles and load management;
//!   [`meter`]: the site meter over Modbus; [`clock`]: wall-clock time.
//! - [`mqtt`]: the broker and Home Assistant discovery.
//! - [`tls`]: the wss:// listener (Security Profiles 2 and 3);
//!   [`password`]: password rules and hashes; [`limits`]: connection caps
//!   and message rates.
//! - [`logging`]: journald or stderr; [`notify`]: systemd READY/WATCHDOG.

#![forbid(unsafe_code)]

pub mod actions;
pub mod api;
pub mod auth;
pub mod bench;
pub mod check;
pub mod client;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod diagnostics;
pub mod dispatch;
pub mod event;
pub mod force_stop;
pub mod http;
pub mod hub;
pub mod journal;
pub mod limits;
pub mod logging;
pub mod meter;
pub mod mirror;
pub mod mqtt;
pub mod notify;
pub mod ocpp;
pub mod outbox;
pub mod password;
pub mod server;
pub mod session;
pub mod sim;
pub mod site_check;
pub mod smart;
pub mod state;
pub mod text;
pub mod tls;
pub mod upstream;
