"""One view per file.  Each observes the Session and sends edits back to it; views never call
each other.  A view that can be exported exposes ``plot_item`` (a pyqtgraph PlotItem)."""
