//! Loads the real CANN libraries at run time and fills an [`AscendApi`] from them.
//!
//! Search order for each library: `$ASCEND_TOOLKIT_HOME/lib64`, `$ASCEND_HOME_PATH/lib64`, the
//! well-known install prefixes, then the dynamic loader's own path (`LD_LIBRARY_PATH`, ld.so.cache).
//! `libascendcl` is required; the other three are optional (an HCCL-less install still runs the
//! runtime) and are looked for in `libascendcl`'s directory first, so that one release is loaded. Symbols are resolved one by one: a symbol the installed CANN lacks stays `None`.
//! Nothing here panics.

use crate::{AscendApi, Library, API_SYMBOLS};
use std::collections::HashMap;
use std::ffi::c_void;
use std::fmt;
use std::path::PathBuf;

/// The result of loading the CANN libraries: the table, plus what was found where.
pub struct Loaded {
    /// The function table; entries the libraries do not export are `None`.
    pub api: AscendApi,
    /// The file each library was loaded from, or why it could not be.
    pub libraries: Vec<(Library, Result<PathBuf, LoadError>)>,
    // Keeps the libraries mapped for as long as the table may be used.
    _handles: Vec<libloading::Library>,
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("libraries", &self.libraries)
            .field("symbols", &self.api.present().count())
            .finish()
    }
}

/// Why a CANN library could not be loaded: each place searched, and what happened there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    /// The library looked for.
    pub library: Library,
    /// Every candidate tried, with the loader's message for it.
    pub attempts: Vec<(String, String)>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not load {} (tried:", self.library.file_names().join(" or "))?;
        for (place, why) in &self.attempts {
            write!(f, "\n  {place}: {why}")?;
        }
        write!(f, ")\nSet ASCEND_TOOLKIT_HOME (source set_env.sh from the CANN toolkit), or use ASCEND_BACKEND=sim.")
    }
}

impl std::error::Error for LoadError {}

