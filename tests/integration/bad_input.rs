//! Bad input comes back as an error value that names the operation and the tensor.

use crate::common;

use common::{random, tensor};
use spafit::autograd::Tape;
use spafit::backend::cpu::CpuBackend;
use spafit::backend::{AdamWStep, AttentionConfig, Backend, Dropout};
use spafit::nn::{EncoderLayer, EncoderLayerConfig, LoraConfig, LoraOverride, LoraTarget, Stratum};
use spafit::rng::SplitMix;
use spafit::tensor::{DType, Shape, Tensor};
use spafit::Error;

fn cpu() -> CpuBackend {
    CpuBackend::f64()
}

fn expect_err<T>(r: spafit::Result<T>, what: &str) -> Error {
    match r {
        Ok(_) => panic!("{what}: expected an error"),
        Err(e) => e,
    }
}

#[test]
fn linear_shape_and_dtype_mismatches() {
    let mut rng = SplitMix::new(1);
    let x = random(&mut rng, &[4, 7], 1.0);
    let w_bad = random(&mut rng, &[5, 6], 1.0);
    let e = expect_err(
        cpu().linear_forward(&x, &w_bad, None, None, None),
        "weight width",
    );
    assert!(matches!(e, Error::Shape { op: "linear", .. }), "{e}");
    assert!(
        e.to_string().contains("weight") && e.to_string().contains("[5, 6]"),
        "{e}"
    );

    let w = random(&mut rng, &[5, 7], 1.0);
    let bias_bad = random(&mut rng, &[4], 1.0);
    let e = expect_err(
        cpu().linear_forward(&x, &w, Some(&bias_bad), None, None),
        "bias",
    );
    assert!(e.to_string().contains("bias"), "{e}");

    let w32 = CpuBackend::f32()
        .tensor_from_f64(Shape::new([5, 7]), &[0.5; 35])
        .unwrap();
    let e = expect_err(cpu().linear_forward(&x, &w32, None, None, None), "dtype");
    assert!(matches!(e, Error::DType { .. }), "{e}");
    assert!(
        e.to_string().contains("f32") && e.to_string().contains("f64"),
        "{e}"
    );

    let ids = cpu().tensor_from_u32(Shape::new([4, 7]), &[1; 28]).unwrap();
    let e = expect_err(
        cpu().linear_forward(&ids, &w, None, None, None),
        "u32 input",
    );
    assert!(matches!(e, Error::DType { .. }), "{e}");

    let a_bad = random(&mut rng, &[3, 6], 1.0);
    let b = random(&mut rng, &[5, 3], 1.0);
    let lora = spafit::backend::LoraWeights {
        a: &a_bad,
        b: &b,
        scale: 2.0,
    };
    let e = expect_err(
        cpu().linear_forward(&x, &w, None, Some(lora), None),
        "lora A",
    );
    assert!(e.to_string().contains("lora_A"), "{e}");
}

#[test]
fn attention_arguments() {
    let mut rng = SplitMix::new(2);
    let q = random(&mut rng, &[6, 10], 1.0);
    let mask = cpu().tensor_from_u32(Shape::new([2, 3]), &[1; 6]).unwrap();
    let bad_heads = AttentionConfig {
        heads: 3,
        scale: 0.5,
        dropout: None,
    };
    let e = expect_err(
        cpu().attention_forward(&q, &q, &q, &mask, &bad_heads),
        "heads",
    );
    assert!(
        matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("3 heads"),
        "{e}"
    );

    let ok_heads = AttentionConfig {
        heads: 2,
        scale: 0.5,
        dropout: None,
    };
    let short_mask = cpu().tensor_from_u32(Shape::new([2, 2]), &[1; 4]).unwrap();
    let e = expect_err(
        cpu().attention_forward(&q, &q, &q, &short_mask, &ok_heads),
        "mask",
    );
    assert!(e.to_string().contains("mask"), "{e}");

    let float_mask = tensor(&cpu(), &[2, 3], &[1.0; 6]);
    let e = expect_err(
        cpu().attention_forward(&q, &q, &q, &float_mask, &ok_heads),
        "float mask",
    );
    assert!(matches!(e, Error::DType { .. }), "{e}");

    let k_bad = random(&mut rng, &[6, 8], 1.0);
    let e = expect_err(
        cpu().attention_forward(&q, &k_bad, &q, &mask, &ok_heads),
        "k",
    );
    assert!(e.to_string().contains("`k`"), "{e}");

    let p_one = AttentionConfig {
        dropout: Some(Dropout { p: 1.0, seed: 0 }),
        ..ok_heads
    };
    let e = expect_err(cpu().attention_forward(&q, &q, &q, &mask, &p_one), "p = 1");
    assert!(e.to_string().contains("[0, 1)"), "{e}");
}

