//! Embedding spafit in another program: load a checkpoint, build a SPAFIT plan, train a few
//! steps on in-memory examples, evaluate, save the adapter and predict texts — public API only.
//!
//! `cargo run --release --example finetune -- [CHECKPOINT_DIR] [OUTPUT_DIR]`

use spafit::prelude::*;

fn dataset(rows: &[(&str, u32)]) -> Dataset {
    Dataset::from_examples(
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
    )
}

fn main() -> spafit::Result<()> {
    let mut args = std::env::args().skip(1);
    let model_dir = args
        .next()
        .unwrap_or_else(|| ".cache/models/all-MiniLM-L6-v2".into());
    let output = args
        .next()
        .unwrap_or_else(|| "target/example-adapter".into());

    let train = dataset(&[
        ("a gorgeous, witty, seductive movie.", 1),
        ("an utterly charming and hilarious film", 1),
        ("a joy from start to finish", 1),
        ("sharp, moving and beautifully acted", 1),
        ("tedious, overlong and painfully self-serious", 0),
        ("unbelievably dull!", 0),
        ("a lifeless, boring mess", 0),
        ("the plot? what plot?", 0),
    ]);
    let dev = dataset(&[("witty and moving", 1), ("dull and lifeless", 0)]);

    let backend = CpuBackend::f32();
    let checkpoint = Checkpoint::open(&model_dir)?;
    let plan = PeftPlan::new(
        &PeftConfig::new(Method::Spafit).for_family(checkpoint.config.family()),
        checkpoint.config.num_hidden_layers,
    )?;
    let init = &mut peft_lora_init(&backend, 0);
    let mut model =
        BertClassifier::from_checkpoint_for_plan(&checkpoint, &backend, 2, 0, &plan, init)?;
    let tokenizer = checkpoint.tokenizer(64.min(checkpoint.config.max_tokens()))?;

    let config = TrainConfig {
        batch_size: 4,
        epochs: 3,
        learning_rate: 2e-3,
        ..TrainConfig::default()
    };
    let report = Trainer::new(&backend, &mut model, &plan, &checkpoint.weights, config).fit(
        &tokenizer,
        &train,
        Some(&dev),
    )?;
    // What the trainer had to say (nothing reaches stderr unless asked for).
    for notice in &report.notices {
        eprintln!("note: {notice}");
    }
    let eval = evaluate(
        &backend,
        &model,
        &EncodedDataset::new(&tokenizer, &dev)?,
        8,
        None,
    )?;
    save_adapter(
        output.as_ref(),
        &backend,
        &model,
        &plan,
        &checkpoint.weights,
        // The class names travel with the adapter: whoever opens it reads them, and
        // `OpenedAdapter::align_classes` lines the head up with data that lists them otherwise.
        train.kind.class_names(),
        // Whether the texts were pairs and where they were cut, as the run saw them.
        report.training_inputs(),
    )?;
    // Texts held in memory straight to answers: class ids, indexing the dataset's labels
    // (after six steps on eight examples the probabilities have barely left 0.5).
    let texts = ["witty and moving", "dull and lifeless"];
    let names = train.kind.class_names().unwrap_or_default().to_vec();
    for (text, answer) in texts
        .iter()
        .zip(predict_texts(&backend, &model, &tokenizer, &texts, 8)?)
    {
        if let Prediction::Class {
            class, probability, ..
        } = answer
        {
            println!("{text:?}: {} ({probability:.3})", names[class]);
        }
    }
    println!(
        "{} steps, {} trainable parameters, dev accuracy {:.2}, adapter saved to {output}",
        report.steps,
        model.trainable_parameter_count(),
        eval.metrics["accuracy"]
    );
    Ok(())
}
