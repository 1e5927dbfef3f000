//! Hostile-input tests: models the compiler must reject or survive (depth, chain length, sizes, padding, messages).
