"""Application services: thin use cases that compose the store and the engines."""
