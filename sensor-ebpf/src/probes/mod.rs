pub mod api;
pub mod connect_unix;
pub mod dns;
pub mod file;
pub mod net;
pub mod process;
pub mod sock;
pub mod syscalls;
