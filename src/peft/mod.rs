//! PEFT methods as one plan of strata: full, BitFit, LoRA and SPAFIT.

mod init;
mod plan;

pub(crate) use init::init_hash;
pub use init::peft_lora_init;
pub use plan::{Boundary, Method, PeftConfig, PeftPlan};
