from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlhw.trainers.filters import BLURS, KERNELS, SHARPENERS, kernel, run_checks
from dlhw.viz.kernels import DIRECTIONS, apply_kernel, directional_gains, grating, grating_gain


@pytest.mark.parametrize("name", KERNELS.names())
def test_kernel_shape_sum_and_point_symmetry(name):
    k = kernel(name)
    assert k.shape == (3, 3)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-6)
    # Point symmetry is why conv2d's cross-correlation equals true convolution here.
    assert torch.equal(k, k.flip(0, 1))


@pytest.mark.parametrize("name", KERNELS.names())
@given(value=st.floats(0, 1), h=st.integers(1, 12), w=st.integers(1, 12), c=st.sampled_from([1, 3]))
@settings(max_examples=25, deadline=None)
def test_constant_image_is_preserved_with_borders(name, value, h, w, c):
    img = torch.full((c, h, w), value)
    out = apply_kernel(img, kernel(name))
    assert out.shape == img.shape
    assert torch.allclose(out, img, atol=1e-6)


def test_conv2d_is_cross_correlation_not_convolution():
    # An asymmetric kernel shows the difference: a one-hot at [0, 0] copies the up-left neighbour.
    k = torch.zeros(3, 3)
    k[0, 0] = 1.0
    img = torch.arange(25.0).reshape(1, 5, 5)
    out = apply_kernel(img, k)
    assert out[0, 2, 2] == img[0, 1, 1]


def test_rgb_channels_are_filtered_independently():
    img = torch.rand(3, 10, 12, generator=torch.Generator().manual_seed(0))
    k = kernel("sharpen_diagonal")
    out = apply_kernel(img, k)
    for c in range(3):
        # Grouped and single-channel convolutions may sum in a different order: float32 rounding.
        assert torch.allclose(out[c : c + 1], apply_kernel(img[c : c + 1], k), atol=1e-6)


@pytest.mark.parametrize("name,own", sorted(SHARPENERS.items()))
def test_each_sharpener_amplifies_its_own_direction_most(name, own):
    gains = {d: grating_gain(kernel(name), d) for d in DIRECTIONS}
    assert max(gains, key=gains.get) == own
    assert gains[own] > 1
    # Along the perpendicular line the 1D mask sees no change at all.
    perpendicular = {"horizontal": "vertical", "vertical": "horizontal", "diagonal": "antidiagonal"}[own]
    assert gains[perpendicular] == pytest.approx(1.0, abs=1e-3)


def test_the_five_kernels_have_the_homeworks_exact_weights():
    # Rows are y (top to bottom), columns x; "bottom-left to top-right" is cells [2, 0] and [0, 2].
    expected = {
        "box_blur": [[1 / 9] * 3] * 3,
        "gaussian_blur": [[1 / 16, 2 / 16, 1 / 16], [2 / 16, 4 / 16, 2 / 16], [1 / 16, 2 / 16, 1 / 16]],
        "sharpen_horizontal": [[0, 0, 0], [-1, 3, -1], [0, 0, 0]],
        "sharpen_vertical": [[0, -1, 0], [0, 3, 0], [0, -1, 0]],
        "sharpen_diagonal": [[0, 0, -1], [0, 3, 0], [-1, 0, 0]],
    }
    assert sorted(KERNELS.names()) == sorted(expected)
    for name, weights in expected.items():
        assert torch.allclose(kernel(name), torch.tensor(weights, dtype=torch.float32), atol=1e-7), name


@pytest.mark.parametrize("name", sorted(SHARPENERS))
def test_sharpener_gain_matches_its_frequency_response(name):
    # A grating of period P along a unit direction u meets the two -1 neighbours at offset d with
    # phase step 2 pi (u . d) / P, so the gain is 3 - 2 cos(2 pi (u . d) / P). At P = 4 that is 3
    # for the axis sharpeners along their axis (u . d = 1) but 3 - 2 cos(pi / sqrt 2) = 4.21 for the
    # diagonal one along its diagonal (its neighbours are sqrt 2 apart), and 1 across (u . d = 0).
    dy, dx = DIRECTIONS[SHARPENERS[name]]
    for direction, (uy, ux) in DIRECTIONS.items():
        step = (uy * dy + ux * dx) / math.hypot(uy, ux)
        expected = 3 - 2 * math.cos(2 * math.pi * step / 4)
        assert grating_gain(kernel(name), direction, period=4) == pytest.approx(expected, rel=1e-3), direction
    assert grating_gain(kernel("sharpen_diagonal"), "diagonal", period=4) == pytest.approx(4.2114, abs=1e-3)


@pytest.mark.parametrize("name", BLURS)
def test_blurs_attenuate_every_direction(name):
    for d in DIRECTIONS:
        assert grating_gain(kernel(name), d) < 1


def test_checks_pass_and_report_numbers():
    checks = run_checks(KERNELS.names())
    metrics = checks.metrics()
    assert metrics["check/passed"] == 1.0
    for name in BLURS:
        assert checks.hf_ratio[name] < 0.1
    for name in SHARPENERS:
        assert checks.hf_ratio[name] > 1


def test_directional_gains_on_a_photo_like_image():
    img = grating("diagonal", size=32)
    gains = directional_gains(img, apply_kernel(img, kernel("sharpen_diagonal")))
    assert gains["diagonal"] > gains["antidiagonal"]
