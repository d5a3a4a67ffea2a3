//! Table-driven tests of the lifecycle core.
