//! PEFT configurations resolve to the documented strata, and impossible ones are errors.

use crate::common;

use spafit::backend::cpu::CpuBackend;
use spafit::model::BertClassifier;
use spafit::nn::{LoraTarget, Stratum};
use spafit::peft::{Boundary, Method, PeftConfig, PeftPlan};
use spafit::Error;

fn spafit(n1: Boundary, n2: Boundary) -> PeftConfig {
    let mut c = PeftConfig::new(Method::Spafit);
    c.n1 = n1;
    c.n2 = n2;
    c
}

fn err(config: &PeftConfig, layers: usize) -> String {
    match PeftPlan::new(config, layers) {
        Ok(p) => panic!("expected an error, got {p:?}"),
        Err(e) => {
            assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
            e.to_string()
        }
    }
}

#[test]
fn default_spafit_boundaries_are_thirds() {
    for (layers, want) in [(6, (2, 4)), (12, (4, 8)), (24, (8, 16)), (3, (1, 2))] {
        let plan = PeftPlan::new(&PeftConfig::new(Method::Spafit), layers).unwrap();
        assert_eq!(plan.boundaries, Some(want), "{layers} layers");
        let (n1, n2) = want;
        for (i, s) in plan.strata.iter().enumerate() {
            let expect = if i < n1 {
                Stratum::Frozen
            } else if i < n2 {
                Stratum::BiasOnly
            } else {
                Stratum::LoraAndBias
            };
            assert_eq!(*s, expect, "layer {i} of {layers}");
        }
        assert_eq!(
            plan.lora.as_ref().unwrap().targets,
            LoraTarget::ALL.to_vec()
        );
    }
}

/// The default thirds on a shallow model empty a stratum that trains, and the plan says
/// which (it is then another method's plan); whole strata and other methods say nothing.
#[test]
fn spafit_plans_with_an_empty_training_stratum_are_noticed() {
    let thirds = PeftConfig::new(Method::Spafit);
    for (layers, strata, needle) in [
        (
            1,
            vec![Stratum::BiasOnly],
            "N1 = 0 (1/3 of 1 layer) and N2 = 1 (2/3 of 1 layer) leave this SPAFIT plan no LoRA + bias layer",
        ),
        (
            2,
            vec![Stratum::Frozen, Stratum::LoraAndBias],
            "N1 = 1 (1/3 of 2 layers) and N2 = 1 (2/3 of 2 layers) leave this SPAFIT plan no bias-only layer",
        ),
    ] {
        let plan = PeftPlan::new(&thirds, layers).unwrap();
        assert_eq!(plan.strata, strata);
        let notice = thirds.empty_strata_notice(layers).unwrap();
        assert!(notice.contains(needle), "{notice}");
    }
    let notice = thirds.empty_strata_notice(1).unwrap();
    assert!(
        notice.contains("as BitFit would on every layer"),
        "{notice}"
    );
    for (n1, n2, needle) in [
        (3, 3, "no layer that trains"),
        (1, 3, "as BitFit would on layers 1 and up"),
        (0, 0, "every layer is LoRA + bias (raise --n2"),
        (1, 1, "below N2 are frozen"),
    ] {
        let config = spafit(Boundary::Layer(n1), Boundary::Layer(n2));
        let notice = config.empty_strata_notice(3).unwrap();
        assert!(notice.contains(needle), "N1 {n1}, N2 {n2}: {notice}");
    }
    for layers in [3, 6, 12] {
        assert_eq!(thirds.empty_strata_notice(layers), None, "{layers} layers");
    }
    assert_eq!(PeftConfig::new(Method::Lora).empty_strata_notice(1), None);
    // Boundaries the plan refuses are the refusal's to report.
    let reversed = spafit(Boundary::Layer(2), Boundary::Layer(1));
    assert_eq!(reversed.empty_strata_notice(3), None);
}

