"""Data generators for the synthetic-task models, shared by the training scripts and the tests
(which regenerate the evaluation sets from the seeds a card states).  Numpy only."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# -- Dyck-2 -------------------------------------------------------------------------------------

#: the GRU's vocabulary: a newline ends each word, then the two bracket pairs
DYCK_PIECES = ["\n", "(", ")", "[", "]"]
DYCK_PAIRS = "()[]"
DYCK_OPEN = {"(": ")", "[": "]"}


def dyck_word(rng: np.random.Generator, max_len: int = 64, max_depth: int = 12) -> str:
    """One balanced Dyck-2 word: an even length uniform in [2, max_len], nesting at most
    ``max_depth``; each word draws its own opening probability in [0.4, 0.7], so that shallow
    and deep words both occur (about a third of all words reach depth 8)."""
    n = 2 * int(rng.integers(1, max_len // 2 + 1))
    p_open = float(rng.uniform(0.4, 0.7))
    stack: list[str] = []
    out = []
    for i in range(n):
        remaining = n - i
        if not stack:
            opening = True
        elif len(stack) >= remaining or len(stack) >= max_depth:
            opening = False
        else:
            opening = rng.random() < p_open
        if opening:
            ch = "(" if rng.random() < 0.5 else "["
            stack.append(ch)
            out.append(ch)
        else:
            out.append(DYCK_OPEN[stack.pop()])
    return "".join(out)


def dyck_text(rng: np.random.Generator, min_chars: int, max_len: int = 64, max_depth: int = 12) -> str:
    """Whole words, each followed by a newline, until at least ``min_chars`` characters."""
    words, n = [], 0
    while n < min_chars:
        w = dyck_word(rng, max_len, max_depth) + "\n"
        words.append(w)
        n += len(w)
    return "".join(words)


def dyck_closing_positions(text: str) -> np.ndarray:
    """Positions ``t`` whose *next* character is a closing bracket: where the model's ranking of
    the two closing brackets is scored."""
    nxt = np.frombuffer(text[1:].encode("ascii"), dtype=np.uint8)
    return np.flatnonzero((nxt == ord(")")) | (nxt == ord("]")))


def dyck_closing_accuracy(logits: np.ndarray, text: str) -> tuple[float, np.ndarray]:
    """Closing-bracket accuracy: at every position whose next character is a closing bracket,
    is that bracket scored above the other closing bracket?  Returns (accuracy, positions)."""
    pos = dyck_closing_positions(text)
    want = np.array([DYCK_PIECES.index(text[t + 1]) for t in pos])
    other = np.where(want == DYCK_PIECES.index(")"), DYCK_PIECES.index("]"), DYCK_PIECES.index(")"))
    z = np.asarray(logits)
    ok = z[pos, want] > z[pos, other]
    return float(ok.mean()), pos[ok == False]  # noqa: E712  (the positions it got wrong)


# -- delayed match-to-sample --------------------------------------------------------------------

DMS_FEATURES = ["stimulus", "sample_cue", "test_cue"]
DMS_CLASSES = ["wait", "match", "non-match"]


@dataclass(frozen=True)
class DMSTrial:
    start: int  # first step of the trial (fixation)
    sample_start: int
    delay_start: int
    test_start: int
    response_start: int
    end: int  # one past the last response step
    sample: int  # +1 or -1
    test: int  # +1 or -1

    @property
    def match(self) -> bool:
        return self.sample == self.test

    def to_dict(self) -> dict:
        return asdict(self)


def dms_sequence(rng: np.random.Generator, n_trials: int, *, noise: float = 0.5, delay=(10, 40),
                 fixation=(3, 8), epoch: int = 5, response: int = 5, trials: list | None = None):
    """``n_trials`` delayed match-to-sample trials back to back: inputs ``x`` [T, 3] (a noisy
    stimulus channel, a sample-epoch cue, a test-epoch cue), target classes ``y`` [T] (wait /
    match / non-match), and the trials' layout.

    A trial: fixation (stimulus channel noise only), the sample (stimulus ±1 for ``epoch``
    steps, sample cue on), a delay of uniform length in ``delay`` (noise only), the test
    (stimulus ±1, test cue on), then ``response`` steps in which the answer is due: "match"
    when the test has the sign of the sample.  The sign must be held across the delay, and a
    new sample overwrites the old one.  ``trials``: optional [(sample, test, delay)] to fix
    them (as the sample input does); noise still comes from ``rng``."""
    xs, ys, layout = [], [], []
    t = 0
    for k in range(n_trials):
        if trials is not None:
            s, te, d = trials[k]
        else:
            s = 1 if rng.random() < 0.5 else -1
            te = 1 if rng.random() < 0.5 else -1
            d = int(rng.integers(delay[0], delay[1] + 1))
        f = int(rng.integers(fixation[0], fixation[1] + 1))
        n = f + epoch + d + epoch + response
        x = np.zeros((n, 3), np.float32)
        x[:, 0] = rng.normal(0.0, noise, n)
        x[f : f + epoch, 0] += s
        x[f : f + epoch, 1] = 1.0
        x[f + epoch + d : f + 2 * epoch + d, 0] += te
        x[f + epoch + d : f + 2 * epoch + d, 2] = 1.0
        y = np.zeros(n, np.int64)
        y[n - response :] = 1 if s == te else 2
        layout.append(DMSTrial(start=t, sample_start=t + f, delay_start=t + f + epoch, test_start=t + f + epoch + d,
                               response_start=t + n - response, end=t + n, sample=int(s), test=int(te)))
        xs.append(x)
        ys.append(y)
        t += n
    return np.concatenate(xs), np.concatenate(ys), layout


def dms_trial_accuracy(logits: np.ndarray, layout: list[DMSTrial]) -> tuple[float, np.ndarray]:
    """Per trial: match vs non-match from the response steps' summed log-odds of the two answer
    classes.  Returns (accuracy, per-trial decision +1 match / -1 non-match)."""
    z = np.asarray(logits, dtype=np.float64)
    decisions = []
    correct = []
    for tr in layout:
        w = z[tr.response_start : tr.end]
        says_match = float((w[:, 1] - w[:, 2]).sum()) > 0
        decisions.append(1 if says_match else -1)
        correct.append(says_match == tr.match)
    return float(np.mean(correct)), np.asarray(decisions)


def dms_wait_accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Outside the response windows: how often "wait" is the top class."""
    z = np.asarray(logits)
    off = y == 0
    return float((z[off].argmax(axis=1) == 0).mean())


