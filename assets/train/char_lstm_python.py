#!/usr/bin/env python
"""Train ``assets/models/char-lstm-python``: a 2-layer character LSTM on the standard library's
own Python source (the ``.py`` files of the Python that runs this script: nothing is downloaded),
then find the units that track "inside a string literal", indentation and bracket depth on
held-out files, and write the weights, sample inputs, ``evidence.json`` and the model card.

    nice -n 10 .venv/bin/python assets/train/char_lstm_python.py            # ~20 min on 2 cores (16 training)
    .venv/bin/python assets/train/char_lstm_python.py --steps 300 --out /tmp/quick

Deterministic: fixed seeds, a fixed thread count, a fixed number of steps (``--steps``).
``--minutes`` is the training time budget: on a machine too slow (or too busy) to take the
steps in time, the learning-rate schedule follows the clock instead, so the run still ends
with a decayed rate after that long; the evidence then says from which step the clock bound
(such a run is not step-for-step reproducible: where it ends depends on the machine).
"""
from __future__ import annotations

import argparse
import hashlib
import math
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trainkit  # noqa: E402
from features import PYTHON_FEATURES, bits_per_char, pearson, python_features, unigram_entropy, unit_r  # noqa: E402
from trainkit import log  # noqa: E402

NAME = "char-lstm-python"
#: newline, tab, printable ASCII, and one symbol for everything else (98 in all)
UNK = "\ufffd"
PIECES = ["\n", "\t"] + [chr(c) for c in range(32, 127)] + [UNK]
#: folders of the standard library left out of the corpus (tests, IDLE, 2to3, Tk, third-party)
EXCLUDED_DIRS = {"test", "tests", "idle_test", "idlelib", "lib2to3", "tkinter", "turtledemo", "site-packages",
                 "__pycache__"}
MAX_FILE_BYTES = 200_000
HOLDOUT_MOD = 20  # a file is held out when sha1(relative path) % 20 == 0 (~5 % of the files)
PROBES = ["layers.0.h", "layers.0.c", "layers.1.h", "layers.1.c"]
CLAIMED = ["in_string", "indent", "bracket_depth"]  # the card's "what to look at"
ANALYSIS_CHARS = 8_000  # per held-out file, for the correlation search
SLICE_CHARS = 3_500  # sample input and the held-out slices the test runs
PREFERRED_SAMPLES = ["base64.py", "copy.py", "gzip.py", "difflib.py", "enum.py"]


# -- corpus ---------------------------------------------------------------------------------


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_files(lib: Path) -> list[str]:
    """Relative paths (POSIX) of the corpus files, sorted."""
    out = []
    for p in sorted(lib.rglob("*.py")):
        rel = p.relative_to(lib)
        if any(part in EXCLUDED_DIRS or part.startswith("config-") for part in rel.parts[:-1]):
            continue
        if rel.name.startswith("test_") or p.stat().st_size > MAX_FILE_BYTES:
            continue
        out.append(rel.as_posix())
    return out


def is_heldout(rel: str) -> bool:
    return int(hashlib.sha1(rel.encode()).hexdigest(), 16) % HOLDOUT_MOD == 0


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


_LUT = np.full(128, len(PIECES) - 1, np.int64)
for _i, _p in enumerate(PIECES[:-1]):
    _LUT[ord(_p)] = _i


def encode(text: str) -> np.ndarray:
    """Ids as ``CharVocab(PIECES, unknown=UNK).encode`` gives them, vectorised."""
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    ids = np.full(len(cp), len(PIECES) - 1, np.int64)
    ascii_ = cp < 128
    ids[ascii_] = _LUT[cp[ascii_]]
    return ids


def clean_slice(text: str, n_chars: int) -> str:
    """About ``n_chars`` of ``text`` starting at its first top-level ``def``/``class`` line and
    ending at a line end outside any string or bracket, so a run from a zero state starts and
    ends where the code does."""
    start = 0
    for key in ("\ndef ", "\nclass "):
        k = text.find(key)
        if k >= 0:
            start = k + 1 if start == 0 else min(start, k + 1)
    body = text[start:]
    feats = python_features(body)
    ends = [i + 1 for i, ch in enumerate(body) if ch == "\n" and i + 1 >= n_chars
            and feats["in_string"][i] == 0 and feats["bracket_depth"][i] == 0]
    return body[: ends[0]] if ends else body


