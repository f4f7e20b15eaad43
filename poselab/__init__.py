"""poselab: tested PyTorch implementations of five human-pose-estimation methods,
the real-mocap data pipeline they need, metrics, analysis tools and plots.

The companion Jupyter book (``book/``) teaches each method and reproduces its
paper's claims with the functions in this package.
"""

from poselab.checks import resolve_device, seed_everything

__version__ = "0.1.0"

__all__ = ["resolve_device", "seed_everything", "__version__"]
