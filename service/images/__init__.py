"""PNG pictures served by the sidecar: attribution maps and bar charts, reliability diagrams.

Drawn with Pillow and numpy only (no matplotlib), so the sidecar stays lean. Importing this
package loads Pillow: routes import it inside the function that draws, on the first picture.
Rendering blocks for a few milliseconds: call the renderers from a worker thread.
"""

from service.images._canvas import ImageDataError, NothingToDraw
from service.images.attributions import render_bar_chart, render_image_heatmap
from service.images.reliability import render_reliability_png

__all__ = ["ImageDataError", "NothingToDraw", "render_bar_chart", "render_image_heatmap", "render_reliability_png"]