# -- model ----------------------------------------------------------------------------------


def make_model(torch, hidden: int, embed: int, layers: int = 2):
    nn = torch.nn

    class CharLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(len(PIECES), embed)
            self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True)
            self.head = nn.Linear(hidden, len(PIECES))

        def forward(self, ids, state=None):
            y, state = self.lstm(self.embed(ids), state)
            return self.head(y), state

    return CharLSTM()


def load_weights(torch, model, path: Path):
    """Put the weights of a file this script wrote (canonical names) into the torch module."""
    from safetensors.torch import load_file

    w = load_file(str(path))
    model.embed.weight.data.copy_(w["embed.weight"])
    model.head.weight.data.copy_(w["head.weight"])
    model.head.bias.data.copy_(w["head.bias"])
    model.lstm.load_state_dict({k[len("rnn."):]: v for k, v in w.items() if k.startswith("rnn.")})


def to_stack(model):
    from engine.models.stack import from_torch
    from engine.tokenizers import CharVocab

    return from_torch(model.lstm, model.embed, model.head, tokenizer=CharVocab(PIECES, unknown=UNK))


def torch_bpc(torch, model, texts: list[str]) -> list[float]:
    """Bits per character of each text, each run from a zero state (as ``engine.run`` does)."""
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.from_numpy(encode(text))[None]
            logits, _ = model(ids[:, :-1])
            ce = torch.nn.functional.cross_entropy(logits[0], ids[0, 1:], reduction="mean")
            out.append(float(ce) / math.log(2))
    return out


def train(torch, model, data: np.ndarray, val_texts: list[str], args, budget) -> dict:
    F = torch.nn.functional
    batch, seq = args.batch, args.seq
    stream_len = len(data) // batch
    streams = torch.from_numpy(data[: batch * stream_len].reshape(batch, stream_len))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    warmup = min(100, args.steps // 10)

    def progress(step):
        """How far through the schedule: by steps, or by the clock when the time budget would
        otherwise cut the schedule short (then the run still ends with a fully decayed rate,
        but where it ends depends on the machine's speed)."""
        return max(step / args.steps, budget.elapsed() / (60.0 * budget.minutes))

    def lr_at(step, p):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))

    pos, state = 0, None
    history = []
    step = 0
    t0 = time.perf_counter()
    stopped_early = False
    model.train()
    clock_bound_from = None
    for step in range(args.steps):
        p = progress(step)
        if p >= 1.0:
            stopped_early = True
            break
        if step > 0 and p > step / args.steps and clock_bound_from is None:
            clock_bound_from = step
        if pos + seq + 1 > stream_len:
            pos, state = 0, None
        x = streams[:, pos : pos + seq]
        y = streams[:, pos + 1 : pos + seq + 1]
        pos += seq
        for g in opt.param_groups:
            g["lr"] = lr_at(step, p)
        logits, state = model(x, state)
        state = tuple(s.detach() for s in state)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps or progress(step + 1) >= 1.0:
            model.eval()
            val = float(np.mean(torch_bpc(torch, model, val_texts)))
            model.train()
            el = time.perf_counter() - t0
            history.append({"step": step + 1, "minutes": round(el / 60, 2), "train_bpc": round(loss.item() / math.log(2), 3),
                            "val_bpc": round(val, 3)})
            log(f"step {step + 1:5d}  {el / 60:5.1f} min  train {loss.item() / math.log(2):.3f}  val {val:.3f} bpc"
                f"  ({el / (step + 1):.2f} s/step)")
    else:
        step = args.steps
    model.eval()
    if stopped_early:
        log(f"time budget of {args.minutes} min reached after {step} of {args.steps} steps "
            f"(the schedule followed the clock from step {clock_bound_from})")
    return {"steps_done": step, "stopped_early": stopped_early, "clock_bound_from": clock_bound_from, "history": history,
            "train_seconds": round(time.perf_counter() - t0, 1),
            "chars_seen": step * batch * seq, "epochs": round(step * batch * seq / len(data), 2)}


