"""Test setup: Qt must never look for a screen, so the platform is set before Qt is imported."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
