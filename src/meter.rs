//! The site meter over Modbus.
