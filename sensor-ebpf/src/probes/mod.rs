pub mod api;
pub mod file;
pub mod net;
pub mod process;
