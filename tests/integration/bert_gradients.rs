//! Whole-model finite differences: a tiny random BERT (3 layers, odd sizes) under every PEFT
//! method, classification and regression (and multi-label classification under full
//! fine-tuning and SPAFIT), in f64 with dropout on (fixed seeds), every trainable tensor
//! sampled; and the same model as an ELECTRA (embeddings narrower than the hidden size with
//! their projection, the GELU head).

use crate::common;

use common::{check_gradient, host, sample, tensor, tiny_bert};
use spafit::autograd::Tape;
use spafit::backend::cpu::CpuBackend;
use spafit::backend::Backend;
use spafit::checkpoint::BertConfig;
use spafit::model::{BertClassifier, BertModel, Labels, ModelInput};
use spafit::nn::{DropoutPlan, Linear, LoraConfig, LoraTarget};
use spafit::peft::{Boundary, Method, PeftConfig, PeftPlan};
use spafit::tensor::Shape;
use spafit::text::EncodedBatch;

/// Two sequences of 7 tokens; the second a pair with a padded tail of three.
fn batch() -> EncodedBatch {
    EncodedBatch {
        input_ids: vec![2, 5, 9, 14, 3, 27, 1, 2, 8, 1, 20, 1, 0, 0],
        token_type_ids: vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0],
        attention_mask: vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        batch: 2,
        seq: 7,
    }
}

fn config_for(method: Method) -> PeftConfig {
    let mut c = PeftConfig::new(method);
    c.lora = LoraConfig {
        rank: 2,
        alpha: 3.0,
        dropout: 0.2,
        targets: match method {
            Method::Lora => vec![LoraTarget::Query, LoraTarget::Value, LoraTarget::Output],
            _ => LoraTarget::ALL.to_vec(),
        },
        overrides: Vec::new(),
        unadapted: Vec::new(),
        dora: false,
    };
    if method == Method::Lora {
        c.lora_layers = Some(vec![0, 2]);
        c.lora.overrides = tiny_bert::mixed_rank_overrides();
    }
    c.n1 = Boundary::Layer(1);
    c.n2 = Boundary::Layer(2);
    if method == Method::Spafit {
        // Exercise the options too: they must produce correct gradients like the rest.
        c.train_pooler = true;
        c.train_layer_norm_weights = true;
    }
    c
}

fn check(method: Method, num_labels: usize) {
    check_model(tiny_bert::config(3), method, num_labels)
}

fn check_model(config: BertConfig, method: Method, num_labels: usize) {
    check_with_targets(config, method, num_labels, false)
}

/// `multi_label`: the labels are sets of classes (one 0/1 per class, binary cross-entropy).
fn check_with_targets(config: BertConfig, method: Method, num_labels: usize, multi_label: bool) {
    check_plan(config, config_for(method), num_labels, multi_label)
}

