//! faiss runs on OpenMP (libgomp), which reads its settings once, when the
//! library loads, before `main`. By default its idle threads spin, and
//! spinning threads starve OpenBLAS' threads inside faiss' batch searches on
//! a small machine: measured on 2 cores, a batch of 32 queries over 10,000
//! faces ran at 1.8k queries/s with spinning threads, 12.8k with sleeping
//! ones (BENCHMARKS.md). So the process re-executes itself once with
//! `OMP_WAIT_POLICY=PASSIVE` unless the variable is already set.

/// Re-executes the current program with `OMP_WAIT_POLICY=PASSIVE` when the
/// variable is unset; returns (and changes nothing) if that fails.
pub fn ensure_passive_wait() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("OMP_WAIT_POLICY").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let err =
        std::process::Command::new(exe).args(std::env::args_os().skip(1)).env("OMP_WAIT_POLICY", "PASSIVE").exec();
    eprintln!("warning: cannot re-execute with OMP_WAIT_POLICY=PASSIVE ({err}); going on without it");
}