# -- analysis -------------------------------------------------------------------------------


class Pooled:
    """Running sums for Pearson correlations of every unit with every feature, pooled over files."""

    def __init__(self):
        self.n = 0
        self.sa, self.saa, self.saf, self.sf, self.sff = {}, {}, {}, None, None

    def add(self, arrays: dict, feats: np.ndarray):  # feats [N, F]
        f = feats.astype(np.float64)
        self.n += len(f)
        self.sf = f.sum(0) if self.sf is None else self.sf + f.sum(0)
        self.sff = (f * f).sum(0) if self.sff is None else self.sff + (f * f).sum(0)
        for p, a in arrays.items():
            a = a.astype(np.float64)
            for d, v in ((self.sa, a.sum(0)), (self.saa, (a * a).sum(0)), (self.saf, a.T @ f)):
                d[p] = v if p not in d else d[p] + v

    def r(self) -> dict[str, np.ndarray]:  # probe -> [U, F]
        out = {}
        n = self.n
        for p in self.sa:
            cov = self.saf[p] - np.outer(self.sa[p], self.sf) / n
            va = self.saa[p] - self.sa[p] ** 2 / n
            vf = self.sff - self.sf ** 2 / n
            den = np.sqrt(np.outer(va, vf))
            out[p] = np.where(den > 0, cov / np.where(den > 0, den, 1), 0.0)
        return out


def feature_matrix(text: str, names: list[str]) -> np.ndarray:
    f = python_features(text)
    return np.stack([f[k] for k in names], axis=1)


def correlate(engine, model, texts: list[str], names: list[str]):
    """Pooled r [U, F] per probe over ``texts``, and each text's arrays-free per-file r for
    later lookup (kept as {probe: [files, U, F]})."""
    pooled = Pooled()
    per_file = []
    for text in texts:
        tr = engine.run(model, text, probes=PROBES)
        feats = feature_matrix(text, names)
        arrays = {p: tr[p] for p in PROBES}
        pooled.add(arrays, feats)
        per_file.append({p: np.stack([pearson(arrays[p], feats[:, j]) for j in range(len(names))], axis=1)
                         for p in PROBES})
    return pooled.r(), per_file


def slices_r(arrays: dict, text_feats: dict, claim: dict) -> float:
    return unit_r(arrays, claim["probe"], claim["unit"], text_feats[claim["feature"]])


def run_slices(engine, model, texts: list[str]):
    tr = engine.run(model, texts, probes=PROBES + ["logits"])
    feats = {k: np.concatenate([python_features(t)[k] for t in texts]) for k in PYTHON_FEATURES}
    bpcs = []
    for s in range(tr.n_sequences):
        a, b = tr.offsets[s], tr.offsets[s + 1]
        bpcs.append(bits_per_char(tr["logits"][a:b], tr.tokens[a:b]))
    n = np.array([len(t) - 1 for t in texts])
    return tr, feats, float(np.dot(bpcs, n) / n.sum()), bpcs


# -- card -----------------------------------------------------------------------------------


