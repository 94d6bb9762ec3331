//! The patch registry: every patch ascend-patch applies to vLLM, with what it replaces (under every
//! name it is bound to), the vLLM versions it supports, and why, how, the upstream PR and when it
//! can be removed. The Python package reads it (as JSON, through the C ABI) to list, gate and
//! apply patches; `patch/PATCHES.md` is generated from it and checked by a test.

use serde_json::{json, Value};

/// Which process a patch belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Process {
    /// Every process (main, EngineCore, workers), before the engine is configured.
    Platform,
    /// Worker processes, before their distributed environment is initialised.
    Worker,
}

impl Process {
    /// `platform` or `worker` (the folder of the patch's Python file).
    pub fn name(self) -> &'static str {
        match self {
            Process::Platform => "platform",
            Process::Worker => "worker",
        }
    }
}

/// One name a patch replaces (with every other name vLLM binds the same object under: all must be
/// rebound, or code holding an alias keeps the original) or builds on without replacing (such as
/// the constructor of a base class it subclasses), and the signature it expects.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Dotted name, e.g. `vllm.distributed.parallel_state.destroy_model_parallel`.
    pub name: &'static str,
    /// Re-exports of the same object.
    pub aliases: &'static [&'static str],
    /// Parameter list the patch was written against (`inspect.signature`, without annotations),
    /// checked before patching (drift detection).
    pub signature: &'static str,
}

/// A patch.
#[derive(Clone, Copy, Debug)]
pub struct Patch {
    /// `<process>/<file stem>`: the Python file `patch/python/ascend_patch/<id>.py`.
    pub id: &'static str,
    /// Where it applies.
    pub process: Process,
    /// What it replaces or builds on, each checked for drift before the patch applies.
    pub targets: &'static [Target],
    /// vLLM versions it supports: exact versions or specifiers (`==0.33.*`, `>=0.33,<0.34`).
    pub versions: &'static [&'static str],
    /// Why the patch exists.
    pub why: &'static str,
    /// How it works.
    pub how: &'static str,
    /// The upstream PR that would make it unnecessary, or why there is none.
    pub upstream: &'static str,
    /// When and how it will be removed.
    pub future: &'static str,
}

/// Every patch, platform patches first, then by id.
pub static PATCHES: &[Patch] = &[
    Patch {
        id: "worker/patch_communicator",
        process: Process::Worker,
        targets: &[
            Target {
                name: "vllm.platforms.cpu.CpuPlatform.get_device_communicator_cls",
                aliases: &[],
                signature: "()",
            },
            Target {
                // AscendCommunicator subclasses it and takes the keywords vLLM constructs it with.
                name: "vllm.distributed.device_communicators.base_device_communicator.DeviceCommunicatorBase.__init__",
                aliases: &[],
                signature: "(self, cpu_group, device=None, device_group=None, unique_name='', \
                            global_ranks=None, global_world_size=None, use_all2all=False)",
            },
            Target {
                name: "vllm.distributed.parallel_state.GroupCoordinator.broadcast",
                aliases: &[],
                signature: "(self, input_, src=0)",
            },
            Target {
                name: "vllm.distributed.parallel_state.GroupCoordinator.broadcast_tensor_dict",
                aliases: &[],
                signature: "(self, tensor_dict=None, src=0, group=None, metadata_group=None)",
            },
        ],
        versions: &["0.33.0", "==0.33.*"],
        why: "vLLM's CPU collectives go through gloo over loopback TCP (milliseconds per call); ascend-rs \
              runs them over shared memory in microseconds.",
        how: "The platform's device-communicator class becomes ascend_patch.communicator.AscendCommunicator, \
              a DeviceCommunicatorBase whose all_reduce, all_gather, reduce_scatter, gather, broadcast, \
              send and recv (and the tensor-dict send/recv that pipeline parallelism uses) call the \
              ascend-patch C ABI on the tensors' memory. GroupCoordinator.broadcast and \
              broadcast_tensor_dict, which call torch.distributed directly, send their tensors through \
              the group's communicator when it is ours. Groups with identical ranks share one ascend-rs \
              communicator (reference-counted).",
        upstream: "None yet: vLLM selects the communicator per platform, and an out-of-tree platform \
                   plugin would replace the whole CPU platform to change one class. A hook to choose \
                   the device communicator independently of the platform would remove this patch.",
        future: "Remove once vLLM accepts a communicator class from configuration or a plugin hook.",
    },
    Patch {
        id: "worker/patch_parallel_state",
        process: Process::Worker,
        targets: &[Target {
            name: "vllm.distributed.parallel_state.initialize_model_parallel",
            aliases: &["vllm.distributed.initialize_model_parallel"],
            signature: "(tensor_model_parallel_size=1, pipeline_model_parallel_size=1, \
                            prefill_context_model_parallel_size=1, decode_context_model_parallel_size=1, \
                            backend=None)",
        }],
        versions: &["0.33.0", "==0.33.*"],
        why: "ascend-patch publishes vLLM's rank layout (ascend_patch_layout: which global ranks form each \
              tp, dcp, pcp, pp, dp and ep group) for native callers that build the same groups; it is \
              a copy of vLLM's group construction, and must fail loudly when vLLM's changes.",
        how: "initialize_model_parallel is wrapped (in vllm.distributed.parallel_state and its re-export \
              vllm.distributed) to compare every group vLLM built with ascend_patch_layout; a mismatch \
              raises before any collective runs. (Teardown needs nothing: vLLM 0.33's \
              GroupCoordinator.destroy() calls the communicator's destroy(), which releases it.)",
        upstream: "None needed: the check guards our own copy of the layout.",
        future: "Keep while the layout is duplicated here; drop with ascend_patch_layout if native callers \
                 come to take their groups from vLLM itself.",
    },
];