#[test]
fn baselines_are_plans_of_strata() {
    let full = PeftPlan::new(&PeftConfig::new(Method::Full), 4).unwrap();
    assert!(
        full.strata.iter().all(|s| *s == Stratum::Full)
            && full.train_embeddings
            && full.train_pooler
    );
    let bitfit = PeftPlan::new(&PeftConfig::new(Method::BitFit), 4).unwrap();
    assert!(
        bitfit.strata.iter().all(|s| *s == Stratum::BiasOnly)
            && !bitfit.train_pooler
            && bitfit.lora.is_none()
    );
    let mut lora = PeftConfig::new(Method::Lora);
    lora.lora_layers = Some(vec![1, 3]);
    let plan = PeftPlan::new(&lora, 4).unwrap();
    assert_eq!(
        plan.strata,
        vec![
            Stratum::Frozen,
            Stratum::LoraOnly,
            Stratum::Frozen,
            Stratum::LoraOnly
        ]
    );
    // N1 = 0, N2 = L is BitFit's strata; N1 = N2 = 0 is LoRA + bias everywhere.
    let as_bitfit = PeftPlan::new(&spafit(Boundary::Layer(0), Boundary::Layer(4)), 4).unwrap();
    assert_eq!(as_bitfit.strata, bitfit.strata);
    assert!(as_bitfit.lora.is_none());
    let everywhere = PeftPlan::new(&spafit(Boundary::Layer(0), Boundary::Layer(0)), 4).unwrap();
    assert!(everywhere.strata.iter().all(|s| *s == Stratum::LoraAndBias));
}

#[test]
fn impossible_plans_are_errors() {
    assert!(err(&spafit(Boundary::Layer(4), Boundary::Layer(2)), 6)
        .contains("N1 = 4 (--n1) is above N2 = 2 (--n2)"));
    assert!(err(&spafit(Boundary::Layer(2), Boundary::Layer(7)), 6)
        .contains("N2 (--n2) = 7 is beyond the model's 6 layers"));
    // N1 past the depth is named as such, not as a clash with N2; fractions show themselves.
    assert!(err(&spafit(Boundary::Layer(7), Boundary::Layer(4)), 6)
        .contains("N1 (--n1) = 7 is beyond the model's 6 layers"));
    assert!(
        err(&spafit(Boundary::Fraction(0.5), Boundary::Fraction(0.4)), 6)
            .contains("N1 = 3 (0.5 of 6 layers) (--n1) is above N2 = 2 (0.4 of 6 layers) (--n2)")
    );
    assert!(err(&spafit(Boundary::Fraction(0.2), Boundary::Fraction(1.5)), 6).contains("[0, 1]"));
    // As a person writes them: thirds as `2/3`, not `0.6666666666666666`.
    let thirds = err(
        &spafit(Boundary::Fraction(2.0 / 3.0), Boundary::Fraction(1.0 / 3.0)),
        6,
    );
    assert!(
        thirds.contains("N1 = 4 (2/3 of 6 layers) (--n1) is above N2 = 2 (1/3 of 6 layers)"),
        "{thirds}"
    );
    let odd = err(
        &spafit(Boundary::Fraction(0.9), Boundary::Fraction(0.1234567891234)),
        6,
    );
    assert!(
        odd.contains("(0.9 of 6 layers)") && odd.contains("(0.123457 of 6 layers)"),
        "{odd}"
    );
    let near_one = err(
        &spafit(Boundary::Fraction(0.999999), Boundary::Fraction(1e-9)),
        6,
    );
    assert!(
        near_one.contains("(0.999999 of 6 layers)") && near_one.contains("(0.000000001 of 6"),
        "{near_one}"
    );
    let mut rank0 = PeftConfig::new(Method::Lora);
    rank0.lora.rank = 0;
    assert!(err(&rank0, 6).contains("rank"));
    let mut no_targets = PeftConfig::new(Method::Spafit);
    no_targets.lora.targets.clear();
    assert!(err(&no_targets, 6).contains("target"));
    let mut far = PeftConfig::new(Method::Lora);
    far.lora_layers = Some(vec![0, 6]);
    assert!(err(&far, 6).contains("LoRA layer 6"));
    let mut empty = PeftConfig::new(Method::Lora);
    empty.lora_layers = Some(vec![]);
    assert!(err(&empty, 6).contains("empty"));
    for method in [Method::Full, Method::BitFit, Method::Spafit] {
        let mut listed = PeftConfig::new(method);
        listed.lora_layers = Some(vec![5]);
        assert!(
            err(&listed, 6).contains(&format!(
                "lora_layers is a setting of the lora method; {method}"
            )),
            "{method}"
        );
    }
    assert!("qlora"
        .parse::<Method>()
        .unwrap_err()
        .to_string()
        .contains("unknown method `qlora`"));
    assert!("dense".parse::<LoraTarget>().is_err());
}

