//! How `uwe-trainer train` asks glibc's allocator to treat the tensors of a training step.
//!
//! glibc serves every allocation above its mmap threshold (128 KiB at first, raised up to
//! 32 MiB as mapped blocks are freed) with a fresh `mmap` and returns it with `munmap` on
//! free. A training step allocates and frees gigabytes of such activations, so the next step
//! faults every page in again, zeroed by the kernel: at `--batch 96` on 2 cores, 256,000 page
//! faults a second and about 80% of the CPU in the kernel. Serving them from the heap instead
//! lets each step reuse the memory the last one freed (BENCHMARKS, "Training speed: glibc's
//! allocator"). The cost is that the process holds its peak until it exits: the heap is never
//! trimmed. (A block too large for a thread's arena heap, 64 MiB, is still mapped on its own.)

/// The variable whose presence means the user tuned glibc's allocator and is left alone.
const USER_SETTING: &str = "MALLOC_MMAP_MAX_";

/// Keeps freed tensor memory in the heap for the next step (see the module docs), unless
/// `MALLOC_MMAP_MAX_` is set: then glibc already read the user's settings (for instance
/// `MALLOC_MMAP_MAX_=65536`, glibc's default, to return memory as soon as it is freed).
/// Returns whether it changed anything.
pub(super) fn keep_freed_memory() -> bool {
    if std::env::var_os(USER_SETTING).is_some() {
        return false;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: mallopt only sets allocator parameters. It takes the allocator's own lock, so
    // calling it while other threads allocate is sound.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0) == 1
            // glibc converts the int to size_t: -1 is SIZE_MAX, never trim. A threshold of
            // 1 GiB still gave the freed top of each step back and faulted it in again.
            && libc::mallopt(libc::M_TRIM_THRESHOLD, -1) == 1
            && libc::mallopt(libc::M_TOP_PAD, 256 << 20) == 1
    }
}

/// Other allocators (musl, macOS) keep their own policy.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// The speed-up itself is measured in BENCHMARKS, not here: whether a block is mapped
    /// depends on glibc's dynamic threshold and on the arena the test thread gets.
    #[test]
    fn glibc_accepts_every_setting() {
        assert!(apply(), "glibc refused one of the allocator settings");
    }
}
