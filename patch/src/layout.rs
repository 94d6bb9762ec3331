//! vLLM's model-parallel rank layout: which global ranks form each TP, DCP, PCP, PP, DP and EP group,
//! in the order vLLM 0.33 creates them (group creation is collective, so the order matters).
//!
//! vLLM views the ranks as an array `[ExternalDP, DP, PP, PCP, TP]` (TP fastest). For each kind it
//! moves that kind's axis last (a transpose), flattens, and cuts rows of the group size; DCP (when
//! larger than 1) swaps PCP and TP and cuts rows of DCP, so it spans PCP first, then TP; EP moves PP
//! before DP and cuts rows of DP·PCP·TP. EPLB groups are the EP groups.

use std::fmt;

/// A kind of group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Tensor parallel.
    Tp,
    /// Decode context parallel (spans PCP first, then TP).
    Dcp,
    /// Prefill context parallel.
    Pcp,
    /// Pipeline parallel.
    Pp,
    /// Data parallel.
    Dp,
    /// Expert parallel (also the EPLB groups).
    Ep,
}

impl Kind {
    /// Every kind, in the order vLLM creates them.
    pub const ALL: [Kind; 6] = [Kind::Tp, Kind::Dcp, Kind::Pcp, Kind::Pp, Kind::Dp, Kind::Ep];

    /// vLLM's group name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tp => "tp",
            Kind::Dcp => "dcp",
            Kind::Pcp => "pcp",
            Kind::Pp => "pp",
            Kind::Dp => "dp",
            Kind::Ep => "ep",
        }
    }

    /// From vLLM's group name (`eplb` is `ep`).
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s).or((s == "eplb").then_some(Kind::Ep))
    }
}

/// The parallel sizes of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// All ranks.
    pub world: usize,
    /// Tensor parallel.
    pub tp: usize,
    /// Pipeline parallel.
    pub pp: usize,
    /// Data parallel (inside this world).
    pub dp: usize,
    /// Prefill context parallel.
    pub pcp: usize,
    /// Decode context parallel (divides pcp·tp).
    pub dcp: usize,
}

/// Most ranks a layout may have: far beyond any deployment, small enough that its rank lists fit
/// in memory and its ranks in the C ABI's `i32`.
pub const MAX_WORLD: usize = 1 << 20;

/// Why sizes do not make a layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutError(pub String);

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LayoutError {}

impl Sizes {
    /// Checks the sizes: all at least 1, `dp·pp·pcp·tp` divides the world, `dcp` divides `pcp·tp`.
    pub fn check(&self) -> Result<(), LayoutError> {
        let s = *self;
        if [s.world, s.tp, s.pp, s.dp, s.pcp, s.dcp].contains(&0) {
            return Err(LayoutError(format!("every size must be at least 1: {s:?}")));
        }
        if s.world > MAX_WORLD {
            return Err(LayoutError(format!("world size {} is beyond {MAX_WORLD} ranks", s.world)));
        }
        let inner = s.dp.checked_mul(s.pp).and_then(|x| x.checked_mul(s.pcp)).and_then(|x| x.checked_mul(s.tp));
        match inner {
            Some(n) if s.world.is_multiple_of(n) => {}
            _ => {
                return Err(LayoutError(format!(
                    "world size {} is not a multiple of dp·pp·pcp·tp = {}·{}·{}·{}",
                    s.world, s.dp, s.pp, s.pcp, s.tp
                )))
            }
        }
        if !(s.tp * s.pcp).is_multiple_of(s.dcp) {
            return Err(LayoutError(format!("dcp {} does not divide pcp·tp = {}", s.dcp, s.pcp * s.tp)));
        }
        Ok(())
    }

