//! `load_str_lenient`: a VM with problems of its own is left out, the others stay usable.

use vmsilo_config::{Format, load_str, load_str_lenient};

fn vm(name: &str, extra: &str) -> String {
    format!(
        "[[nixosVms]]\nname = \"{name}\"\nkernel = \"/k\"\ninitramfs = \"/i\"\nrootDisk = \"/r\"\n{extra}\n"
    )
}

fn cfg(global: &str, vms: &[String]) -> String {
    format!("user = \"alice\"\n{global}\n{}", vms.concat())
}

fn names(c: &vmsilo_config::ValidConfig) -> Vec<&str> {
    c.nixos_vms.iter().map(|v| v.name.as_str()).collect()
}

#[test]
fn test_a_broken_vm_is_left_out_with_its_problems() {
    let text = cfg(
        "",
        &[vm("a", ""), vm("b", "memory = \"lots\""), vm("c", "")],
    );
    assert!(load_str(&text, Format::Toml).is_err(), "strict fails");
    let c = load_str_lenient(&text, Format::Toml).expect("lenient");
    assert_eq!(names(&c), ["a", "c"]);
    let l = c.left_out_vm("b").expect("b left out");
    assert_eq!(l.index, 1);
    assert!(l.problems.to_string().contains("memory"), "{}", l.problems);
    assert!(c.cid("a").is_some() && c.cid("b").is_none());
}

#[test]
fn test_a_vm_that_depends_on_a_broken_one_is_left_out_too() {
    let text = cfg(
        "",
        &[
            vm("a", "dependsOn = [\"b\"]"),
            vm("b", "cpus = 0"),
            vm("c", ""),
        ],
    );
    let c = load_str_lenient(&text, Format::Toml).expect("lenient");
    assert_eq!(names(&c), ["c"]);
    let left: Vec<(Option<&str>, usize)> = c
        .left_out()
        .iter()
        .map(|l| (l.name.as_deref(), l.index))
        .collect();
    assert_eq!(
        left,
        [(Some("a"), 0), (Some("b"), 1)],
        "file positions kept"
    );
}

#[test]
fn test_a_global_problem_fails_the_whole_configuration() {
    let text = cfg(
        "isolatedPciDevices = [\"zz\"]",
        &[vm("a", ""), vm("b", "cpus = 0")],
    );
    let e = load_str_lenient(&text, Format::Toml).expect_err("global problem");
    let all = e.to_string();
    assert!(
        all.contains("isolatedPciDevices") && all.contains("cpus"),
        "{all}"
    );
}

#[test]
fn test_an_invalid_name_is_not_offered_as_a_unit_name() {
    let text = cfg("", &[vm("a", ""), vm("b/../x", "")]);
    let c = load_str_lenient(&text, Format::Toml).expect("lenient");
    assert_eq!(names(&c), ["a"]);
    assert_eq!(c.left_out()[0].name, None);
}
