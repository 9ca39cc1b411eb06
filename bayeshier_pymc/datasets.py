"""Built-in data: a deterministic simulated metabolomics study (no files shipped)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayeshier_pymc.simulate import SimulatedStudy, simulate

__all__ = ["demo_study"]

_COVARIATES = ["age", "bmi", "sex"]
_TREE = {
    "Lipid": ["Fatty acid", "Phospholipid", "Sphingolipid", "Sterol"],
    "Amino acid": ["Branched-chain", "Aromatic", "Urea cycle"],
    "Xenobiotics": ["Food component", "Drug", "Benzoate"],
    "Nucleotide": ["Purine", "Pyrimidine"],
}
_SHARES = [0.14, 0.12, 0.07, 0.05, 0.1, 0.08, 0.06, 0.12, 0.05, 0.09, 0.07, 0.05]


def demo_study(random_seed: int = 2026) -> SimulatedStudy:
    """A simulated study of 150 samples × 300 metabolites, 12 sub-pathways in 4 super-pathways.

    Three standardised covariates (``age``, ``bmi``, ``sex``); true effects drawn from the
    research model with τ_u = 0.15 (super-pathways), τ_v = 0.10 (sub-pathways) and
    τ_w = 0.05 (metabolites); residual sd 1. The same seed gives the same study.

    Returns
    -------
    SimulatedStudy
        With annotation columns ``SUB_PATHWAY`` and ``SUPER_PATHWAY``.
    """
    study = simulate(
        n=150,
        m=300,
        p=len(_COVARIATES),
        proportions=_SHARES,
        tau_u=0.15,
        tau_v=0.10,
        tau_w=0.05,
        theta0_scale=0.2,
        n_superclasses=[len(subs) for subs in _TREE.values()],
        random_seed=random_seed,
    )
    sub_names = [sub for subs in _TREE.values() for sub in subs]
    super_names = [sup for sup, subs in _TREE.items() for _ in subs]
    sub_index = study.annotations["subclass"].str.removeprefix("subclass_").astype(int)
    annotations = pd.DataFrame(
        {
            "SUB_PATHWAY": np.asarray(sub_names)[sub_index],
            "SUPER_PATHWAY": np.asarray(super_names)[sub_index],
        },
        index=study.annotations.index,
    )
    covariates = pd.Index(_COVARIATES, name="covariate")
    return SimulatedStudy(
        X=study.X.set_axis(covariates, axis=1),
        Y=study.Y,
        B=study.B.assign_coords(covariate=covariates),
        annotations=annotations,
    )
