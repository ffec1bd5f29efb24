"""Forecast recognition accuracy against catalogue size from the training data alone."""
