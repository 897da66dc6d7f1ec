"""finite_difference: measured order of accuracy, periodic wrap, one-sided ends."""

import math

import numpy as np
import pytest

import shockwatch as sw


@pytest.mark.parametrize("derivative,accuracy", [(1, 2), (1, 4), (1, 6), (2, 2), (2, 4), (2, 6)])
def test_measured_order(derivative, accuracy):
    """Truth: derivatives of sin(x) (exact: sin(x + m pi/2)); slope of log max error vs log h,
    ends included (their one-sided stencils have the same formal order)."""
    errors = []
    ns = [41, 81]
    for n in ns:
        x = np.linspace(0, 2, n)
        d = sw.pde.finite_difference(np.sin(x), x, derivative=derivative, accuracy=accuracy)
        errors.append(np.abs(d - np.sin(x + derivative * np.pi / 2)).max())
    order = math.log2(errors[0] / errors[1])
    assert order > accuracy - 0.6, (errors, order)


def test_periodic_spectral_like_wrap():
    """Truth: on a periodic grid the centred stencil applies everywhere; cos' = -sin."""
    x = np.linspace(0, 2 * np.pi, 128, endpoint=False)
    d = sw.pde.finite_difference(np.cos(3 * x), x, periodic=True)
    assert np.abs(d + 3 * np.sin(3 * x)).max() < 1e-6


def test_weights_reproduce_polynomials():
    """Truth: an n-point stencil differentiates polynomials of degree < n exactly."""
    w = sw.pde.fd_weights((-1, 0, 1, 2, 3), 2)
    k = np.arange(-1, 4)
    for degree in range(5):
        exact = degree * (degree - 1) * 0.0**max(degree - 2, 0) if degree >= 2 else 0.0
        assert abs(np.dot(w, k.astype(float) ** degree) - exact) < 1e-12
