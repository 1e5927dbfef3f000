//! Hostile-input tests: data files and weights where they enter (labels, targets, non-finite values, formats).
