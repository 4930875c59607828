//! Every integration test, in one test binary: one link of the library instead of one per
//! file (28 of them cost CI's 2-core build minutes). Tests run side by side in this process,
//! so a test that changes a process-wide setting (the CPU stand-in's schedule or device
//! memory) or measures one (the device memory pool's peak) does so in a child process of its
//! own (`common::run_in_child`) or under a lock shared by all (`common::EMULATOR_SCHEDULE`).
//! One file's tests: `cargo test --test integration <file>::`.

mod common;

mod adapters;
mod bad_input;
mod bert_gradients;
mod camembert;
mod checkpoint_loading;
mod cli;
mod cross_backend;
mod cuda_emulator;
mod cuda_model;
mod distilbert;
mod electra;
mod glue_data;
mod gradient_memory;
mod hf_parity;
mod kill_resume;
mod merged_checkpoint;
mod metrics;
mod multi_label;
mod op_gradients;
mod optimizer;
mod peft_import;
mod peft_plans;
mod roberta;
mod strata_autograd;
mod tensor_core;
mod tokenizer_from_vocab;
mod training;
mod xlm_roberta;
