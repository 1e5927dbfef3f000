//! Hostile-input tests: sizes past the machine, pooling padding, and the wording of shape and syntax messages.
