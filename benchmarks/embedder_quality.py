"""The local embedder's backends side by side: onnxruntime against sentence-transformers.

``python -m benchmarks.embedder_quality --torch-python PY --onnx-python PY`` from the
repository root. Passages come from the sample corpus (sliding word windows of 16 to 300
words, some past the 256-wordpiece truncation) and from synthetic sentences; queries are
questions and phrases built the same way. Each backend runs in its own subprocess of the
interpreter given (a torch-free venv for onnx, so its import time and memory are its own)
through rag-llm's own provider, and reports:

- quality: cosine of the two embeddings of each passage (mean, minimum, 1st percentile),
  and the share of queries whose top-5 passages (by cosine, over all passages) are the same
  set under both backends, with the mean overlap of the two top-5 lists;
- speed: import + first embedding (seconds, model load included), passages per second over
  the whole set (batches of 32, after a warm-up), the process's RSS after loading and after
  the run (MiB).

Both interpreters need rag-llm importable (``PYTHONPATH=src`` is set for them).
``--json PATH`` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS = REPO_ROOT / "samples" / "corpus"
_WINDOWS = ((16, 8), (40, 13), (90, 29), (160, 53), (300, 111))  # (words, stride)
_SUBJECTS = ("The espresso machine", "A honeybee colony", "Sourdough starter", "The volcano",
             "A marathon runner", "The tide pool", "Our connection pool", "The barista",
             "Each worker bee", "The lava flow", "A pooled HTTP client", "The hermit crab")
_VERBS = ("needs", "produces", "loses", "keeps", "measures", "reaches", "depends on",
          "slowly changes", "protects", "avoids")
_OBJECTS = ("nine bars of pressure", "fresh water every morning", "its heat overnight",
            "open TCP connections", "a steady pace for hours", "the rising tide",
            "wild yeast and lactobacilli", "pollen from many flowers", "a TLS handshake",
            "carbon dioxide", "sea anemones and starfish", "long runs on weekends")
_TAILS = ("", " before dawn.", " when it is cold.", ", or so the manual says.",
          " in about twenty minutes.", " unless someone intervenes.", "!", "?")
_QUESTIONS = ("How much pressure does an espresso machine use?", "What do bees eat?",
              "How long should sourdough rise?", "Why do volcanoes erupt?",
              "How should I train for a marathon?", "What lives in a tide pool?",
              "Why reuse HTTP connections?", "What is a connection pool limit?",
              "How hot is lava?", "When do honeybees swarm?")


def _corpus_texts() -> list[str]:
    sys.path.insert(0, str(REPO_ROOT / "src"))
    from rag_llm.rag.loaders import load_bytes

    return [load_bytes(path.name, path.read_bytes()).text for path in sorted(CORPUS.iterdir())
            if path.is_file()]


def make_texts(passages: int, queries: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """At least ``passages`` passages and exactly ``queries`` queries, deterministic."""
    rng = random.Random(seed)  # noqa: S311 - reproducible texts, not secrets
    words = [text.split() for text in _corpus_texts()]
    found: list[str] = []
    for doc in words:
        for size, stride in _WINDOWS:
            found += [" ".join(doc[i:i + size]) for i in range(0, max(1, len(doc) - size // 2),
                                                                 stride)]
    found = list(dict.fromkeys(text for text in found if text))
    pool = [word for doc in words for word in doc]
    while len(found) < passages:  # a template sentence, then a phrase from the corpus
        start = rng.randrange(len(pool) - 16)
        found.append(f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
                     f"{rng.choice(_TAILS)} {' '.join(pool[start:start + rng.randint(4, 16)])}")
    asked = list(_QUESTIONS)
    while len(asked) < queries:
        start = rng.randrange(len(pool) - 12)
        phrase = " ".join(pool[start:start + rng.randint(3, 10)])
        asked.append(rng.choice(("", "what is ", "how does ", "why ")) + phrase)
    return found, asked[:queries]


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(backend: str, texts_file: Path, out: Path, model: str | None = None) -> None:
    """In a fresh interpreter: load ``backend``, embed the texts, write vectors and figures."""
    import numpy as np

    start = time.perf_counter()
    from rag_llm.providers.local import create_local_provider

    config = {"type": "local", "backend": backend, **({"model": model} if model else {})}
    embedder = create_local_provider("embedding", config)
    embedder.embed(["warm up"])
    first = time.perf_counter() - start
    loaded_rss = _rss_mib()
    data = json.loads(texts_file.read_text(encoding="utf-8"))
    embedder.embed(data["passages"][:64])  # warm-up at the batch shapes that follow
    start = time.perf_counter()
    passages = np.asarray(embedder.embed(data["passages"]), dtype=np.float32)
    elapsed = time.perf_counter() - start
    queries = np.asarray(embedder.embed(data["queries"]), dtype=np.float32)
    np.savez(out, passages=passages, queries=queries)
    figures = {"backend": backend, "first_embedding_s": first, "passages_per_s":
               len(data["passages"]) / elapsed, "rss_loaded_mib": loaded_rss,
               "rss_after_mib": _rss_mib(), "threads": getattr(embedder, "threads", None)}
    out.with_suffix(".json").write_text(json.dumps(figures), encoding="utf-8")
    embedder.close()


def _run_worker(python: str, backend: str, texts_file: Path, tmp: Path,
                model: str | None = None) -> dict[str, Any]:
    import numpy as np

    out = tmp / f"{backend}.npz"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src") + os.pathsep + str(REPO_ROOT)}
    subprocess.run([python, "-m", "benchmarks.embedder_quality", "--worker", backend,  # noqa: S603
                    str(texts_file), str(out), model or ""], check=True, cwd=REPO_ROOT, env=env)
    figures: dict[str, Any] = json.loads(out.with_suffix(".json").read_text())
    with np.load(out) as arrays:
        figures["passages"], figures["queries"] = arrays["passages"], arrays["queries"]
    return figures


def compare(ref: dict[str, Any], new: dict[str, Any], k: int = 5) -> dict[str, float]:
    """Cosine between the backends' vectors and top-``k`` agreement over the queries."""
    import numpy as np

    cosines = (ref["passages"] * new["passages"]).sum(axis=1)
    top_ref = np.argsort(-(ref["queries"] @ ref["passages"].T), axis=1)[:, :k]
    top_new = np.argsort(-(new["queries"] @ new["passages"].T), axis=1)[:, :k]
    overlaps = [len(set(a) & set(b)) / k for a, b in zip(top_ref, top_new, strict=True)]
    return {"passages": len(cosines), "queries": len(overlaps),
            "mean_cosine": float(cosines.mean()), "min_cosine": float(cosines.min()),
            "p01_cosine": float(np.percentile(cosines, 1)),
            "query_cosine": float((ref["queries"] * new["queries"]).sum(axis=1).mean()),
            f"top{k}_same_set": float(np.mean([o == 1.0 for o in overlaps])),
            f"top{k}_mean_overlap": float(np.mean(overlaps))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.embedder_quality",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-python", default=sys.executable,
                        help="interpreter with rag-llm[local-torch] (default: this one)")
    parser.add_argument("--onnx-python", default=sys.executable,
                        help="interpreter with rag-llm[local] (default: this one)")
    parser.add_argument("--passages", type=int, default=1200)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--onnx-model", help="a directory with model.onnx and tokenizer.json "
                        "(default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--worker", nargs=4, metavar=("BACKEND", "TEXTS", "OUT", "MODEL"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]), Path(args.worker[2]), args.worker[3] or None)
        return 0
    passages, queries = make_texts(args.passages, args.queries)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        texts_file = tmp / "texts.json"
        texts_file.write_text(json.dumps({"passages": passages, "queries": queries}),
                              encoding="utf-8")
        ref = _run_worker(args.torch_python, "torch", texts_file, tmp)
        new = _run_worker(args.onnx_python, "onnx", texts_file, tmp, args.onnx_model)
    quality = compare(ref, new)
    speed = {run["backend"]: {key: value for key, value in run.items()
                              if key not in ("passages", "queries", "backend")}
             for run in (ref, new)}
    print(f"quality, onnx against torch: {json.dumps(quality, indent=2)}")
    print("speed:")
    for backend, figures in speed.items():
        print(f"  {backend:5}  first embedding {figures['first_embedding_s']:.2f} s"
              f"  {figures['passages_per_s']:.1f} passages/s"
              f"  RSS {figures['rss_loaded_mib']:.0f} MiB loaded,"
              f" {figures['rss_after_mib']:.0f} MiB after")
    onnx, torch = speed["onnx"], speed["torch"]
    ratios = {key: onnx[key] / torch[key] for key in
              ("passages_per_s", "first_embedding_s", "rss_loaded_mib", "rss_after_mib")}
    print("  onnx / torch, same run: " + ", ".join(f"{key} {value:.2f}x"
                                                 for key, value in ratios.items()))
    if args.json:
        report = {"quality": quality, "speed": speed, "onnx_over_torch": ratios}
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