    /// The groups of `kind`, each a list of global ranks, in vLLM's creation order.
    pub fn groups(&self, kind: Kind) -> Result<Vec<Vec<usize>>, LayoutError> {
        self.check()?;
        let s = *self;
        let ext = s.world / (s.dp * s.pp * s.pcp * s.tp);
        // Axes of the rank array: 0 ExternalDP, 1 DP, 2 PP, 3 PCP, 4 TP.
        let dims = [ext, s.dp, s.pp, s.pcp, s.tp];
        let (perm, size): ([usize; 5], usize) = match kind {
            Kind::Tp => ([0, 1, 2, 3, 4], s.tp),
            // "DCP spans PCP first, then TP": PCP moves last when DCP is split at all.
            Kind::Dcp if s.dcp > 1 => ([0, 1, 2, 4, 3], s.dcp),
            Kind::Dcp => ([0, 1, 2, 3, 4], 1),
            Kind::Pcp => ([0, 1, 2, 4, 3], s.pcp),
            Kind::Pp => ([0, 1, 4, 3, 2], s.pp),
            Kind::Dp => ([0, 4, 2, 3, 1], s.dp),
            Kind::Ep => ([0, 2, 1, 3, 4], s.dp * s.pcp * s.tp),
        };
        Ok(permuted(dims, perm).chunks(size).map(<[usize]>::to_vec).collect())
    }

    /// The group of `kind` that holds `rank`.
    pub fn group_of(&self, kind: Kind, rank: usize) -> Result<Vec<usize>, LayoutError> {
        self.groups(kind)?
            .into_iter()
            .find(|g| g.contains(&rank))
            .ok_or_else(|| LayoutError(format!("rank {rank} is outside a world of {}", self.world)))
    }
}

