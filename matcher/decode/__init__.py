"""Decode: inputs recognised by content (sniff), opened without following links, images and
video frames under a pixel limit."""