fn check_plan(config: BertConfig, peft: PeftConfig, num_labels: usize, multi_label: bool) {
    let method = peft.method;
    let dora = if peft.lora.dora { " DoRA" } else { "" };
    let lora_dropout = peft.lora.dropout;
    let cpu = CpuBackend::f64();
    let tensors = tiny_bert::tensors(&config, 42);
    let mut source = tiny_bert::source(&cpu, &tensors);
    let bert = BertModel::load(&config, &mut source).unwrap();
    let head = Linear::new(
        "classifier",
        tensor(
            &cpu,
            &[num_labels, 15],
            &common::nonzero(&mut spafit::rng::SplitMix::new(7), num_labels * 15),
        ),
        tensor(&cpu, &[num_labels], &vec![0.05; num_labels]),
    )
    .unwrap();
    let mut model = BertClassifier::new(bert, head, num_labels).unwrap();
    let plan = PeftPlan::new(&peft.for_family(config.family()), 3).unwrap();
    model
        .apply_plan(&plan, &mut tiny_bert::random_init(&cpu, 9))
        .unwrap();
    // DoRA's magnitudes about its rows' norms, each row's off by its own factor (PEFT's
    // start, where every scale is one, would hide a scale applied to the wrong column).
    model.initialise_dora_magnitudes(&cpu).unwrap();
    let mut rng = spafit::rng::SplitMix::new(5);
    for p in model.params_mut() {
        if p.name.ends_with("lora_magnitude_vector") {
            let m: Vec<f64> = host(&p.value)
                .iter()
                .map(|m| m * rng.uniform_in(0.6, 1.4))
                .collect();
            p.value = tensor(&cpu, &[m.len()], &m);
        }
    }
    // The tape's gradient treats DoRA's norms as constants (PEFT detaches them): the
    // differences must see the same function.
    model.hold_dora_norms(&cpu, true).unwrap();
    let input = ModelInput::new(&cpu, &batch()).unwrap();
    let labels = if multi_label {
        let multi_hot: Vec<f64> = (0..2 * num_labels)
            .map(|i| f64::from(u8::from(i % 3 == 0)))
            .collect();
        Labels::MultiHot(tensor(&cpu, &[2, num_labels], &multi_hot))
    } else if num_labels == 1 {
        Labels::Scores(tensor(&cpu, &[2], &[0.7, -1.2]))
    } else {
        Labels::Classes(cpu.tensor_from_u32(Shape::new([2]), &[2, 0]).unwrap())
    };
    let dropouts = || DropoutPlan::train(0.1, 0.1, lora_dropout, 77);
    let loss_of = |model: &BertClassifier<CpuBackend>, tape: &mut Tape<CpuBackend>| {
        let logits = model.forward(tape, &input, &mut dropouts()).unwrap();
        model.loss(tape, &logits, &labels).unwrap()
    };
    let mut tape = Tape::new(cpu);
    let loss = loss_of(&model, &mut tape);
    let grads = tape.backward(&loss).unwrap();
    let names = model.trainable_names();
    assert_eq!(
        grads.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>(),
        names
    );
    let mut worst: f64 = 0.0;
    for name in &names {
        let g = host(grads.get(name).unwrap());
        if name.ends_with("attention.self.key.bias") {
            assert!(
                g.iter().all(|v| v.abs() < 1e-12),
                "{name} must have zero gradient"
            );
            continue;
        }
        let idx = model.params().iter().position(|p| &p.name == name).unwrap();
        let x = host(&model.params()[idx].value);
        let shape = model.params()[idx].value.dims().to_vec();
        // Embedding tables: sample only rows the batch uses (other rows have zero gradient).
        let coords: Vec<usize> = if name.contains("embeddings.") && !name.contains("LayerNorm") {
            let used: Vec<usize> = g
                .iter()
                .enumerate()
                .filter(|(_, v)| **v != 0.0)
                .map(|(i, _)| i)
                .collect();
            sample(used.len(), 8).into_iter().map(|i| used[i]).collect()
        } else {
            sample(x.len(), 6)
        };
        let err = check_gradient(
            &format!("{method}{dora} {num_labels}-label {name}"),
            &g,
            &x,
            &coords,
            1e-6,
            |v| {
                model.params_mut()[idx].value = tensor(&cpu, &shape, v);
                let mut t = Tape::new(cpu);
                let l = loss_of(&model, &mut t);
                host(l.value())[0]
            },
        );
        model.params_mut()[idx].value = tensor(&cpu, &shape, &x);
        worst = worst.max(err);
    }
    println!(
        "{} FD {method}{dora} {num_labels}-label{}: {} trainable tensors, worst rel err {worst:.3e}",
        config.family().display(),
        if multi_label { " multi-label" } else { "" },
        names.len()
    );
}

/// ELECTRA: 7-wide embeddings projected to the hidden size of 15, and the GELU head. Full
/// fine-tuning differentiates the projection; SPAFIT, the head's dense map with the head.
#[test]
fn electra_gradients() {
    let config = BertConfig {
        model_type: Some("electra".into()),
        embedding_size: Some(7),
        ..tiny_bert::config(3)
    };
    for method in [Method::Full, Method::Spafit] {
        check_model(config.clone(), method, 3);
    }
    check_model(config, Method::Full, 1);
}

/// A ReLU feed-forward (`hidden_act: relu`) under full fine-tuning and SPAFIT.
#[test]
fn relu_feed_forward_gradients() {
    let config = BertConfig {
        hidden_act: "relu".into(),
        ..tiny_bert::config(3)
    };
    for method in [Method::Full, Method::Spafit] {
        check_model(config.clone(), method, 3);
    }
}

/// A multi-label head: a sigmoid per class and binary cross-entropy over every class.
#[test]
fn multi_label_gradients() {
    for method in [Method::Full, Method::Spafit] {
        check_with_targets(tiny_bert::config(3), method, 3, true);
    }
}

#[test]
fn full_fine_tuning_gradients() {
    check(Method::Full, 3);
    check(Method::Full, 1);
}

#[test]
fn bitfit_gradients() {
    check(Method::BitFit, 3);
    check(Method::BitFit, 1);
}

#[test]
fn lora_gradients() {
    check(Method::Lora, 3);
    check(Method::Lora, 1);
}

/// DoRA adapters (random magnitudes) under LoRA and SPAFIT, with dropout on the adapters'
/// input (the base map of the rest beside the scaled map of the dropped input) and without.
#[test]
fn dora_gradients() {
    for (method, dropout) in [
        (Method::Lora, 0.2),
        (Method::Spafit, 0.0),
        (Method::Spafit, 0.3),
    ] {
        let mut peft = config_for(method);
        peft.lora.dora = true;
        peft.lora.dropout = dropout;
        check_plan(tiny_bert::config(3), peft, 3, false);
    }
    let mut peft = config_for(Method::Lora);
    peft.lora.dora = true;
    check_plan(tiny_bert::config(3), peft, 1, false);
}

#[test]
fn spafit_gradients() {
    check(Method::Spafit, 3);
    check(Method::Spafit, 1);
}
