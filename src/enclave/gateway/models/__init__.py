"""Model clients, one module per provider, behind one small interface (``base``)."""
