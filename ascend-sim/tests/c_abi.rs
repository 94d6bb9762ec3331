//! Proof that the C ABI is usable from C: a C program that includes the project's header is compiled
//! with the `cc` crate's compiler settings, linked against the simulator's shared library, and run.

use std::path::{Path, PathBuf};
use std::process::Command;

fn shared_library_dir() -> PathBuf {
    // Integration tests run from target/<profile>/deps, where cargo also puts the cdylib.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().to_path_buf();
    assert!(dir.join("libascend_sim.so").exists(), "libascend_sim.so not found in {}", dir.display());
    dir
}

#[test]
fn c_program_drives_the_simulator_library() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let include = manifest.join("../ascend-sys/include");
    let source = manifest.join("tests/c/abi_smoke.c");
    let libdir = shared_library_dir();
    let out_dir = std::env::temp_dir().join(format!("ascend-sim-c-abi-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let exe = out_dir.join("abi_smoke");

    let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let compiler = cc::Build::new()
        .cargo_metadata(false)
        .opt_level(0)
        .host(&target)
        .target(&target)
        .warnings(true)
        .extra_warnings(true)
        .try_get_compiler()
        .expect("a C compiler");
    let mut cmd = compiler.to_command();
    cmd.arg("-std=c11").arg("-Werror").arg("-I").arg(&include).arg(&source).arg("-o").arg(&exe);
    cmd.arg(format!("-L{}", libdir.display())).arg("-lascend_sim").arg(format!("-Wl,-rpath,{}", libdir.display()));
    let built = cmd.output().expect("run the C compiler");
    assert!(built.status.success(), "C build failed:\n{}", String::from_utf8_lossy(&built.stderr));

    let run = Command::new(&exe)
        .env("ASCEND_SIM_DEVICES", "2")
        .env_remove("ASCEND_RT_VISIBLE_DEVICES")
        .env_remove("ASCEND_SIM_SOC")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(run.status.success(), "C program failed:\n{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("0 failure(s)"), "{stdout}");
    assert!(stdout.lines().filter(|l| l.starts_with("ok ")).count() >= 30, "{stdout}");
}
