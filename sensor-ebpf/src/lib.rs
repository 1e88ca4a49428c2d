#![no_std]
// This file exists so that the userspace crate can depend on this one as a build-dependency
// (aya-build needs it to resolve); the programs are in main.rs.
