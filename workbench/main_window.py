"""The main window: docks, menus, status bar; wires views to the session and nothing else."""
from __future__ import annotations

import base64
import importlib
import importlib.util
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (QDockWidget, QFileDialog, QLabel, QMainWindow, QMessageBox, QProgressBar,
                               QPushButton, QTabBar)

import engine
from engine.errors import SeqScopeError
from engine.loading.config_file import read_config_file
from engine.tokenizers import read_numeric

from .examples import Example, examples
from .export import ExportError, export_units_csv, export_view, safe_filename
from .reporting import reports_errors
from .session import Session

# (dock title, module in workbench.views, class); where each goes: _lay_out_docks
VIEWS = [
    ("Probes", "probe_tree", "ProbeTreeView"),
    ("Input", "input_editor", "InputEditor"),
    ("Interventions", "interventions_panel", "InterventionsPanel"),
    ("Neuron heatmap", "heatmap", "HeatmapView"),
    ("Text", "text_view", "TextView"),
    ("Unit traces", "unit_plot", "UnitPlotView"),
    ("Outputs", "outputs", "OutputView"),
    ("Gates", "gates", "GateView"),
    ("Trajectory", "trajectory", "TrajectoryView"),
    ("Neuron search", "neuron_search", "NeuronSearchView"),
    ("Attention", "attention", "AttentionView"),
    # the corpus and the deeper analyses (issues 12, 13): each view is a module of its own
    ("Corpus", "corpus", "CorpusView"),
    ("Statistics", "unit_stats", "UnitStatsView"),
    ("Timescales", "timescales", "TimescalesView"),
    ("Dynamics", "dynamics", "DynamicsView"),
    ("Linear probe", "linear_probe", "LinearProbeView"),
    ("Attribution", "attribution", "AttributionView"),
    ("Compare", "compare", "CompareView"),
]
# The default layout, three columns: the inputs on the left; the heatmap, text and unit traces in
# the middle; on the right two groups of tabs, each title shown in full at the default size: above,
# the views that need the height (an attention map of 128 steps, the saturation plot, the
# statistics' three plots, the attribution strip over the text, the corpus's lists); below, the
# outputs table and the views built around a table or one short plot.
DEFAULT_SIZE = (1500, 950)
LEFT_COLUMN = ("Probes", "Input", "Interventions")
MIDDLE_COLUMN = ("Neuron heatmap", "Text", "Unit traces")
UPPER_TABS = ("Attention", "Gates", "Trajectory", "Dynamics", "Statistics", "Attribution", "Corpus")  # the first is raised
LOWER_TABS = ("Outputs", "Neuron search", "Timescales", "Linear probe", "Compare")
COLUMN_WIDTHS = (330, 610, 560)
MIDDLE_HEIGHTS = (290, 260, 260)
RIGHT_HEIGHTS = (560, 290)  # the upper tabs, the lower tabs
MAX_RECENT = 8
BUSY_DELAY_MS = 300  # show the progress bar for work that has lasted this long


