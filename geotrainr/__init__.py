"""geotrainr: single-image geolocation of street-level photos (PyTorch Lightning + timm)."""

__version__ = "0.1.0"
