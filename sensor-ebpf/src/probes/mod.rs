pub mod api;
pub mod dns;
pub mod dns_skb;
pub mod file;
pub mod net;
pub mod process;
pub mod sock;
pub mod syscalls;
