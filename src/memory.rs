//! Gives back to the system, now and then, the memory the allocator holds free. glibc's
//! allocator keeps what a burst freed (watch lists, the reconciles of a rollout) in its free
//! lists, so without this the operator's resident memory only ever grows to its highest
//! point; with it, it follows what is in use.

use std::time::Duration;

/// How often the free memory is given back.
const EVERY: Duration = Duration::from_secs(5);

/// Gives the free memory back every few seconds, until the process ends.
pub async fn release_periodically() {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        release();
    }
}

/// Gives the allocator's free memory back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim takes no pointer, locks the allocator's arenas itself and only
    // releases pages no allocation uses.
    unsafe {
        malloc_trim(0);
    }
}

/// Other allocators give memory back on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release() {}
