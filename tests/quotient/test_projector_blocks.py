"""``horizontal_projector`` inverts the generators' Gram matrix block by block (generators that share no
parameter entry): checked against the dense projector P = I - J^T (J J^T)^+ J with NumPy's
pseudo-inverse of the whole Gram matrix (float64), on a convolutional net whose generators fall in
several blocks, and with dependent generators, where a block is singular."""

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.csgraph import connected_components
from torch import nn

import shockwatch as sw
from shockwatch.quotient import horizontal_projector
from shockwatch.quotient.projection import generator_matrix
from shockwatch.symmetry import Kind, Symmetry


def _conv_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    x, y = torch.randn(16, 2, 6, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    for _ in range(5):  # off the initialisation, where a symmetric start can hide a coupling
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
    return model.eval(), x


def _dense(syms, params):
    generators = generator_matrix(syms, params).toarray()  # D x K
    return np.eye(generators.shape[0]) - generators @ np.linalg.pinv(generators.T @ generators) @ generators.T, generators


def test_the_projector_of_a_net_with_several_blocks_is_the_dense_one():
    model, x = _conv_net()
    syms = sw.find_symmetries(model, x)
    params = {k: p.detach() for k, p in model.named_parameters()}
    dense, generators = _dense(syms, params)
    gram = generators.T @ generators
    blocks, _ = connected_components(np.abs(gram) > 0, directed=False)
    assert blocks > 3, blocks  # several blocks, one of them more than a generator
    assert blocks < generators.shape[1]
    projector = horizontal_projector(syms, params)
    rng = np.random.default_rng(0)
    for _ in range(3):
        v = rng.standard_normal(len(dense))
        out = projector(v)
        assert np.linalg.norm(out - dense @ v) <= 1e-12 * np.linalg.norm(v)
        assert np.abs(generators.T @ out).max() <= 1e-12 * np.abs(generators.T @ v).max()


def test_dependent_generators_leave_a_singular_block_whose_null_direction_is_dropped():
    """A scale of the first layer's whole weight and bias added beside its per-unit scales (their
    sum): G's block there is singular, its null eigenvalue round-off; the projection is still the
    dense one, and the same as without the dependent generator."""
    model, x = _conv_net()
    syms = sw.find_symmetries(model, x)
    units = [s for s in syms.of_kind(Kind.SCALE) if s.incoming[0].param == "0.weight"]
    assert len(units) == 4
    whole = Symmetry(kind=Kind.SCALE, label="scale/0/whole",
                     incoming=tuple(dataclasses.replace(slot, start=0, stop=4) for slot in units[0].incoming),
                     outgoing=())
    doubled = dataclasses.replace(syms, symmetries=syms.symmetries + (whole,))
    params = {k: p.detach() for k, p in model.named_parameters()}
    dense, generators = _dense(doubled, params)
    assert np.linalg.matrix_rank(generators) == generators.shape[1] - 1
    projector = horizontal_projector(doubled, params)
    v = np.random.default_rng(1).standard_normal(len(dense))
    assert np.linalg.norm(projector(v) - dense @ v) <= 1e-12 * np.linalg.norm(v)
    single = horizontal_projector(syms, params)
    assert np.linalg.norm(projector(v) - single(v)) <= 1e-12 * np.linalg.norm(v)  # the same orbit directions


def test_each_gl_group_block_of_the_gram_matrix_is_a_kronecker_sum_and_the_preconditioner_inverts_it():
    """Truth: J J^T from the sparse generator matrix (each column checked against the dense generators in
    test_generator_matrix.py). On a GPT's heads every GL(d) group's d^2 x d^2 block is
    M_out (x) I + I (x) M_in (M = A A^T of its outgoing / incoming slots), and the CG preconditioner solves
    it exactly: M^-1 (B c) = c for c supported on that group's rows."""
    from shockwatch.quotient import OrbitOperator
    from shockwatch.symmetry import unit_matrix

    torch.manual_seed(0)
    model = sw.models.GPT(sw.models.GPTConfig(n_layer=1, n_head=2, d_model=8, vocab_size=11, block_size=6)).double()
    syms = sw.find_symmetries(model, torch.randint(0, 11, (2, 6)))
    params = {n: p.detach() for n, p in model.named_parameters()}
    generators = generator_matrix(syms, params).toarray()
    operator = OrbitOperator(syms, params)
    precondition = operator.preconditioner()
    start = sum(operator.sizes[:4])
    groups = syms.of_kind(Kind.GL)
    assert len(groups) == 4
    rng = np.random.default_rng(2)
    for sym in groups:
        d = sym.unit_count
        rows = slice(start, start + d * d)
        block = generators[:, rows].T @ generators[:, rows]
        a_in = unit_matrix(sym, sym.incoming, params).numpy()
        a_out = unit_matrix(sym, sym.outgoing, params).numpy()
        kronecker = np.kron(a_out @ a_out.T, np.eye(d)) + np.kron(np.eye(d), a_in @ a_in.T)
        assert np.abs(block - kronecker).max() <= 1e-13 * np.abs(block).max()
        c = rng.standard_normal(d * d)
        residual = np.zeros(generators.shape[1])
        residual[rows] = block @ c
        solved = precondition(torch.from_numpy(residual)).numpy()
        assert np.abs(solved[rows] - c).max() <= 1e-10 * np.abs(c).max()
        start += d * d


def test_the_monitors_quotient_update_norm_on_the_cg_path_is_the_dense_projection():
    """A GPT head of 44 (two GL(44) groups: 4132 generators, above the 4000 of one dense Gram matrix):
    the monitor's |P_H dtheta| comes from CG with the Sylvester preconditioner. The update has a vertical
    part (weight decay moves theta along its own scale and GL directions; the gradient of exact
    symmetries has none). Truth: the same point's projector with the Gram matrix inverted block by
    block (allowed here by a larger max_dense_entries), itself checked against NumPy's pseudo-inverse."""
    import tempfile

    from shockwatch.monitor import RunStore
    from shockwatch.quotient import OrbitOperator

    torch.manual_seed(0)
    model = sw.models.GPT(sw.models.GPTConfig(n_layer=1, n_head=1, d_model=44, vocab_size=13, block_size=8)).double()
    tokens = torch.randint(0, 13, (4, 9), generator=torch.Generator().manual_seed(1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    syms = sw.find_symmetries(model, x)
    params = dict(model.named_parameters())
    assert sum(OrbitOperator(syms, {k: p.detach() for k, p in params.items()}).sizes) ** 2 > 16_000_000
    opt = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=0.5)
    with tempfile.TemporaryDirectory() as directory:
        monitor = sw.Monitor(model, opt, directory + "/run", symmetries=syms, tensorboard=False,
                             schedule=sw.Schedule(quotient=2, quotient_budget=None))
        for step in (1, 2):
            opt.zero_grad()
            loss = F.cross_entropy(model(x).reshape(-1, 13), y.reshape(-1))
            loss.backward()
            before = {k: p.detach().clone() for k, p in params.items()}
            opt.step()
            monitor.step(loss)
        monitor.close()
        logged = RunStore(directory + "/run/run.sqlite", read_only=True).scalars("update_norm/quotient")
    assert list(logged[0]) == [2]
    moved = torch.cat([(params[k].detach() - theta).reshape(-1) for k, theta in before.items()]).numpy()
    truth = float(np.linalg.norm(horizontal_projector(syms, before, max_dense_entries=10**9)(moved)))
    assert truth < 0.99 * float(np.linalg.norm(moved))  # a real vertical part was removed
    assert abs(logged[1][0] - truth) <= 1e-6 * truth, (logged[1][0], truth)


def test_a_set_moved_off_the_host_still_projects_on_it():
    """The monitor moves its set to the model's device; the projector works on the host (NumPy vectors).
    A set on the meta device stands in for a GPU here: both paths (one dense Gram matrix, and CG with
    max_dense_entries=0) must give the host set's projection, not fail on device indices."""
    torch.manual_seed(0)
    model = sw.models.GPT(sw.models.GPTConfig(n_layer=1, n_head=2, d_model=8, vocab_size=13, block_size=8)).double()
    syms = sw.find_symmetries(model, torch.randint(0, 13, (2, 8)))
    params = {k: p.detach() for k, p in model.named_parameters()}
    v = np.random.default_rng(4).standard_normal(sum(p.numel() for p in params.values()))
    truth = horizontal_projector(syms, params)(v)
    moved = syms.to("meta")
    for entries in (16_000_000, 0):
        assert np.linalg.norm(horizontal_projector(moved, params, max_dense_entries=entries, rtol=1e-12)(v) - truth) \
            <= 1e-9 * np.linalg.norm(v)


def test_the_cg_projector_serves_many_vectors_from_one_solver():
    """The CG path (``max_dense_entries=0``) makes its orbit operator and preconditioner once and
    projects every vector with them: each of three vectors against the dense projector (NumPy's
    pseudo-inverse); a non-finite vector is refused with ValueError, as by ``horizontal_projection``."""
    import pytest

    model, x = _conv_net()
    syms = sw.find_symmetries(model, x)
    params = {name: p.detach() for name, p in model.named_parameters()}
    dense, _ = _dense(syms, params)
    projector = horizontal_projector(syms, params, max_dense_entries=0, rtol=1e-12)
    rng = np.random.default_rng(3)
    for _ in range(3):
        v = rng.standard_normal(dense.shape[0])
        assert np.linalg.norm(projector(v) - dense @ v) <= 1e-9 * np.linalg.norm(v)
    bad = rng.standard_normal(dense.shape[0])
    bad[5] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        projector(bad)
