//! The site meter over Modbus (TCP or RTU on RS-485), polled on an
//! interval with timeouts and reconnects. Register maps: presets for
//! common grid meters, or one written out in the config. What it reads
//! (current per phase, power, energy import) goes out on a watch channel
//! that load management and the API read.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::Slave;

use crate::clock::Clock;

/// Which Modbus table a value lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Function 04.
    Input,
    /// Function 03.
    Holding,
}

/// How a value is encoded in its registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    F32,
    U16,
    I16,
    U32,
    I32,
    U64,
}

impl Kind {
    /// Registers (16-bit words) it takes.
    pub fn words(self) -> u16 {
        match self {
            Kind::U16 | Kind::I16 => 1,
            Kind::F32 | Kind::U32 | Kind::I32 => 2,
            Kind::U64 => 4,
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "f32" | "float32" => Kind::F32,
            "u16" | "uint16" => Kind::U16,
            "i16" | "int16" => Kind::I16,
            "u32" | "uint32" => Kind::U32,
            "i32" | "int32" => Kind::I32,
            "u64" | "uint64" => Kind::U64,
            _ => return None,
        })
    }
}

/// One value: where it is, how it is encoded, and the factor that turns it
/// into A, W or kWh.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Register {
    pub table: Table,
    pub address: u16,
    pub kind: Kind,
    /// Most significant word first (Modbus's usual order) or last.
    pub high_word_first: bool,
    pub scale: f64,
}

/// Where a meter keeps what load management needs.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterMap {
    pub current: [Register; 3],
    pub power: Option<Register>,
    pub energy_import: Option<Register>,
}

const fn reg(table: Table, address: u16, kind: Kind, scale: f64) -> Register {
    Register {
        table,
        address,
        kind,
        high_word_first: true,
        scale,
    }
}

/// The register maps built in: `sdm630` (Eastron SDM630: input registers,
/// IEEE floats) and `abb-b23` (ABB B23/B24: holding registers, scaled
/// integers).
pub fn preset(name: &str) -> Option<RegisterMap> {
    use Kind::*;
    use Table::*;
    match name {
        "sdm630" => Some(RegisterMap {
            current: [
                reg(Input, 0x0006, F32, 1.0),
                reg(Input, 0x0008, F32, 1.0),
                reg(Input, 0x000A, F32, 1.0),
            ],
            power: Some(reg(Input, 0x0034, F32, 1.0)),
            energy_import: Some(reg(Input, 0x0048, F32, 1.0)),
        }),
        "abb-b23" => Some(RegisterMap {
            current: [
                reg(Holding, 0x5B0C, U32, 0.01),
                reg(Holding, 0x5B0E, U32, 0.01),
                reg(Holding, 0x5B10, U32, 0.01),
            ],
            power: Some(reg(Holding, 0x5B14, I32, 0.01)),
            energy_import: Some(reg(Holding, 0x5000, U64, 0.01)),
        }),
        _ => None,
    }
}

/// Names of the presets, for config errors.
pub const PRESETS: &[&str] = &["sdm630", "abb-b23"];

/// Decode a value from its registers; `None` for a meter's "not available"
/// markers (NaN, all ones) or the wrong number of words.
pub fn decode(r: &Register, words: &[u16]) -> Option<f64> {
    if words.len() != r.kind.words() as usize {
        return None;
    }
    let mut w = words.to_vec();
    if !r.high_word_first {
        w.reverse();
    }
    let raw: u64 = w.iter().fold(0u64, |acc, x| (acc << 16) | *x as u64);
    let v = match r.kind {
        Kind::F32 => f32::from_bits(raw as u32) as f64,
        Kind::U16 if raw == 0xFFFF => return None,
        Kind::U16 => raw as f64,
        Kind::I16 => raw as u16 as i16 as f64,
        Kind::U32 if raw == 0xFFFF_FFFF => return None,
        Kind::U32 => raw as f64,
        Kind::I32 if raw == 0x7FFF_FFFF => return None,
        Kind::I32 => raw as u32 as i32 as f64,
        Kind::U64 if raw == u64::MAX => return None,
        Kind::U64 => raw as f64,
    };
    let v = v * r.scale;
    v.is_finite().then_some(v)
}

