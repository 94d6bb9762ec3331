//! vLLM version strings (PEP 440: release, pre-release `aN`/`bN`/`rcN`, `.postN`, `.devN`, local
//! `+label`) and the specifiers patches declare (`0.33.0`, `>=0.30,<0.34`, `==0.33.*`).
//!
//! Ordering follows PEP 440: `1.0.dev1 < 1.0a1 < 1.0rc1 < 1.0 < 1.0.post1`; trailing zeros of the
//! release do not matter (`0.33 == 0.33.0`). A local label never changes a comparison: a source
//! build `0.33.0+cpu` satisfies `0.33.0`, and `0.11.1.dev12+gdeadbeef` is a development build *before*
//! 0.11.1 (it satisfies `>=0.11.0,<0.11.1` but not `0.11.1`).

use std::cmp::Ordering;
use std::fmt;

/// A parsed version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// Release numbers, e.g. `[0, 33, 0]`.
    pub release: Vec<u64>,
    /// Pre-release: (0 = a, 1 = b, 2 = rc, number).
    pub pre: Option<(u8, u64)>,
    /// `.postN`.
    pub post: Option<u64>,
    /// `.devN`.
    pub dev: Option<u64>,
    /// `+local` label, kept for display only.
    pub local: Option<String>,
}

/// Why a version or specifier did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

impl Version {
    /// Parses a PEP 440 version (case-insensitive, optional leading `v`, `-`/`_` separators).
    pub fn parse(s: &str) -> Result<Version, ParseError> {
        let bad = |why: &str| ParseError(format!("{s:?} is not a version: {why}"));
        let t = s.trim().to_ascii_lowercase();
        let t = t.strip_prefix('v').unwrap_or(&t);
        let (public, local) = match t.split_once('+') {
            Some((p, l)) if !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') => {
                (p, Some(l.to_string()))
            }
            Some(_) => return Err(bad("empty or invalid local label")),
            None => (t, None),
        };
        let digits_end = public.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(public.len());
        let rel = public[..digits_end].trim_end_matches('.');
        if rel.is_empty() || rel.split('.').any(str::is_empty) {
            return Err(bad("no release number"));
        }
        let release = rel
            .split('.')
            .map(|n| n.parse::<u64>().map_err(|_| bad("release number too large")))
            .collect::<Result<Vec<_>, _>>()?;
        // What follows the release: separators are optional before pre/post/dev markers.
        let mut rest = &public[rel.len()..];
        let mut v = Version { release, pre: None, post: None, dev: None, local };
        let number = |r: &mut &str| -> u64 {
            let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            let n = r[..end].parse().unwrap_or(0);
            *r = &r[end..];
            n
        };
        while !rest.is_empty() {
            let trimmed = rest.trim_start_matches(['.', '-', '_']);
            let marker = ["rc", "a", "b", "c", "alpha", "beta", "pre", "preview", "post", "rev", "r", "dev"]
                .iter()
                .filter(|m| trimmed.starts_with(*m))
                .max_by_key(|m| m.len())
                .ok_or_else(|| bad(&format!("unexpected {trimmed:?}")))?;
            let mut r = &trimmed[marker.len()..];
            r = r.trim_start_matches(['.', '-', '_']);
            let n = number(&mut r);
            match *marker {
                "a" | "alpha" if v.pre.is_none() && v.post.is_none() && v.dev.is_none() => v.pre = Some((0, n)),
                "b" | "beta" if v.pre.is_none() && v.post.is_none() && v.dev.is_none() => v.pre = Some((1, n)),
                "rc" | "c" | "pre" | "preview" if v.pre.is_none() && v.post.is_none() && v.dev.is_none() => {
                    v.pre = Some((2, n))
                }
                "post" | "rev" | "r" if v.post.is_none() && v.dev.is_none() => v.post = Some(n),
                "dev" if v.dev.is_none() => v.dev = Some(n),
                _ => return Err(bad(&format!("{marker:?} out of place"))),
            }
            rest = r;
        }
        Ok(v)
    }

    /// The release padded with zeros to `n` numbers.
    fn padded(&self, n: usize) -> Vec<u64> {
        let mut r = self.release.clone();
        r.resize(n.max(r.len()), 0);
        r
    }

    /// PEP 440 sort key of everything after the release.
    fn suffix_key(&self) -> (i8, u64, i8, u64, i8, u64) {
        // A dev release of a final version sorts before its pre-releases.
        let pre = match (self.pre, self.post, self.dev) {
            (Some((k, n)), _, _) => (k as i8, n),
            (None, None, Some(_)) => (-1, 0),
            _ => (3, 0),
        };
        let post = self.post.map_or((-1, 0), |n| (0, n));
        let dev = self.dev.map_or((1, 0), |n| (0, n));
        (pre.0, pre.1, post.0, post.1, dev.0, dev.1)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.release.len().max(other.release.len());
        self.padded(n).cmp(&other.padded(n)).then_with(|| self.suffix_key().cmp(&other.suffix_key()))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rel: Vec<String> = self.release.iter().map(u64::to_string).collect();
        write!(f, "{}", rel.join("."))?;
        if let Some((k, n)) = self.pre {
            write!(f, "{}{n}", ["a", "b", "rc"][k as usize])?;
        }
        if let Some(n) = self.post {
            write!(f, ".post{n}")?;
        }
        if let Some(n) = self.dev {
            write!(f, ".dev{n}")?;
        }
        if let Some(l) = &self.local {
            write!(f, "+{l}")?;
        }
        Ok(())
    }
}

