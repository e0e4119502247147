//! `cordial bench` on the real default model: every measurement line comes out with a positive
//! rate, and bad settings are errors that name the flag or the limit.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_cordial");

fn rate(line: &str) -> f64 {
    let value = line
        .split(": ")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("no figure in {line:?}"));
    value
        .parse()
        .unwrap_or_else(|_| panic!("bad figure in {line:?}"))
}

#[test]
fn bench_measures_the_model_and_the_kernels() {
    let out = Command::new(BIN)
        .args(["bench", "--threads", "2", "--prefill-tokens", "48"])
        .args(["--decode-tokens", "6", "--batch", "3", "--kernels", "32"])
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "prefill 48: ",
        "decode 6: ",
        "decode batch 3: ",
        "Q4_1 ",
        "Q8_0 ",
        "Q4_0 ",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(want))
            .unwrap_or_else(|| panic!("no `{want}` line in:\n{text}"));
        assert!(rate(line) > 0.0, "{line}");
    }
    // Every kernel row count for every type and ISA.
    let kernel_lines = text.lines().filter(|l| l.contains("GMAC/s")).count();
    assert!(kernel_lines >= 3 * 4, "{text}");
}

#[test]
fn bad_bench_settings_are_errors_naming_them() {
    for (args, want) in [
        (vec!["--batch", "0"], "--batch must be at least 1"),
        (
            vec!["--prefill-tokens", "100000"],
            "do not fit the model's context",
        ),
        (
            vec![
                "--kernels",
                "0",
                "--prefill-tokens",
                "0",
                "--decode-tokens",
                "0",
                "--batch",
                "1",
            ],
            "--kernels needs at least 1 row",
        ),
    ] {
        let out = Command::new(BIN)
            .arg("bench")
            .args(&args)
            .env_remove("RUST_BACKTRACE")
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// `CORDIAL_ISA` forces a kernel level, named as the start-up line prints it; an unknown or
/// unavailable one is an error naming the variable before anything is loaded.
#[test]
fn cordial_isa_forces_the_kernel_level_or_names_the_problem() {
    let quick = [
        "bench",
        "--prefill-tokens",
        "8",
        "--decode-tokens",
        "2",
        "--batch",
        "1",
    ];
    let run = |isa: &str, repack: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(quick)
            .env("CORDIAL_ISA", isa)
            .env_remove("RUST_BACKTRACE");
        match repack {
            Some(v) => cmd.env("CORDIAL_REPACK", v),
            None => cmd.env_remove("CORDIAL_REPACK"),
        };
        cmd.output().expect("runs")
    };
    let available = cordial_model::Isa::all_available();
    for isa in cordial_model::Isa::ALL {
        let out = run(isa.name(), None);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        if available.contains(&isa) {
            assert!(out.status.success(), "{isa}: {stderr}");
            let repacked = if isa == cordial_model::Isa::Scalar {
                ")"
            } else {
                " repacked)"
            };
            let want = format!("kernels={isa}{repacked}");
            assert!(stdout.contains(&want), "{isa}: no `{want}` in {stdout}");
        } else {
            assert!(!out.status.success(), "{isa} is not on this CPU");
            assert!(
                stderr.contains(&format!("CORDIAL_ISA={}", isa.name()))
                    && stderr.contains("does not support"),
                "{stderr}"
            );
        }
    }
    let out = run("sse9", None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unknown level must not run");
    assert!(
        stderr.contains("CORDIAL_ISA=sse9") && stderr.contains("unknown kernel level"),
        "{stderr}"
    );
    let best = cordial_model::Isa::best_available();
    let out = run(best.name(), Some("0"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("kernels={best})")),
        "CORDIAL_REPACK=0 keeps the GGUF layout: {stdout}"
    );
}
