//! An existing-style Python ctypes client of CANN's HCCL API (argument order, root info passed by
//! pointer, 4108-byte blob, dtype and op values) runs unchanged against the simulator's shared library,
//! with two rank processes (`tests/python/hccl_ctypes.py`; standard library only).

use std::path::Path;
use std::process::Command;

#[test]
fn python_ctypes_client_with_two_processes() {
    let lib = std::env::current_exe().unwrap().parent().unwrap().join("libascend_sim.so");
    assert!(lib.exists(), "{} not built", lib.display());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/hccl_ctypes.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python).arg(&script).arg(&lib).output().expect("python3 is needed for this test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.ends_with(" passed, 0 failed") && !last.starts_with("0 passed"), "{stdout}");
}