#[test]
fn boundaries_parse_as_layers_or_fractions() {
    assert_eq!("4".parse::<Boundary>().unwrap(), Boundary::Layer(4));
    assert_eq!("0.5".parse::<Boundary>().unwrap(), Boundary::Fraction(0.5));
    assert_eq!(
        "2/3".parse::<Boundary>().unwrap(),
        Boundary::Fraction(2.0 / 3.0)
    );
    assert!("two".parse::<Boundary>().is_err());
    assert!("1/x".parse::<Boundary>().is_err());
}

/// The layers a training step keeps activations of, which the memory check before a run
/// counts: from the lowest layer that trains anything up, all of them when the embeddings
/// train, none when only the head does.
#[test]
fn layers_on_the_tape_start_at_the_lowest_trainable_layer() {
    let cpu = CpuBackend::f64();
    let config = common::tiny_bert::config(6);
    let on_tape = |peft: &PeftConfig| {
        let mut model = BertClassifier::random(&config, &cpu, 2, 0).unwrap();
        let plan = PeftPlan::new(peft, 6).unwrap();
        model
            .apply_plan(&plan, &mut common::tiny_bert::random_init(&cpu, 1))
            .unwrap();
        model.layers_on_tape()
    };
    assert_eq!(on_tape(&spafit(Boundary::Layer(2), Boundary::Layer(4))), 4);
    assert_eq!(on_tape(&spafit(Boundary::Layer(6), Boundary::Layer(6))), 0);
    assert_eq!(on_tape(&PeftConfig::new(Method::BitFit)), 6);
    let mut top = PeftConfig::new(Method::Lora);
    top.lora_layers = Some(vec![5]);
    assert_eq!(on_tape(&top), 1);
    let mut embeddings = top.clone();
    embeddings.train_embeddings = true;
    assert_eq!(on_tape(&embeddings), 6);
    assert_eq!(on_tape(&PeftConfig::new(Method::Full)), 6);
}

