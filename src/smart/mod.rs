//! Local smart charging: schedules that pause chargers (SuspendedEVSE) and
//! site load management. The pure parts: [`schedule`] (limit at an
//! instant), [`profile`] (limits → OCPP charging profiles and back),
//! [`share`] (load sharing).

pub mod engine;
pub mod profile;
pub mod schedule;
pub mod share;
pub mod status;