/// One clause of a specifier.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Clause {
    /// `==X` (or a bare `X`), local labels ignored.
    Eq(Version),
    /// `==X.*`: same leading release numbers.
    Prefix(Vec<u64>),
    Ne(Version),
    Ge(Version),
    Gt(Version),
    Le(Version),
    Lt(Version),
}

/// A comma-separated conjunction of clauses, e.g. `>=0.30,<0.34`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    clauses: Vec<Clause>,
    text: String,
}

impl Spec {
    /// Parses `0.33.0`, `==0.33.0`, `==0.33.*`, `!=0.31.0`, `>=0.30`, `<0.34`, and their conjunctions.
    pub fn parse(s: &str) -> Result<Spec, ParseError> {
        let mut clauses = Vec::new();
        for part in s.split(',').map(str::trim) {
            let (op, v) = ["==", "!=", ">=", "<=", ">", "<"]
                .iter()
                .find_map(|op| part.strip_prefix(op).map(|v| (*op, v.trim())))
                .unwrap_or(("==", part));
            if v.is_empty() {
                return Err(ParseError(format!("{s:?}: empty clause")));
            }
            let clause = match (op, v.strip_suffix(".*")) {
                ("==", Some(prefix)) => Clause::Prefix(Version::parse(prefix)?.release),
                (_, Some(_)) => return Err(ParseError(format!("{s:?}: a wildcard needs =="))),
                ("==", None) => Clause::Eq(Version::parse(v)?),
                ("!=", None) => Clause::Ne(Version::parse(v)?),
                (">=", None) => Clause::Ge(Version::parse(v)?),
                ("<=", None) => Clause::Le(Version::parse(v)?),
                (">", None) => Clause::Gt(Version::parse(v)?),
                _ => Clause::Lt(Version::parse(v)?),
            };
            clauses.push(clause);
        }
        Ok(Spec { clauses, text: s.trim().to_string() })
    }

    /// Whether `v` satisfies every clause. As in PEP 440, a pre-release or dev build matches only a
    /// spec that names one (`==0.33.*` does not take an untested `0.33.1.dev42` nightly; set
    /// `VLLM_VERSION` to vouch for one).
    pub fn matches(&self, v: &Version) -> bool {
        if v.is_pre() && !self.clauses.iter().any(Clause::names_pre) {
            return false;
        }
        self.clauses.iter().all(|c| match c {
            Clause::Eq(w) => v == w || (v.cmp(w) == Ordering::Equal && w.local.is_none()),
            Clause::Prefix(p) => v.padded(p.len())[..p.len()] == p[..],
            Clause::Ne(w) => v.cmp(w) != Ordering::Equal,
            Clause::Ge(w) => v >= w,
            // PEP 440: `>V` does not take V's post-releases, `<V` not V's pre- and dev releases
            // (`<0.34` must not apply to 0.34.0rc1 or a 0.34.0.dev build), unless V is one itself.
            Clause::Gt(w) => v > w && !(w.post.is_none() && v.post.is_some() && v.same_release(w) && v.pre == w.pre),
            Clause::Le(w) => v <= w,
            Clause::Lt(w) => v < w && !(!w.is_pre() && v.is_pre() && v.same_release(w)),
        })
    }
}

impl Clause {
    /// Whether the clause names a pre-release or dev build (which lets such builds match).
    fn names_pre(&self) -> bool {
        match self {
            Clause::Prefix(_) => false,
            Clause::Eq(w) | Clause::Ne(w) | Clause::Ge(w) | Clause::Gt(w) | Clause::Le(w) | Clause::Lt(w) => w.is_pre(),
        }
    }
}

impl Version {
    /// A pre-release or a dev release (of a final or pre-release).
    fn is_pre(&self) -> bool {
        self.pre.is_some() || self.dev.is_some()
    }

