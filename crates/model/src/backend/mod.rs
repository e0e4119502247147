//! The compute backend: a kernel table per ISA level (`cpu/`, chosen once at load through
//! [`cpu::Compute`]), the persistent thread pool, and the ISA-free drivers above the table —
//! int8 matmul, paged attention, row ops, LoRA deltas.

pub mod attention;
pub mod cpu;
pub mod lora;
pub mod matmul;
pub mod ops;
pub mod pool;
