"""Filter and feature-map pictures: sizes, layout and value range."""

from __future__ import annotations

import torch

from dlhw.viz.images import feature_map_grid, filter_grid, upscale


def test_upscale_by_whole_factors_only_when_small():
    img = torch.arange(6.0).reshape(1, 2, 3)
    big = upscale(img, 5)
    assert big.shape == (1, 6, 9) and torch.equal(big[0, :3, :3], torch.zeros(3, 3))
    assert upscale(img, 2) is img


def test_filter_grid_colour_and_grey():
    colour = filter_grid(torch.randn(64, 3, 3, 3), cell=24)
    assert colour.shape[0] == 3 and colour.shape[1] == colour.shape[2] == 8 * (24 + 2) + 2
    grey = filter_grid(torch.randn(64, 1, 3, 3), cell=24)
    assert grey.shape[0] == 1 and 0 <= float(grey.min()) and float(grey.max()) <= 1


def test_feature_map_grid_keeps_the_first_maps_and_is_visible():
    fmap = torch.randn(256, 4, 4)
    picture = feature_map_grid(fmap, max_maps=16, min_side=96)
    assert picture.shape[0] == 1 and min(picture.shape[1:]) >= 96
    # Channel 0 is stretched to [0, 1] on its own: its largest value is white.
    assert float(picture[0, 1 : 1 + 24, 1 : 1 + 24].max()) == 1.0