class MainWindow(QMainWindow):
    def __init__(self, session: Session | None = None, settings: QSettings | None = None):
        super().__init__()
        self.session = session or Session(parent=self)
        self.settings = settings or QSettings("SeqScope", "workbench")
        self.setWindowTitle("SeqScope")
        self.resize(*DEFAULT_SIZE)
        self.setAcceptDrops(True)
        self.setDockNestingEnabled(True)
        self.views: dict[str, object] = {}
        self.docks: dict[str, QDockWidget] = {}
        for title, module, cls in VIEWS:
            if importlib.util.find_spec(f"workbench.views.{module}") is None:
                continue  # a view not built yet
            view_cls = getattr(importlib.import_module(f"workbench.views.{module}"), cls)
            view = view_cls(self.session)
            dock = QDockWidget(title, self)
            dock.setObjectName(f"dock-{module}")
            dock.setWidget(view)
            self.views[title] = view
            self.docks[title] = dock
            if hasattr(view, "flush"):  # a view whose tab is raised catches up with the edits it skipped
                dock.visibilityChanged.connect(lambda shown, v=view: shown and QTimer.singleShot(0, v.flush))
        self._lay_out_docks()
        self._shows_text = True  # the text view is shown (hidden while a numeric model is open)

        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(lambda: self.session.runner.cancel())
        self.model_label = QLabel("no model")
        # what the trace's notes say (characters read as the unknown token, ...): stays while the
        # trace is shown; a passing status message covers it for a few seconds
        self.notes_label = QLabel()
        self.notes_label.setStyleSheet("color: #a04000;")
        self.statusBar().addWidget(self.notes_label, 1)
        self.statusBar().addPermanentWidget(self.model_label)
        self.statusBar().addPermanentWidget(self.progress)
        self.statusBar().addPermanentWidget(self.cancel_button)
        self._busy_timer = QTimer(self, singleShot=True, interval=BUSY_DELAY_MS, timeout=self._show_busy)
        self._progress_shown = (0, 0)  # (done, total) of the running job, shown once it has lasted
        self.last_error: str | None = None
        self.error_dialog: QMessageBox | None = None

        self._build_menus()
        self.session.error.connect(self.show_error)
        self.session.busy_changed.connect(self._busy)
        self.session.progress.connect(self._progress)
        self.session.model_changed.connect(self._model_changed)
        self.session.trace_changed.connect(self._trace_changed)
        self.session.runner.finished.connect(self._job_finished)
        self.session.project_restored.connect(self._project_restored)
        self.session.corpus_changed.connect(self._raise_corpus)
        self.session.corpus_match_requested.connect(self._raise_corpus)

    def _lay_out_docks(self):
        """Place the docks in the default three columns (see ``COLUMN_WIDTHS``)."""
        def present(titles):
            return [self.docks[t] for t in titles if t in self.docks]

        left, middle = present(LEFT_COLUMN), present(MIDDLE_COLUMN)
        upper, lower = present(UPPER_TABS), present(LOWER_TABS)
        for dock in left:
            self.addDockWidget(Qt.LeftDockWidgetArea, dock, Qt.Vertical)
        right_column = [group[0] for group in (upper, lower) if group]
        first = (middle or right_column)[:1]
        for dock in first:
            self.addDockWidget(Qt.RightDockWidgetArea, dock)
        if middle and right_column:  # the right area split into the middle and the right column
            self.splitDockWidget(middle[0], right_column[0], Qt.Horizontal)
        for above, below in zip(middle, middle[1:]):
            self.splitDockWidget(above, below, Qt.Vertical)
        if upper and lower:
            self.splitDockWidget(upper[0], lower[0], Qt.Vertical)
        for group in (upper, lower):
            for a, b in zip(group, group[1:]):
                self.tabifyDockWidget(a, b)
            if group:
                group[0].raise_()
        self.setCentralWidget(None)
        columns = [(c[0], w) for c, w in zip((left, middle, right_column), COLUMN_WIDTHS) if c]
        self.resizeDocks([d for d, _ in columns], [w for _, w in columns], Qt.Horizontal)
        self.resizeDocks(middle, list(MIDDLE_HEIGHTS[: len(middle)]), Qt.Vertical)
        if upper and lower:
            self.resizeDocks([upper[0], lower[0]], list(RIGHT_HEIGHTS), Qt.Vertical)
        self._whole_tab_titles()

    def reset_layout(self):
        """Every dock back in its default place and shown (the text view stays hidden while a
        numeric model is open)."""
        for dock in self.docks.values():
            dock.setFloating(False)
            self.removeDockWidget(dock)
        self._lay_out_docks()
        for title, dock in self.docks.items():
            dock.setVisible(title != "Text" or self._shows_text)

    def _whole_tab_titles(self):
        """Tab titles are never cut short: where a narrowed column has no room for them all, the
        tab bar scrolls instead (Qt elides by default).  Qt leaves behind a bar holding the first
        two tabs of the second tab group it builds, drawn over the status bar and never laid out
        again; it is hidden (a bar whose tabs are all in another bar)."""
        bars = [b for b in self.findChildren(QTabBar) if b.parent() is self]
        tabs = [{b.tabText(i) for i in range(b.count())} for b in bars]
        for bar, mine in zip(bars, tabs):
            bar.setElideMode(Qt.ElideNone)
            bar.setUsesScrollButtons(True)
            if any(mine < other for other in tabs):
                bar.hide()

    # -- menus ------------------------------------------------------------------------------
    def _action(self, menu, text, slot, shortcut=None):
        action = QAction(text, self)
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _build_menus(self):
        bar = self.menuBar()
        file = bar.addMenu("&File")
        self._action(file, "Open model…", lambda: self.choose_model(), QKeySequence.Open)
        # engine.load(..., strict=False): what a refusal offers for tensors the model does not use
        self._action(file, "Open model, leaving out unused tensors…", lambda: self.choose_model(strict=False))
        # engine.load(..., config=...): what a refusal offers for a file whose architecture it cannot tell
        self._action(file, "Open model with a config…", self.choose_model_with_config)
        self.recent_menu = file.addMenu("Open recent")
        examples_menu = file.addMenu("Open example")
        for ex in examples():
            self._action(examples_menu, ex.name, lambda _=False, e=ex: self.open_example(e))
        examples_menu.setEnabled(not examples_menu.isEmpty())
        self._action(file, "Open input file…", self.choose_input)
        self._action(file, "Open corpus trace…", self.choose_corpus)
        file.addSeparator()
        self._action(file, "Open project…", self.choose_project)
        self._action(file, "Save project…", self.choose_save_project, QKeySequence.Save)
        file.addSeparator()
        self._action(file, "Export trace (HDF5)…", self.choose_export_trace)
        self._action(file, "Export selected units (CSV)…", self.choose_export_csv)
        export_menu = file.addMenu("Export view")
        for title, view in self.views.items():
            if getattr(view, "plot_item", None) is not None:
                self._action(export_menu, f"{title} as PNG…", lambda _=False, t=title: self.choose_export_view(t, ".png"))
                self._action(export_menu, f"{title} as SVG…", lambda _=False, t=title: self.choose_export_view(t, ".svg"))
            else:
                self._action(export_menu, f"{title} as PNG…", lambda _=False, t=title: self.choose_export_view(t, ".png"))
        file.addSeparator()
        self._action(file, "Quit", self.close, QKeySequence.Quit)
        view_menu = bar.addMenu("&View")
        for dock in self.docks.values():
            view_menu.addAction(dock.toggleViewAction())
        view_menu.addSeparator()
        self._action(view_menu, "Reset layout", self.reset_layout)
        run = bar.addMenu("&Run")
        self._action(run, "Cancel", lambda: self.session.runner.cancel(), "Esc")
        run.addSeparator()  # where runs start: a state other than zeros (engine/initial_state_files.py)
        run.setToolTipsVisible(True)
        self.start_actions = [self._action(run, "Start from a trace's final state…", self.choose_initial_state),
                              self._action(run, "Continue from this run's final state", self.continue_from_run)]
        self.zeros_action = self._action(run, "Start from zeros", self.start_from_zeros)
        self.session.model_changed.connect(self._update_start_actions)
        self.session.project_restored.connect(lambda _data: self._update_start_actions())
        self._update_start_actions()
        self._refresh_recent()

    # -- opening things -------------------------------------------------------------------------
    @reports_errors("Could not open the model")
    def open_model(self, path, strict: bool = True, config: dict | None = None):
        self.statusBar().showMessage(f"loading {path}…")
        self.session.open_model(path, config=config, strict=strict)

    @reports_errors("Could not open the example")
    def open_example(self, ex: Example, config: dict | None = None):
        """A bundled example model on its first sample input."""
        self.open_model(ex.model, config=config)  # loads off the GUI thread: the input is read by its kind, not the old model's
        if ex.sample is not None:
            self.open_input(ex.sample, numeric=ex.sample.suffix in (".npy", ".csv"))

    def choose_model(self, strict: bool = True):
        path, _ = QFileDialog.getOpenFileName(
            self, "Open model" if strict else "Open model, leaving out what it does not use", "",
            "Checkpoints (*.pt *.pth *.bin *.ckpt *.safetensors *.jit *.ptl *.h5 *.hdf5 *.keras *.npz *.pkl "
            "config.json);;All files (*)")
        if path:
            if Path(path).name == "config.json":
                path = str(Path(path).parent)
            self.open_model(path, strict=strict)

    @reports_errors("Could not open the model with that config")
    def choose_model_with_config(self):
        """A checkpoint, then the JSON config to load it with (the one a refusal offers, saved to a
        file: the same as ``engine.load(path, config=...)`` and ``seqscope info MODEL --config``)."""
        path, _ = QFileDialog.getOpenFileName(self, "Open model (then its config)", "", "All files (*)")
        if not path:
            return
        cfg_path, _ = QFileDialog.getOpenFileName(self, f"Config for {Path(path).name}", str(Path(path).parent),
                                                  "JSON (*.json);;All files (*)")
        if cfg_path:
            self.open_model(path, config=read_config_file(cfg_path))

    @reports_errors("Could not open the input")
    def open_input(self, path, numeric: bool | None = None):
        """Read an input file as numbers (``numeric``) or as text; by default as the current
        model reads its input (with no model: ``.npy``/``.csv`` as numbers)."""
        path = Path(path)
        if numeric is None:
            model = self.session.model
            numeric = not model.takes_tokens if model is not None else path.suffix.lower() in (".npy", ".csv")
        try:
            if numeric:
                self.session.set_values(read_numeric(path))
            else:
                self.session.set_text(path.read_text(encoding="utf-8", errors="replace"))
        except (OSError, SeqScopeError) as exc:
            self.session.error.emit(f"Could not open the input: {exc}")

    def choose_input(self):
        path, _ = QFileDialog.getOpenFileName(self, "Open input", "", "Text or numeric (*.txt *.py *.npy *.csv);;"
                                              "All files (*)")
        if path:
            self.open_input(path)

    def choose_corpus(self):
        path, _ = QFileDialog.getOpenFileName(self, "Open corpus trace", "", "Corpus traces (*.h5 *.hdf5);;All files (*)")
        if path:
            self.session.open_corpus(path)

    def _raise_corpus(self):
        if "Corpus" in self.docks:
            self.docks["Corpus"].show()
            self.docks["Corpus"].raise_()

    def choose_project(self):
        path, _ = QFileDialog.getOpenFileName(self, "Open project", "", "SeqScope project (*.seqscope.json *.json)")
        if path:
            self.open_project(path)

    @reports_errors("Could not open the project")
    def open_project(self, path):
        """Check the project file now (a bad one changes nothing and says why); its model loads
        off the GUI thread."""
        self.session.open_project(path)

    @reports_errors("Could not restore the window layout")
    def _project_restored(self, data: dict):
        if data.get("layout") and not self.restoreState(QByteArray(base64.b64decode(data["layout"]))):
            self.statusBar().showMessage("the project's window layout does not fit this window; kept the current one",
                                         10000)
        self._whole_tab_titles()

    def choose_save_project(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save project", "project.seqscope.json", "SeqScope project (*.json)")
        if path:
            self.save_project(path)

    @reports_errors("Could not save the project")
    def save_project(self, path):
        layout = base64.b64encode(bytes(self.saveState())).decode()
        self.session.save_project(path, layout=layout)
        self.statusBar().showMessage(f"saved {path}", 5000)

    # -- exports -------------------------------------------------------------------------------
    def choose_export_view(self, title, suffix):
        default = safe_filename(f"{title}-{self.session.probe or 'view'}") + suffix
        path, _ = QFileDialog.getSaveFileName(self, f"Export {title}", default, f"*{suffix}")
        if path:
            self.export_view(title, path)

    @reports_errors("Could not export the view")
    def export_view(self, title, path):
        try:
            export_view(self.views[title], path)
            self.statusBar().showMessage(f"wrote {path}", 5000)
        except ExportError as exc:
            self.session.error.emit(str(exc))

    def choose_export_trace(self):
        path, _ = QFileDialog.getSaveFileName(self, "Export trace", "trace.h5", "HDF5 (*.h5 *.hdf5)")
        if path:
            self.export_trace(path)

    @reports_errors("Could not export the trace")
    def export_trace(self, path):
        """Write the current trace (every probe, every sequence, the interventions) off the GUI thread."""
        trace = self.session.trace
        if trace is None:
            self.session.error.emit("Nothing to export yet: run the model first")
            return
        self.session.runner.submit("export", lambda should_stop, progress: engine.save_trace(trace, path) or path)

    @reports_errors("Could not export the units")
    def choose_export_csv(self):
        path, _ = QFileDialog.getSaveFileName(self, "Export units", "units.csv", "CSV (*.csv)")
        if path:
            try:
                export_units_csv(self.session, path)
            except ExportError as exc:
                self.session.error.emit(str(exc))

    # -- where runs start (Run menu) ---------------------------------------------------------
    def choose_initial_state(self):
        path, _ = QFileDialog.getOpenFileName(self, "Start from a trace's final state", "",
                                              "Traces and state files (*.h5 *.hdf5 *.npz *.safetensors);;All files (*)")
        if path:
            self.start_from_file(path)

    @reports_errors("Could not start from that state")
    def start_from_file(self, path):
        """Run from the final state of a trace file (or the arrays of an .npz/.safetensors) from now
        on; a file that does not fit keeps everything as it was and says why."""
        from engine.initial_state_files import file_kind, initial_state_for
        from engine.limits import display_name

        state = initial_state_for(self.session.model, path, 1)
        what = "the final state of" if file_kind(path) == "trace" else "the state in"
        self._start_from(state, f"{what} {display_name(Path(path).name)}")

    @reports_errors("Could not continue from this run")
    def continue_from_run(self):
        trace = self.session.trace
        if trace is None:
            raise engine.InputError("nothing has run yet")
        self._start_from(engine.final_state(trace), f"the final state of the previous run ({trace.n_tokens:,} tokens)")

    @reports_errors("Could not start from zeros")
    def start_from_zeros(self):
        self._start_from(None, None)

    def _start_from(self, state, source):
        self.session.set_initial_state(state, source)
        self._update_start_actions()
        self.statusBar().showMessage(f"runs start from {source or 'zeros'}", 5000)

    def _update_start_actions(self):
        """The actions are for models that take an initial state; the model label says where runs start."""
        model = self.session.model
        from engine.initial_state import no_state_reason, state_shapes

        why = ("open a model first" if model is None else None if state_shapes(model) is not None else
               no_state_reason(model))
        for action in self.start_actions:
            action.setEnabled(why is None)
            action.setToolTip(why or action.text())
        self.zeros_action.setEnabled(self.session.initial_state is not None)
        mark = " · from "  # the model label ends with it while runs start from a state other than zeros
        base = self.model_label.text().split(mark)[0]
        source = self.session.initial_state_source
        self.model_label.setText(base + (f"{mark}{source}" if source else ""))

    # -- feedback ------------------------------------------------------------------------------
    def show_error(self, message: str):
        """Say what went wrong, keep everything else as it is."""
        self.last_error = message
        self.statusBar().showMessage(message.splitlines()[0], 10000)
        if self.error_dialog is None:
            self.error_dialog = QMessageBox(QMessageBox.Warning, "SeqScope", "", QMessageBox.Ok, self)
        self.error_dialog.setText(message)
        self.error_dialog.open()  # window-modal, does not block the event loop

    def _busy(self, busy: bool):
        """The progress bar and Cancel show only for work that lasts: a re-run while a slider
        is dragged ends in tens of milliseconds, and showing and hiding them each time would
        re-lay out the status bar on every edit."""
        if busy:
            if not self._busy_timer.isActive() and not self.progress.isVisible():
                self._progress_shown = (0, 0)
                self._busy_timer.start()
            return
        self._busy_timer.stop()
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)

    def _show_busy(self):
        if self.session.runner.is_busy():
            self.progress.setRange(0, max(self._progress_shown[1], 0))
            self.progress.setValue(self._progress_shown[0])
            self.progress.setVisible(True)
            self.cancel_button.setVisible(True)

    def _progress(self, done: int, total: int):
        self._progress_shown = (done, max(total, 1))
        if self.progress.isVisible():
            self.progress.setRange(0, max(total, 1))
            self.progress.setValue(done)

    def _model_changed(self):
        s = self.session
        info = s.model.info()
        self.model_label.setText(f"{info['architecture']} · {info['parameter_count']:,} parameters")
        self.setWindowTitle(f"SeqScope — {s.model_path or 'model'}")
        if s.model_path:
            self._remember(s.model_path)
        self.statusBar().showMessage(f"opened {s.model_path}", 5000)
        self.notes_label.setText("")
        self._show_first_view()

    def _show_first_view(self):
        """Raise the view the model's look-at entry names; the text view only for models that read
        text (a numeric model's unit traces and input series take its room)."""
        s = self.session
        text_dock = self.docks.get("Text")
        if text_dock is not None and s.model.takes_tokens != self._shows_text:
            self._shows_text = s.model.takes_tokens
            text_dock.setVisible(self._shows_text)
        view = s.look_at.view if s.look_at is not None else None
        if view in self.docks:
            self.docks[view].show()
            self.docks[view].raise_()

    def _trace_changed(self):
        t = self.session.trace
        n_iv = len(self.session.interventions)
        self.statusBar().showMessage(f"{t.n_tokens:,} tokens" + (f", {n_iv} intervention(s)" if n_iv else ""), 3000)
        notes = self.session.trace_notes()  # the clean and the steered run's, each once
        self.notes_label.setText(" · ".join(notes))
        self.notes_label.setToolTip("\n".join(notes))

    def _job_finished(self, _id, kind, result):
        if kind == "export":
            self.statusBar().showMessage(f"wrote {result}", 5000)

    # -- recent files --------------------------------------------------------------------------
    def _recent(self) -> list[str]:
        value = self.settings.value("recent_models", [])
        return [value] if isinstance(value, str) else list(value or [])

    def _remember(self, path: str):
        recent = [path] + [p for p in self._recent() if p != path]
        self.settings.setValue("recent_models", recent[:MAX_RECENT])
        self._refresh_recent()

    def _refresh_recent(self):
        self.recent_menu.clear()
        for path in self._recent():
            self._action(self.recent_menu, path, lambda _=False, p=path: self.open_model(p))
        self.recent_menu.setEnabled(bool(self._recent()))

    # -- drag and drop ---------------------------------------------------------------------------
    def dragEnterEvent(self, event):
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    @reports_errors("Could not open the dropped file")
    def dropEvent(self, event):
        urls = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if urls:
            self.open_model(urls[0])
            event.acceptProposedAction()

    def closeEvent(self, event):
        for view in self.views.values():  # views with a worker thread of their own
            getattr(view, "shutdown", lambda: None)()
        self.session.runner.shutdown()
        super().closeEvent(event)
