"""How a tiled run evaluates during training (issue 16)."""

from __future__ import annotations

from varifocal.config import load_config
from varifocal.engine.steps import val_slicing


def test_a_tiled_run_evaluates_with_its_tiles():
    assert val_slicing(load_config(None, [])) is None
    slicing = val_slicing(load_config(None, ["data.tiles.size=[640,480]", "data.tiles.overlap=0.25"]))
    assert slicing.tile_size == (640, 480) and slicing.overlap == 0.25 and slicing.merge == "nms"
    assert val_slicing(load_config(None, ["data.tiles.size=512"])).tile_size == (512, 512)
