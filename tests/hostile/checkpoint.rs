//! Hostile-input tests: checkpoints, resume, interrupts and output files.