/// Directories searched before the dynamic loader's path, from the environment and the well-known
/// install prefixes, in order, without duplicates.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    for var in ["ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            roots.push(PathBuf::from(v));
        }
    }
    roots.push("/usr/local/Ascend/ascend-toolkit/latest".into());
    roots.push("/usr/local/Ascend/cann".into());
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(PathBuf::from(home).join("Ascend/ascend-toolkit/latest"));
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    for d in roots.into_iter().map(|r| r.join("lib64")) {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// Opens one library: each search directory in turn, then the bare file name (dynamic loader path).
pub fn open(library: Library, dirs: &[PathBuf]) -> Result<(libloading::Library, PathBuf), LoadError> {
    let mut attempts = Vec::new();
    let candidates = dirs
        .iter()
        .flat_map(|d| library.file_names().iter().map(move |n| d.join(n)))
        .chain(library.file_names().iter().map(PathBuf::from));
    for path in candidates {
        if path.is_absolute() && !path.exists() {
            attempts.push((path.display().to_string(), "no such file".to_string()));
            continue;
        }
        // SAFETY: loading a shared library runs its initialisers. These are the vendor's CANN
        // libraries, found in the vendor's install locations or on the loader path the user set.
        match unsafe { libloading::Library::new(&path) } {
            Ok(lib) => return Ok((lib, path)),
            Err(e) => {
                let place = if path.is_absolute() {
                    path.display().to_string()
                } else {
                    format!("{} (dynamic loader path)", path.display())
                };
                attempts.push((place, e.to_string()))
            }
        }
    }
    Err(LoadError { library, attempts })
}

/// Loads the CANN libraries from the standard places. Fails only when `libascendcl` itself cannot be
/// loaded; the other libraries' failures are recorded in [`Loaded::libraries`].
pub fn load() -> Result<Loaded, LoadError> {
    load_from(&search_dirs())
}

/// Like [`load`], with an explicit list of directories searched before the dynamic loader's path.
pub fn load_from(dirs: &[PathBuf]) -> Result<Loaded, LoadError> {
    let mut opened: HashMap<Library, usize> = HashMap::new();
    let mut handles = Vec::new();
    let mut libraries = Vec::new();
    let mut dirs = dirs.to_vec();
    for library in Library::ALL {
        match open(library, &dirs) {
            Ok((lib, path)) => {
                if library == Library::AscendCl {
                    // The other libraries come from libascendcl's own directory first: one CANN
                    // release, not pieces of several found along the search path.
                    if let Some(home) = path.parent().filter(|p| p.is_absolute()).map(PathBuf::from) {
                        dirs.retain(|d| *d != home);
                        dirs.insert(0, home);
                    }
                }
                opened.insert(library, handles.len());
                handles.push(lib);
                libraries.push((library, Ok(path)));
            }
            Err(e) if library == Library::AscendCl => return Err(e),
            Err(e) => libraries.push((library, Err(e))),
        }
    }
    let mut api = AscendApi::empty();
    // SAFETY: each slot receives the address of the symbol with exactly the entry's name from the
    // library that exports it; the declarations in api.def are the C signatures of those symbols.
    let slots = unsafe { api.slots_mut() };
    for (slot, (library, name)) in slots.iter_mut().zip(API_SYMBOLS) {
        if let Some(&i) = opened.get(library) {
            // SAFETY: looking a symbol up does not call it; the raw address is stored as a pointer.
            let sym = unsafe { handles[i].get::<*const c_void>(name.as_bytes()) };
            if let Ok(sym) = sym {
                *slot = *sym;
            }
        }
    }
    Ok(Loaded { api, libraries, _handles: handles })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_an_error_value_naming_each_place() {
        let dir = std::env::temp_dir().join("ascend-sys-no-cann-here");
        let err = open(Library::Hccl, std::slice::from_ref(&dir)).expect_err("no libhccl in an empty dir");
        assert_eq!(err.library, Library::Hccl);
        assert!(err.attempts.iter().any(|(p, _)| p.starts_with(dir.to_str().unwrap())));
        assert!(err.attempts.iter().any(|(p, _)| p.contains("dynamic loader path")));
        assert!(err.to_string().contains("libhccl.so"), "{err}");
    }

    /// Stub libraries built with the C compiler: `libhccl` comes from `libascendcl`'s directory even
    /// when another directory holding one is searched first.
    #[test]
    fn companions_come_from_libascendcl_s_directory() {
        let root = std::env::temp_dir().join(format!("ascend-sys-loader-{}", std::process::id()));
        let (first, cann) = (root.join("first"), root.join("cann"));
        for (dir, name) in [(&first, "libhccl.so"), (&cann, "libascendcl.so"), (&cann, "libhccl.so")] {
            std::fs::create_dir_all(dir).unwrap();
            let built = std::process::Command::new("cc")
                .args(["-shared", "-fPIC", "-x", "c", "-o"])
                .arg(dir.join(name))
                .arg("/dev/null")
                .status()
                .expect("a C compiler (scripts/setup.sh installs one)");
            assert!(built.success());
        }
        let loaded = load_from(&[first.clone(), cann.clone()]).expect("the stub libascendcl loads");
        let from = |l: Library| loaded.libraries.iter().find(|(x, _)| *x == l).unwrap().1.clone().unwrap();
        assert_eq!(from(Library::AscendCl), cann.join("libascendcl.so"));
        assert_eq!(from(Library::Hccl), cann.join("libhccl.so"), "not the one in {}", first.display());
        drop(loaded);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn search_dirs_start_with_the_environment() {
        // Only read here: the variables are whatever the test environment has.
        let dirs = search_dirs();
        if let Some(home) = std::env::var_os("ASCEND_TOOLKIT_HOME").filter(|v| !v.is_empty()) {
            assert_eq!(dirs[0], PathBuf::from(home).join("lib64"));
        }
        assert!(dirs.contains(&PathBuf::from("/usr/local/Ascend/ascend-toolkit/latest/lib64")));
    }
}
