//! Parsers of what crosses a socket, used by several stages and none of them a stage itself:
//! HTTP request heads and DNS messages captured by the kernel, and the Docker Engine API read
//! from a request's method, path and query.
pub mod api;
pub mod dns;
pub mod http;
