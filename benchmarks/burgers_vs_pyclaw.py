#!/usr/bin/env python
r"""Inviscid Burgers: ``shockwatch.pde.solve_burgers`` against PyClaw (Clawpack 5.14.0).

Problem: v_t + (v^2/2)_x = 0 on the periodic unit interval, v0(x) = sin(2 pi x) + 0.5, N uniform
cells, final times T = 0.1 (smooth; the shock forms at t = 1/(2 pi) ~ 0.159) and T = 0.5 (one
shock). Every solver starts from the exact cell averages of v0 and is scored against the exact
cell averages of the entropy solution, computed here independently from Hopf-Lax:

    u(t, x) = min_y [U0(y) + (x - y)^2 / (2 t)],   U0(y) = (1 - cos 2 pi y) / (2 pi) + y / 2,

on the whole line (v0 has mean 1/2, so U0 is not periodic, but Hopf-Lax on the line is exact), and
v = u_x, so the exact average of v over [a, b] is (u(t, b) - u(t, a)) / (b - a).

Solvers (all float64):
  pyclaw-sharpclaw  SharpClawSolver1D, WENO5 (weno_order=5, lim_type=2), its default SSP104
                    time stepper and default CFL (desired 2.45, max 2.5), Fortran kernels,
                    Fortran Riemann solver ``riemann.burgers_1D`` (exact transonic entropy fix).
  pyclaw-classic    ClawSolver1D (Lax-Wendroff + limiter, order 2), van Leer limiter as in
                    PyClaw's own Burgers example, default CFL (desired 0.9, max 1.0), Fortran.
  shockwatch-weno5  solve_burgers(..., scheme="weno5")   (its default CFL)
  shockwatch-godunov solve_burgers(..., scheme="godunov") (its default CFL)
  ...-1t            the same under torch.set_num_threads(1) (PyClaw's Fortran is single-threaded)
  ...-compiled      solve_burgers(..., compile=True), timed after one warm-up (compiling) call
Equal error: for the PAIRS below, the solver less accurate at N = 1000 / 10000 is re-run at more
cells (log-log secant on L1(N)) until its L1 reaches the other's; that N's wall time is compared.
After ``all``, put the prose reading under the tables with ``markdown --reading "..."``.

Entry points (each solver family runs under its own interpreter, as a subprocess of ``all``):
  python benchmarks/burgers_vs_pyclaw.py all         # everything; writes the JSON + RESULTS.md
  python benchmarks/burgers_vs_pyclaw.py pyclaw     --cases FILE --out DIR   (claw venv)
  python benchmarks/burgers_vs_pyclaw.py shockwatch --cases FILE --out DIR   (main venv)
``all`` is run with the main venv (.venv/bin/python in the checkout); the interpreters can be overridden
with SHOCKWATCH_PYTHON / PYCLAW_PYTHON. Timings are the minimum wall time over 3 repeats of the
whole solve call (set-up included, truth and error evaluation excluded).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import git_commit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS_JSON = HERE / "results" / "burgers_vs_pyclaw.json"
RESULTS_MD = HERE / "RESULTS.md"
MD_HEADING = "## Burgers: shockwatch vs PyClaw"
SHOCKWATCH_PYTHON = os.environ.get("SHOCKWATCH_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
PYCLAW_PYTHON = os.environ.get("PYCLAW_PYTHON", str(HERE / ".peers" / "claw-venv" / "bin" / "python"))

TWO_PI = 2.0 * math.pi
BASE_N = (1000, 10000)
TIMES = (0.1, 0.5)
SHOCK_EXCLUSION = 0.05  # cells whose centre lies within this distance of the shock are left out
REPEATS = 3
PYCLAW_SOLVERS = ("pyclaw-sharpclaw", "pyclaw-classic")
SHOCKWATCH_SOLVERS = ("shockwatch-weno5", "shockwatch-godunov")
# the same calls with torch.set_num_threads(1): PyClaw is single-threaded, and on a loaded 2-core
# machine torch's intra-op threads can cost more than they give (base N only, not in the search)
SHOCKWATCH_1T = ("shockwatch-weno5-1t", "shockwatch-godunov-1t")
# solve_burgers(..., compile=True): torch.compile of each step; one untimed warm-up call per case
# (the compilation, its time recorded) before the timed repeats. Base N only.
SHOCKWATCH_COMPILED = ("shockwatch-weno5-compiled",)
BURGERS_SRC = ROOT / "src" / "shockwatch" / "pde" / "burgers.py"
# equal-error search: solver pairs (reference, challenger) compared at equal error
# (shockwatch single-threaded here: its default 2-thread timings swing ~10x with machine load, see
# the -1t rows, while PyClaw's Fortran is single-threaded anyway)
PAIRS = (("pyclaw-sharpclaw", "shockwatch-weno5-1t"), ("pyclaw-sharpclaw", "shockwatch-weno5-compiled"),
         ("pyclaw-classic", "shockwatch-godunov-1t"))
MATCH_N_MAX = 200_000        # never search beyond this many cells
MATCH_RUN_BUDGET_S = 240.0   # nor a single run predicted to take longer than this
MATCH_TOL = 0.10             # accept a point whose error is within [1 - tol, 1] x target
FLOOR_TOL = 0.15             # at the round-off floor, errors this close at equal N count as equal


# ---------------------------------------------------------------------------------------------
# exact solution (NumPy only: runs under either interpreter)
# ---------------------------------------------------------------------------------------------

def v0(y):
    return np.sin(TWO_PI * y) + 0.5


def dv0(y):
    return TWO_PI * np.cos(TWO_PI * y)


def U0(y):
    return (1.0 - np.cos(TWO_PI * y)) / TWO_PI + 0.5 * y


def initial_averages(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres and exact averages of v0 over the n cells of [0, 1).

    (cos 2 pi a - cos 2 pi b) / (2 pi h) = sin(2 pi x_c) sin(pi h) / (pi h): no cancellation.
    """
    h = 1.0 / n
    xc = (np.arange(n) + 0.5) * h
    return xc, np.sin(TWO_PI * xc) * (math.sin(math.pi * h) / (math.pi * h)) + 0.5


