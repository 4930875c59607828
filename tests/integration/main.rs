//! Every integration test, in one test binary: one link of the library instead of one per
//! file (28 of them cost CI's 2-core build minutes). Tests run side by side in this process,
//! so a test that changes something process-wide (the CPU stand-in's schedule or device
//! memory, or the process's CUDA driver: loading the stand-in) or measures it (the device
//! memory pool's peak) runs alone in a child process of its own
//! (`common::is_the_child_running`, `common::run_in_child`).
//! One file's tests: `cargo test --test integration <file>::` (a substring filter:
//! `roberta::` also runs `xlm_roberta::`'s tests; add `--skip xlm_roberta::`).

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
mod deberta;
mod disentangled_attention;
mod distilbert;
mod electra;
mod ernie;
mod glue_data;
mod gradient_memory;
mod hf_parity;
mod kill_resume;
mod merged_checkpoint;
mod metrics;
mod mpnet;
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
