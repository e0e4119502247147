//! The CPU backend: one persistent thread pool, int8 matmul, paged attention, row ops.

pub mod attention;
pub mod matmul;
pub mod ops;
pub mod pool;
