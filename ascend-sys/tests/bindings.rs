//! `src/bindings.rs` is generated from `include/ascend.h` by bindgen and committed. This test
//! regenerates it and fails on any difference. Regenerate with
//! `ASCEND_SYS_BLESS=1 cargo test -p ascend-sys --test bindings`.
//! Needs libclang at run time (`apt-get install libclang-dev`; `scripts/setup.sh` installs it).

use std::path::Path;

fn generate() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header = root.join("include/ascend.h");
    bindgen::Builder::default()
        .header(header.to_str().unwrap())
        .clang_arg(format!("-I{}", root.join("include").display()))
        .allowlist_type("acl.*|Acl.*|Hccl.*|HcclComm|AscendApi")
        .allowlist_var("ACL_.*|ACLNN_.*|HCCL_.*|COMM_NAME_MAX_LENGTH|UDI_MAX_LENGTH")
        .default_macro_constant_type(bindgen::MacroTypeVariation::Signed)
        .layout_tests(true)
        .derive_default(true)
        .derive_debug(false)
        .generate_comments(false)
        .formatter(bindgen::Formatter::Prettyplease)
        .generate()
        .expect("bindgen failed on include/ascend.h")
        .to_string()
}

#[test]
fn committed_bindings_match_the_header() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bindings.rs");
    let fresh = generate();
    if std::env::var_os("ASCEND_SYS_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != fresh {
        let line = committed.lines().zip(fresh.lines()).position(|(a, b)| a != b);
        panic!(
            "src/bindings.rs is stale (first difference at line {}); regenerate it with \
             ASCEND_SYS_BLESS=1 cargo test -p ascend-sys --test bindings",
            line.map_or(committed.lines().count().min(fresh.lines().count()), |l| l + 1) + 1
        );
    }
}
