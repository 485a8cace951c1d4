"""The instrumentor's wrappers of ``create`` and ``send`` (``patch``) and its stream proxy (``streams``)."""
