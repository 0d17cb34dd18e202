"""Large-scene inference: tile, blend and stream any raster into a georeferenced class raster.

```python
from segnext_geo.inference import predict_scene

result = predict_scene("scene.tif", "model.pth", "classes.tif", probs_out="probs.tif")
```
"""

from .grid import Rect, SuperTile, Tile, TileGrid
from .predict import PredictResult, auto_working_set, predict_scene

__all__ = ["PredictResult", "Rect", "SuperTile", "Tile", "TileGrid", "auto_working_set", "predict_scene"]