/// The registry as JSON: `[{id, process, targets: [{name, aliases, signature}], versions, why, how,
/// upstream, future}]`.
pub fn to_json() -> Value {
    Value::Array(
        PATCHES
            .iter()
            .map(|p| {
                json!({
                    "id": p.id,
                    "process": p.process.name(),
                    "targets": p.targets.iter().map(|t| json!({
                        "name": t.name, "aliases": t.aliases, "signature": t.signature,
                    })).collect::<Vec<_>>(),
                    "versions": p.versions,
                    "why": squash(p.why),
                    "how": squash(p.how),
                    "upstream": squash(p.upstream),
                    "future": squash(p.future),
                })
            })
            .collect(),
    )
}

/// Collapses the runs of spaces left by line continuations.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Problems with the registry: empty fields, repeated ids, an id that does not name its process
/// folder, unparsable versions; and, given the Python package root, missing patch files.
pub fn problems(patches: &[Patch], python_root: Option<&std::path::Path>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, p) in patches.iter().enumerate() {
        for (field, v) in [("id", p.id), ("why", p.why), ("how", p.how), ("upstream", p.upstream), ("future", p.future)]
        {
            if v.trim().is_empty() {
                out.push(format!("patch {i} ({}): {field} is empty", p.id));
            }
        }
        if patches[..i].iter().any(|q| q.id == p.id) {
            out.push(format!("patch id {} repeats", p.id));
        }
        if !p.id.starts_with(&format!("{}/patch_", p.process.name())) {
            out.push(format!("patch {} must be named {}/patch_<name>", p.id, p.process.name()));
        }
        if p.targets.is_empty() {
            out.push(format!("patch {} has no target", p.id));
        }
        for t in p.targets {
            if !t.name.starts_with("vllm.") || t.aliases.iter().any(|a| !a.starts_with("vllm.")) {
                out.push(format!("patch {}: target {} must be a dotted vllm name", p.id, t.name));
            }
            if !(t.signature.starts_with('(') && t.signature.ends_with(')')) {
                out.push(format!("patch {}: target {} has no signature", p.id, t.name));
            }
        }
        if p.versions.is_empty() {
            out.push(format!("patch {} supports no vLLM version", p.id));
        }
        for v in p.versions {
            if let Err(e) = crate::version::Spec::parse(v) {
                out.push(format!("patch {}: {e}", p.id));
            }
        }
        if let Some(root) = python_root {
            let file = root.join(format!("{}.py", p.id));
            if !file.is_file() {
                out.push(format!("patch {}: {} is missing", p.id, file.display()));
            }
        }
    }
    out
}

/// `patch/PATCHES.md`: the registry for readers, generated (see the test that keeps it current).
pub fn markdown() -> String {
    let mut s = String::from(
        "# Patches\n\nGenerated from `patch/src/registry.rs` (`cargo test -p ascend-patch` fails when this file is \
         stale; `ASCEND_PATCH_BLESS=1` rewrites it). `python -m ascend_patch list` shows which apply to the \
         installed vLLM.\n",
    );
    for process in [Process::Platform, Process::Worker] {
        let list: Vec<&Patch> = PATCHES.iter().filter(|p| p.process == process).collect();
        s.push_str(&format!("\n## {} patches\n", if process == Process::Platform { "Platform" } else { "Worker" }));
        if list.is_empty() {
            s.push_str("\nNone.\n");
        }
        for p in list {
            s.push_str(&format!("\n### `{}`\n\n", p.id));
            s.push_str(&format!("- **File**: `patch/python/ascend_patch/{}.py`\n", p.id));
            s.push_str(&format!("- **vLLM versions**: {}\n", p.versions.join(", ")));
            for t in p.targets {
                let aliases = if t.aliases.is_empty() {
                    String::new()
                } else {
                    format!(" (also bound as {})", t.aliases.join(", "))
                };
                s.push_str(&format!("- **Target**: `{}{}`{aliases}\n", t.name, squash(t.signature)));
            }
            for (k, v) in [("Why", p.why), ("How", p.how), ("Related PR", p.upstream), ("Future plan", p.future)] {
                s.push_str(&format!("- **{k}**: {}\n", squash(v)));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn registry_is_complete_and_files_exist() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/ascend_patch");
        let problems = problems(PATCHES, Some(&root));
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn problems_are_found() {
        let good = PATCHES[0];
        let empty_why = Patch { why: " ", ..good };
        let wrong_folder = Patch { id: "platform/patch_communicator", ..good };
        let no_versions = Patch { versions: &[], ..good };
        let bad_version = Patch { versions: &["0.33.x"], ..good };
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/ascend_patch");
        let missing_file = Patch { id: "worker/patch_nowhere", ..good };
        for (bad, what) in [
            (vec![good, good], "repeats"),
            (vec![empty_why], "why is empty"),
            (vec![wrong_folder], "must be named worker/patch_"),
            (vec![no_versions], "supports no vLLM version"),
            (vec![bad_version], "0.33.x"),
            (vec![missing_file], "is missing"),
        ] {
            let found = problems(&bad, Some(&root));
            assert!(found.iter().any(|p| p.contains(what)), "{what}: {found:?}");
        }
    }

    #[test]
    fn patches_md_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("PATCHES.md");
        let fresh = markdown();
        if std::env::var_os("ASCEND_PATCH_BLESS").is_some() {
            std::fs::write(&path, &fresh).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(committed == fresh, "patch/PATCHES.md is stale: run ASCEND_PATCH_BLESS=1 cargo test -p ascend-patch");
    }
}
