//! The Python package's tests (pytest, `patch/python/tests`) against real vLLM 0.33.0 on CPU, run as
//! part of `cargo test`: the environment comes from `scripts/setup-python.sh` (created once, cached
//! outside the work tree; the tests put the package on the path themselves, without installing
//! it), and they load the cdylib this very build produced.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("patch/ is inside the workspace").to_path_buf()
}

/// The cdylib built with this test (`target/<profile>/deps/libascend_patch.so`).
fn cdylib() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let lib = exe.parent().expect("deps directory").join("libascend_patch.so");
    assert!(lib.is_file(), "{} was not built with the tests", lib.display());
    lib
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed ({}):\n{stdout}\n{stderr}", out.status);
    eprintln!("{stderr}");
    stdout.into_owned()
}

#[test]
fn python_package_with_real_vllm() {
    let root = root();
    let setup = run(Command::new("bash").arg(root.join("scripts/setup-python.sh")), "scripts/setup-python.sh");
    let python = setup.lines().last().expect("setup-python.sh prints the interpreter last").trim().to_string();
    let out = run(
        Command::new(&python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
            .current_dir(root.join("patch/python"))
            .env("ASCEND_PATCH_LIB", cdylib())
            .env("VLLM_TARGET_DEVICE", "cpu"),
        "pytest patch/python/tests",
    );
    println!("{out}");
    // pytest exited 0 (checked by `run`); its summary line also names what passed.
    let summary = out.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(summary.contains(" passed") && !summary.contains(" failed"), "{out}");
}
