"""Generates welch_scipy.json, the reference values of compare/stats.rs's tests.

Run once with scipy installed (`python3 welch_scipy.py > welch_scipy.json`);
the tests read the committed JSON and never need scipy. Samples are fixed
(seeded) so the file is reproducible.
"""
import json

import numpy as np
import scipy
from scipy import stats

rng = np.random.default_rng(17)


def sample(n, mean, sd):
    return [float(round(x, 6)) for x in rng.normal(mean, sd, n)]


pairs = [
    # (base, new): latency-like, throughput-like, tiny and huge differences
    ([100.0, 102.0, 98.0], [110.0, 111.0, 109.0]),
    ([1.0, 2.0, 3.0, 4.0], [1.5, 2.5, 3.5, 4.5, 5.5]),
    (sample(3, 40_000, 1_000), sample(3, 44_000, 1_000)),
    (sample(5, 40_000, 1_000), sample(5, 40_500, 3_000)),
    (sample(10, 6_900, 50), sample(10, 6_200, 400)),
    (sample(4, 2.6e6, 1e4), sample(7, 2.61e6, 5e4)),
    (sample(30, 1.0, 0.1), sample(30, 1.02, 0.1)),
    (sample(3, 100.0, 0.001), sample(3, 200.0, 0.001)),  # p ~ 1e-12
    (sample(3, 100.0, 30.0), sample(3, 101.0, 1.0)),  # df close to 2
    (sample(50, 500.0, 20.0), sample(3, 520.0, 60.0)),  # unequal sizes
]

welch = []
for a, b in pairs:
    r = stats.ttest_ind(b, a, equal_var=False)
    welch.append({"base": a, "new": b, "t": float(r.statistic), "df": float(r.df), "p": float(r.pvalue)})

# Student's t survival function for whole and fractional degrees of freedom.
t_sf = []
for df in [1.0, 2.0, 2.5, 3.7, 10.0, 30.0, 200.0]:
    for t in [0.0, 0.1, 1.0, 2.0, 4.3, 12.0, 60.0]:
        t_sf.append({"t": t, "df": df, "sf": float(stats.t.sf(t, df))})

print(json.dumps({"scipy": scipy.__version__, "welch": welch, "t_sf": t_sf}, indent=1))
