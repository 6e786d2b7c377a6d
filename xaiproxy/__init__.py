"""xaiproxy: a lean self-hosted AI API gateway."""

__version__ = "0.1.0"
