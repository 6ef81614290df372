//! The shipped examples (`examples/vmsilo.toml`, `examples/vmsilo.json`): both valid, the same
//! configuration, the same plans; serialization round-trips; malformed variants never panic.

use std::path::PathBuf;

use vmsilo_config::model::{Format, from_tree, parse_tree};
use vmsilo_config::plan::{self, LaunchPlan, PlanOptions};
use vmsilo_config::{ValidConfig, load_str};

fn example(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load(name: &str) -> ValidConfig {
    let format = if name.ends_with(".json") {
        Format::Json
    } else {
        Format::Toml
    };
    load_str(&example(name), format).unwrap_or_else(|e| panic!("{name}:\n{e}"))
}

#[test]
fn test_toml_and_json_examples_are_the_same_configuration() {
    let toml = load("vmsilo.toml");
    let json = load("vmsilo.json");
    assert_eq!(toml.config(), json.config());
    let names: Vec<&str> = toml.nixos_vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["banking", "shopping", "personal"]);
}

#[test]
fn test_examples_keep_the_seed_readme_values() {
    let cfg = load("vmsilo.toml");
    let banking = cfg.vm("banking").expect("banking");
    assert_eq!((banking.memory, banking.cpus), (4096, 4));
    assert_eq!(banking.auto_shutdown.after, 120);
    let wan = &banking.network.interfaces["wan"];
    assert_eq!(
        wan.tap.host_address.map(|a| a.to_string()).as_deref(),
        Some("10.0.0.254/24")
    );
    assert_eq!(wan.addresses[0].to_string(), "10.0.0.1/24");
    let shopping = cfg.vm("shopping").expect("shopping");
    assert_eq!((shopping.memory, shopping.cpus), (2048, 2));
    assert_eq!(shopping.auto_shutdown.after, 60);
    assert_eq!(
        shopping.network.interfaces["wan"].addresses[0].to_string(),
        "10.0.1.1/24"
    );
    let personal = cfg.vm("personal").expect("personal");
    assert!(personal.network.interfaces.is_empty());
    assert!(cfg.host_networking.nat.enable);
}

#[test]
fn test_every_plan_is_identical_from_toml_and_json() {
    let toml = load("vmsilo.toml");
    let json = load("vmsilo.json");
    let opts = PlanOptions::new(1000, 100);
    for vm in ["banking", "shopping", "personal"] {
        let a = plan::build(&toml, vm, &opts).expect("plan from TOML");
        let b = plan::build(&json, vm, &opts).expect("plan from JSON");
        assert_eq!(a, b, "{vm}");
    }
}

#[test]
fn test_config_serialization_round_trips() {
    for name in ["vmsilo.toml", "vmsilo.json"] {
        let cfg = load(name);
        let tree = cfg.to_json();
        let again = from_tree(&tree).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&again, cfg.config(), "{name}");
    }
}

#[test]
fn test_plan_json_round_trips() {
    let cfg = load("vmsilo.toml");
    let p = plan::build(&cfg, "banking", &PlanOptions::new(1000, 100)).expect("plan");
    let text = serde_json::to_string(&p).expect("serialize");
    let mut back: LaunchPlan = serde_json::from_str(&text).expect("deserialize");
    back.argv_groups = p.argv_groups.clone();
    assert_eq!(back, p);
    assert_eq!(back.argv.first().map(String::as_str), Some("crosvm"));
}

#[test]
fn test_unknown_vm_is_an_error_with_a_suggestion() {
    let cfg = load("vmsilo.toml");
    let err = plan::build(&cfg, "bankng", &PlanOptions::new(1000, 100)).expect_err("unknown");
    assert_eq!(
        err.to_string(),
        "no VM called \"bankng\" (did you mean \"banking\"?)"
    );
    // Nothing close: the names there are.
    let err = plan::build(&cfg, "games", &PlanOptions::new(1000, 100)).expect_err("unknown");
    assert_eq!(
        err.to_string(),
        "no VM called \"games\": the configuration has \"banking\", \"shopping\", \"personal\""
    );
}

#[test]
fn test_truncated_and_mutated_examples_never_panic() {
    // Every prefix of both examples, and every position replaced by a handful of awkward
    // characters, goes through the whole pipeline (parse, validate, plan) without panicking.
    for (name, format) in [("vmsilo.toml", Format::Toml), ("vmsilo.json", Format::Json)] {
        let text = example(name);
        let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let mut outcomes = [0usize; 2];
        for &cut in &boundaries {
            outcomes[usize::from(load_str(&text[..cut], format).is_ok())] += 1;
        }
        for &at in boundaries.iter().step_by(3) {
            for sub in ["\"", "[", "}", "0", "-", "\u{e9}", "\n"] {
                let mut mutated = text.clone();
                let end = text[at..].chars().next().map_or(at, |c| at + c.len_utf8());
                mutated.replace_range(at..end, sub);
                if let Ok(cfg) = load_str(&mutated, format) {
                    for vm in &cfg.nixos_vms {
                        let _ = plan::build(&cfg, &vm.name, &PlanOptions::new(1000, 100));
                    }
                }
            }
        }
        assert!(outcomes[0] > 0, "{name}: some truncation must be rejected");
    }
    // Odd shapes of whole documents.
    for doc in ["[]", "null", "3", "\"x\"", "{\"nixosVms\": [null, 1, []]}"] {
        let tree = parse_tree(doc, Format::Json).expect("valid JSON");
        assert!(from_tree(&tree).is_err(), "{doc}");
    }
}