#[test]
fn indices_out_of_range() {
    let mut rng = SplitMix::new(3);
    let table = random(&mut rng, &[5, 4], 1.0);
    let ids = cpu().tensor_from_u32(Shape::new([3]), &[0, 5, 2]).unwrap();
    let e = expect_err(cpu().embedding_forward(&table, &ids), "id 5");
    assert!(
        matches!(
            e,
            Error::IndexOutOfRange {
                index: 5,
                position: 1,
                limit: 5,
                ..
            }
        ),
        "{e}"
    );

    let logits = random(&mut rng, &[2, 3], 1.0);
    let labels = cpu().tensor_from_u32(Shape::new([2]), &[2, 3]).unwrap();
    let e = expect_err(cpu().cross_entropy_forward(&logits, &labels), "label 3");
    assert!(e.to_string().contains("label 3 at position 1"), "{e}");

    let few = cpu().tensor_from_u32(Shape::new([1]), &[0]).unwrap();
    let e = expect_err(cpu().cross_entropy_forward(&logits, &few), "label count");
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

#[test]
fn elementwise_losses_and_norms() {
    let mut rng = SplitMix::new(4);
    let a = random(&mut rng, &[2, 3], 1.0);
    let b = random(&mut rng, &[3, 2], 1.0);
    assert!(matches!(cpu().add(&a, &b), Err(Error::Shape { .. })));
    assert!(matches!(
        cpu().gelu_backward(&a, &b),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        cpu().mse_forward(&a, &random(&mut rng, &[5], 1.0)),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        cpu().dropout(&a, Dropout { p: -0.1, seed: 1 }),
        Err(Error::InvalidArgument { .. })
    ));
    let g = random(&mut rng, &[4], 1.0);
    let e = expect_err(cpu().layernorm_forward(&a, &g, &g, 1e-5), "gamma width");
    assert!(e.to_string().contains("gamma"), "{e}");
    let g2 = random(&mut rng, &[3], 1.0);
    let a3 = random(&mut rng, &[2, 3], 1.0);
    assert!(matches!(
        cpu().layernorm_forward(&a3, &g2, &g2, 0.0),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn tensor_construction_and_backends() {
    let e = expect_err(
        cpu().tensor_from_f64(Shape::new([2, 3]), &[1.0; 5]),
        "numel",
    );
    assert!(e.to_string().contains("[2, 3]"), "{e}");
    let t = tensor(&cpu(), &[2, 3], &[1.0; 6]);
    assert!(t.reshape([4, 2]).is_err());
    assert_eq!(t.reshape([3, 2]).unwrap().dims(), &[3, 2]);
    // The CPU stores u32 ids but computes in no such dtype; bf16 is its mixed precision.
    assert!(matches!(
        CpuBackend::new(DType::U32),
        Err(Error::DType { .. })
    ));
    let bf16 = CpuBackend::new(DType::BF16).unwrap();
    assert_eq!(
        (bf16.float_dtype(), bf16.frozen_dtype()),
        (DType::F32, DType::BF16)
    );
    assert!(cpu().to_u32(&t).is_err());
}

#[test]
fn adamw_hyperparameters() {
    let mut p = tensor(&cpu(), &[3], &[1.0, 2.0, 3.0]);
    let g = tensor(&cpu(), &[3], &[0.1, 0.2, 0.3]);
    let mut m = tensor(&cpu(), &[3], &[0.0; 3]);
    let mut v = tensor(&cpu(), &[3], &[0.0; 3]);
    let good = AdamWStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        step: 1,
    };
    for bad in [
        AdamWStep { step: 0, ..good },
        AdamWStep {
            lr: f64::NAN,
            ..good
        },
        AdamWStep { beta1: 1.0, ..good },
        AdamWStep { eps: 0.0, ..good },
        AdamWStep {
            weight_decay: -1.0,
            ..good
        },
    ] {
        let e = expect_err(cpu().adamw_step(&mut p, &g, &mut m, &mut v, &bad), "adamw");
        assert!(
            matches!(e, Error::InvalidArgument { op: "adamw", .. }),
            "{e}"
        );
    }
    let mut short: Tensor<CpuBackend> = tensor(&cpu(), &[2], &[0.0; 2]);
    assert!(matches!(
        cpu().adamw_step(&mut p, &g, &mut short, &mut v, &good),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn autograd_misuse() {
    let mut rng = SplitMix::new(5);
    let mut tape = Tape::new(cpu());
    let x = tape.constant(random(&mut rng, &[2, 3], 1.0));
    let y = tape.gelu(&x).unwrap();
    let e = expect_err(tape.backward(&y), "no trainable input");
    assert!(
        e.to_string().contains("does not depend on any trainable"),
        "{e}"
    );
    let w = tape.param("w", &random(&mut rng, &[2, 3], 1.0), true);
    let s = tape.add(&x, &w).unwrap();
    let e = expect_err(tape.backward(&s), "non-scalar");
    assert!(e.to_string().contains("scalar"), "{e}");

    // A backward consumes the nodes: a second one on the same loss would return no
    // gradients at all, so it is an error; a new forward on the same tape works again.
    let w_value = random(&mut rng, &[3], 1.0);
    let target = random(&mut rng, &[3], 1.0);
    let forward = |tape: &mut Tape<CpuBackend>| {
        let w = tape.param("w", &w_value, true);
        let y = tape.gelu(&w).unwrap();
        tape.mse(&y, &target).unwrap()
    };
    let mut tape = Tape::new(cpu());
    let loss = forward(&mut tape);
    let first = tape.backward(&loss).unwrap();
    let e = expect_err(tape.backward(&loss), "second backward");
    assert!(e.to_string().contains("last backward"), "{e}");
    let again = forward(&mut tape);
    let second = tape.backward(&again).unwrap();
    assert_eq!(
        cpu().to_f64(first.get("w").unwrap()).unwrap(),
        cpu().to_f64(second.get("w").unwrap()).unwrap()
    );
    // A variable carried over from another tape has no path to this tape's parameters:
    // its contribution would be missing from the gradients without a word.
    let mut other = Tape::new(cpu());
    let other_w = other.param("w", &w_value, true);
    let foreign = other.gelu(&other_w).unwrap();
    let mut tape = Tape::new(cpu());
    let w = tape.param("w", &w_value, true);
    let sum = tape.add(&foreign, &w).unwrap();
    let loss = tape.mse(&sum, &target).unwrap();
    let e = expect_err(tape.backward(&loss), "foreign variable");
    assert!(e.to_string().contains("another tape"), "{e}");
    let e = expect_err(
        tape.backward(&other.mse(&foreign, &target).unwrap()),
        "foreign loss",
    );
    assert!(e.to_string().contains("another tape"), "{e}");
}

#[test]
fn strata_and_lora_configuration() {
    let config = EncoderLayerConfig {
        hidden: 10,
        heads: 3,
        intermediate: 7,
        layer_norm_eps: 1e-12,
        dropout_after_attention_output: true,
        activation: spafit::nn::FeedForwardActivation::Gelu,
        attention_scale: None,
    };
    let make = |_: &str, s: Shape| cpu().tensor_from_f64(s.clone(), &vec![0.5; s.numel()]);
    let e = expect_err(EncoderLayer::load("encoder.layer.0", config, make), "heads");
    assert!(e.to_string().contains("not divisible"), "{e}");

    let config = EncoderLayerConfig { heads: 2, ..config };
    let mut layer = EncoderLayer::load("encoder.layer.0", config, make).unwrap();
    let e = expect_err(
        layer.set_stratum(0, Stratum::LoraAndBias, None, make),
        "no lora config",
    );
    assert!(e.to_string().contains("LoRA configuration"), "{e}");
    let rank0 = LoraConfig {
        rank: 0,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec![LoraTarget::Query],
        overrides: Vec::new(),
        unadapted: Vec::new(),
        dora: false,
    };
    let e = expect_err(
        layer.set_stratum(0, Stratum::LoraAndBias, Some(&rank0), make),
        "rank 0",
    );
    assert!(e.to_string().contains("rank"), "{e}");
    let twice = LoraConfig {
        rank: 2,
        targets: vec![LoraTarget::Query, LoraTarget::Value, LoraTarget::Query],
        ..rank0
    };
    let e = expect_err(twice.validate(), "a target twice");
    assert!(e.to_string().contains("listed twice"), "{e}");
    // An adapter's own rank and alpha (an imported `rank_pattern` / `alpha_pattern`) obey
    // the config's rules, on a map the config adapts, once.
    let good = LoraConfig {
        rank: 2,
        targets: vec![LoraTarget::Query, LoraTarget::Value],
        ..twice.clone()
    };
    let own = |target, rank, alpha| LoraOverride {
        layer: 0,
        target,
        rank,
        alpha,
    };
    let with = |overrides: Vec<LoraOverride>| LoraConfig {
        overrides,
        ..good.clone()
    };
    with(vec![own(LoraTarget::Value, 5, 1.5)])
        .validate()
        .unwrap();
    // A map left without an adapter is one of the targets, named once, with no rank of its
    // own.
    let site = |target| spafit::nn::LoraSite { layer: 0, target };
    let leaving = |unadapted: Vec<spafit::nn::LoraSite>, overrides: Vec<LoraOverride>| LoraConfig {
        unadapted,
        overrides,
        ..good.clone()
    };
    for (config, wanted) in [
        (
            leaving(vec![site(LoraTarget::Key)], vec![]),
            "`attention.self.key` is left without an adapter, but",
        ),
        (
            leaving(
                vec![site(LoraTarget::Value), site(LoraTarget::Value)],
                vec![],
            ),
            "left without an adapter twice",
        ),
        (
            leaving(
                vec![site(LoraTarget::Value)],
                vec![own(LoraTarget::Value, 4, 8.0)],
            ),
            "left without an adapter and given a rank and alpha of its own",
        ),
    ] {
        let e = expect_err(config.validate(), wanted);
        assert!(e.to_string().contains(wanted), "{e}");
    }
    // Attached, the map left out has no adapter in that layer alone.
    let left = leaving(vec![site(LoraTarget::Value)], vec![]);
    layer
        .set_stratum(0, Stratum::LoraAndBias, Some(&left), make)
        .unwrap();
    assert!(layer.value.lora.is_none() && layer.query.lora.is_some());
    layer
        .set_stratum(1, Stratum::LoraAndBias, Some(&left), make)
        .unwrap();
    assert!(layer.value.lora.is_some());
    for (overrides, wanted) in [
        (
            vec![own(LoraTarget::Key, 4, 8.0)],
            "`attention.self.key` is not among the targets",
        ),
        (
            vec![own(LoraTarget::Value, 0, 8.0)],
            "layer 0's `attention.self.value`: rank r",
        ),
        (
            vec![own(LoraTarget::Value, 4, f64::NAN)],
            "layer 0's `attention.self.value`: alpha",
        ),
        (vec![own(LoraTarget::Value, 4, 1e-40)], "too small for f32"),
        (
            vec![
                own(LoraTarget::Value, 4, 8.0),
                own(LoraTarget::Value, 3, 8.0),
            ],
            "given a rank and alpha twice",
        ),
    ] {
        let e = expect_err(with(overrides).validate(), wanted);
        assert!(e.to_string().contains(wanted), "{e}");
    }
    // Attached, the override's rank is what the layer's adapter has; beyond the map's
    // smaller side it is refused, naming the map.
    let value_at_5 = with(vec![own(LoraTarget::Value, 5, 1.5)]);
    layer
        .set_stratum(0, Stratum::LoraAndBias, Some(&value_at_5), make)
        .unwrap();
    assert_eq!(layer.value.lora.as_ref().unwrap().a.value.dims(), [5, 10]);
    assert_eq!(layer.value.lora.as_ref().unwrap().scale, 1.5 / 5.0);
    assert_eq!(layer.query.lora.as_ref().unwrap().a.value.dims(), [2, 10]);
    // The override is layer 0's: layer 1 of the same config has the config's rank.
    layer
        .set_stratum(1, Stratum::LoraAndBias, Some(&value_at_5), make)
        .unwrap();
    assert_eq!(layer.value.lora.as_ref().unwrap().a.value.dims(), [2, 10]);
    let e = expect_err(
        layer.set_stratum(
            0,
            Stratum::LoraAndBias,
            Some(&with(vec![own(LoraTarget::Value, 11, 1.5)])),
            make,
        ),
        "rank beyond the map",
    );
    assert!(e.to_string().contains("rank r = 11 exceeds 10"), "{e}");
    let e = expect_err("attention.query".parse::<LoraTarget>(), "unknown target");
    assert!(
        e.to_string().contains("unknown target `attention.query`"),
        "{e}"
    );
    assert_eq!(
        "intermediate.dense".parse::<LoraTarget>().unwrap(),
        LoraTarget::Intermediate
    );
    assert_eq!("value".parse::<LoraTarget>().unwrap(), LoraTarget::Value);
}

/// Type-correct arguments that no model or buffer can have come back as errors: sizes whose
/// products overflow `usize` (a wrapped product would let a huge shape pass for a small
/// buffer, and the GEMM would then read far outside it), inconsistent hand-built batches
/// and layers, and counts past any encoder's.
#[test]
fn sizes_past_memory_and_inconsistent_parts_are_refused() {
    use spafit::backend::cpu::gemm::{product, Layout};
    use spafit::checkpoint::BertConfig;
    use spafit::model::{BertClassifier, ModelInput};
    use spafit::nn::Linear;
    use spafit::peft::{Method, PeftConfig, PeftPlan};
    use spafit::text::{EncodedBatch, EncodedText};

    // 2^63 + 1 rows of 2 wrap to 2 elements.
    let huge = Shape::new([(1usize << 63) + 1, 2]);
    assert_eq!(huge.checked_numel(), None);
    let e = expect_err(
        cpu().tensor_from_f64(huge.clone(), &[1.0, 2.0]),
        "huge shape",
    );
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let two = tensor(&cpu(), &[2], &[1.0, 2.0]);
    assert!(two.reshape(huge.clone()).is_err());
    // A later zero does not hide an overflowing row count.
    assert_eq!(Shape::new([1usize << 63, 4, 0]).checked_numel(), None);
    assert!(expect_err(cpu().zeros(huge), "zeros")
        .to_string()
        .contains("more elements"));

    // A layout whose last element lies past 2^64 must not wrap into the slice's bounds.
    let far = Layout {
        offset: 1 << 63,
        rows: 2,
        cols: 1,
        row_stride: 1 << 63,
        col_stride: 1,
    };
    let refused =
        std::panic::catch_unwind(|| product(1.0f32, &[1.0], far, &[1.0], Layout::row_major(1, 1)))
            .expect_err("an out-of-bounds layout was multiplied");
    // The bounds check itself must refuse it, not an overflow panic of debug builds (release
    // builds wrap, and the wrapped sum passed for an index inside the slice).
    let message = refused
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| refused.downcast_ref::<String>().cloned());
    assert_eq!(message.as_deref(), Some("gemm: layout out of bounds"));

    let mut config = BertConfig::preset("base").unwrap();
    config.vocab_size = 1 << 62;
    config.hidden_size = 4;
    config.num_attention_heads = 1;
    let e = expect_err(
        BertClassifier::random(&config, &cpu(), 2, 0),
        "vocab × hidden",
    );
    assert!(e.to_string().contains("vocab_size"), "{e}");
    let mut config = BertConfig::preset("base").unwrap();
    config.num_attention_heads = 0;
    assert!(config.validate().is_err());

    let text = EncodedText {
        ids: vec![101, 7, 102],
        type_ids: vec![0, 0],
    };
    let e = expect_err(EncodedBatch::pad(&[&text], 0), "segment ids");
    assert!(
        e.to_string().contains("3 token ids but 2 segment ids"),
        "{e}"
    );
    let short = EncodedBatch {
        input_ids: vec![101, 102],
        token_type_ids: vec![0, 0],
        attention_mask: vec![1],
        batch: 1,
        seq: 2,
    };
    let e = expect_err(ModelInput::new(&cpu(), &short), "mask length");
    assert!(e.to_string().contains("attention_mask"), "{e}");
    let wrapping = EncodedBatch {
        input_ids: vec![],
        token_type_ids: vec![],
        attention_mask: vec![],
        batch: 1 << 40,
        seq: 1 << 24,
    };
    assert!(ModelInput::new(&cpu(), &wrapping).is_err());

    let w = tensor(&cpu(), &[3, 4], &[0.1; 12]);
    let e = expect_err(
        Linear::new("dense", w.clone(), tensor(&cpu(), &[4], &[0.0; 4])),
        "bias [in]",
    );
    assert!(e.to_string().contains("`dense`"), "{e}");
    assert!(Linear::new(
        "dense",
        tensor(&cpu(), &[12], &[0.1; 12]),
        tensor(&cpu(), &[3], &[0.0; 3])
    )
    .is_err());
    assert!(Linear::new("dense", w, tensor(&cpu(), &[3], &[0.0; 3])).is_ok());

    for layers in [0, usize::MAX] {
        let e = expect_err(
            PeftPlan::new(&PeftConfig::new(Method::BitFit), layers),
            "layers",
        );
        assert!(e.to_string().contains(&format!("{layers} layers")), "{e}");
    }
}

/// One model on two CPU backends of other dtypes (both `CpuBackend`: the types allow it) is
/// an error naming the dtypes, never a panic: storing its frozen weights for the other
/// backend, training on it, and a forward whose frozen weights the other backend stored.
#[test]
fn a_model_built_on_one_cpu_backend_and_run_on_another_is_refused() {
    use spafit::prelude::*;
    let ck = Checkpoint::open(common::minilm_dir()).unwrap();
    let plan = PeftPlan::new(&PeftConfig::new(Method::Spafit), 6).unwrap();
    let tokenizer = ck.tokenizer(16).unwrap();
    let data = Dataset::from_examples(
        "two",
        TaskKind::Classification {
            labels: vec!["a".into(), "b".into()],
        },
        vec![
            Example {
                text_a: "one text".into(),
                text_b: None,
                target: Some(Target::Class(0)),
            },
            Example {
                text_a: "another".into(),
                text_b: None,
                target: Some(Target::Class(1)),
            },
        ],
    );
    for (built, other) in [
        (CpuBackend::f32(), CpuBackend::f64()),
        (CpuBackend::f64(), CpuBackend::f32()),
        (CpuBackend::bf16(), CpuBackend::f64()),
    ] {
        let what = format!("built on {}, run on {}", built.name(), other.name());
        let mut model = common::trained(&ck, &built, &plan, 2);
        let e = expect_err(model.store_frozen_weights(&other), &what);
        assert!(
            matches!(e, Error::DType { .. })
                && e.to_string()
                    .contains("build the model on the backend that runs it"),
            "{what}: {e}"
        );
        let config = TrainConfig {
            batch_size: 2,
            max_steps: Some(1),
            ..TrainConfig::default()
        };
        let e = expect_err(
            Trainer::new(&other, &mut model, &plan, &ck.weights, config)
                .fit(&tokenizer, &data, None),
            &what,
        );
        assert!(matches!(e, Error::DType { .. }), "{what}: {e}");
        // The weights stored by a backend of another dtype beside the model's activations.
        let mut stored = common::trained(&ck, &built, &plan, 2);
        for p in stored.params_mut().into_iter().filter(|p| !p.trainable) {
            if p.value.dims().len() == 2 && !p.name.contains("embeddings") {
                let values = built.to_f64(&p.value).unwrap();
                p.value = other
                    .tensor_from_f64(p.value.shape().clone(), &values)
                    .and_then(|t| {
                        let bits = other.to_f64(&t)?;
                        built.tensor_from_f64_as(t.shape().clone(), &bits, other.float_dtype())
                    })
                    .unwrap();
            }
        }
        let encoded = EncodedDataset::new(&tokenizer, &data).unwrap();
        // Run on the backend whose dtype its activations have (on `other`, the encoder's
        // dtype check refuses it before any matrix is read).
        let e = expect_err(evaluate(&built, &stored, &encoded, 2, None), &what);
        assert!(
            matches!(e, Error::DType { .. })
                && e.to_string().contains("of backends of other dtypes"),
            "{what}: {e}"
        );
        let e = expect_err(evaluate(&other, &stored, &encoded, 2, None), &what);
        assert!(
            e.to_string()
                .contains("build the model on the backend that runs it"),
            "{what}: {e}"
        );
    }
}

/// A batch of no example or no token is refused as such where it is uploaded, not by the
/// first layer that finds an empty shape.
#[test]
fn a_batch_of_no_tokens_is_refused_as_such() {
    for (batch, seq) in [(0, 8), (2, 0), (0, 0)] {
        let encoded = spafit::text::EncodedBatch {
            input_ids: vec![1; batch * seq],
            token_type_ids: vec![0; batch * seq],
            attention_mask: vec![1; batch * seq],
            batch,
            seq,
        };
        let e = expect_err(
            spafit::model::ModelInput::new(&cpu(), &encoded),
            "an empty batch",
        );
        assert!(
            e.to_string()
                .contains(&format!("a batch of {batch} × {seq} tokens holds none")),
            "{e}"
        );
    }
}
