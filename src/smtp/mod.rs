//! The SMTP protocol without I/O: replies, commands, addresses, DATA/BDAT receivers and the
//! server session state machine. Nothing here touches a socket or tokio, so every dialogue
//! is a unit test and a fuzz target.

pub mod address;
pub mod command;
pub mod data;
pub mod params;
pub mod reply;
pub mod session;
mod session_auth;
mod session_mail;
#[cfg(test)]
mod session_testkit;
