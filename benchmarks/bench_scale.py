"""Peak memory and wall time at scale: stage 1, the Gibbs engine and (optionally) NUTS.

Each stage runs in its own subprocess so that its peak RSS (``ru_maxrss``) is its own.

    python benchmarks/bench_scale.py                         # m=20000, p=10, n=500
    python benchmarks/bench_scale.py --draws 200 --nuts-m 2000
    python benchmarks/bench_scale.py --m 2000 --skip-gibbs   # quick look
    python benchmarks/bench_scale.py --m 100000 --chains 4 --draws 1000 --storage summary \
        --skip-stage1 --budget-mb 4096                     # 10^5 features (issue 15, item 3)
    python benchmarks/bench_scale.py --m 100000 --chains 4 --draws 1000 --storage summary \
        --skip-stage1 --budget-mb 4096 --noise tree        # the same with correlated estimates

With ``--noise tree`` the Gibbs stage's estimates come from ``mlm`` on simulated responses whose
residuals share a normal per subgroup, per group and overall (a tree-structured covariance),
so the model uses tree-structured noise; the stage-1 fit is not timed. With
``--storage summary`` the Gibbs stage keeps θ's summaries only and also times, in the
same process, the replay of θ that sampling ends with (``theta_replay_s``: the summaries
computed again from the stored τ and parents; sampling's wall time less it is the sweeps'),
``coefficient_table``, LOO (chunked over features, compiled PSIS; then its two
parts again, summed over the chunks: ``loo_log_likelihood_s`` computing ``b_marginal`` and
``loo_psis_s`` the PSIS, with the same total elpd), the compiled
PSIS against ArviZ's ``az.loo`` on the same 1000 cells of the first chunk (r_eff = 1; their
ratio and largest difference of loo_i) and the regeneration of the θ draws of 10 features;
the peak RSS covers them all.

Prints one line per stage with PASS/FAIL against the memory budget (2 GB by default); it
never raises on a FAIL.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

STAGE1 = """
import resource, time, numpy as np
import bayeshier_pymc as bh
rng = np.random.default_rng(0)
n, m, p = {n}, {m}, {p}
X = rng.normal(size=(n, p))
Y = X @ rng.normal(size=(p, m)) * 0.1 + rng.normal(size=(n, m))
start = time.perf_counter()
fit = bh.mlm(Y, X, x_intercept=False)
frame = fit.to_frame()
assert np.isfinite(frame[["estimate", "se", "p"]].to_numpy()).all()
wall = time.perf_counter() - start
"""

GIBBS = """
import resource, time, numpy as np, pandas as pd
import bayeshier_pymc as bh
rng = np.random.default_rng(0)
m, p = {m}, {p}
features = [f"f{{j}}" for j in range(m)]
sub = rng.integers(0, max(1, m // 100), size=m)
ann = pd.DataFrame({{"SUB": [f"s{{s}}" for s in sub], "SUPER": [f"P{{s % 10}}" for s in sub]}},
                   index=features)
tree = bh.Hierarchy.from_frame(ann, ["SUB", "SUPER"])
if "{noise}" == "tree":
    # estimates of mlm on residuals with tree-structured covariance: per sample, a normal shared
    # by each subgroup, each group and all features, on top of the features' own; the model
    # then uses tree-structured noise (its default for estimates that carry it)
    n = {noise_samples}
    X = pd.DataFrame(rng.normal(size=(n, p)), columns=[f"x{{k}}" for k in range(p)])
    shared = (0.6 * rng.normal(size=(n, sub.max() + 1))[:, sub]
              + 0.4 * rng.normal(size=(n, 10))[:, sub % 10] + 0.3 * rng.normal(size=(n, 1)))
    Y = X.to_numpy() @ (rng.normal(size=(p, m)) * 0.3) + rng.normal(size=(n, m)) + shared
    est = bh.mlm(pd.DataFrame(Y, columns=features), X, x_intercept=False)
    del Y, shared
else:
    b = rng.normal(size=(p, m)) * 0.3
    se = np.full((p, m), 0.2)
    est = (pd.DataFrame(b, columns=features), pd.DataFrame(se, columns=features))
model = bh.ShrinkageModel(est, tree)
assert model.problem.correlated == ("{noise}" == "tree")
start = time.perf_counter()
idata = model.sample("gibbs", draws={draws}, tune={draws}, chains={chains}, random_seed=1,
                     progressbar=False, storage="{storage}")
wall = time.perf_counter() - start
extra = {{}}
if "{storage}" == "summary":
    from bayeshier_pymc.gibbs.theta_summary import summarise
    from bayeshier_pymc.streamed import _stream, theta_draws
    # the replay that sampling ran after its sweeps (θ's summaries), once more on its own
    tick = time.perf_counter()
    summarise(_stream(idata))
    extra["theta_replay_s"] = time.perf_counter() - tick
    tick = time.perf_counter()
    table = bh.coefficient_table(idata)
    extra["coefficient_table_s"] = time.perf_counter() - tick
    tick = time.perf_counter()
    elpd = bh.loo(idata)
    extra["loo_s"] = time.perf_counter() - tick
    # LOO's two parts, over every chunk as loo_in_chunks runs them: the log-likelihood
    # (marginal_chunks, timed while it computes each chunk) and the PSIS of each chunk
    from bayeshier_pymc import psis
    from bayeshier_pymc.convergence import relative_efficiency
    from bayeshier_pymc.inference_data import marginal_chunks
    reff = relative_efficiency(idata.posterior)  # bh.loo's default
    extra["loo_log_likelihood_s"] = extra["loo_psis_s"] = 0.0
    elpd_loo, chunks = 0.0, marginal_chunks(idata)
    while True:
        tick = time.perf_counter()
        chunk = next(chunks, None)
        extra["loo_log_likelihood_s"] += time.perf_counter() - tick
        if chunk is None:
            break
        tick = time.perf_counter()
        elpd_loo += psis.psis_loo(chunk[2], reff).loo_i.sum()
        extra["loo_psis_s"] += time.perf_counter() - tick
    assert np.isclose(elpd_loo, elpd["elpd_loo"], rtol=1e-9, atol=0), (elpd_loo, elpd["elpd_loo"])
    # the compiled PSIS against ArviZ's on the same 1000 cells of the first chunk
    import warnings, arviz as az, xarray as xr
    _, _, values = next(marginal_chunks(idata))
    values = values[:, :1000]
    reff = 1.0
    tick = time.perf_counter()
    compiled = psis.psis_loo(values, reff)
    extra["psis_1000_cells_compiled_s"] = time.perf_counter() - tick
    cells = xr.DataArray(values.reshape(idata.posterior.sizes["chain"], -1, values.shape[1]),
                         dims=("chain", "draw", "cell"))
    tick = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        reference = az.loo(az.InferenceData(log_likelihood=cells.to_dataset(name="b")),
                           reff=reff, pointwise=True)
    extra["psis_1000_cells_arviz_s"] = time.perf_counter() - tick
    extra["psis_arviz_over_compiled"] = (
        extra["psis_1000_cells_arviz_s"] / extra["psis_1000_cells_compiled_s"]
    )
    extra["psis_max_abs_diff_loo_i"] = float(np.max(np.abs(compiled.loo_i - reference["loo_i"])))
    tick = time.perf_counter()
    theta = theta_draws(idata, features[:10])
    extra["theta_draws_10_features_s"] = time.perf_counter() - tick
    assert np.isfinite(table["mean"]).all() and np.isfinite(elpd["elpd_loo"])
    assert np.isfinite(theta.to_numpy()).all()
else:
    assert np.isfinite(idata.posterior["theta"].to_numpy()).all()
"""

NUTS = """
import resource, time, warnings, numpy as np, pandas as pd
import bayeshier_pymc as bh
warnings.simplefilter("ignore")
rng = np.random.default_rng(0)
m, p = {m}, {p}
features = [f"f{{j}}" for j in range(m)]
sub = rng.integers(0, max(1, m // 100), size=m)
ann = pd.DataFrame({{"SUB": [f"s{{s}}" for s in sub]}}, index=features)
tree = bh.Hierarchy.from_frame(ann, "SUB")
b = rng.normal(size=(p, m)) * 0.3
se = np.full((p, m), 0.2)
est = (pd.DataFrame(b, columns=features), pd.DataFrame(se, columns=features))
model = bh.ShrinkageModel(est, tree)
start = time.perf_counter()
idata = model.sample(draws={draws}, tune={draws}, chains={chains}, random_seed=1, progressbar=False,
                     nuts_sampler="numpyro", cores=1)
wall = time.perf_counter() - start
"""

NOISE_SAMPLES = 100
"""Samples of the stage-1 fit whose estimates carry tree-structured noise (``--noise tree``)."""

REPORT = """
import json as _json
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT", _json.dumps({"peak_rss_mb": peak, "wall_s": wall, **globals().get("extra", {})}))
"""


def run_stage(name: str, code: str, budget_mb: float) -> None:
    source = textwrap.dedent(code) + REPORT
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"{name:<32} ERROR\n{result.stderr[-2000:]}")
        return
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT"))
    data = json.loads(line.split(" ", 1)[1])
    verdict = "PASS" if data["peak_rss_mb"] <= budget_mb else "FAIL"
    print(
        f"{name:<32} peak RSS {data['peak_rss_mb']:8.0f} MB   wall {data['wall_s']:7.1f} s   "
        f"{verdict} (budget {budget_mb:.0f} MB)",
        flush=True,
    )
    for key, value in data.items():
        if key not in ("peak_rss_mb", "wall_s"):
            print(f"    {key:<28} {value:10.4g}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=20_000)
    parser.add_argument("--p", type=int, default=10)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--draws", type=int, default=200, help="Gibbs draws (and tune) per chain")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--budget-mb", type=float, default=2048)
    parser.add_argument("--skip-gibbs", action="store_true")
    parser.add_argument("--skip-stage1", action="store_true")
    parser.add_argument(
        "--storage", choices=("full", "summary", "auto"), default="full", help="Gibbs storage"
    )
    parser.add_argument(
        "--noise",
        choices=("independent", "tree"),
        default="independent",
        help="Gibbs estimates: independent, or from mlm with tree-structured residual noise "
        f"({NOISE_SAMPLES} samples)",
    )
    parser.add_argument("--nuts-m", type=int, default=0, help="also run NUTS at this m")
    parser.add_argument("--nuts-draws", type=int, default=200)
    args = parser.parse_args()
    m, p, n = args.m, args.p, args.n
    if not args.skip_stage1:
        stage1 = STAGE1.format(n=n, m=m, p=p)
        run_stage(f"stage 1 mlm n={n} m={m} p={p}", stage1, args.budget_mb)
    if not args.skip_gibbs:
        try:
            import bayeshier_pymc.gibbs.engine  # noqa: F401
        except ImportError:
            print("gibbs engine                     SKIPPED (bayeshier_pymc.gibbs.engine absent)")
        else:
            code = GIBBS.format(
                m=m,
                p=p,
                draws=args.draws,
                chains=args.chains,
                storage=args.storage,
                noise=args.noise,
                noise_samples=NOISE_SAMPLES,
            )
            name = f"gibbs m={m} p={p} {args.chains}x{args.draws} {args.storage} {args.noise}"
            run_stage(name, code, args.budget_mb)
    if args.nuts_m:
        code = NUTS.format(m=args.nuts_m, p=p, draws=args.nuts_draws, chains=args.chains)
        run_stage(
            f"nuts m={args.nuts_m} p={p} {args.chains}x{args.nuts_draws}", code, args.budget_mb
        )


if __name__ == "__main__":
    main()
    # whether the machine was shared: absolute times depend on it, ratios within a run less
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average (1, 5, 15 min) at the end: {load}")