def _lower_hull(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the lower convex hull of the points (x_i, y_i), x increasing (monotone chain)."""
    hull: list[int] = []
    for i in range(len(x)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b if it lies on or above the chord a -> i
            if (y[b] - y[a]) * (x[i] - x[a]) >= (y[i] - y[a]) * (x[b] - x[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    return np.asarray(hull)


class HopfLax:
    """u(t, x) = min_y F(y; x), F = U0(y) + (x - y)^2 / (2t), and its minimiser y*(x), at one t > 0.

    Coarse search: the exact minimum over a fine y grid (spacing <= 1e-4) covering
    [x - 4t, x + 4t] for every x in [xmin, xmax]. Since F(y; x) = G(y) - x y / t + x^2 / (2t) with
    G = U0 + y^2 / (2t), the grid minimiser for every x at once is the vertex of the lower convex
    hull of G whose neighbouring chord slopes bracket x / t. Refinement: safeguarded Newton on
    F'(y) = v0(y) + (y - x) / t inside a bracket of +-2 grid steps around that vertex, and around
    the vertex across an adjacent long hull chord (a "bridge": the other basin near a shock);
    the smaller refined F wins. |F'| at the result is checked to be ~ 1e-14.
    """

    def __init__(self, t: float, xmin: float = 0.0, xmax: float = 1.0, dy: float = 1e-4):
        self.t = t
        lo, hi = xmin - 4 * t, xmax + 4 * t
        m = int(math.ceil((hi - lo) / dy)) + 1
        self.y = np.linspace(lo, hi, m)
        self.dy = self.y[1] - self.y[0]
        g = U0(self.y) + self.y**2 / (2 * t)
        self.hull = _lower_hull(self.y, g)
        hy, hg = self.y[self.hull], g[self.hull]
        self.slopes = np.diff(hg) / np.diff(hy)  # increasing
        gaps = np.diff(hy)
        self.bridges = np.nonzero(gaps > 20 * self.dy)[0]  # chord k joins hull[k] and hull[k+1]

    def F(self, y, x):
        return U0(y) + (x - y) ** 2 / (2 * self.t)

    def dF(self, y, x):
        return v0(y) + (y - x) / self.t

    def _newton(self, yc: np.ndarray, x: np.ndarray, width: int = 2):
        """Root of F' in [yc - width dy, yc + width dy]; NaN where F' has no sign change there."""
        lo, hi = yc - width * self.dy, yc + width * self.dy
        flo, fhi = self.dF(lo, x), self.dF(hi, x)
        ok = (flo <= 0) & (fhi >= 0)
        y = yc.copy()
        for _ in range(100):
            f = self.dF(y, x)
            lo = np.where(f < 0, y, lo)
            hi = np.where(f < 0, hi, y)
            d2 = dv0(y) + 1.0 / self.t
            with np.errstate(divide="ignore", invalid="ignore"):
                yn = y - f / d2
            bad = ~((yn > lo) & (yn < hi)) | ~(d2 > 0)
            yn = np.where(bad, 0.5 * (lo + hi), yn)
            done = np.abs(yn - y) <= 1e-15 * np.maximum(1.0, np.abs(y))
            y = yn
            if np.all(done | ~ok):
                break
        return np.where(ok, y, np.nan)

    def minimiser(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        k = np.searchsorted(self.slopes, x / self.t)  # hull vertex index (grid minimiser)
        k = np.clip(k, 0, len(self.hull) - 1)
        cands = [k, np.clip(k - 1, 0, len(self.hull) - 1), np.clip(k + 1, 0, len(self.hull) - 1)]
        best_y = np.full(x.shape, np.nan)
        best_f = np.full(x.shape, np.inf)
        for j, kk in enumerate(cands):
            yc = self.y[self.hull[kk]]
            yr = self._newton(yc, x, width=2)
            if j == 0:  # the primary candidate must converge; widen once if needed
                miss = np.isnan(yr)
                if miss.any():
                    yr[miss] = self._newton(yc[miss], x[miss], width=16)
                if np.isnan(yr).any():
                    raise RuntimeError("HopfLax: Newton bracket failed for the grid minimiser")
            fr = np.where(np.isnan(yr), np.inf, self.F(np.nan_to_num(yr), x))
            take = fr < best_f
            best_y = np.where(take, yr, best_y)
            best_f = np.where(take, fr, best_f)
        res = np.abs(self.dF(best_y, x))
        if res.max() > 1e-11:
            raise RuntimeError(f"HopfLax: |F'| = {res.max():.2e} at the minimiser")
        return best_y

    def u(self, x: np.ndarray) -> np.ndarray:
        return self.F(self.minimiser(x), x)

    def shocks(self, period: float = 1.0) -> list[float]:
        """Shock positions in [0, period): where the minimiser jumps (equal F in two basins)."""
        out = []
        for k in self.bridges:
            ya, yb = self.y[self.hull[k]], self.y[self.hull[k + 1]]
            x = self.t * self.slopes[k]
            for _ in range(60):  # Newton on g(x) = F(y_a(x); x) - F(y_b(x); x), g' = (y_b - y_a)/t
                xa = np.array([x])
                ya = self._newton(np.array([ya]).ravel(), xa, width=16)[0]
                yb = self._newton(np.array([yb]).ravel(), xa, width=16)[0]
                g = self.F(ya, x) - self.F(yb, x)
                step = g / ((yb - ya) / self.t)
                x -= step
                if abs(step) < 1e-15:
                    break
            out.append(x % period)
        out = sorted(set(round(s, 12) for s in out))
        return out


_GL_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def exact_averages(n: int, t: float, quad_points: int = 8) -> dict:
    """Exact cell averages of the entropy solution at time t on n cells, plus the shock position.

    Cells without a shock: Gauss-Legendre quadrature (``quad_points`` nodes) of v = v0(y*(x)),
    which is smooth inside the cell; this avoids the ~1e-16/h cancellation of the Hopf-Lax
    difference (u(b) - u(a))/h on fine grids. The cell holding the shock: (u(b) - u(a))/h.
    """
    h = 1.0 / n
    edges = np.arange(n + 1) * h
    xc = edges[:-1] + 0.5 * h
    hl = HopfLax(t)
    shocks = hl.shocks()
    if quad_points not in _GL_CACHE:
        _GL_CACHE[quad_points] = np.polynomial.legendre.leggauss(quad_points)
    nodes, weights = _GL_CACHE[quad_points]
    xq = xc[:, None] + 0.5 * h * nodes[None, :]
    vq = v0(hl.minimiser(xq.ravel())).reshape(xq.shape)
    avg = (vq * weights[None, :]).sum(axis=1) * 0.5
    u_edges = hl.u(edges)
    hl_diff = np.diff(u_edges) / h
    shock_cells = [int(min(max(math.floor(s / h), 0), n - 1)) for s in shocks]
    for c in shock_cells:
        avg[c] = hl_diff[c]
    smooth = np.ones(n, bool)
    smooth[shock_cells] = False
    return {
        "avg": avg,
        "shocks": shocks,
        "xc": xc,
        # consistency of the two exact forms where both apply (cancellation-limited on fine grids)
        "hopf_lax_difference_maxdiff": float(np.abs(avg - hl_diff)[smooth].max()),
        "mean_minus_half": float(avg.mean() - 0.5),
    }


_TRUTH: dict[tuple[int, float], dict] = {}


def truth(n: int, t: float) -> dict:
    key = (n, t)
    if key not in _TRUTH:
        _TRUTH[key] = exact_averages(n, t)
    return _TRUTH[key]


def error_metrics(v: np.ndarray, n: int, t: float) -> dict:
    tr = truth(n, t)
    h = 1.0 / n
    err = np.abs(np.asarray(v, dtype=np.float64) - tr["avg"])
    out = {"l1_all": float(h * err.sum()), "linf_all": float(err.max())}
    if tr["shocks"]:
        d = np.full(n, np.inf)
        for s in tr["shocks"]:
            dd = np.abs(tr["xc"] - s)
            d = np.minimum(d, np.minimum(dd, 1.0 - dd))
        keep = d >= SHOCK_EXCLUSION
        out["l1_away"] = float(h * err[keep].sum())
        out["linf_away"] = float(err[keep].max())
        out["cells_excluded"] = int((~keep).sum())
        out["l1"] = out["l1_away"]
        out["l1_kind"] = f"away from shock (|x - x_s| >= {SHOCK_EXCLUSION})"
    else:
        out["l1"] = out["l1_all"]
        out["l1_kind"] = "all cells"
    return out


# ---------------------------------------------------------------------------------------------
# solver runners (each under its own interpreter)
# ---------------------------------------------------------------------------------------------

def _run_pyclaw_once(solver_name: str, n: int, t_final: float):
    from clawpack import pyclaw, riemann

    xc, q0 = initial_averages(n)
    t0 = time.perf_counter()
    if solver_name == "pyclaw-sharpclaw":
        solver = pyclaw.SharpClawSolver1D(riemann.burgers_1D)
        solver.weno_order = 5
    elif solver_name == "pyclaw-classic":
        solver = pyclaw.ClawSolver1D(riemann.burgers_1D)
        solver.limiters = pyclaw.limiters.tvd.vanleer
    else:
        raise ValueError(solver_name)
    solver.kernel_language = "Fortran"
    solver.bc_lower[0] = pyclaw.BC.periodic
    solver.bc_upper[0] = pyclaw.BC.periodic
    solver.max_steps = 10**8
    x = pyclaw.Dimension(0.0, 1.0, n, name="x")
    domain = pyclaw.Domain(x)
    state = pyclaw.State(domain, 1)
    state.q[0, :] = q0
    state.problem_data["efix"] = True
    claw = pyclaw.Controller()
    claw.tfinal = t_final
    claw.num_output_times = 1
    claw.solution = pyclaw.Solution(state, domain)
    claw.solver = solver
    claw.output_format = None
    claw.keep_copy = False
    claw.verbosity = 0
    status = claw.run()
    wall = time.perf_counter() - t0
    q = np.array(claw.solution.state.q[0, :], dtype=np.float64)
    centres = np.asarray(claw.solution.state.grid.x.centers)
    info = {
        "t_reached": float(claw.solution.t),
        "steps": int(status["numsteps"]),
        "cfl_max_seen": float(status["cflmax"]),
        "cfl_desired": float(solver.cfl_desired),
        "cfl_max": float(solver.cfl_max),
        "grid_matches": bool(np.allclose(centres, xc, rtol=0, atol=1e-14)),
    }
    if solver_name == "pyclaw-sharpclaw":
        info.update(time_integrator=solver.time_integrator, weno_order=int(solver.weno_order),
                    lim_type=int(solver.lim_type), char_decomp=int(solver.char_decomp))
    else:
        info.update(order=int(solver.order), limiter="vanleer")
    return q, wall, info


def _run_shockwatch_once(solver_name: str, n: int, t_final: float, count_steps: bool = False):
    from shockwatch.pde import WENO5, Godunov, solve_burgers

    xc, q0 = initial_averages(n)
    base_name = solver_name.removesuffix("-1t").removesuffix("-compiled")
    scheme = {"shockwatch-weno5": "weno5", "shockwatch-godunov": "godunov"}[base_name]
    compiled = solver_name.endswith("-compiled")
    if count_steps:  # a subclass (same defaults) whose advance() counts the steps
        base = WENO5 if scheme == "weno5" else Godunov
        counter = {"steps": 0}

        class Counting(base):
            def advance(self, v, dt, rhs):
                counter["steps"] += 1
                return super().advance(v, dt, rhs)

        t0 = time.perf_counter()
        v = solve_burgers(q0, xc, t_final=t_final, nu=0.0, scheme=Counting(), boundary="periodic")
        wall = time.perf_counter() - t0
        default = base()
        cfl = getattr(default, "courant", default.cfl)
        extra = {"steps": counter["steps"], "cfl": cfl}
        if hasattr(default, "stepper"):
            extra["stepper"] = str(getattr(default.stepper, "value", default.stepper))
        return np.asarray(v, dtype=np.float64), wall, extra
    kwargs = {"compile": True} if compiled else {}
    t0 = time.perf_counter()
    v = solve_burgers(q0, xc, t_final=t_final, nu=0.0, scheme=scheme, boundary="periodic", **kwargs)
    wall = time.perf_counter() - t0
    return np.asarray(v, dtype=np.float64), wall, {}


def run_family(family: str, cases: list[dict], out_dir: Path) -> None:
    """Run each case REPEATS times, save the final state and a JSON record per case."""
    if family == "pyclaw":
        run_once = _run_pyclaw_once
    else:
        import torch
        run_once = _run_shockwatch_once
        torch_threads = torch.get_num_threads()
        sha_start = _sha(BURGERS_SRC)
    records = []
    for i, case in enumerate(cases):
        if family == "shockwatch":
            torch.set_num_threads(1 if case["solver"].endswith("-1t") else torch_threads)
        walls, q, info, warmup = [], None, {}, None
        repeats = case.get("repeats", REPEATS)
        if case["solver"].endswith("-compiled"):
            _, warmup, _ = run_once(case["solver"], case["n"], case["t"])
        if family == "shockwatch" and repeats == 1 and not case["solver"].endswith("-compiled"):
            # equal-error search point: one timed run that also counts steps (a Python wrapper
            # around advance(): well under 1% of a step's cost)
            q, wall, info = run_once(case["solver"], case["n"], case["t"], count_steps=True)
            walls.append(wall)
        else:
            for _ in range(repeats):
                q, wall, info = run_once(case["solver"], case["n"], case["t"])
                walls.append(wall)
            if family == "shockwatch":  # steps from one extra, untimed run with a counting wrapper
                _, _, info = run_once(case["solver"], case["n"], case["t"], count_steps=True)
        if family == "shockwatch":
            info = {**info, "t_reached": case["t"], "torch_threads": torch.get_num_threads(),
                    "burgers_py_sha256": _sha(BURGERS_SRC)}
            if warmup is not None:
                info["first_call_incl_compile_s"] = warmup
        path = out_dir / f"state_{family}_{i}.npy"
        np.save(path, q)
        records.append({**case, "wall_s_min": min(walls), "wall_s_all": walls, "state": str(path), **info})
        print(f"  {case['solver']:20s} N={case['n']:7d} T={case['t']}: {min(walls):8.3f} s "
              f"(min of {len(walls)})", file=sys.stderr, flush=True)
    if family == "shockwatch" and len({r["burgers_py_sha256"] for r in records} | {sha_start}) > 1:
        raise SystemExit("burgers.py changed while the shockwatch cases ran: rerun the benchmark")
    (out_dir / f"records_{family}.json").write_text(json.dumps(records))


def versions_family(family: str) -> dict:
    import numpy
    out = {"python": platform.python_version(), "numpy": numpy.__version__}
    if family == "pyclaw":
        import clawpack
        out["clawpack"] = getattr(clawpack, "__version__", "?")
    else:
        import torch
        out["torch"] = torch.__version__
        out["torch_threads"] = torch.get_num_threads()
        try:
            from importlib.metadata import version
            out["shockwatch"] = version("shockwatch")
        except Exception:  # noqa: BLE001 - src checkout not installed
            out["shockwatch"] = "src checkout"
        out["shockwatch_git"] = git_commit()
        out["burgers_py_sha256"] = _sha(BURGERS_SRC)
        out["burgers_py_uncommitted_changes"] = _git_dirty(BURGERS_SRC)
    return out


def _sha(path: Path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _git_dirty(path: Path) -> bool:
    try:
        r = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", str(path)],
                           capture_output=True, text=True)
        return bool(r.stdout.strip())
    except OSError:
        return False




# ---------------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------------

class Orchestrator:
    def __init__(self, work: Path):
        self.work = work
        self.records: dict[tuple[str, int, float], dict] = {}
        self.calls = 0

    def _spawn(self, family: str, cases: list[dict]) -> list[dict]:
        self.calls += 1
        out_dir = self.work / f"call{self.calls}"
        out_dir.mkdir()
        cases_file = out_dir / "cases.json"
        cases_file.write_text(json.dumps(cases))
        if family == "pyclaw":
            exe, env, cwd = PYCLAW_PYTHON, dict(os.environ), out_dir  # cwd: pyclaw.log lands there
        else:
            exe = SHOCKWATCH_PYTHON
            env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
            cwd = ROOT
        cmd = [exe, str(Path(__file__).resolve()), family, "--cases", str(cases_file), "--out", str(out_dir)]
        subprocess.run(cmd, check=True, env=env, cwd=cwd)
        return json.loads((out_dir / f"records_{family}.json").read_text())

    def run(self, solver: str, ns: list[int], t: float, repeats: int = REPEATS) -> list[dict]:
        todo = [n for n in ns if (solver, n, t) not in self.records
                or self.records[(solver, n, t)]["repeats"] < repeats]
        if todo:
            family = "pyclaw" if solver.startswith("pyclaw") else "shockwatch"
            recs = self._spawn(family, [{"solver": solver, "n": n, "t": t, "repeats": repeats} for n in todo])
            for r in recs:
                q = np.load(r.pop("state"))
                r.update(error_metrics(q, r["n"], r["t"]))
                if abs(r["t_reached"] - t) > 1e-12:
                    raise RuntimeError(f"{solver} N={r['n']} stopped at t={r['t_reached']!r}, not {t}")
                self.records[(solver, r["n"], t)] = r
        return [self.records[(solver, n, t)] for n in ns]

    def points(self, solver: str, t: float) -> list[dict]:
        return sorted((r for (s, _, tt), r in self.records.items() if s == solver and tt == t),
                      key=lambda r: r["n"])

    def match(self, ref: str, chal: str, n_ref: int, t: float) -> dict:
        """Smallest N (to ~MATCH_TOL in error) at which ``chal`` reaches ``ref``'s error at n_ref."""
        target = self.records[(ref, n_ref, t)]["l1"]
        log = []
        for _ in range(8):
            pts = self.points(chal, t)
            ok = [p for p in pts if p["l1"] <= target]
            if ok and ok[0]["l1"] >= (1 - MATCH_TOL) * target:
                best = self._confirm(chal, ok[0], t)
                return self._match_result(ref, chal, n_ref, t, target, best, "matched", log)
            n_next = self._predict(pts, target)
            if n_next is None:
                break
            if n_next > MATCH_N_MAX:
                break
            big = pts[-1]
            slope_t = self._time_slope(pts)
            predicted = big["wall_s_min"] * (n_next / big["n"]) ** slope_t
            if predicted > MATCH_RUN_BUDGET_S:
                log.append(f"N={n_next} predicted {predicted:.0f} s > budget")
                break
            if any(p["n"] == n_next for p in pts):
                break
            r = self.run(chal, [n_next], t, repeats=1)[0]
            log.append(f"N={n_next}: L1={r['l1']:.3e}")
        pts = self.points(chal, t)
        ok = [p for p in pts if p["l1"] <= target]
        same_n = self.records.get((chal, n_ref, t))
        if not ok and same_n and same_n["l1"] <= (1 + FLOOR_TOL) * target and self._predict(pts, target) is None:
            # both at the round-off floor: more cells no longer lower the challenger's error, which
            # is already within FLOOR_TOL of the target at the same N: call that equal error.
            return self._match_result(ref, chal, n_ref, t, target, same_n, "round-off floor: equal N", log)
        if ok:  # reached, but the bracketing did not tighten to MATCH_TOL: report the smallest N
            best = self._confirm(chal, ok[0], t)
            return self._match_result(ref, chal, n_ref, t, target, best, "reached (loose)", log)
        n_est = self._predict(pts, target)
        return {"reference": ref, "challenger": chal, "n_ref": n_ref, "t": t, "target_l1": target,
                "status": "not reached", "n_challenger_extrapolated": n_est, "log": log,
                "best_challenger_l1": min(p["l1"] for p in pts), "n_tried_max": pts[-1]["n"]}

    def _confirm(self, solver, rec, t):
        """Re-time a reported point with REPEATS repeats unless one run already takes > 60 s."""
        if rec["repeats"] >= REPEATS or rec["wall_s_min"] > 60.0:
            return rec
        return self.run(solver, [rec["n"]], t)[0]

    def _match_result(self, ref, chal, n_ref, t, target, best, status, log):
        ref_rec = self.records[(ref, n_ref, t)]
        sw, pc = (ref_rec, best) if ref.startswith("shockwatch") else (best, ref_rec)
        return {"reference": ref, "challenger": chal, "n_ref": n_ref, "t": t, "target_l1": target,
                "status": status, "n_challenger": best["n"], "challenger_l1": best["l1"],
                "challenger_repeats": best["repeats"],
                "ref_wall_s": ref_rec["wall_s_min"], "challenger_wall_s": best["wall_s_min"],
                "time_ratio_challenger_over_ref": best["wall_s_min"] / ref_rec["wall_s_min"],
                "time_ratio_shockwatch_over_pyclaw": sw["wall_s_min"] / pc["wall_s_min"], "log": log}

    @staticmethod
    def _time_slope(pts):
        if len(pts) >= 2:
            a, b = pts[-2], pts[-1]
            return max(1.0, math.log(b["wall_s_min"] / a["wall_s_min"]) / math.log(b["n"] / a["n"]))
        return 2.0

    @staticmethod
    def _predict(pts, target):
        """N where log L1 vs log N crosses log target (interpolate in a bracket, else extrapolate)."""
        pts = [p for p in pts if p["l1"] > 0]
        if len(pts) < 2:
            return None
        below = [p for p in pts if p["l1"] <= target]
        above = [p for p in pts if p["l1"] > target]
        if below and above:
            a = max((p for p in above if p["n"] < below[0]["n"]), key=lambda p: p["n"], default=above[-1])
            b = below[0]
        else:
            a, b = pts[-2], pts[-1]
        slope = math.log(b["l1"] / a["l1"]) / math.log(b["n"] / a["n"])  # negative when converging
        if not slope < -0.3:
            return None  # stalled (round-off floor) or diverging: no prediction
        n = b["n"] * (target / b["l1"]) ** (1.0 / slope)
        if below and above:
            n *= 1.02  # aim just inside the accepted side
            n = min(max(n, a["n"] + 1), b["n"] - 1) if b["n"] - a["n"] > 2 else b["n"]
        else:
            n *= 1.03
        return int(math.ceil(n / 10.0) * 10)


def _machine() -> dict:
    model = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu_model": model, "cpus": os.cpu_count(), "platform": platform.platform()}


def _versions(family: str) -> dict:
    exe = PYCLAW_PYTHON if family == "pyclaw" else SHOCKWATCH_PYTHON
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src")) if family == "shockwatch" else dict(os.environ)
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([exe, str(Path(__file__).resolve()), "versions", family], capture_output=True,
                           text=True, check=True, env=env, cwd=d)
    return json.loads(r.stdout)


def main_all(args) -> None:
    t_start = time.perf_counter()
    machine = _machine()
    load_start = os.getloadavg()
    versions = {"pyclaw_env": _versions("pyclaw"), "shockwatch_env": _versions("shockwatch")}
    truth_checks = {}
    with tempfile.TemporaryDirectory(prefix="burgers_bench_") as work:
        orc = Orchestrator(Path(work))
        ns = list(args.n)
        for t in TIMES:
            for n in ns:
                tr = truth(n, t)
                tr16 = exact_averages(n, t, quad_points=16)["avg"]
                truth_checks[f"N={n},T={t}"] = {
                    "shocks": tr["shocks"],
                    "max_abs_diff_gauss8_vs_gauss16": float(np.abs(tr["avg"] - tr16).max()),
                    "max_abs_diff_quadrature_vs_hopf_lax_difference": tr["hopf_lax_difference_maxdiff"],
                    "mean_minus_half": tr["mean_minus_half"],
                }
            for solver in PYCLAW_SOLVERS + SHOCKWATCH_SOLVERS + SHOCKWATCH_1T + SHOCKWATCH_COMPILED:
                orc.run(solver, ns, t)
        matches = []
        if not args.no_match:
            for t in TIMES:
                for ref, chal in PAIRS:
                    for n in ns:
                        a, b = orc.records[(ref, n, t)], orc.records[(chal, n, t)]
                        if b["l1"] > a["l1"]:
                            matches.append(orc.match(ref, chal, n, t))
                        else:  # the challenger is already as accurate: find the reference's N instead
                            matches.append(orc.match(chal, ref, n, t))
                        m = matches[-1]
                        print(f"match {m['reference']} N={n} T={t} vs {m['challenger']}: {m['status']} "
                              f"{m.get('n_challenger', m.get('n_challenger_extrapolated'))}", file=sys.stderr)
    runs = sorted(orc.records.values(), key=lambda r: (r["t"], r["solver"], r["n"]))
    shas = {r["burgers_py_sha256"] for r in runs if "burgers_py_sha256" in r}
    shas.add(_sha(BURGERS_SRC))
    if len(shas) > 1:
        raise SystemExit(f"burgers.py changed during the benchmark ({sorted(shas)}): rerun it")
    if shas != {versions["shockwatch_env"]["burgers_py_sha256"]}:
        raise SystemExit("burgers.py changed during the benchmark: rerun it")
    result = {
        "benchmark": "inviscid Burgers, v0 = sin(2 pi x) + 0.5, periodic [0,1)",
        "command": ".venv/bin/python benchmarks/burgers_vs_pyclaw.py all",
        "machine": machine,
        "versions": versions,
        "timing": f"min wall time of {REPEATS} repeats of the whole solve call (setup included); "
                  "equal-error search points with repeats=1 are marked so",
        "error": "L1 = h * sum |v - exact cell average|; T=0.1: all cells; T=0.5: cells with "
                 f"|x_c - x_shock| >= {SHOCK_EXCLUSION} (periodic distance)",
        "truth_checks": truth_checks,
        "runs": runs,
        "equal_error": matches,
        "elapsed_s": time.perf_counter() - t_start,
        "loadavg_1_5_15_start": load_start,
        "loadavg_1_5_15_end": os.getloadavg(),
    }
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(f"wrote {RESULTS_JSON}", file=sys.stderr)
    write_markdown(result)


def _fmt_t(s: float) -> str:
    return f"{s:.3f}" if s < 10 else f"{s:.1f}"


def markdown_section(result: dict) -> str:
    m = result["machine"]
    v = result["versions"]
    lines = [MD_HEADING, ""]
    lines.append(f"Command: `{result['command']}` (writes `benchmarks/results/burgers_vs_pyclaw.json`; "
                 "PyClaw runs in `benchmarks/.peers/claw-venv`, shockwatch in `.venv`).")
    lines.append("")
    la0, la1 = result.get("loadavg_1_5_15_start", [float("nan")] * 3), result.get("loadavg_1_5_15_end", [float("nan")] * 3)
    lines.append(f"Machine: {m['cpu_model']}, {m['cpus']} cores, shared with another engineer's test runs "
                 f"(load average {la0[0]:.1f} at start, {la1[0]:.1f} at end, 15-min {la1[2]:.1f}; run took "
                 f"{result['elapsed_s'] / 60:.0f} min, so single timings can be ~1.5x off even as min of 3), "
                 f"{m['platform']}. Versions: Clawpack {v['pyclaw_env'].get('clawpack')} "
                 f"(numpy {v['pyclaw_env']['numpy']}, Python {v['pyclaw_env']['python']}, gfortran build); "
                 f"shockwatch {v['shockwatch_env'].get('shockwatch')} @ git {v['shockwatch_env'].get('shockwatch_git')} "
                 f"(burgers.py sha256 {v['shockwatch_env'].get('burgers_py_sha256')}"
                 f"{', with uncommitted changes' if v['shockwatch_env'].get('burgers_py_uncommitted_changes') else ''}) "
                 f"with torch {v['shockwatch_env']['torch']} ({v['shockwatch_env']['torch_threads']} threads), "
                 f"numpy {v['shockwatch_env']['numpy']}.")
    lines.append("")
    lines.append("Problem: v_t + (v²/2)_x = 0, periodic [0,1), v0 = sin 2πx + 0.5, exact initial cell averages, "
                 "float64. Error: L1 = h·Σ|v − exact cell average| against the Hopf-Lax entropy solution; "
                 "T = 0.1 (smooth) over all cells, T = 0.5 (shock at x_s ≈ "
                 + ", ".join(f"{s:.6f}" for s in _shocks_of(result, 0.5))
                 + f") over cells with |x_c − x_s| ≥ {SHOCK_EXCLUSION}. Time: min of {REPEATS} repeats "
                 "of the whole solve call. PyClaw: SharpClaw = WENO5 + SSP104, default CFL 2.45; "
                 "Classic = Lax-Wendroff + van Leer limiter, default CFL 0.9; both Fortran kernels and Riemann "
                 "solver `burgers_1D`. shockwatch: `solve_burgers(v0, x, t_final=T, nu=0.0, scheme=..., "
                 "boundary=\"periodic\")` with its defaults: " + _sw_description(result) + ". "
                 "`-1t`: the same call under `torch.set_num_threads(1)` (PyClaw's Fortran is single-threaded); "
                 "`-compiled`: `compile=True`, timed after one warm-up call that compiles ("
                 + _compile_note(result) + ").")
    lines.append("")
    lines.append("| T | solver | N | steps | wall s (min of 3) | L1 error | L1 all cells |")
    lines.append("|---|---|---:|---:|---:|---:|---:|")
    for r in result["runs"]:
        if r["n"] not in BASE_N:
            continue
        lines.append(f"| {r['t']} | {r['solver']} | {r['n']} | {r['steps']} | {_fmt_t(r['wall_s_min'])} | "
                     f"{r['l1']:.3e} | {r['l1_all']:.3e} |")
    extra = [r for r in result["runs"] if r["n"] not in BASE_N]
    if extra:
        lines.append("")
        lines.append("Equal-error search points (repeats = 1 unless it became a reported match):")
        lines.append("")
        lines.append("| T | solver | N | steps | wall s | repeats | L1 error |")
        lines.append("|---|---|---:|---:|---:|---:|---:|")
        for r in extra:
            lines.append(f"| {r['t']} | {r['solver']} | {r['n']} | {r['steps']} | {_fmt_t(r['wall_s_min'])} | "
                         f"{r['repeats']} | {r['l1']:.3e} |")
    if result["equal_error"]:
        lines.append("")
        lines.append("Wall time at equal error: the solver that is less accurate at the reference N gets more "
                     f"cells until its L1 ≤ the other's (within {int(MATCH_TOL * 100)}%); at N = 10⁴ both WENO5 codes "
                     "sit on the float64 round-off floor, where more cells stop helping, so errors within "
                     f"{int(FLOOR_TOL * 100)}% at equal N count as equal. Ratio > 1: shockwatch slower.")
        lines.append("")
        lines.append("| T | more accurate at equal N (N, L1, s) | other solver | N needed | its L1 | its s | status | shockwatch s / PyClaw s |")
        lines.append("|---|---|---|---:|---:|---:|---|---:|")
        for q in result["equal_error"]:
            ref = f"{q['reference']} ({q['n_ref']}, {q['target_l1']:.2e}, {_fmt_t(result_wall(result, q['reference'], q['n_ref'], q['t']))})"
            if "n_challenger" in q:
                lines.append(f"| {q['t']} | {ref} | {q['challenger']} | {q['n_challenger']} | "
                             f"{q['challenger_l1']:.2e} | {_fmt_t(q['challenger_wall_s'])} | {q['status']} | "
                             f"{q['time_ratio_shockwatch_over_pyclaw']:.2f} |")
            else:
                ext = q.get("n_challenger_extrapolated")
                lines.append(f"| {q['t']} | {ref} | {q['challenger']} | > {q['n_tried_max']}"
                             f"{f' (~{ext:.2g} extrapolated)' if ext else ''} | best {q['best_challenger_l1']:.2e} | – | "
                             f"not reached | – |")
    lines.append("")
    lines.append("Reading: " + result.get("reading", "(see the JSON)"))
    lines.append("")
    return "\n".join(lines)


def _sw_description(result) -> str:
    seen = {}
    for r in result["runs"]:
        if r["solver"].startswith("shockwatch") and "-" not in r["solver"].removeprefix("shockwatch-"):
            seen.setdefault(r["solver"], (r.get("stepper"), r.get("cfl")))
    parts = []
    for name, (stepper, cfl) in sorted(seen.items()):
        parts.append(f"{name.removeprefix('shockwatch-')} = " + (f"WENO5-JS + {stepper}" if stepper else "Godunov + forward Euler")
                     + f" at CFL {cfl}")
    return ", ".join(parts)


def _compile_note(result) -> str:
    firsts = [f"N={r['n']}, T={r['t']}: {r['first_call_incl_compile_s']:.1f} s" for r in result["runs"]
              if "first_call_incl_compile_s" in r]
    return "first call " + "; ".join(firsts) if firsts else "not run"


def result_wall(result, solver, n, t):
    for r in result["runs"]:
        if r["solver"] == solver and r["n"] == n and r["t"] == t:
            return r["wall_s_min"]
    return float("nan")


def _shocks_of(result, t):
    for k, c in result["truth_checks"].items():
        if k.endswith(f"T={t}"):
            return c["shocks"]
    return []


def write_markdown(result: dict) -> None:
    section = markdown_section(result)
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Benchmark results\n"
    if MD_HEADING in text:
        start = text.index(MD_HEADING)
        nxt = text.find("\n## ", start + len(MD_HEADING))
        text = text[:start] + section + (text[nxt + 1:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS_MD.write_text(text.rstrip("\n") + "\n")
    print(f"wrote section '{MD_HEADING}' in {RESULTS_MD}", file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("all", help="run everything and write the JSON and the RESULTS.md section")
    a.add_argument("--n", type=int, nargs="+", default=list(BASE_N))
    a.add_argument("--no-match", action="store_true", help="skip the equal-error search")
    for fam in ("pyclaw", "shockwatch"):
        f = sub.add_parser(fam, help=f"run {fam} cases (under the {fam} interpreter)")
        f.add_argument("--cases", required=True)
        f.add_argument("--out", required=True)
    vv = sub.add_parser("versions")
    vv.add_argument("family", choices=("pyclaw", "shockwatch"))
    md = sub.add_parser("markdown", help="rewrite the RESULTS.md section from the JSON")
    md.add_argument("--reading", default=None, help="the prose reading to put under the tables")
    args = p.parse_args()
    if args.cmd == "all":
        main_all(args)
    elif args.cmd in ("pyclaw", "shockwatch"):
        run_family(args.cmd, json.loads(Path(args.cases).read_text()), Path(args.out))
    elif args.cmd == "versions":
        print(json.dumps(versions_family(args.family)))
    elif args.cmd == "markdown":
        result = json.loads(RESULTS_JSON.read_text())
        if args.reading:
            result["reading"] = args.reading
            RESULTS_JSON.write_text(json.dumps(result, indent=1, default=float) + "\n")
        write_markdown(result)


if __name__ == "__main__":
    main()
