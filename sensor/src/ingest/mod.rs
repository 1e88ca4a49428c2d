//! From the kernel to events: the programs loaded and attached (`loader`), the field offsets
//! read from the running kernel's BTF (`btf`), ring-buffer bytes decoded into kernel events
//! (`decode`), and the checks that say whether this host can run them (`caps`, `check`).
pub mod btf;
pub mod caps;
pub mod cgroup2;
pub mod check;
pub mod decode;
pub mod fanotify;
pub mod gobin;
pub mod loader;
pub mod recorded;
pub mod remote_context;
pub mod start;
pub mod switch;
