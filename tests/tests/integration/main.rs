//! knock-xdp's privileged tests, one module per area, built as one binary so
//! aya and the daemon are linked once.

mod abuse;
mod audit;
mod bench_smoke;
mod cli_errors;
mod crafted;
mod differential;
mod end_to_end;
mod environment;
mod exit_codes;
mod faults;
mod file_modes;
mod filter;
mod fleet;
mod footguns;
mod hardening;
mod knock_client;
mod knocking;
mod lifecycle;
mod limits;
mod metrics;
mod onboarding;
mod program;
mod scale;
mod scans;
mod sessions;
mod slots;
mod spa;
mod stealth;
mod sweeps;
mod system;
