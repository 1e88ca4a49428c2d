pub mod api;
pub mod dns;
pub mod file;
pub mod goapi;
pub mod net;
pub mod process;
pub mod sock;
pub mod syscalls;
