"""Deprecated: moved to escnet.commands.segment (see escnet/engine/__init__.py); this path goes away in the next release."""
from escnet.engine import moved

moved(__name__)