def dms_delay_mask(layout: list[DMSTrial], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Steps inside the delays, and the sample sign there (0 elsewhere)."""
    mask = np.zeros(n, bool)
    sign = np.zeros(n, np.float32)
    for tr in layout:
        mask[tr.delay_start : tr.test_start] = True
        sign[tr.delay_start : tr.test_start] = tr.sample
    return mask, sign


# -- multi-query associative recall ---------------------------------------------------------------

#: keys are letters, values digits; ``?`` opens a query, a newline ends an episode
RECALL_KEYS = "abcdefghijklmnop"
RECALL_VALUES = "0123456789"
RECALL_PIECES = ["\n", "?"] + list(RECALL_KEYS) + list(RECALL_VALUES)


@dataclass(frozen=True)
class RecallQuery:
    key_pos: int  # position of the query's key (the model must name the value next)
    pair_pos: int  # position of the same key in the pairs, where its value was given (value at pair_pos + 1)
    value: str


def recall_episode(rng: np.random.Generator, pairs=(4, 8), queries: int = 4) -> tuple[str, list[RecallQuery]]:
    """One multi-query associative-recall episode (the MQAR task of Arora et al., *Zoology*,
    2023), e.g. ``a3c7f1b9?c7?a3\\n``: key-value pairs (distinct keys, a number of pairs uniform
    in ``pairs``), then ``queries`` queries ``?`` + key, each answered by its value, then a
    newline.  Positions in the returned queries are relative to the episode's start."""
    n = int(rng.integers(pairs[0], pairs[1] + 1))
    keys = rng.choice(len(RECALL_KEYS), size=n, replace=False)
    values = rng.integers(0, len(RECALL_VALUES), size=n)
    text = "".join(RECALL_KEYS[k] + RECALL_VALUES[v] for k, v in zip(keys, values))
    out = []
    for q in rng.choice(n, size=min(queries, n), replace=False):
        out.append(RecallQuery(key_pos=len(text) + 1, pair_pos=2 * int(q), value=RECALL_VALUES[values[q]]))
        text += "?" + RECALL_KEYS[keys[q]] + RECALL_VALUES[values[q]]
    return text + "\n", out


def recall_text(rng: np.random.Generator, episodes: int, **kw) -> tuple[str, list[RecallQuery]]:
    """Several episodes back to back (later episodes reuse keys with new values: the model must
    answer from the current episode); query positions are absolute."""
    text, queries = "", []
    for _ in range(episodes):
        ep, qs = recall_episode(rng, **kw)
        queries += [RecallQuery(q.key_pos + len(text), q.pair_pos + len(text), q.value) for q in qs]
        text += ep
    return text, queries


def recall_accuracy(logits: np.ndarray, queries: list[RecallQuery]) -> tuple[float, np.ndarray]:
    """At each query key, is the paired value the top-scored of the ten values?  Returns
    (accuracy, the predicted value index per query)."""
    z = np.asarray(logits)
    cols = [RECALL_PIECES.index(v) for v in RECALL_VALUES]
    pred = z[[q.key_pos for q in queries]][:, cols].argmax(axis=1)
    want = np.array([RECALL_VALUES.index(q.value) for q in queries])
    return float((pred == want).mean()), pred
