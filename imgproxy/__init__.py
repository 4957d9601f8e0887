"""imgproxy: a content-addressed, caching image service speaking the Image API v2."""

__version__ = "0.1.0"