/// How the gateway reaches the meter.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    Tcp(SocketAddr),
    Rtu {
        device: PathBuf,
        baud: u32,
        /// 'N', 'E' or 'O'.
        parity: char,
        stop_bits: u8,
    },
}

/// The `[meter]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterConfig {
    pub transport: Transport,
    pub unit_id: u8,
    /// Preset name or "custom".
    pub model: String,
    pub map: RegisterMap,
    pub poll: Duration,
    /// Per request.
    pub timeout: Duration,
}

/// One complete reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Amperes on L1, L2, L3.
    pub current: [f64; 3],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_w: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_import_kwh: Option<f64>,
    pub at: Timestamp,
}

/// What the poller knows, as the API shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MeterStatus {
    pub model: String,
    pub connected: bool,
    pub last: Option<Reading>,
    /// The last failure, cleared by the next good reading.
    pub error: Option<String>,
}

/// Why the meter gave no reading.
#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot connect to {0}: timed out")]
    ConnectTimeout(std::net::SocketAddr),
    #[error("cannot open {device}: {source}")]
    Open {
        device: std::path::PathBuf,
        source: tokio_serial::Error,
    },
    #[error("register {address:#06x}: no answer within {after:?}")]
    Timeout { address: u16, after: Duration },
    #[error("register {address:#06x}: {source}")]
    Read {
        address: u16,
        source: tokio_modbus::Error,
    },
    #[error("register {address:#06x}: exception {code}")]
    Exception {
        address: u16,
        code: tokio_modbus::ExceptionCode,
    },
    #[error("L{0} current not available")]
    NoCurrent(usize),
}

async fn connect(cfg: &MeterConfig) -> Result<Context, MeterError> {
    let slave = Slave(cfg.unit_id);
    match &cfg.transport {
        Transport::Tcp(addr) => {
            match tokio::time::timeout(
                cfg.timeout,
                tokio_modbus::client::tcp::connect_slave(*addr, slave),
            )
            .await
            {
                Ok(Ok(ctx)) => Ok(ctx),
                Ok(Err(source)) => Err(MeterError::Connect {
                    addr: *addr,
                    source,
                }),
                Err(_) => Err(MeterError::ConnectTimeout(*addr)),
            }
        }
        Transport::Rtu {
            device,
            baud,
            parity,
            stop_bits,
        } => {
            use tokio_serial::SerialPortBuilderExt;
            let parity = match parity {
                'E' => tokio_serial::Parity::Even,
                'O' => tokio_serial::Parity::Odd,
                _ => tokio_serial::Parity::None,
            };
            let stop = if *stop_bits == 2 {
                tokio_serial::StopBits::Two
            } else {
                tokio_serial::StopBits::One
            };
            let port = tokio_serial::new(device.to_string_lossy(), *baud)
                .parity(parity)
                .stop_bits(stop)
                .data_bits(tokio_serial::DataBits::Eight)
                .open_native_async()
                .map_err(|source| MeterError::Open {
                    device: device.clone(),
                    source,
                })?;
            Ok(tokio_modbus::client::rtu::attach_slave(port, slave))
        }
    }
}

