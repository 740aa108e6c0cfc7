"""Model providers behind one interface (``base.ModelProvider``), chosen by model id in ``registry``."""

__all__: list[str] = []
