//! Kernel programs of the sensor. One module per probe family; all share the maps in `maps`.
//!
//! Every program filters first (is the current process in a tracked runtime tree?) and leaves
//! at once when it is not: an unrelated process costs one hash lookup and no ring-buffer traffic.
#![no_std]
#![no_main]
// The atomic add of `helpers::pending_add` (the kernel crate is always built with nightly).
#![allow(internal_features)]
#![feature(core_intrinsics)]
// `helpers::bounded`: an empty asm block as an optimisation barrier.
#![feature(asm_experimental_arch)]

mod helpers;
mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
