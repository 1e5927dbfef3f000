//! Hostile-input tests: training semantics (hyper-parameters, divergence, validation, clipping, schedules).