def write_card(out: Path, ev: dict, args) -> None:
    c = ev["corpus"]
    tr = ev["training"]
    rs = ev["results"]
    lines = [
        f"# {NAME}",
        "",
        "A 2-layer character-level LSTM trained on the Python standard library's own source code: "
        "a model whose cells you can watch tracking strings, indentation and bracket nesting "
        "(the kind of cells Karpathy, Johnson & Fei-Fei, *Visualizing and Understanding Recurrent "
        "Networks*, 2015, found in character LSTMs).",
        "",
        "Open it on `sample.py` (a held-out slice of the standard library) and look at the units below.",
        "",
        "## Files",
        "",
        trainkit.md_table(["file", "what"], [
            ["`model.safetensors`", f"the weights in SeqScope's own format (config and character vocabulary in the "
                                    f"metadata), {ev['files']['model_mb']:.1f} MB, float32; `engine.load` reads it"],
            ["`sample.py`", f"{ev['sample']['chars']} characters of held-out `{ev['sample']['source']}` (not seen in "
                            "training): the input the app opens"],
            ["`heldout/*.py`", "more held-out slices; with `sample.py` they are what the tests run"],
            ["`evidence.json`", "every number on this card, as the training script measured it"],
        ]),
        "",
        "## Data",
        "",
        f"- The `.py` files of the standard library of **{c['python']}** ({c['implementation']}), found under "
        f"`{c['stdlib']}`: {c['files']} files, {c['chars']:,} characters, sha256 of the corpus "
        f"(files in sorted order, joined) `{c['sha256'][:16]}…`.",
        f"- Left out: folders {', '.join('`' + d + '`' for d in sorted(EXCLUDED_DIRS))}, `config-*`, files named "
        f"`test_*.py`, and files over {MAX_FILE_BYTES // 1000} kB.",
        f"- Held out for evaluation: the {c['heldout_files']} files whose path's SHA-1 is divisible by {HOLDOUT_MOD} "
        f"({c['heldout_chars']:,} characters): " + ", ".join(f"`{f}`" for f in c["heldout"]) + ".",
        f"- Training text: the other {c['train_files']} files ({c['train_chars']:,} characters), listed at the end.",
        f"- Vocabulary: {len(PIECES)} symbols: newline, tab, ASCII 32-126, and `\\ufffd` for any other character "
        f"({c['unknown_fraction'] * 100:.3f} % of the corpus).",
        "- The sample and held-out slices are excerpts of Python's standard library, © Python Software "
        "Foundation, under the PSF License Agreement.",
        "",
        "## Architecture and training",
        "",
        f"- Embedding {args.embed} → LSTM 2 layers × {args.hidden} → linear head to {len(PIECES)} characters; "
        f"{ev['parameters']:,} parameters.",
        f"- {tr['steps_done']} steps of Adam (lr {args.lr}, 100 warm-up steps, cosine decay to 2 %), gradient clip 1.0, "
        f"batch {args.batch} streams × {args.seq} characters, state carried across batches; "
        f"{tr['epochs']} passes over the training text; seed {args.seed}, {args.threads} torch threads.",
        f"- Trained in {tr['train_seconds'] / 60:.1f} minutes on {ev['environment']['cpu_count']} CPU cores "
        f"(torch {ev['environment']['torch']}, {ev['environment']['platform']})"
        + (f"; the {args.minutes}-minute budget bound from step {tr['clock_bound_from']} on (the learning-rate "
           f"schedule followed the clock and training ended after {tr['steps_done']} of {args.steps} steps)."
           if tr["stopped_early"] else "; the time budget did not bind: the run is deterministic."),
        "- Command (from the repository root):",
        "",
        "```bash",
        f"nice -n 10 .venv/bin/python assets/train/char_lstm_python.py --steps {args.steps} --minutes {args.minutes}",
        "```",
        "",
        "## Results on held-out files",
        "",
        trainkit.md_table(["measure", "bits per character"], [
            [f"all {c['heldout_files']} held-out files, each run whole from a zero state (weighted by length)",
             f"**{rs['heldout_bpc']:.3f}**"],
            [f"… without the {c['heldout_files'] - len(ev['analysis_files'])} `encodings/` codec tables (easy to predict)", f"{rs['heldout_code_bpc']:.3f}"],
            ["… the first 2,048 characters from the first `def`/`class` of each file (mean over files; what the "
             "training log's `val` is)", f"{rs['heldout_slices_2048_bpc']:.3f}"],
            ["… per file (best / median / worst)", f"{min(rs['heldout_bpc_per_file'].values()):.2f} / "
             f"{float(np.median(list(rs['heldout_bpc_per_file'].values()))):.2f} / "
             f"{max(rs['heldout_bpc_per_file'].values()):.2f}"],
            ["`sample.py` + `heldout/*.py` through `engine.load` + `engine.run` (what the test checks)",
             f"{rs['slices_bpc']:.3f}"],
            ["unigram model (training-text character frequencies) on the held-out files", f"{rs['unigram_bpc']:.3f}"],
            ["untrained network of the same shape", f"{rs['untrained_bpc']:.3f}"],
        ]),
        "",
        f"Saving and loading is exact: `engine.load(\"model.safetensors\")` + `engine.run` reproduce the torch "
        f"module's logits on `sample.py` to {ev['files']['roundtrip_max_abs_diff']:.1e}.",
        "",
        "## What to look at",
        "",
        "Each unit below was found by correlating every unit of `layers.{0,1}.{h,c}` (1,024 units) with a "
        f"feature of the text over {ANALYSIS_CHARS:,} characters (from the first `def`/`class` on) of each of the "
        f"{len(ev['analysis_files'])} held-out files that are not `encodings/` codec tables (pooled), and taking "
        "the largest |r|. "
        "The features are computed by `assets/train/features.py` (the tests use the same code); a feature's "
        "value at a character is the state *after* reading it.",
        "",
        trainkit.md_table(
            ["feature", "unit", "r, held-out files (pooled)", "r per file (weakest / median)", "r on sample + slices",
             "untrained net: largest \\|r\\| of any unit"],
            [[f"{cl['feature']}", trainkit.claim_text(cl), trainkit.r_text(cl["r_heldout"]),
              f"{cl['r_per_file_min']:+.2f} / {cl['r_per_file_median']:+.2f}", trainkit.r_text(cl["r_slices"]),
              f"{cl['untrained_max_abs_r']:.2f}"] for cl in ev["claims"]]),
        "",
        "Features: " + "; ".join(f"**{k}**: {PYTHON_FEATURES[k]}" for k in CLAIMED) + ".",
        "",
        "Other features (not claimed, for reference): " + "; ".join(
            f"{x['feature']}: best {trainkit.claim_text(x)} r = {trainkit.r_text(x['r_heldout'])} "
            f"(untrained {x['untrained_max_abs_r']:.2f})" for x in ev["other_features"]) + ".",
        "",
        "How to see it: open `sample.py`, pick the probe and unit from the table in the neuron heatmap or the text "
        "highlighter: the bracket-depth unit steps at each `(`/`[`/`{` and back at its closer, the string unit "
        "switches at quotes, the indentation unit changes level where a line's code starts. A negative r means the "
        "unit falls as the feature rises. These are the best single units; each feature is also spread, more "
        "weakly, over many others.",
        "",
        "`tests/test_assets.py` re-derives every number in the column *r on sample + slices* from the shipped "
        "weights and fails if a unit's |r| falls more than 0.05 below it.",
        "",
        "## Training files",
        "",
        "<details><summary>" + f"{c['train_files']} files" + "</summary>",
        "",
        "\n".join(c["train"]),
        "",
        "</details>",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


# -- main -----------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=trainkit.MODELS / NAME)
    ap.add_argument("--steps", type=int, default=2200)
    ap.add_argument("--minutes", type=float, default=16.0,
                    help="training time budget: if the steps would take longer, the learning-rate schedule follows "
                         "the clock instead and training ends after this long")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--embed", type=int, default=64)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--reanalyse", action="store_true",
                    help="skip training: take the weights already in --out and redo the evaluation, the unit search "
                         "and the card (the training record and arguments are kept from its evidence.json)")
    args = ap.parse_args(argv)
    previous = None
    if args.reanalyse:
        previous = trainkit.previous_run(args)
        args.reanalyse = True
    total = trainkit.Budget(1e9)
    torch = trainkit.setup_torch(args.seed, args.threads)
    import engine

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    lib = stdlib_root()
    files = corpus_files(lib)
    texts = {f: read_text(lib / f) for f in files}
    heldout = [f for f in files if is_heldout(f)]
    train_files = [f for f in files if not is_heldout(f)]
    order = np.random.default_rng(args.seed).permutation(len(train_files))  # mix packages across streams
    train_text = "".join(texts[train_files[i]] for i in order)
    corpus_sha = hashlib.sha256("".join(texts[f] for f in files).encode()).hexdigest()
    data = encode(train_text)
    unk_frac = float(np.mean(encode("".join(texts.values())) == len(PIECES) - 1))
    log(f"Python {sys.version.split()[0]}: {len(files)} files, {len(train_files)} for training "
        f"({len(train_text):,} chars), {len(heldout)} held out")

    # sample input and held-out slices: from held-out files other than the encodings tables
    candidates = [f for f in heldout if not f.startswith("encodings/") and len(texts[f]) > 2 * SLICE_CHARS]
    by_name = {Path(f).name: f for f in candidates}
    first = next((by_name[n] for n in PREFERRED_SAMPLES if n in by_name), candidates[0])
    rest = [f for f in sorted(candidates, key=lambda f: -len(texts[f])) if f != first][:3]
    slice_files = [first] + rest
    slices = [clean_slice(texts[f], SLICE_CHARS) for f in slice_files]
    (out / "sample.py").write_text(slices[0])
    (out / "heldout").mkdir(exist_ok=True)
    for old in (out / "heldout").glob("*.py"):
        old.unlink()
    slice_names = ["sample.py"]
    for f, s in zip(rest, slices[1:]):
        name = f.replace("/", "_")
        (out / "heldout" / name).write_text(s)
        slice_names.append(f"heldout/{name}")
    val_texts = [clean_slice(texts[f], 2048) for f in heldout]

    model = make_model(torch, args.hidden, args.embed)
    untrained = make_model(torch, args.hidden, args.embed)
    untrained.load_state_dict(model.state_dict())
    untrained.eval()
    if previous is None:
        budget = trainkit.Budget(args.minutes)
        tr = train(torch, model, data, val_texts, args, budget)
    else:
        load_weights(torch, model, out / "model.safetensors")
        model.eval()
        tr = previous["training"]

    # held-out loss
    per_file = dict(zip(heldout, torch_bpc(torch, model, [texts[f] for f in heldout])))
    n_chars = np.array([len(texts[f]) - 1 for f in heldout])
    heldout_bpc = float(np.dot(list(per_file.values()), n_chars) / n_chars.sum())
    untrained_bpc = float(np.dot(torch_bpc(torch, untrained, [texts[f] for f in heldout]), n_chars) / n_chars.sum())
    counts = np.bincount(data, minlength=len(PIECES)).astype(np.float64) + 1.0
    logp = np.log2(counts / counts.sum())
    held_ids = np.concatenate([encode(texts[f]) for f in heldout])
    unigram_bpc = float(-logp[held_ids].mean())
    code = [k for k, f in enumerate(heldout) if not f.startswith("encodings/")]
    heldout_code_bpc = float(np.dot([list(per_file.values())[k] for k in code], n_chars[code]) / n_chars[code].sum())
    val_bpc = float(np.mean(torch_bpc(torch, model, val_texts)))
    log(f"held-out {heldout_bpc:.3f} bpc, without the encodings tables {heldout_code_bpc:.3f}, first-2048-character "
        f"slices {val_bpc:.3f} (unigram {unigram_bpc:.3f}, untrained {untrained_bpc:.3f})")

    # save, reload through the engine, compare logits
    path = out / "model.safetensors"
    with torch.no_grad():
        ref_logits = model(torch.from_numpy(encode(slices[0]))[None])[0][0].numpy()
    diff = trainkit.save_and_verify(to_stack(model), path, slices[0], ref_logits,
                                  note=f"assets/train/char_lstm_python.py --seed {args.seed} --steps {args.steps}; see README.md")
    loaded = engine.load(path, device="cpu")
    untrained_stack = to_stack(untrained)

    # correlations: search on held-out files, check on the shipped slices
    names = list(PYTHON_FEATURES)
    analysis_files = [f for f in heldout if not f.startswith("encodings/")]  # codec tables: strings everywhere
    analysis_texts = [clean_slice(texts[f], ANALYSIS_CHARS) if len(texts[f]) > ANALYSIS_CHARS else texts[f]
                      for f in analysis_files]
    pooled, per_file_r = correlate(engine, loaded, analysis_texts, names)
    pooled_u, _ = correlate(engine, untrained_stack, analysis_texts, names)
    strace, sfeats, slices_bpc, slice_bpcs = run_slices(engine, loaded, slices)
    utrace, _, _, _ = run_slices(engine, untrained_stack, slices)
    found = []
    for j, feat in enumerate(names):
        best = max(((abs(pooled[p][u, j]), p, u) for p in PROBES for u in range(pooled[p].shape[0])),
                   key=lambda t: (t[0], t[1] == "layers.1.c"))
        _, p, u = best
        # per file, only where the feature varies
        pf = [float(d[p][u, j]) for d, t in zip(per_file_r, analysis_texts) if np.std(python_features(t)[feat]) > 0]
        claim = {"feature": feat, "probe": p, "unit": int(u), "r_heldout": round(float(pooled[p][u, j]), 4),
                 "r_per_file_min": round(float(min(pf, key=abs)), 4),
                 "r_per_file_median": round(float(np.median(pf)), 4), "files_with_feature": len(pf),
                 "r_slices": round(unit_r(strace.arrays, p, u, sfeats[feat]), 4),
                 "untrained_max_abs_r": round(float(max(np.abs(pooled_u[q][:, j]).max() for q in PROBES)), 4),
                 "untrained_max_abs_r_slices": round(float(max(np.abs(pearson(utrace[q], sfeats[feat])).max()
                                                               for q in PROBES)), 4)}
        found.append(claim)
        log(f"{feat:14s} {p} unit {u}: r {claim['r_heldout']:+.3f} held-out, {claim['r_slices']:+.3f} on slices "
            f"(untrained best |r| {claim['untrained_max_abs_r']:.3f})")

    env = trainkit.environment()
    ev = {
        "name": NAME,
        "environment": env,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "parameters": sum(p.numel() for p in model.parameters()),
        "corpus": {"python": f"Python {sys.version.split()[0]}", "implementation": env["implementation"],
                   "stdlib": str(lib), "files": len(files), "chars": sum(len(t) for t in texts.values()),
                   "sha256": corpus_sha, "heldout_files": len(heldout),
                   "heldout_chars": int(sum(len(texts[f]) for f in heldout)), "heldout": heldout,
                   "train_files": len(train_files), "train_chars": len(train_text), "train": train_files,
                   "unknown_fraction": unk_frac},
        "training": tr,
        "sample": {"file": "sample.py", "source": slice_files[0], "chars": len(slices[0])},
        "slices": [{"file": n, "source": f, "chars": len(s), "bpc": round(b, 4)}
                   for n, f, s, b in zip(slice_names, slice_files, slices, slice_bpcs)],
        "analysis_files": analysis_files,
        "results": {"heldout_bpc": round(heldout_bpc, 4), "heldout_code_bpc": round(heldout_code_bpc, 4),
                    "heldout_slices_2048_bpc": round(val_bpc, 4),
                    "heldout_bpc_per_file": {f: round(v, 4) for f, v in per_file.items()},
                    "slices_bpc": round(slices_bpc, 4),
                    "slices_unigram_entropy": round(unigram_entropy(strace.tokens, len(PIECES)), 4),
                    "unigram_bpc": round(unigram_bpc, 4), "untrained_bpc": round(untrained_bpc, 4)},
        "claims": [c for c in found if c["feature"] in CLAIMED],
        "other_features": [c for c in found if c["feature"] not in CLAIMED],
        "files": {"model_mb": round(trainkit.file_mb(path), 2), "roundtrip_max_abs_diff": diff},
        "total_minutes": round(total.elapsed() / 60, 2),
    }
    if previous is not None:  # the time of the run that trained the model, and when this analysis was redone
        ev["total_minutes"] = previous["total_minutes"]
        ev["reanalysed_minutes"] = round(total.elapsed() / 60, 2)
    trainkit.write_json(out / "evidence.json", ev)
    write_card(out, ev, args)
    log(f"wrote {out} in {ev['total_minutes']} min")
    return ev


if __name__ == "__main__":
    main()
