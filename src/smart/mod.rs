//! Local smart charging: schedules that pause chargers (SuspendedEVSE) and
//! site load management. The pure parts: [`schedule`] (limit at an
//! instant), [`profile`] (limits → OCPP charging profiles and back),
//! [`share`] (load sharing), [`decide`] (the engine's decisions), [`plan`]
//! (which profiles a charger needs); the
//! [`engine`] loop carries them out.

pub mod decide;
pub mod engine;
pub mod plan;
pub mod profile;
pub mod schedule;
pub mod share;
pub mod status;
