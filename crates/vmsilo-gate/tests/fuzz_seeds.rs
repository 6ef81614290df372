//! The `gate_wire` fuzz target's seeds (fuzz/seeds/gate_wire) run through its in-process
//! entry point in ordinary test runs: none may panic or hang.

#[test]
fn test_gate_wire_seeds_run_clean() {
    let dir = vmsilo_testkit::workspace_root().join("fuzz/seeds/gate_wire");
    use vmsilo_gate::server::End;
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("read the seeds") {
        let path = e.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let end = vmsilo_gate::fuzzing::run(&data);
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let want = match name.as_str() {
            "over-version" | "hidden-name" | "many-regions" => Some(End::CutOff),
            "malformed" => Some(End::ClientGone),
            _ => Some(End::ClientGone),
        };
        assert_eq!(end, want, "seed {name}");
        n += 1;
    }
    assert!(n >= 8, "only {n} seeds in {}", dir.display());
}
