#!/usr/bin/env python
"""Train ``assets/models/gru-dyck``: a GRU language model on Dyck-2 (two bracket types, words of
up to 64 brackets nested up to 12 deep, one word per line), scored on what a bracket language
model must get right: at every point where a closing bracket comes next, does it rank the
valid closing bracket above the other one?  Then name the units that count nesting depth and
the one that tracks the type of the innermost open bracket (the top of the stack).

    nice -n 10 .venv/bin/python assets/train/gru_dyck.py        # a few minutes on 2 cores
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trainkit  # noqa: E402
from features import cross_entropy_bits, dyck_depth, dyck_stack_top, pearson, unit_r  # noqa: E402
from synthetic_tasks import DYCK_PIECES, dyck_closing_accuracy, dyck_closing_positions, dyck_text  # noqa: E402
from trainkit import log  # noqa: E402

NAME = "gru-dyck"
MAX_LEN = 64
MAX_DEPTH = 12
EVAL_SEED = 20240  # the test regenerates the evaluation set from this seed
EVAL_SEQS = 48
EVAL_CHARS = 512
SAMPLE_SEED = 7
PROBES = ["layers.0.h"]


def eval_texts(seed: int = EVAL_SEED, n: int = EVAL_SEQS, chars: int = EVAL_CHARS) -> list[str]:
    """The evaluation set: ``n`` independent streams of whole words (each at least ``chars``)."""
    rng = np.random.default_rng(seed)
    return [dyck_text(rng, chars, MAX_LEN, MAX_DEPTH) for _ in range(n)]


def sample_text() -> str:
    """The sample input: 16 words, deepest first, so the nesting is visible at once."""
    rng = np.random.default_rng(SAMPLE_SEED)
    words = []
    while len(words) < 16:
        w = dyck_text(rng, 1, MAX_LEN, MAX_DEPTH)
        if len(w) > 20 or len(words) >= 12:
            words.append(w)
    words.sort(key=lambda w: -dyck_depth(w).max())
    return "".join(words)


def make_model(torch, hidden: int, embed: int):
    nn = torch.nn

    class DyckGRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(len(DYCK_PIECES), embed)
            self.gru = nn.GRU(embed, hidden, 1, batch_first=True)
            self.head = nn.Linear(hidden, len(DYCK_PIECES))

        def forward(self, ids):
            y, _ = self.gru(self.embed(ids))
            return self.head(y)

    return DyckGRU()


def to_stack(model):
    from engine.models.stack import from_torch
    from engine.tokenizers import CharVocab

    return from_torch(model.gru, model.embed, model.head, tokenizer=CharVocab(DYCK_PIECES))


def ids_of(text: str) -> np.ndarray:
    return np.array([DYCK_PIECES.index(c) for c in text], np.int64)


def evaluate(engine, model, texts: list[str]) -> dict:
    """Closing-bracket accuracy and unit correlations over ``texts`` through the engine."""
    tr = engine.run(model, texts, probes=PROBES + ["logits"])
    accs, n_pos, deep_ok, deep_n, wrong = [], [], 0, 0, 0
    for s, text in enumerate(texts):
        a, b = tr.offsets[s], tr.offsets[s + 1]
        acc, bad = dyck_closing_accuracy(tr["logits"][a:b], text)
        pos = dyck_closing_positions(text)
        depth = dyck_depth(text)
        deep = depth[pos] >= 8
        deep_n += int(deep.sum())
        deep_ok += int(deep.sum()) - int(np.isin(pos[deep], bad).sum())
        accs.append(acc * len(pos))
        n_pos.append(len(pos))
        wrong += len(bad)
    depth = np.concatenate([dyck_depth(t) for t in texts])
    top = np.concatenate([dyck_stack_top(t) for t in texts])
    joined = "".join(texts)
    # right after a closing bracket the innermost open bracket was read long ago: it must be recalled
    after_close = np.array([c in ")]" for c in joined]) & (top != 0)
    return {"trace": tr, "depth": depth, "top": top, "masks": {"all": None, "after_close": after_close}, "closing_accuracy": float(sum(accs) / sum(n_pos)),
            "closing_positions": int(sum(n_pos)), "closing_errors": wrong,
            "deep_accuracy": deep_ok / max(deep_n, 1), "deep_positions": deep_n}


def write_card(out: Path, ev: dict, args) -> None:
    r = ev["results"]
    claims = ev["claims"]
    lines = [
        f"# {NAME}",
        "",
        "A GRU that learned the Dyck-2 language: strings of balanced `()` and `[]` brackets. To predict which "
        "closing bracket may come next, a network must keep a stack: how deep it is (a counter) and what type "
        "of bracket is open at each level. Small recurrent networks trained on bracket languages are known to "
        "develop counter units whose activation follows the nesting depth (e.g. Suzgun et al., *LSTM Networks "
        "Can Perform Dynamic Counting*, 2019); this one is small enough to find them by correlation.",
        "",
        "## Files",
        "",
        trainkit.md_table(["file", "what"], [
            ["`model.safetensors`", f"weights in SeqScope's own format, vocabulary in the metadata ({ev['files']['model_kb']:.0f} kB)"],
            ["`sample.txt`", "16 Dyck-2 words, one per line, deepest first: the input the app opens"],
            ["`evidence.json`", "every number on this card, as the training script measured it"],
        ]),
        "",
        "## Data",
        "",
        f"- Vocabulary: newline (ends a word), `(`, `)`, `[`, `]`. Words are generated by "
        "`assets/train/synthetic_tasks.py:dyck_word`: an even length uniform in [2, "
        f"{MAX_LEN}], nesting capped at {MAX_DEPTH}, each word with its own opening probability in [0.4, 0.7] so "
        f"that shallow and deep words both occur ({r['eval_words_depth8_fraction'] * 100:.0f} % of evaluation words "
        "reach depth 8 or more).",
        f"- Training: fresh words every step (seeded), {args.batch} sequences of ≥ {args.seq} characters from a zero "
        "state; the evaluation set is generated from a separate seed "
        f"({EVAL_SEED}: {EVAL_SEQS} sequences of ≥ {EVAL_CHARS} characters, {r['eval_chars']:,} characters).",
        "",
        "## Architecture and training",
        "",
        f"- Embedding {args.embed} → GRU 1 layer × {args.hidden} → linear head to the 5 symbols (next-symbol "
        f"prediction); {ev['parameters']:,} parameters.",
        f"- {ev['training']['steps_done']} steps of Adam (lr {args.lr}, cosine decay), clip 1.0, seed {args.seed}, "
        f"{args.threads} torch threads: {ev['training']['train_seconds'] / 60:.1f} minutes on "
        f"{ev['environment']['cpu_count']} CPU cores.",
        "",
        "```bash",
        f"nice -n 10 .venv/bin/python assets/train/gru_dyck.py --steps {args.steps}",
        "```",
        "",
        "## Results (held-out evaluation set, through `engine.load` + `engine.run`)",
        "",
        trainkit.md_table(["measure", "value"], [
            ["closing-bracket accuracy: where a closing bracket comes next, the valid one scores above the other",
             f"**{r['closing_accuracy']:.4f}** ({r['closing_positions']:,} positions, {r['closing_errors']} wrong)"],
            ["… at depth ≥ 8", f"{r['deep_accuracy']:.4f} ({r['deep_positions']:,} positions)"],
            ["… on `sample.txt`", f"{r['sample_closing_accuracy']:.4f}"],
            ["cross-entropy of the next symbol (bits)", f"{r['eval_bits']:.3f}"],
        ]),
        "",
        f"`engine.load` + `engine.run` reproduce the torch module's logits to {ev['files']['roundtrip_max_abs_diff']:.1e}.",
        "",
        "## What to look at",
        "",
        "Correlation of each unit of `layers.0.h` with two features of the prefix (from `assets/train/features.py`, "
        "the same code the tests use): the nesting **depth** after each symbol (`dyck_depth`), and the type of the "
        "innermost open bracket (`dyck_stack_top`: +1 `(`, −1 `[`) — the symbol the next closing bracket must "
        "match. The bracket type is scored only right after a closing bracket (and with brackets still open): "
        "there the innermost open bracket was read many steps ago and has to be recalled from the stack, whereas "
        "right after an opening bracket it is simply the last input.",
        "",
        trainkit.md_table(["role", "unit", "positions", "r, evaluation set", "r on `sample.txt`",
                           "untrained net: largest \\|r\\|"],
                          [[c["role"], trainkit.claim_text(c), c["positions"].replace("_", " "),
                            trainkit.r_text(c["r_eval"]), trainkit.r_text(c["r_sample"]),
                            f"{c['untrained_max_abs_r']:.2f}"] for c in claims]),
        "",
        f"Over all positions the stack-top unit's r is {r['stack_top_unit_r_all_positions']:+.2f}, but there the "
        f"untrained network already reaches {r['untrained_stack_top_max_abs_r_all_positions']:.2f} from the last "
        f"input alone, so the recalled positions are the real test. {r['units_abs_r_depth_over_0_5']} of the "
        f"{args.hidden} units have |r| > 0.5 with depth: the count is spread over several units, the ones above "
        "are the cleanest (a negative r means the unit falls as the nesting deepens).",
        "",
        "How to see it: open `sample.txt` (deepest words first), choose `layers.0.h` and the units above: the "
        "counters step at every bracket, one way on opening and back on closing; read the stack-top unit right "
        "after each closing bracket: its sign tells which bracket is open again, also when that one was opened many symbols earlier.",
        "",
        "`tests/test_assets.py` regenerates the evaluation set from its seed, re-derives the accuracy and every "
        "correlation in this table from the shipped weights, and fails if an |r| falls more than 0.05 below the card.",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


def main(argv=None):
    ap = trainkit.arguments(__doc__, NAME, steps=3000, minutes=15.0, seed=0, batch=32, lr=3e-3, card_only=True)
    ap.add_argument("--seq", type=int, default=192)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--embed", type=int, default=8)
    args = ap.parse_args(argv)
    if args.card_only:
        return trainkit.rewrite_card(args, write_card)
    total = trainkit.Budget(1e9)
    torch = trainkit.setup_torch(args.seed, args.threads)
    F = torch.nn.functional
    import engine

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = make_model(torch, args.hidden, args.embed)
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
        batch = [dyck_text(rng, args.seq + 1, MAX_LEN, MAX_DEPTH)[: args.seq + 1] for _ in range(args.batch)]
        ids = torch.from_numpy(np.stack([ids_of(t) for t in batch]))
        for g in opt.param_groups:
            g["lr"] = args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, len(DYCK_PIECES)), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % 250 == 0:
            with torch.no_grad():
                z = model(ids[:, :-1]).numpy()
            acc = np.mean([dyck_closing_accuracy(z[b], batch[b][:-1])[0] for b in range(len(batch))])
            history.append({"step": step + 1, "loss_bits": round(loss.item() / math.log(2), 4), "batch_closing_acc": round(float(acc), 4)})
            log(f"step {step + 1:5d}  {(time.perf_counter() - t0) / 60:4.1f} min  loss {loss.item() / math.log(2):.3f} bits"
                f"  closing acc {acc:.4f}")
    else:
        step = args.steps
    model.eval()
    train_seconds = time.perf_counter() - t0

    texts = eval_texts()
    sample = sample_text()
    (out / "sample.txt").write_text(sample)
    path = out / "model.safetensors"
    with torch.no_grad():
        ref = model(torch.from_numpy(ids_of(sample))[None])[0].numpy()
    diff = trainkit.save_and_verify(to_stack(model), path, sample, ref,
                                  note=f"assets/train/gru_dyck.py --seed {args.seed} --steps {args.steps}; see README.md")
    loaded = engine.load(path, device="cpu")
    ev_t = evaluate(engine, loaded, texts)
    ev_u = evaluate(engine, untrained, texts)
    ev_s = evaluate(engine, loaded, [sample])
    tr = ev_t["trace"]
    z = tr["logits"]
    bits = []
    for s in range(tr.n_sequences):
        a, b = tr.offsets[s], tr.offsets[s + 1]
        bits.append(cross_entropy_bits(z[a : b - 1], tr.tokens[a + 1 : b]))
    eval_bits = float(np.concatenate(bits).mean())
    claims = []
    h, hu = tr["layers.0.h"], ev_u["trace"]["layers.0.h"]
    for role, key, where, k in (("depth counter", "depth", "all", 2),
                                ("stack top, recalled after a closing bracket", "top", "after_close", 1)):
        mask = ev_t["masks"][where]
        sel = slice(None) if mask is None else mask
        r_all = pearson(h[sel], ev_t[key][sel])
        for u in np.argsort(-np.abs(r_all))[:k]:
            claims.append({"role": role, "feature": key, "positions": where, "probe": "layers.0.h", "unit": int(u),
                           "r_eval": round(float(r_all[u]), 4),
                           "r_sample": round(unit_r(ev_s["trace"].arrays, "layers.0.h", int(u), ev_s[key],
                                                    ev_s["masks"][where]), 4),
                           "untrained_max_abs_r": round(float(np.abs(pearson(hu[sel], ev_u[key][sel])).max()), 4)})
            log(f"{role}: layers.0.h unit {u} r {r_all[u]:+.3f} (sample {claims[-1]['r_sample']:+.3f}, "
                f"untrained best {claims[-1]['untrained_max_abs_r']:.3f})")
    r_top_all = pearson(h, ev_t["top"])
    r_depth = pearson(tr["layers.0.h"], ev_t["depth"])
    words = [w for t in texts for w in t.split("\n") if w]
    results = {
        "closing_accuracy": round(ev_t["closing_accuracy"], 5), "closing_positions": ev_t["closing_positions"],
        "closing_errors": ev_t["closing_errors"], "deep_accuracy": round(ev_t["deep_accuracy"], 5),
        "deep_positions": ev_t["deep_positions"], "sample_closing_accuracy": round(ev_s["closing_accuracy"], 5),
        "untrained_closing_accuracy": round(ev_u["closing_accuracy"], 4),
        "eval_bits": round(eval_bits, 4), "eval_chars": int(sum(len(t) for t in texts)),
        "eval_words_depth8_fraction": round(float(np.mean([dyck_depth(w).max() >= 8 for w in words])), 4),
        "eval_max_depth": int(max(dyck_depth(t).max() for t in texts)),
        "units_abs_r_depth_over_0_5": int((np.abs(r_depth) > 0.5).sum()),
        "stack_top_unit_r_all_positions": round(float(r_top_all[claims[-1]["unit"]]), 4),
        "untrained_stack_top_max_abs_r_all_positions": round(float(np.abs(pearson(hu, ev_u["top"])).max()), 4),
    }
    log(f"closing accuracy {results['closing_accuracy']:.4f} (depth >= 8: {results['deep_accuracy']:.4f}), "
        f"sample {results['sample_closing_accuracy']:.4f}")
    ev = {
        "name": NAME, "environment": trainkit.environment(),
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "card_only")},
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": {"max_len": MAX_LEN, "max_depth": MAX_DEPTH, "eval_seed": EVAL_SEED, "eval_seqs": EVAL_SEQS,
                 "eval_chars_min": EVAL_CHARS, "sample_seed": SAMPLE_SEED},
        "training": {"steps_done": step, "stopped_early": stopped_early, "train_seconds": round(train_seconds, 1),
                     "history": history},
        "results": results, "claims": claims,
        "files": {"model_kb": round(path.stat().st_size / 1e3, 1), "roundtrip_max_abs_diff": diff},
        "total_minutes": round(total.elapsed() / 60, 2),
    }
    trainkit.write_json(out / "evidence.json", ev)
    write_card(out, ev, args)
    log(f"wrote {out} in {ev['total_minutes']} min")
    return ev


if __name__ == "__main__":
    main()
