"""lmjax: anatomical landmark detection in radiographs with JAX and Flax."""

__version__ = "0.1.0"
