#!/usr/bin/env python
"""Train ``assets/models/lstm-timeseries``: an LSTM on numeric inputs doing delayed
match-to-sample, a working-memory task from neuroscience (a sample stimulus, a delay with
only noise, a test stimulus; answer "match" if the test has the sample's sign).  The sign
must be held across the delay, so the network needs a memory; the script names the cell
that holds it, checks that it holds it to the end of long delays, and flips it with an
intervention at the end of the delay to show that the answer depends on it.

    nice -n 10 .venv/bin/python assets/train/lstm_timeseries.py      # a few minutes on 2 cores
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trainkit  # noqa: E402
from features import pearson, unit_r  # noqa: E402
from synthetic_tasks import (DMS_CLASSES, DMS_FEATURES, DMSTrial, dms_delay_mask, dms_sequence,  # noqa: E402
                             dms_trial_accuracy, dms_wait_accuracy)
from trainkit import log  # noqa: E402

NAME = "lstm-timeseries"
EVAL_SEED = 31337  # the test regenerates the evaluation set from this seed
EVAL_SEQS = 16
EVAL_TRIALS = 25  # per sequence: 400 trials
SAMPLE_SEED = 5
#: the sample input's trials: (sample sign, test sign, delay): all four combinations, short and long delays
SAMPLE_TRIALS = [(1, 1, 12), (1, -1, 30), (-1, -1, 20), (-1, 1, 40), (1, 1, 38), (-1, -1, 15),
                 (1, -1, 18), (-1, 1, 25), (1, 1, 28), (1, -1, 40), (-1, 1, 10), (-1, -1, 35)]
PROBES = ["layers.0.h", "layers.0.c"]
MEMORY_PROBE = "layers.0.c"
MEMORY_R = 0.9  # cells with |r| above this over the delays are "memory cells"
LONG_DELAY = 30  # "holds to the end of long delays": trials with at least this many delay steps


def eval_set(seed: int = EVAL_SEED):
    """[(inputs [T, 3], targets [T], layout)] for the evaluation sequences."""
    rng = np.random.default_rng(seed)
    return [dms_sequence(rng, EVAL_TRIALS) for _ in range(EVAL_SEQS)]


def make_model(torch, hidden: int):
    nn = torch.nn

    class DMSLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(len(DMS_FEATURES), hidden, 1, batch_first=True)
            self.head = nn.Linear(hidden, len(DMS_CLASSES))

        def forward(self, x):
            y, _ = self.lstm(x)
            return self.head(y)

    return DMSLSTM()


def to_stack(model):
    from engine.models.stack import from_torch

    return from_torch(model.lstm, None, model.head)


def last_delay_steps(layout: list[DMSTrial]) -> list[int]:
    return [tr.test_start - 1 for tr in layout]


def delay_signals(seqs):
    """Over the concatenated sequences: the delay steps, the sample sign there, and the last 5
    steps of delays of at least ``LONG_DELAY`` steps."""
    masks, signs, late = [], [], []
    for x, _, layout in seqs:
        m, sign = dms_delay_mask(layout, len(x))
        lm = np.zeros(len(x), bool)
        for t in layout:
            if t.test_start - t.delay_start >= LONG_DELAY:
                lm[t.test_start - 5 : t.test_start] = True
        masks.append(m)
        signs.append(sign)
        late.append(lm)
    return np.concatenate(masks), np.concatenate(signs), np.concatenate(late)


def counterfactual(x: np.ndarray, layout: list[DMSTrial]) -> np.ndarray:
    """The same inputs (same noise) with every sample's sign reversed."""
    xc = np.array(x, copy=True)
    for t in layout:
        xc[t.sample_start : t.delay_start, 0] -= 2 * t.sample
    return xc


def patch_flip_rate(engine, model, seqs, units: list[int]) -> float:
    """Activation patching: at the last step of every delay, replace ``units`` of ``layers.0.c``
    with their values in the run whose samples have the opposite sign; the fraction of trials
    whose match/non-match decision changes."""
    flips = n = 0
    for x, _, layout in seqs:
        base = dms_trial_accuracy(engine.run(model, x, probes="logits")["logits"], layout)[1]
        other = engine.run(model, counterfactual(x, layout), probes=MEMORY_PROBE)[MEMORY_PROBE]
        iv = engine.Intervention(MEMORY_PROBE, "patch", other, positions=last_delay_steps(layout), units=list(units))
        edited = dms_trial_accuracy(engine.run(model, x, probes="logits", interventions=[iv])["logits"], layout)[1]
        flips += int((base != edited).sum())
        n += len(layout)
    return flips / n