/// Every plan `PeftPlan::new` resolves belongs together; one built field by field that does
/// not is refused when applied, before it could train and be saved as an adapter that no
/// load accepts.
#[test]
fn plans_built_by_hand_must_belong_together() {
    let mut configs = vec![
        PeftConfig::new(Method::Full),
        PeftConfig::new(Method::BitFit),
        PeftConfig::new(Method::Lora),
        PeftConfig::new(Method::Spafit),
        spafit(Boundary::Layer(0), Boundary::Layer(4)),
        spafit(Boundary::Layer(0), Boundary::Layer(0)),
        spafit(Boundary::Layer(4), Boundary::Layer(4)),
        spafit(Boundary::Layer(1), Boundary::Layer(3)),
    ];
    let mut some = PeftConfig::new(Method::Lora);
    some.lora_layers = Some(vec![2]);
    configs.push(some);
    for config in &configs {
        let plan = PeftPlan::new(config, 4).unwrap();
        assert_eq!(plan.inconsistency(), None, "{plan:?}");
    }

    let cpu = CpuBackend::f64();
    let config = common::tiny_bert::config(4);
    let refused = |plan: &PeftPlan| {
        let mut model = BertClassifier::random(&config, &cpu, 2, 0).unwrap();
        model
            .apply_plan(plan, &mut common::tiny_bert::random_init(&cpu, 1))
            .expect_err("an inconsistent plan applied")
            .to_string()
    };
    let spafit_plan = PeftPlan::new(&PeftConfig::new(Method::Spafit), 4).unwrap();
    let bitfit_plan = PeftPlan::new(&PeftConfig::new(Method::BitFit), 4).unwrap();
    let lora_everywhere = PeftPlan {
        strata: vec![Stratum::LoraAndBias; 4],
        lora: spafit_plan.lora.clone(),
        ..bitfit_plan.clone()
    };
    let e = refused(&lora_everywhere);
    assert!(
        e.contains("a bitfit adapter has no `lora_and_bias` layer"),
        "{e}"
    );
    let no_boundaries = PeftPlan {
        boundaries: None,
        ..spafit_plan.clone()
    };
    assert!(refused(&no_boundaries).contains("needs N1 and N2"));
    let wrong_boundaries = PeftPlan {
        boundaries: Some((0, 1)),
        ..spafit_plan.clone()
    };
    assert!(refused(&wrong_boundaries).contains("do not match the strata"));
    let lora_missing = PeftPlan {
        lora: None,
        ..spafit_plan.clone()
    };
    assert!(refused(&lora_missing).contains("LoRA settings are missing"));
    let mut rank0 = spafit_plan.clone();
    if let Some(l) = rank0.lora.as_mut() {
        l.rank = 0;
    }
    assert!(refused(&rank0).contains("rank"));
    // An adapter's own rank and alpha on a layer without adapters (layer 0 of the default
    // thirds on 4 layers is frozen), or past the last layer, names nothing the model has.
    for (layer, wanted) in [
        (0, "layer 0's `attention.self.query` has a rank and alpha of its own, but that layer's stratum `frozen` has no LoRA"),
        (4, "the plan has 4 layers"),
    ] {
        let mut stray = spafit_plan.clone();
        if let Some(l) = stray.lora.as_mut() {
            l.overrides = vec![spafit::nn::LoraOverride {
                layer,
                target: spafit::nn::LoraTarget::Query,
                rank: 3,
                alpha: 2.0,
            }];
        }
        let e = refused(&stray);
        assert!(e.contains(wanted), "{e}");
    }
    // Maps left without an adapter: only in a layer with adapters, and not all of them.
    let site = |layer, target| spafit::nn::LoraSite { layer, target };
    let leaving = |unadapted: Vec<spafit::nn::LoraSite>| {
        let mut plan = spafit_plan.clone();
        if let Some(l) = plan.lora.as_mut() {
            l.unadapted = unadapted;
        }
        plan
    };
    let e = refused(&leaving(vec![site(1, spafit::nn::LoraTarget::Key)]));
    assert!(
        e.contains("layer 1's `attention.self.key` is left without an adapter, but that layer's stratum `bias_only` has no LoRA"),
        "{e}"
    );
    let every_map = spafit::nn::LoraTarget::ALL.map(|t| site(3, t)).to_vec();
    let e = refused(&leaving(every_map));
    assert!(
        e.contains("layer 3 (lora_and_bias) is left without any adapter"),
        "{e}"
    );
}

/// An initialiser is the caller's code: LoRA tensors of another shape or dtype than the layer
/// computes with are refused when the plan is applied, not at the first step (or in an
/// adapter saved from them that no load accepts).
#[test]
fn lora_initialisers_must_give_the_layers_shapes_and_dtype() {
    use spafit::backend::Backend;
    let cpu = CpuBackend::f64();
    let cpu32 = CpuBackend::f32();
    let config = common::tiny_bert::config(2);
    let plan = PeftPlan::new(&PeftConfig::new(Method::Lora), 2).unwrap();
    let apply = |init: &mut dyn FnMut(
        &str,
        spafit::tensor::Shape,
    )
        -> spafit::Result<spafit::tensor::Tensor<CpuBackend>>| {
        let mut model = BertClassifier::random(&config, &cpu, 2, 0).unwrap();
        model.apply_plan(&plan, init).map(|_| ())
    };
    let e = apply(&mut |_, _| cpu.zeros(spafit::tensor::Shape::new([3, 3])))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lora_A.weight` was initialised as [3, 3] but must be [8, 15]"),
        "{e}"
    );
    let e = apply(&mut |_, shape| cpu32.zeros(shape))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("was initialised as f32") && e.contains("f64"),
        "{e}"
    );
    assert!(apply(&mut |_, shape| cpu.zeros(shape)).is_ok());
}
