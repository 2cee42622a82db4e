"""lmjax: anatomical landmark detection in radiographs with JAX and Flax."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `Predictor` is imported on first use, so `import lmjax` stays light (no JAX).
    if name in ("Predictor", "Result"):
        from lmjax import api

        return getattr(api, name)
    raise AttributeError(f"module 'lmjax' has no attribute {name!r}")


__all__ = ["Predictor", "Result", "__version__"]