    /// The same release numbers (`0.34` and `0.34.0` are the same).
    fn same_release(&self, other: &Version) -> bool {
        let n = self.release.len().max(other.release.len());
        self.padded(n) == other.padded(n)
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether `version` satisfies any of `specs` (a patch's supported versions). Errors name what did
/// not parse.
pub fn supported(version: &str, specs: &[&str]) -> Result<bool, ParseError> {
    let v = Version::parse(version)?;
    for s in specs {
        if Spec::parse(s)?.matches(&v) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_vllm_versions_parse_and_round_trip() {
        for (s, shown) in [
            ("0.33.0", "0.33.0"),
            ("0.9.2+abc", "0.9.2+abc"),
            ("0.11.1.dev12+gdeadbeef", "0.11.1.dev12+gdeadbeef"),
            ("0.10.1.1", "0.10.1.1"),
            ("0.8.5.post1", "0.8.5.post1"),
            ("0.6.1.post2", "0.6.1.post2"),
            ("0.11.0rc2", "0.11.0rc2"),
            ("0.11.0rc2.dev149+g5df2c6e23.d20251008", "0.11.0rc2.dev149+g5df2c6e23.d20251008"),
            ("0.33.0+cpu", "0.33.0+cpu"),
            ("v0.27.1", "0.27.1"),
            ("0.7.3.dev0", "0.7.3.dev0"),
        ] {
            assert_eq!(Version::parse(s).unwrap().to_string(), shown, "{s}");
        }
    }

    #[test]
    fn garbage_is_refused_with_the_input_named() {
        for s in ["", "abc", "0..1", "0.33.0+", "0.33.0foo", "1.0.post1rc1", "0.1.dev1.dev2"] {
            let e = Version::parse(s).unwrap_err();
            assert!(e.0.contains(&format!("{s:?}")), "{e}");
        }
    }

    #[test]
    fn ordering_follows_pep_440() {
        let order = [
            "0.11.0.dev3",
            "0.11.0a1",
            "0.11.0b2",
            "0.11.0rc1.dev5",
            "0.11.0rc1",
            "0.11.0",
            "0.11.0.post1.dev2",
            "0.11.0.post1",
            "0.11.1.dev12+gdeadbeef",
            "0.11.1",
            "0.33.0",
        ];
        for w in order.windows(2) {
            assert!(Version::parse(w[0]).unwrap() < Version::parse(w[1]).unwrap(), "{} < {}", w[0], w[1]);
        }
        assert_eq!(Version::parse("0.33").unwrap().cmp(&Version::parse("0.33.0").unwrap()), Ordering::Equal);
    }

    #[test]
    fn specifiers_match_releases_ranges_and_builds() {
        let m = |v: &str, s: &str| Spec::parse(s).unwrap().matches(&Version::parse(v).unwrap());
        assert!(m("0.33.0", "0.33.0"));
        assert!(m("0.33.0+cpu", "0.33.0"), "a local build is the release it tracks");
        assert!(!m("0.33.0", "0.33.0+cpu"));
        assert!(!m("0.33.1", "0.33.0"));
        assert!(m("0.31.0", ">=0.30,<0.34"));
        assert!(!m("0.34.0", ">=0.30,<0.34"));
        assert!(!m("0.34.0.dev3", ">=0.30,<0.34"), "<V takes no dev build of V (PEP 440)");
        assert!(!m("0.34.0rc1", "<0.34"), "nor a pre-release of it");
        assert!(m("0.34.0rc1", "<0.34.0rc2") && !m("0.33.5.dev1", "<0.34"));
        // Pre-releases and dev builds match only a spec that names one (PEP 440).
        assert!(!m("0.33.1.dev12+gdeadbeef", "==0.33.*") && !m("0.33.0rc1", ">=0.32"));
        assert!(m("0.33.0rc1", "0.33.0rc1") && m("0.33.0rc2", ">=0.33.0rc1,<0.34"));
        assert!(!m("0.33.0.post1", ">0.33") && m("0.33.1", ">0.33") && m("0.33.0.post2", ">0.33.0.post1"));
        assert!(!m("0.11.1.dev12+gdeadbeef", "0.11.1"));
        assert!(m("0.33.2", "==0.33.*"));
        assert!(!m("0.34.0", "==0.33.*"));
        assert!(!m("0.31.0", ">=0.30,!=0.31.0"));
        assert!(Spec::parse(">=0.30,").is_err());
        assert!(Spec::parse(">=0.30.*").is_err());
    }

    #[test]
    fn supported_checks_any_spec() {
        assert_eq!(supported("0.33.0", &["0.32.0", "0.33.0"]), Ok(true));
        assert_eq!(supported("0.29.0", &["0.32.0", ">=0.33"]), Ok(false));
        assert!(supported("not-a-version", &["0.33.0"]).is_err());
    }
}