def memory_evidence(engine, model, seqs, named: list[tuple[str, int]], memory_units: list[int]) -> dict:
    """What the card claims, measured on ``seqs``: each named unit's r with the sample sign over
    all delay steps and late in long delays; how many cells of ``layers.0.c`` have |r| > 0.9;
    and the decisions flipped by patching the memory cells (and, as a control, all the others)."""
    tr = engine.run(model, [x for x, _, _ in seqs], probes=PROBES)
    mask, sign, late = delay_signals(seqs)
    out = {"units": {}}
    for probe, unit in named:
        out["units"][f"{probe}:{unit}"] = {"r_delay": unit_r(tr.arrays, probe, unit, sign, mask),
                                           "r_late_long_delay": unit_r(tr.arrays, probe, unit, sign, late)}
    r_c = pearson(tr[MEMORY_PROBE][mask], sign[mask])
    out["cells_abs_r_over_0_9"] = int((np.abs(r_c) > 0.9).sum())
    others = [u for u in range(r_c.shape[0]) if u not in set(memory_units)]
    out["patch_flip_rate"] = patch_flip_rate(engine, model, seqs, memory_units)
    out["patch_others_flip_rate"] = patch_flip_rate(engine, model, seqs, others)
    return out


def write_card(out: Path, ev: dict, args) -> None:
    r = ev["results"]
    claims = ev["claims"]
    c0 = claims[0]
    pt = ev["patching"]
    lines = [
        f"# {NAME}",
        "",
        "An LSTM on a numeric time series: **delayed match-to-sample**, the classic working-memory task "
        "(used to study persistent activity in recurrent networks, e.g. Masse et al., *Circuit mechanisms for the "
        "maintenance and manipulation of information in working memory*, 2019). Each trial: a sample stimulus "
        "(+1 or −1 on the stimulus channel, 5 steps), a delay of 10–40 steps with noise only, a test stimulus "
        "(5 steps), then 5 response steps in which the network must say *match* (the test has the sample's sign) "
        "or *non-match*; *wait* at every other step. A new trial overwrites the memory of the last one.",
        "",
        "## Files",
        "",
        trainkit.md_table(["file", "what"], [
            ["`model.safetensors`", f"weights in SeqScope's own format ({ev['files']['model_kb']:.0f} kB); no "
                                    "embedding: the model reads numeric inputs (time × 3 features); the metadata names the features "
                                    "and classes (`seqscope_input_names`, `seqscope_output_names`)"],
            ["`sample.csv`", f"{len(SAMPLE_TRIALS)} trials back to back ({r['sample_steps']} steps × 3 columns "
                             f"{', '.join(DMS_FEATURES)}): the input the app opens"],
            ["`sample_trials.json`", "where each trial's sample, delay, test and response steps are in `sample.csv`, "
                                     "and its signs"],
            ["`evidence.json`", "every number on this card, as the training script measured it"],
        ]),
        "",
        "## Data",
        "",
        "- Inputs per step: `stimulus` (±1 during the sample and test epochs, plus Gaussian noise σ = 0.5 at "
        "every step), `sample_cue` (1 during the sample epoch), `test_cue` (1 during the test epoch). Outputs: "
        f"3 classes {', '.join(DMS_CLASSES)}. Generator: `assets/train/synthetic_tasks.py:dms_sequence`.",
        f"- Training: fresh trials every step (seeded), {args.batch} sequences of {args.seq} steps; the loss weighs "
        "response steps 5×. Evaluation: a separate seed "
        f"({EVAL_SEED}: {EVAL_SEQS} sequences × {EVAL_TRIALS} trials = {EVAL_SEQS * EVAL_TRIALS} trials).",
        "",
        "## Architecture and training",
        "",
        f"- LSTM 1 layer × {args.hidden} on 3 input features → linear head to 3 classes; {ev['parameters']:,} "
        "parameters.",
        f"- {ev['training']['steps_done']} steps of Adam (lr {args.lr}, cosine decay), clip 1.0, seed {args.seed}, "
        f"{args.threads} torch threads: {ev['training']['train_seconds'] / 60:.1f} minutes on "
        f"{ev['environment']['cpu_count']} CPU cores.",
        "",
        "```bash",
        f"nice -n 10 .venv/bin/python assets/train/lstm_timeseries.py --steps {args.steps}",
        "```",
        "",
        "## Results (held-out evaluation trials, through `engine.load` + `engine.run`)",
        "",
        trainkit.md_table(["measure", "value"], [
            ["trial accuracy (match vs non-match from the response steps)", f"**{r['trial_accuracy']:.4f}**"],
            [f"… trials with a delay ≥ {LONG_DELAY}", f"{r['long_delay_accuracy']:.4f}"],
            ["\"wait\" is the top class outside the response steps", f"{r['wait_accuracy']:.4f}"],
            ["trial accuracy on `sample.csv`", f"{r['sample_accuracy']:.4f}"],
            ["untrained network of the same shape", f"{r['untrained_accuracy']:.4f}"],
        ]),
        "",
        f"`engine.load` + `engine.run` reproduce the torch module's logits to {ev['files']['roundtrip_max_abs_diff']:.1e}.",
        "",
        "## What to look at",
        "",
        f"**Memory cells.** Over the delay steps of the evaluation trials, {pt['cells_abs_r_over_0_9']} of the "
        f"{args.hidden} cells of `layers.0.c` correlate with the sample's sign at |r| > {pt['threshold']} (in the "
        f"untrained network no unit of `layers.0.h` or `layers.0.c` exceeds |r| = {c0['untrained_max_abs_r']:.2f}): "
        "the sample is held in a redundant code, not in one cell. The cleanest ones:",
        "",
        trainkit.md_table(
            ["unit", "r with the sample sign, all delay steps", f"r, last 5 steps of delays ≥ {LONG_DELAY}",
             "on `sample.csv` (all delay steps / late)"],
            [[trainkit.claim_text(c), trainkit.r_text(c["r_delay"]), trainkit.r_text(c["r_late_long_delay"]),
              f"{trainkit.r_text(c['sample_r_delay'])} / {trainkit.r_text(c['sample_r_late_long_delay'])}"]
             for c in claims]),
        "",
        f"**They are what the answer is read from.** Activation patching: at the last step of every delay, "
        f"replace the memory cells (`layers.0.c` units {', '.join(str(u) for u in pt['memory_units'])}) with their "
        "values in a run of the same inputs whose samples have the opposite sign (an `Intervention` with "
        "`op=\"patch\"`). Decisions flipped:",
        "",
        trainkit.md_table(["patched at the end of the delay", "evaluation trials", "`sample.csv`"], [
            [f"the {len(pt['memory_units'])} memory cells", f"**{pt['flip_rate']:.3f}**", f"{pt['sample_flip_rate']:.3f}"],
            [f"the other {args.hidden - len(pt['memory_units'])} cells (control)", f"{pt['others_flip_rate']:.3f}",
             f"{pt['sample_others_flip_rate']:.3f}"],
        ]),
        "",
        "How to see it: open `sample.csv`, select `layers.0.c` and the units above: each cell jumps to one level at "
        "the sample and stays there through the delay, until the next sample overwrites it (`sample_trials.json` "
        "says where each epoch is). Edit a cell at a trial's last delay step and watch the logits of *match* and "
        "*non-match* respond.",
        "",
        "`tests/test_assets.py` regenerates the evaluation trials from their seed and re-derives every number in "
        "these tables from the shipped weights (|r| within 0.05 of the card, flip rates within 0.1).",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


def main(argv=None):
    ap = trainkit.arguments(__doc__, NAME, steps=3000, minutes=15.0, seed=0, batch=64, lr=3e-3)
    ap.add_argument("--seq", type=int, default=160)
    ap.add_argument("--hidden", type=int, default=32)
    args = ap.parse_args(argv)
    total = trainkit.Budget(1e9)
    torch = trainkit.setup_torch(args.seed, args.threads)
    F = torch.nn.functional
    import engine
    from engine.tokenizers import read_numeric

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = make_model(torch, args.hidden)
    untrained = to_stack(model)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    budget = trainkit.Budget(args.minutes)
    t0 = time.perf_counter()
    stopped_early, step = False, 0
    history = []
    for step in range(args.steps):
        if budget.over():
            stopped_early = True
            break
        xs, ys = [], []
        for _ in range(args.batch):
            x, y, _ = dms_sequence(rng, args.seq // 25 + 2)  # trials are at most 63 steps: enough for seq
            xs.append(x[: args.seq])
            ys.append(y[: args.seq])
        x = torch.from_numpy(np.stack(xs))
        y = torch.from_numpy(np.stack(ys))
        for g in opt.param_groups:
            g["lr"] = args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        logits = model(x)
        ce = F.cross_entropy(logits.reshape(-1, 3), y.reshape(-1), reduction="none")
        w = 1.0 + 4.0 * (y.reshape(-1) > 0).float()
        loss = (ce * w).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % 200 == 0:
            resp = y.reshape(-1) > 0
            acc = float((logits.reshape(-1, 3)[resp].argmax(1) == y.reshape(-1)[resp]).float().mean())
            history.append({"step": step + 1, "loss": round(loss.item(), 4), "response_step_acc": round(acc, 4)})
            log(f"step {step + 1:5d}  {(time.perf_counter() - t0) / 60:4.1f} min  loss {loss.item():.4f}  "
                f"response-step acc {acc:.4f}")
    else:
        step = args.steps
    model.eval()
    train_seconds = time.perf_counter() - t0

    # sample input: written as CSV, and evaluated as read back from it
    srng = np.random.default_rng(SAMPLE_SEED)
    sx, sy, slayout = dms_sequence(srng, len(SAMPLE_TRIALS), trials=SAMPLE_TRIALS)
    np.savetxt(out / "sample.csv", sx, fmt="%.4f", delimiter=",", header=",".join(DMS_FEATURES), comments="")
    (out / "sample_trials.json").write_text(
        f'{{"classes": {json.dumps(DMS_CLASSES)}, "features": {json.dumps(DMS_FEATURES)}, "trials": [\n  '
        + ",\n  ".join(json.dumps(t.to_dict()) for t in slayout) + "\n]}\n")
    sx = read_numeric(out / "sample.csv")
    path = out / "model.safetensors"
    with torch.no_grad():
        ref = model(torch.from_numpy(sx)[None])[0].numpy()
    diff = trainkit.save_and_verify(to_stack(model), path, sx, ref,
                                  note=f"assets/train/lstm_timeseries.py --seed {args.seed} --steps {args.steps}; see README.md",
                                  metadata={"seqscope_output_names": json.dumps(DMS_CLASSES),
                                            "seqscope_input_names": json.dumps(DMS_FEATURES)})
    loaded = engine.load(path, device="cpu")

    seqs = eval_set()
    tr = engine.run(loaded, [x for x, _, _ in seqs], probes=PROBES + ["logits"])
    tu = engine.run(untrained, [x for x, _, _ in seqs], probes=PROBES + ["logits"])
    accs, uaccs, waits, long_ok, long_n = [], [], [], 0, 0
    masks, signs = [], []
    for s, (x, y, layout) in enumerate(seqs):
        a, b = tr.offsets[s], tr.offsets[s + 1]
        acc, dec = dms_trial_accuracy(tr["logits"][a:b], layout)
        accs.append(acc)
        uaccs.append(dms_trial_accuracy(tu["logits"][a:b], layout)[0])
        waits.append(dms_wait_accuracy(tr["logits"][a:b], y))
        for t, d in zip(layout, dec):
            if t.test_start - t.delay_start >= LONG_DELAY:
                long_n += 1
                long_ok += int((d == 1) == t.match)
        m, sign = dms_delay_mask(layout, len(x))
        masks.append(m)
        signs.append(sign)
    mask, sign = np.concatenate(masks), np.concatenate(signs)
    named = []
    for p in PROBES:  # the cleanest cell and the cleanest output unit
        r = pearson(tr[p][mask], sign[mask])
        named.append((p, int(np.argmax(np.abs(r)))))
    named.sort(key=lambda pu: PROBES.index(pu[0]), reverse=True)  # layers.0.c first
    r_c = pearson(tr[MEMORY_PROBE][mask], sign[mask])
    memory_units = [int(u) for u in np.flatnonzero(np.abs(r_c) > MEMORY_R)]
    sample_seq = [(sx, sy, slayout)]
    mem = memory_evidence(engine, loaded, seqs, named, memory_units)
    mem_sample = memory_evidence(engine, loaded, sample_seq, named, memory_units)
    untrained_max = max(float(np.abs(pearson(tu[p][mask], sign[mask])).max()) for p in PROBES)
    claims = []
    for p, u in named:
        k = f"{p}:{u}"
        claims.append({"role": "holds the sample's sign across the delay", "probe": p, "unit": u,
                       "r_delay": round(mem["units"][k]["r_delay"], 4),
                       "r_late_long_delay": round(mem["units"][k]["r_late_long_delay"], 4),
                       "sample_r_delay": round(mem_sample["units"][k]["r_delay"], 4),
                       "sample_r_late_long_delay": round(mem_sample["units"][k]["r_late_long_delay"], 4),
                       "untrained_max_abs_r": round(untrained_max, 4)})
        log(f"memory: {p} unit {u}: r {claims[-1]['r_delay']:+.3f} over delays, {claims[-1]['r_late_long_delay']:+.3f} "
            f"late in long delays (untrained best |r| {untrained_max:.3f})")
    patching = {"probe": MEMORY_PROBE, "memory_units": memory_units, "threshold": MEMORY_R,
                "cells_abs_r_over_0_9": mem["cells_abs_r_over_0_9"],
                "flip_rate": round(mem["patch_flip_rate"], 4),
                "others_flip_rate": round(mem["patch_others_flip_rate"], 4),
                "sample_flip_rate": round(mem_sample["patch_flip_rate"], 4),
                "sample_others_flip_rate": round(mem_sample["patch_others_flip_rate"], 4)}
    log(f"patching the {len(memory_units)} memory cells at the end of the delay flips {patching['flip_rate']:.3f} of "
        f"decisions; patching the other {args.hidden - len(memory_units)} flips {patching['others_flip_rate']:.3f}")
    sample_acc = dms_trial_accuracy(engine.run(loaded, sx, probes="logits")["logits"], slayout)[0]
    results = {"trial_accuracy": round(float(np.mean(accs)), 5), "long_delay_accuracy": round(long_ok / long_n, 5),
               "long_delay_trials": long_n, "wait_accuracy": round(float(np.mean(waits)), 5),
               "sample_accuracy": round(sample_acc, 5), "untrained_accuracy": round(float(np.mean(uaccs)), 4),
               "sample_steps": int(len(sx)), "eval_trials": EVAL_SEQS * EVAL_TRIALS}
    log(f"trial accuracy {results['trial_accuracy']:.4f} (long delays {results['long_delay_accuracy']:.4f}), "
        f"wait {results['wait_accuracy']:.4f}, sample {sample_acc:.3f}")
    ev = {
        "name": NAME, "environment": trainkit.environment(),
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": {"eval_seed": EVAL_SEED, "eval_seqs": EVAL_SEQS, "eval_trials_per_seq": EVAL_TRIALS,
                 "sample_seed": SAMPLE_SEED, "sample_trials": SAMPLE_TRIALS, "noise": 0.5, "delay": [10, 40]},
        "training": {"steps_done": step, "stopped_early": stopped_early, "train_seconds": round(train_seconds, 1),
                     "history": history},
        "results": results, "claims": claims, "patching": patching,
        "files": {"model_kb": round(path.stat().st_size / 1e3, 1), "roundtrip_max_abs_diff": diff},
        "total_minutes": round(total.elapsed() / 60, 2),
    }
    trainkit.write_json(out / "evidence.json", ev)
    write_card(out, ev, args)
    log(f"wrote {out} in {ev['total_minutes']} min")
    return ev


if __name__ == "__main__":
    main()
