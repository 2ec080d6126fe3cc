//! gslice-engine: reads safetensors checkpoints through memory maps and writes new ones
//! according to a plan of per-tensor operations (slicing, and group-wise quantization). It knows
//! the file formats, not any model.

pub mod assemble;
pub mod checkpoint;
pub mod compare;
pub mod dtype;
pub mod error;
pub mod execute;
pub mod hash;
pub mod hash_cursor;
pub mod header;
pub mod io;
pub mod items;
pub mod layout;
pub mod ownership;
pub mod plan;
pub mod qband;
pub mod quant;
pub mod report;

pub use checkpoint::Checkpoint;
pub use compare::{compare, Mismatch};
pub use error::{Error, Result};
pub use execute::{execute, Progress, Report};
pub use plan::Plan;
