//! A training loop of one's own over spafit's tape, instead of the `Trainer`: batches, the
//! forward with dropout, the loss, the backward (which records and returns nothing for frozen
//! strata), and AdamW under a learning-rate schedule — public API only.
//!
//! `cargo run --release --example own_loop -- [CHECKPOINT_DIR]`

use spafit::prelude::*;

fn main() -> spafit::Result<()> {
    let model_dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| ".cache/models/all-MiniLM-L6-v2".into());
    let rows = [
        ("a gorgeous, witty, seductive movie.", 1),
        ("an utterly charming and hilarious film", 1),
        ("a joy from start to finish", 1),
        ("sharp, moving and beautifully acted", 1),
        ("tedious, overlong and painfully self-serious", 0),
        ("unbelievably dull!", 0),
        ("a lifeless, boring mess", 0),
        ("the plot? what plot?", 0),
    ];
    let train = Dataset::from_examples(
        "in-memory",
        TaskKind::Classification {
            labels: vec!["negative".into(), "positive".into()],
        },
        rows.iter()
            .map(|&(text, label)| Example {
                text_a: text.into(),
                text_b: None,
                target: Some(Target::Class(label)),
            })
            .collect(),
    );

    let backend = CpuBackend::f32();
    let checkpoint = Checkpoint::open(&model_dir)?;
    let plan = PeftPlan::new(
        &PeftConfig::new(Method::Spafit).for_family(checkpoint.config.family()),
        checkpoint.config.num_hidden_layers,
    )?;
    let init = &mut peft_lora_init(&backend, 0);
    let mut model =
        BertClassifier::from_checkpoint_for_plan(&checkpoint, &backend, 2, 0, &plan, init)?;
    let encoded = EncodedDataset::new(
        &checkpoint.tokenizer(64.min(checkpoint.config.max_tokens()))?,
        &train,
    )?;

    let steps = 8;
    let schedule = LrSchedule {
        kind: ScheduleKind::Linear,
        peak: 2e-3,
        warmup: 1,
        total: steps,
    };
    let mut optimizer = AdamW::new(0.01);
    let config = &checkpoint.config;
    for step in 0..steps {
        // Two batches of four, alternating; a real loop would shuffle.
        let batch: Vec<usize> = (0..4).map(|i| 2 * i + step % 2).collect();
        let (input, labels, _) = encoded.tensors(&backend, &batch, config)?;
        let labels = labels.expect("every example is labeled");
        let mut dropout = DropoutPlan::train(
            config.hidden_dropout_prob,
            config.attention_probs_dropout_prob,
            plan.lora_dropout(),
            step as u64,
        );
        let mut tape = Tape::new(backend);
        let logits = model.forward(&mut tape, &input, &mut dropout)?;
        let loss = model.loss(&mut tape, &logits, &labels)?;
        let grads = tape.backward(&loss)?;
        optimizer.update(&backend, model.params_mut(), &grads, schedule.lr(step))?;
        println!(
            "step {step}: loss {:.4}, lr {:.2e}",
            backend.to_f64(loss.value())?[0],
            schedule.lr(step)
        );
    }
    Ok(())
}