/// Global ranks (row-major over `dims`) listed in row-major order of the axes permuted by `perm`.
fn permuted(dims: [usize; 5], perm: [usize; 5]) -> Vec<usize> {
    let total: usize = dims.iter().product();
    let pdims = perm.map(|a| dims[a]);
    let mut strides = [1usize; 5];
    for a in (0..4).rev() {
        strides[a] = strides[a + 1] * dims[a + 1];
    }
    (0..total)
        .map(|flat| {
            // Digits of `flat` in the permuted shape, each weighted by its original axis's stride.
            let mut rest = flat;
            let mut rank = 0;
            for i in (0..5).rev() {
                rank += (rest % pdims[i]) * strides[perm[i]];
                rest /= pdims[i];
            }
            rank
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(world: usize, tp: usize, pp: usize, dp: usize) -> Sizes {
        Sizes { world, tp, pp, dp, pcp: 1, dcp: 1 }
    }

    #[test]
    fn upstream_worked_examples() {
        // The examples of vLLM's initialize_model_parallel docstring and of the reference notes.
        let s = sizes(8, 2, 4, 1);
        assert_eq!(s.groups(Kind::Tp).unwrap(), vec![vec![0, 1], vec![2, 3], vec![4, 5], vec![6, 7]]);
        assert_eq!(s.groups(Kind::Pp).unwrap(), vec![vec![0, 2, 4, 6], vec![1, 3, 5, 7]]);
        let s = sizes(8, 2, 2, 2);
        assert_eq!(s.groups(Kind::Pp).unwrap(), vec![vec![0, 2], vec![1, 3], vec![4, 6], vec![5, 7]]);
        assert_eq!(s.groups(Kind::Dp).unwrap(), vec![vec![0, 4], vec![2, 6], vec![1, 5], vec![3, 7]]);
        assert_eq!(s.groups(Kind::Ep).unwrap(), vec![vec![0, 1, 4, 5], vec![2, 3, 6, 7]]);
        let s = sizes(16, 4, 2, 2);
        assert_eq!(s.group_of(Kind::Ep, 9).unwrap(), vec![0, 1, 2, 3, 8, 9, 10, 11]);
        assert_eq!(s.group_of(Kind::Dp, 5).unwrap(), vec![5, 13]);
    }

    /// An independent construction: each group is the set of ranks that agree on every coordinate
    /// except the kind's own axes; checked as sets, for every combination of small sizes.
    #[test]
    fn groups_partition_ranks_by_coordinates() {
        for world in [1, 2, 4, 6, 8, 12, 16] {
            for tp in [1, 2, 3, 4] {
                for pp in [1, 2, 3] {
                    for dp in [1, 2] {
                        for pcp in [1, 2] {
                            for dcp in [1, 2] {
                                let s = Sizes { world, tp, pp, dp, pcp, dcp };
                                if s.check().is_err() {
                                    continue;
                                }
                                check_partition(s);
                            }
                        }
                    }
                }
            }
        }
    }

    fn check_partition(s: Sizes) {
        let coords = |r: usize| {
            let t = r % s.tp;
            let c = (r / s.tp) % s.pcp;
            let p = (r / (s.tp * s.pcp)) % s.pp;
            let d = (r / (s.tp * s.pcp * s.pp)) % s.dp;
            let e = r / (s.tp * s.pcp * s.pp * s.dp);
            (e, d, p, c, t)
        };
        for kind in Kind::ALL {
            let groups = s.groups(kind).unwrap();
            let mut seen = vec![false; s.world];
            for g in &groups {
                for &r in g {
                    assert!(!std::mem::replace(&mut seen[r], true), "{s:?} {kind:?}: rank {r} twice");
                }
                let key = |r: usize| {
                    let (e, d, p, c, t) = coords(r);
                    match kind {
                        Kind::Tp => (e, d, p, c, 0),
                        Kind::Dcp => (e, d, p, 0, (t * s.pcp + c) / s.dcp),
                        Kind::Pcp => (e, d, p, 0, t),
                        Kind::Pp => (e, d, 0, c, t),
                        Kind::Dp => (e, 0, p, c, t),
                        Kind::Ep => (e, 0, p, 0, 0),
                    }
                };
                assert!(g.iter().all(|&r| key(r) == key(g[0])), "{s:?} {kind:?}: {g:?} mixes coordinates");
                assert!(g.windows(2).all(|w| w[0] < w[1]), "{s:?} {kind:?}: {g:?} not ascending");
            }
            assert!(seen.iter().all(|&x| x), "{s:?} {kind:?}: a rank is in no group");
        }
    }

    #[test]
    fn dcp_spans_pcp_first() {
        // vLLM 0.33's own layout for world 16, DP 2, PP 2, PCP 2, TP 2, DCP 2 (replayed from its code).
        let s = Sizes { world: 16, tp: 2, pp: 2, dp: 2, pcp: 2, dcp: 2 };
        let want = [[0, 2], [1, 3], [4, 6], [5, 7], [8, 10], [9, 11], [12, 14], [13, 15]];
        assert_eq!(s.groups(Kind::Dcp).unwrap(), want.map(|g| g.to_vec()).to_vec());
        let pp = [[0, 4], [2, 6], [1, 5], [3, 7], [8, 12], [10, 14], [9, 13], [11, 15]];
        assert_eq!(s.groups(Kind::Pp).unwrap(), pp.map(|g| g.to_vec()).to_vec());
        let dp = [[0, 8], [2, 10], [4, 12], [6, 14], [1, 9], [3, 11], [5, 13], [7, 15]];
        assert_eq!(s.groups(Kind::Dp).unwrap(), dp.map(|g| g.to_vec()).to_vec());
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(sizes(6, 4, 1, 1).groups(Kind::Tp).is_err());
        assert!(Sizes { world: 4, tp: 4, pp: 1, dp: 1, pcp: 1, dcp: 3 }.check().is_err());
        assert!(sizes(4, 0, 1, 1).check().is_err());
        assert!(sizes(4, 2, 1, 1).group_of(Kind::Tp, 9).is_err());
    }

    #[test]
    fn kinds_round_trip_by_name() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.name()), Some(k));
        }
        assert_eq!(Kind::parse("eplb"), Some(Kind::Ep));
        assert_eq!(Kind::parse("world"), None);
    }
}