async fn read_one(
    ctx: &mut Context,
    r: &Register,
    timeout: Duration,
) -> Result<Option<f64>, MeterError> {
    let n = r.kind.words();
    let fut = async {
        match r.table {
            Table::Input => ctx.read_input_registers(r.address, n).await,
            Table::Holding => ctx.read_holding_registers(r.address, n).await,
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(MeterError::Timeout {
            address: r.address,
            after: timeout,
        }),
        Ok(Err(source)) => Err(MeterError::Read {
            address: r.address,
            source,
        }),
        Ok(Ok(Err(code))) => Err(MeterError::Exception {
            address: r.address,
            code,
        }),
        Ok(Ok(Ok(words))) => Ok(decode(r, &words)),
    }
}

async fn read_all(
    ctx: &mut Context,
    cfg: &MeterConfig,
    now: Timestamp,
) -> Result<Reading, MeterError> {
    let mut current = [0.0; 3];
    for (i, r) in cfg.map.current.iter().enumerate() {
        current[i] = read_one(ctx, r, cfg.timeout)
            .await?
            .ok_or(MeterError::NoCurrent(i + 1))?;
    }
    let mut power_w = None;
    if let Some(r) = &cfg.map.power {
        power_w = read_one(ctx, r, cfg.timeout).await?;
    }
    let mut energy_import_kwh = None;
    if let Some(r) = &cfg.map.energy_import {
        energy_import_kwh = read_one(ctx, r, cfg.timeout).await?;
    }
    Ok(Reading {
        current,
        power_w,
        energy_import_kwh,
        at: now,
    })
}

/// Poll the meter until `shutdown`; every reading or failure goes to `tx`.
pub async fn run(
    cfg: MeterConfig,
    clock: Clock,
    tx: watch::Sender<MeterStatus>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tx.send_modify(|s| s.model = cfg.model.clone());
    let mut ctx: Option<Context> = None;
    let mut tick = tokio::time::interval(cfg.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if ctx.is_none() {
            match connect(&cfg).await {
                Ok(c) => ctx = Some(c),
                Err(e) => {
                    tx.send_modify(|s| {
                        s.connected = false;
                        s.error = Some(e.to_string());
                    });
                    continue;
                }
            }
        }
        let c = ctx.as_mut().expect("connected above");
        match read_all(c, &cfg, clock.now()).await {
            Ok(r) => tx.send_modify(|s| {
                s.connected = true;
                s.error = None;
                s.last = Some(r);
            }),
            Err(e) => {
                // Start over with a fresh connection: a half-read frame
                // would shift every answer after it.
                ctx = None;
                tx.send_modify(|s| {
                    s.connected = false;
                    s.error = Some(e.to_string());
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_kind_and_word_order() {
        let f = reg(Table::Input, 0, Kind::F32, 1.0);
        let bits = 12.5f32.to_bits();
        assert_eq!(decode(&f, &[(bits >> 16) as u16, bits as u16]), Some(12.5));
        let mut lo = f;
        lo.high_word_first = false;
        assert_eq!(decode(&lo, &[bits as u16, (bits >> 16) as u16]), Some(12.5));
        let nan = f32::NAN.to_bits();
        assert_eq!(decode(&f, &[(nan >> 16) as u16, nan as u16]), None);
        let i = reg(Table::Holding, 0, Kind::I32, 0.01);
        assert_eq!(decode(&i, &[0xFFFF, 0xFF38]), Some(-2.0));
        let u = reg(Table::Holding, 0, Kind::U64, 0.01);
        assert_eq!(decode(&u, &[0, 0, 0x0001, 0x86A0]), Some(1000.0));
        assert_eq!(decode(&u, &[0xFFFF; 4]), None);
        assert_eq!(
            decode(&reg(Table::Input, 0, Kind::I16, 0.1), &[0xFFF6]),
            Some(-1.0)
        );
        assert_eq!(decode(&f, &[1]), None, "wrong length");
    }

    #[test]
    fn presets_exist_and_use_whole_values() {
        for name in PRESETS {
            let m = preset(name).unwrap();
            assert!(m.current.iter().all(|r| r.kind.words() >= 2));
        }
        assert!(preset("nope").is_none());
        assert_eq!(Kind::parse("uint32"), Some(Kind::U32));
    }
}
