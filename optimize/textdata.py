"""The text optimize calibrates and evaluates on: files of passages separated by blank lines.

Two sets ship in ``optimize/data/``, both written for lorafleet (no hub, no licence questions): ``heldout.txt``
(eight passages, ~1,800 SmolLM2 tokens: narrative, recipe, science, dialogue, code reasoning, news, health,
a letter), used only for evaluation, and ``calibration.txt`` (32 short passages of the same mix plus code and
chat turns), used for calibration, pruning rankings and healing. They share no text.
"""

from __future__ import annotations

from pathlib import Path

from lorafleet.config.optimize import CalibConfig
from lorafleet.errors import ArtifactError

DATA_DIR = Path(__file__).parent / "data"
HELDOUT = DATA_DIR / "heldout.txt"
CALIBRATION = DATA_DIR / "calibration.txt"


def read_passages(path: Path | None, default: Path) -> list[str]:
    """Non-empty passages of ``path`` (or ``default``), split at blank lines."""
    path = Path(path) if path is not None else default
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: cannot read text ({type(e).__name__}: {e})") from None
    passages = [p.strip("\n") for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    if not passages:
        raise ArtifactError(f"{path}: no text")
    return passages


def calibration_texts(path: Path | None, num_samples: int) -> list[str]:
    """The first ``num_samples`` calibration passages (all of them if there are fewer)."""
    return read_passages(path, CALIBRATION)[:num_samples]


def calibration_ids(tokenizer, calib: CalibConfig) -> list:
    """The calibration passages of ``calib`` as ``[1, T]`` token-id tensors, each cut at ``calib.max_seq_len``."""
    return [tokenizer(text, return_tensors="pt", truncation=True, max_length=calib.max_seq_len).input_ids
            for text in calibration_texts(calib.calib_data, calib.num_calib_samples)]


def token_windows(token_ids: list[int], window_tokens: int, bos_id: int | None) -> list[list[int]]:
    """Cut a token stream into consecutive windows of at most ``window_tokens`` (a last one shorter than 16 is
    dropped); each starts with ``bos_id`` when given, so every window is scored from a clean start."""
    body = window_tokens - (1 if bos_id is not None else 0)
    windows = []
    for start in range(0, len(token_ids), body):
        chunk = token_ids[start:start + body]
        if len(chunk) < 16 and windows:
            break
        windows.append(([bos_id] if bos_id is not None else []) + chunk)
    return windows


def eval_windows(tokenizer, path: Path | None, window_tokens: int) -> list[list[int]]:
    """Held-out passages joined by blank lines, tokenized once, cut into windows (see :func:`token_windows`)."""
    text = "\n\n".join(read_passages(path, HELDOUT))
    ids = tokenizer(text, add_special_tokens=False).input_ids
    # Only tokenizers that add BOS themselves (Llama 2/3) get it per window; SmolLM2's "BOS" is a chat marker.
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]
    return token_windows(ids, window_tokens, tokenizer.bos_token_id if adds_bos else None)


#: stdlib modules whose documentation (module, class and function docstrings) pads the default healing set:
#: English prose that ships with every Python, disjoint from the held-out passages
HEALING_MODULES = ("argparse", "asyncio", "collections", "csv", "datetime", "decimal", "email", "functools", "heapq",
                   "http.client", "inspect", "json", "logging", "pathlib", "pickle", "random", "re", "shutil",
                   "socket", "statistics", "string", "subprocess", "tarfile", "textwrap", "threading", "typing",
                   "unittest", "urllib.parse", "uuid", "zipfile")


def stdlib_docstrings(min_chars: int = 200) -> list[str]:
    """Docstrings of at least ``min_chars`` from :data:`HEALING_MODULES`, in a fixed order, deduplicated."""
    import importlib
    import inspect
    import warnings

    seen: set[str] = set()
    out = []
    with warnings.catch_warnings():  # deprecated aliases (typing.re, ...) warn when touched
        warnings.simplefilter("ignore")
        for name in HEALING_MODULES:
            module = importlib.import_module(name)
            members = [getattr(module, a) for a in sorted(dir(module)) if not a.startswith("_")]
            members = [module] + [m for m in members if (inspect.isclass(m) or inspect.isfunction(m))
                                  and getattr(m, "__module__", None) == name]
            for obj in members:
                doc = inspect.getdoc(obj)
                if doc and len(doc) >= min_chars and doc not in seen:
                    seen.add(doc)
                    out.append(doc)
    return out


def healing_texts(path: Path | None) -> list[str]:
    """Passages of ``path``; by default the calibration set plus the stdlib documentation above."""
    if path is not None:
        return read_passages(path, CALIBRATION)
    return read_passages(None, CALIBRATION) + stdlib_docstrings()
