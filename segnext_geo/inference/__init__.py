"""Large-scene inference: tile, blend and stream any raster into a georeferenced class raster.

```python
from segnext_geo.inference import PredictOptions, predict_scene

result = predict_scene("scene.tif", "model.pth", "classes.tif", PredictOptions(tile_size=512), probs_out="probs.tif")
```

:class:`InferenceRunner` is the one place where a model's eval forward runs (predict, batch,
evaluate, export and the benchmarks).
"""

from .device import resolve_device
from .grid import Rect, SuperTile, Tile, TileGrid
from .inputs import AreaMissesScene
from .options import MemoryPlan, PredictOptions, auto_working_set, estimate_peak, plan_memory
from .predict import PredictResult, predict_scene
from .runner import InferenceRunner

__all__ = [
    "AreaMissesScene",
    "InferenceRunner",
    "MemoryPlan",
    "PredictOptions",
    "PredictResult",
    "Rect",
    "SuperTile",
    "Tile",
    "TileGrid",
    "auto_working_set",
    "estimate_peak",
    "plan_memory",
    "predict_scene",
    "resolve_device",
]
